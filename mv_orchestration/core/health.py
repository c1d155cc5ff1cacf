"""Classify refresh health from :class:`~mv_orchestration.core.history.ViewStats`, each view
against its own schedule and freshness target (:class:`Expectation`).

On the refreshes in the window:

* no successful refresh but failures is critical;
* a success rate below 80 % is critical, below 95 % a warning;
* an average successful refresh above 5 s is a warning.

On what the view's policy expects, counted only from when the refresh history begins (a
refresh due before anything was recorded is not missed):

* a view with schedules warns when a scheduled refresh is more than 5 minutes overdue: it
  was due and no refresh has succeeded since;
* a view with a freshness target warns when its last success (or, never refreshed, the start
  of the history) is older than the target's warn window, and is critical beyond its fail
  window.

A view not yet due is healthy, whether or not it has been refreshed; a view with neither
schedules nor a freshness target is judged on its refreshes only. All comparisons are strict:
a value exactly at a threshold is healthy on that rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import pandas as pd

from mv_orchestration.core.cron import CronSchedule
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
    "expected",
    "next_due",
)


@dataclass(frozen=True)
class HealthThresholds:
    """Where warnings and criticals start."""

    success_rate_warn: float = 95.0  # percent; below is a warning
    success_rate_critical: float = 80.0  # percent; below is critical
    avg_duration_warn_s: float = 5.0  # above is a warning
    overdue_warn_s: float = 300.0  # a scheduled refresh this long overdue is a warning


@dataclass(frozen=True)
class Expectation:
    """When a view's policy expects it refreshed: at its schedules' times, and often enough
    to stay within its freshness windows (seconds since the last success)."""

    schedules: tuple[CronSchedule, ...] = ()
    fresh_warn_s: float | None = None
    fresh_fail_s: float | None = None

    def describe(self) -> str:
        """``cron 0 3 * * * (UTC); fresh within 1 d 1 h (fails after 2 d)``."""
        parts = [f"cron {s.cron} ({s.timezone})" for s in self.schedules]
        if self.fresh_warn_s is not None or self.fresh_fail_s is not None:
            fresh = f"fresh within {_window(self.fresh_warn_s or self.fresh_fail_s or 0)}"
            if self.fresh_warn_s is not None and self.fresh_fail_s is not None:
                fresh += f" (fails after {_window(self.fresh_fail_s)})"
            parts.append(fresh)
        return "; ".join(parts) or "no schedule or freshness target"

    def last_due(self, now: datetime, since: datetime | None, grace_s: float) -> datetime | None:
        """The latest scheduled time more than ``grace_s`` before ``now`` and after ``since``
        (None: nothing is due before the history begins)."""
        if since is None:
            return None
        cutoff = now - timedelta(seconds=grace_s)
        times = [s.previous(cutoff, not_before=since) for s in self.schedules]
        return max((t for t in times if t is not None), default=None)

    def next_due(self, now: datetime) -> datetime | None:
        """The next scheduled time after ``now``."""
        times = [s.next(now) for s in self.schedules]
        return min((t for t in times if t is not None), default=None)


def _span(seconds: float) -> str:
    """``90 s``, ``15 min``, ``1.5 h``, ``25 h``, ``2 d``: a span as people say it."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0), ("s", 1.0)):
        if seconds >= size or unit == "s":
            value = seconds / size
            text = f"{value:.1f}" if value < 10 else f"{value:.0f}"
            return f"{text.removesuffix('.0')} {unit}"
    raise AssertionError("unreachable")


def _window(seconds: float) -> str:
    """A policy's window, exactly: ``25 h`` is ``1 d 1 h``, ``7d1h`` is ``7 d 1 h``."""
    left = round(seconds)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if left >= size:
            parts.append(f"{left // size} {unit}")
            left %= size
    return " ".join(parts) or "0 s"


def _num(value: float) -> str:
    """One decimal unless more are needed to show the value (94.95 stays 94.95)."""
    for digits in (1, 2):
        if round(value, digits) == round(value, 3):
            return f"{value:.{digits}f}"
    return f"{value:.3f}"


def _worst(a: Health, b: Health) -> Health:
    return a if _RANK[a] <= _RANK[b] else b


def _age(then: datetime | None, now: datetime) -> float | None:
    """Seconds from ``then`` to ``now`` (never negative), or None."""
    if then is None:
        return None
    return max(0.0, (now - then).total_seconds())


def age_seconds(stats: ViewStats, now: datetime) -> float | None:
    """Seconds from the last successful refresh in the window to ``now`` (never negative)."""
    return _age(stats.last_refresh_at, now)


@dataclass(frozen=True)
class Judged:
    """One view's health and the reasons for anything short of healthy."""

    health: Health
    reasons: list[str]

    def worsen(self, health: Health, reason: str) -> Judged:
        return Judged(_worst(self.health, health), [*self.reasons, reason])


