"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Summary:
    """Order statistics of one series of wall-clock samples, in milliseconds."""

    n: int
    median_ms: float
    p95_ms: float
    min_ms: float
    max_ms: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Summary:
        if not seconds:
            raise ValueError("no samples")
        ms = sorted(s * 1000.0 for s in seconds)
        # p95 by linear interpolation between order statistics (R-7, the spreadsheet rule).
        p95 = statistics.quantiles(ms, n=100, method="inclusive")[94] if len(ms) > 1 else ms[0]
        return cls(
            n=len(ms), median_ms=statistics.median(ms), p95_ms=p95, min_ms=ms[0], max_ms=ms[-1]
        )


def timed(fn: Callable[[], T], *, collect: bool = True) -> tuple[float, T]:
    """Wall time of ``fn()`` in seconds (perf_counter) and its result.

    With ``collect`` a full garbage collection runs first, outside the timed region, so that
    garbage left by earlier work is not collected on this sample's clock. A collection also
    leaves CPU caches cold, which dominates samples of a few milliseconds; those pass False.
    """
    if collect:
        gc.collect()
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def fmt_ms(ms: float) -> str:
    if ms >= 100:
        return f"{ms:,.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    return f"{ms:.2f}"
