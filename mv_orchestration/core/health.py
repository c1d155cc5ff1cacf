"""Classify refresh health from :class:`~mv_orchestration.core.history.ViewStats`.

The rules of seed 004's ``checkMetricsRefreshHealth``, applied to every view:

* success rate below 80 % is critical, below 95 % a warning;
* an average successful refresh above 5 s is a warning;
* a last successful refresh more than 10 minutes ago is a warning;
* no successful refresh in the window is critical when there were failures, and a warning
  when there was no attempt at all.

All comparisons are strict: a value exactly at a threshold is healthy on that rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import pandas as pd

from mv_orchestration.core.history import ViewStats

Health = Literal["healthy", "warning", "critical"]

_RANK: dict[Health, int] = {"critical": 0, "warning": 1, "healthy": 2}

HEALTH_COLUMNS = (
    "view",
    "last_success",
    "age_s",
    "success_rate",
    "avg_duration_s",
    "max_duration_s",
    "last_error",
    "health",
    "reasons",
)


@dataclass(frozen=True)
class HealthThresholds:
    """Where warnings and criticals start (seed 004 defaults)."""

    success_rate_warn: float = 95.0  # percent; below is a warning
    success_rate_critical: float = 80.0  # percent; below is critical
    avg_duration_warn_s: float = 5.0  # above is a warning
    last_refresh_warn_s: float = 600.0  # seconds since the last success; above is a warning


def _num(value: float) -> str:
    """One decimal unless more are needed to show the value (94.95 stays 94.95)."""
    for digits in (1, 2):
        if round(value, digits) == round(value, 3):
            return f"{value:.{digits}f}"
    return f"{value:.3f}"


def _worst(a: Health, b: Health) -> Health:
    return a if _RANK[a] <= _RANK[b] else b


def age_seconds(stats: ViewStats, now: datetime) -> float | None:
    """Seconds from the last successful refresh to ``now`` (never negative), or None."""
    if stats.last_refresh_at is None:
        return None
    return max(0.0, (now - stats.last_refresh_at).total_seconds())


def classify(
    stats: ViewStats, now: datetime, thresholds: HealthThresholds | None = None
) -> tuple[Health, list[str]]:
    """The view's health and the reasons for anything short of healthy."""
    t = thresholds or HealthThresholds()
    if stats.total == 0:
        return "warning", ["no refresh attempts in the window"]
    if stats.successes == 0:
        return "critical", [f"no successful refresh in the window ({stats.failures} failed)"]

    health: Health = "healthy"
    reasons: list[str] = []
    rate = stats.success_rate
    if rate is not None and rate < t.success_rate_critical:
        health = "critical"
        reasons.append(f"success rate {_num(rate)}% < {t.success_rate_critical:g}%")
    elif rate is not None and rate < t.success_rate_warn:
        health = "warning"
        reasons.append(f"success rate {_num(rate)}% < {t.success_rate_warn:g}%")
    # Compare in milliseconds, as stored: 5.0 s * 1000 is exact, 5000 ms / 1000 may not be.
    avg_ms = stats.avg_duration_ms
    if avg_ms is not None and avg_ms > t.avg_duration_warn_s * 1000.0:
        health = _worst(health, "warning")
        reasons.append(f"avg duration {_num(avg_ms / 1000.0)} s > {t.avg_duration_warn_s:g} s")
    age = age_seconds(stats, now)
    if age is not None and age > t.last_refresh_warn_s:
        health = _worst(health, "warning")
        reasons.append(f"last success {age:.0f} s ago > {t.last_refresh_warn_s:g} s")
    return health, reasons


def health_table(
    stats: Sequence[ViewStats], now: datetime, thresholds: HealthThresholds | None = None
) -> pd.DataFrame:
    """One row per view, worst first, with :data:`HEALTH_COLUMNS`.

    Order: critical, warning, healthy; within one level the lowest success rate, then the
    oldest last success, then the name. ``reasons`` is one ``"; "``-joined string.
    """
    rows: list[dict[str, Any]] = []
    for s in stats:
        health, reasons = classify(s, now, thresholds)
        rows.append(
            {
                "view": s.qualname,
                "last_success": s.last_refresh_at,
                "age_s": age_seconds(s, now),
                "success_rate": s.success_rate,
                "avg_duration_s": None if s.avg_duration_ms is None else s.avg_duration_ms / 1000,
                "max_duration_s": None if s.max_duration_ms is None else s.max_duration_ms / 1000,
                "last_error": s.last_error,
                "health": health,
                "reasons": "; ".join(reasons),
            }
        )

    def key(row: dict[str, Any]) -> tuple[int, float, float, str]:
        rate = row["success_rate"]
        age = row["age_s"]
        return (
            _RANK[row["health"]],
            -1.0 if rate is None else float(rate),
            -math.inf if age is None else -float(age),
            str(row["view"]),
        )

    rows.sort(key=key)
    frame = pd.DataFrame(rows, columns=list(HEALTH_COLUMNS))
    frame["last_success"] = pd.to_datetime(frame["last_success"], utc=True)
    for col in ("age_s", "success_rate", "avg_duration_s", "max_duration_s"):
        frame[col] = frame[col].astype("float64")
    return frame