def classify(
    stats: ViewStats,
    now: datetime,
    thresholds: HealthThresholds | None = None,
    *,
    expectation: Expectation | None = None,
    last_success: datetime | None = None,
    history_since: datetime | None = None,
) -> tuple[Health, list[str]]:
    """The view's health and the reasons for anything short of healthy.

    ``last_success`` is the view's last successful refresh, in the window or before it
    (default: the window's); ``history_since`` is when the refresh history begins (None: it
    holds nothing, so nothing is overdue yet).
    """
    t = thresholds or HealthThresholds()
    last = last_success or stats.last_refresh_at
    if stats.total > 0 and stats.successes == 0:
        judged = Judged(
            "critical", [f"no successful refresh in the window ({stats.failures} failed)"]
        )
    else:
        judged = _on_refreshes(stats, t)
    if expectation is not None:
        judged = _on_schedule(judged, expectation, last, now, history_since, t)
        judged = _on_freshness(judged, expectation, last, now, history_since)
    return judged.health, judged.reasons


def _on_refreshes(stats: ViewStats, t: HealthThresholds) -> Judged:
    judged = Judged("healthy", [])
    rate = stats.success_rate
    if rate is not None and rate < t.success_rate_critical:
        judged = judged.worsen(
            "critical", f"success rate {_num(rate)}% < {t.success_rate_critical:g}%"
        )
    elif rate is not None and rate < t.success_rate_warn:
        judged = judged.worsen("warning", f"success rate {_num(rate)}% < {t.success_rate_warn:g}%")
    # Compare in milliseconds, as stored: 5.0 s * 1000 is exact, 5000 ms / 1000 may not be.
    avg_ms = stats.avg_duration_ms
    if avg_ms is not None and avg_ms > t.avg_duration_warn_s * 1000.0:
        judged = judged.worsen(
            "warning", f"avg duration {_num(avg_ms / 1000.0)} s > {t.avg_duration_warn_s:g} s"
        )
    return judged


def _on_schedule(
    judged: Judged,
    expectation: Expectation,
    last: datetime | None,
    now: datetime,
    since: datetime | None,
    t: HealthThresholds,
) -> Judged:
    due = expectation.last_due(now, since, t.overdue_warn_s)
    if due is None or (last is not None and last >= due):
        return judged
    late = _span(_age(due, now) or 0.0)
    when = f"{due:%Y-%m-%d %H:%M} {due.tzname()}"
    return judged.worsen("warning", f"scheduled refresh due {when} not done ({late} overdue)")


def _on_freshness(
    judged: Judged,
    expectation: Expectation,
    last: datetime | None,
    now: datetime,
    since: datetime | None,
) -> Judged:
    age = _age(last if last is not None else since, now)
    if age is None:
        return judged
    what = (
        f"last success {_span(age)} ago"
        if last is not None
        else (f"never refreshed in the {_span(age)} of history")
    )
    fail, warn = expectation.fresh_fail_s, expectation.fresh_warn_s
    if fail is not None and age > fail:
        return judged.worsen("critical", f"{what}: beyond its freshness limit of {_window(fail)}")
    if warn is not None and age > warn:
        return judged.worsen("warning", f"{what}: beyond its freshness target of {_window(warn)}")
    return judged


def health_table(
    stats: Sequence[ViewStats],
    now: datetime,
    thresholds: HealthThresholds | None = None,
    *,
    expectations: Mapping[tuple[str, str], Expectation] | None = None,
    last_successes: Mapping[tuple[str, str], datetime] | None = None,
    history_since: datetime | None = None,
) -> pd.DataFrame:
    """One row per view, worst first, with :data:`HEALTH_COLUMNS`.

    ``expectations`` and ``last_successes`` are keyed by ``(schema, name)`` (see
    :func:`classify`). ``last_success`` and ``age_s`` are of the last success ever recorded
    when ``last_successes`` has it, else of the window's. Order: critical, warning, healthy;
    within one level the lowest success rate, then the oldest last success, then the name.
    ``reasons`` is one ``"; "``-joined string.
    """
    rows: list[dict[str, Any]] = []
    for s in stats:
        ref = (s.view_schema, s.view_name)
        expected = (expectations or {}).get(ref)
        last = (last_successes or {}).get(ref) or s.last_refresh_at
        health, reasons = classify(
            s,
            now,
            thresholds,
            expectation=expected,
            last_success=last,
            history_since=history_since,
        )
        rows.append(
            {
                "view": s.qualname,
                "last_success": last,
                "age_s": _age(last, now),
                "success_rate": s.success_rate,
                "avg_duration_s": None if s.avg_duration_ms is None else s.avg_duration_ms / 1000,
                "max_duration_s": None if s.max_duration_ms is None else s.max_duration_ms / 1000,
                "last_error": s.last_error,
                "health": health,
                "reasons": "; ".join(reasons),
                "expected": (expected or Expectation()).describe(),
                "next_due": expected.next_due(now) if expected is not None else None,
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
    for col in ("last_success", "next_due"):
        frame[col] = pd.to_datetime(frame[col], utc=True)
    for col in ("age_s", "success_rate", "avg_duration_s", "max_duration_s"):
        frame[col] = frame[col].astype("float64")
    return frame
