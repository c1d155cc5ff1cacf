"""Health classification, each view against its own schedule and freshness target: pure tests
plus one from a real history table."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import psycopg
import pytest

from mv_orchestration.core.cron import CronSchedule
from mv_orchestration.core.health import (
    HEALTH_COLUMNS,
    Expectation,
    HealthThresholds,
    classify,
    health_table,
)
from mv_orchestration.core.history import (
    DEFAULT_SCHEMA,
    ViewStats,
    ensure_history,
    history_since,
    read_last_successes,
    read_stats,
    record_failure,
    record_success,
)
from mv_orchestration.core.refresh import refresh_view
from mv_orchestration.errors import RefreshError

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
T = HealthThresholds()


def stats(name: str = "mv", **changes: Any) -> ViewStats:
    """A healthy view: 100/100 successes, 1 s average, last success a minute ago."""
    base = ViewStats(
        view_schema="public",
        view_name=name,
        total=100,
        successes=100,
        failures=0,
        success_rate=100.0,
        avg_duration_ms=1000.0,
        min_duration_ms=500.0,
        max_duration_ms=2000.0,
        last_refresh_at=NOW - timedelta(seconds=60),
        last_attempt_at=NOW - timedelta(seconds=61),
        last_error=None,
    )
    return dataclasses.replace(base, **changes)


def test_defaults() -> None:
    assert (T.success_rate_warn, T.success_rate_critical) == (95.0, 80.0)
    assert (T.avg_duration_warn_s, T.overdue_warn_s) == (5.0, 300.0)


@pytest.mark.parametrize(
    ("rate", "health", "reasons"),
    [
        (100.0, "healthy", []),
        (95.0, "healthy", []),
        (94.9, "warning", ["success rate 94.9% < 95%"]),
        (94.95, "warning", ["success rate 94.95% < 95%"]),
        (80.0, "warning", ["success rate 80.0% < 95%"]),
        (79.9, "critical", ["success rate 79.9% < 80%"]),
        (75.0, "critical", ["success rate 75.0% < 80%"]),
    ],
)
def test_success_rate_thresholds(rate: float, health: str, reasons: list[str]) -> None:
    assert classify(stats(success_rate=rate), NOW, T) == (health, reasons)


@pytest.mark.parametrize(
    ("avg_ms", "health", "reasons"),
    [
        (5000.0, "healthy", []),
        (5010.0, "warning", ["avg duration 5.01 s > 5 s"]),
        (12_000.0, "warning", ["avg duration 12.0 s > 5 s"]),
    ],
)
def test_avg_duration_threshold(avg_ms: float, health: str, reasons: list[str]) -> None:
    assert classify(stats(avg_duration_ms=avg_ms), NOW, T) == (health, reasons)


DAILY = Expectation(schedules=(CronSchedule("0 3 * * *", "UTC"),))
EVERY_5 = Expectation(schedules=(CronSchedule("*/5 * * * *", "UTC"),))
FRESH = Expectation(fresh_warn_s=600, fresh_fail_s=1800)
IDLE: dict[str, Any] = {
    "total": 0,
    "successes": 0,
    "success_rate": None,
    "avg_duration_ms": None,
    "max_duration_ms": None,
    "last_refresh_at": None,
    "last_attempt_at": None,
}


@pytest.mark.parametrize(
    ("since", "last", "health", "reasons"),
    [
        # the history begins after today's 03:00: not due yet, refreshed or not
        (NOW - timedelta(hours=1), None, "healthy", []),
        # begun earlier, never refreshed: today's 03:00 was missed
        (
            NOW - timedelta(days=2),
            None,
            "warning",
            ["scheduled refresh due 2030-06-01 03:00 UTC not done (9 h overdue)"],
        ),
        (NOW - timedelta(days=2), NOW.replace(hour=3, minute=1), "healthy", []),
        # yesterday's refresh does not count for today's
        (
            NOW - timedelta(days=2),
            NOW - timedelta(days=1),
            "warning",
            ["scheduled refresh due 2030-06-01 03:00 UTC not done (9 h overdue)"],
        ),
        (None, None, "healthy", []),  # nothing recorded: nothing is overdue
    ],
)
def test_a_daily_view_is_judged_against_its_schedule(
    since: datetime | None, last: datetime | None, health: str, reasons: list[str]
) -> None:
    s = stats(**IDLE)
    got = classify(s, NOW, T, expectation=DAILY, last_success=last, history_since=since)
    assert got == (health, reasons)


@pytest.mark.parametrize(
    ("now", "health"),
    [
        (NOW - timedelta(seconds=1), "healthy"),  # 11:55 is due, but not 5 min overdue yet
        (NOW, "warning"),
    ],
)
def test_a_scheduled_refresh_warns_once_5_minutes_overdue(now: datetime, health: str) -> None:
    last = NOW.replace(hour=11, minute=50, second=20)  # the 11:50 refresh
    got = classify(
        stats(), now, T, expectation=EVERY_5, last_success=last, history_since=NOW - timedelta(1)
    )
    assert got[0] == health
    if health == "warning":
        assert got[1] == ["scheduled refresh due 2030-06-01 11:55 UTC not done (5 min overdue)"]


def test_the_schedule_is_read_in_its_time_zone() -> None:
    # 21:00 in Seoul: the production-hours cron last fired at 20:58 there
    seoul = Expectation(schedules=(CronSchedule("*/2 6-22 * * *", "Asia/Seoul"),))
    _, reasons = classify(
        stats(**IDLE), NOW, T, expectation=seoul, history_since=NOW - timedelta(hours=1)
    )
    assert reasons == ["scheduled refresh due 2030-06-01 20:54 KST not done (6 min overdue)"]


@pytest.mark.parametrize(
    ("age_s", "health", "reasons"),
    [
        (600, "healthy", []),
        (601, "warning", ["last success 10 min ago: beyond its freshness target of 10 min"]),
        (1801, "critical", ["last success 30 min ago: beyond its freshness limit of 30 min"]),
        (-5, "healthy", []),  # clock skew: a success "in the future" is fresh, not an error
    ],
)
def test_freshness_target(age_s: int, health: str, reasons: list[str]) -> None:
    last = NOW - timedelta(seconds=age_s)
    got = classify(stats(), NOW, T, expectation=FRESH, last_success=last, history_since=last)
    assert got == (health, reasons)


def test_freshness_of_a_view_never_refreshed_counts_from_the_history() -> None:
    since = NOW - timedelta(hours=1)
    got = classify(stats(**IDLE), NOW, T, expectation=FRESH, history_since=since)
    assert got == (
        "critical",
        ["never refreshed in the 1 h of history: beyond its freshness limit of 30 min"],
    )
    assert classify(stats(**IDLE), NOW, T, expectation=FRESH, history_since=NOW) == ("healthy", [])


def test_no_success_with_failures_is_critical() -> None:
    s = stats(
        total=3,
        successes=0,
        failures=3,
        success_rate=0.0,
        avg_duration_ms=None,
        last_refresh_at=None,
        last_error="boom",
    )
    assert classify(s, NOW, T) == ("critical", ["no successful refresh in the window (3 failed)"])


def test_no_attempts_without_schedule_or_target_is_healthy() -> None:
    assert classify(stats(**IDLE), NOW, T) == ("healthy", [])
    assert classify(stats(**IDLE), NOW, T, expectation=Expectation()) == ("healthy", [])


def test_reasons_accumulate_and_worst_wins() -> None:
    s = stats(success_rate=70.0, avg_duration_ms=6000.0, last_refresh_at=NOW - timedelta(hours=1))
    health, reasons = classify(s, NOW, T, expectation=FRESH, history_since=NOW - timedelta(days=1))
    assert health == "critical"
    assert reasons == [
        "success rate 70.0% < 80%",
        "avg duration 6.0 s > 5 s",
        "last success 1 h ago: beyond its freshness limit of 30 min",
    ]


def test_custom_thresholds() -> None:
    strict = HealthThresholds(success_rate_warn=99.5, avg_duration_warn_s=0.5)
    health, reasons = classify(stats(success_rate=99.0), NOW, strict)
    assert health == "warning"
    assert reasons == ["success rate 99.0% < 99.5%", "avg duration 1.0 s > 0.5 s"]


def test_health_table_worst_first() -> None:
    table = health_table(
        [
            stats("ok_b"),
            stats("slow", avg_duration_ms=5010.0),
            stats("ok_a", success_rate=96.0),
            stats("broken", success_rate=50.0, last_error="boom"),
            stats("flaky", success_rate=90.0),
            stats("idle", **IDLE),
        ],
        NOW,
        T,
        expectations={("public", "idle"): DAILY},
        history_since=NOW - timedelta(days=1),
    )
    assert list(table.columns) == list(HEALTH_COLUMNS)
    assert list(table["view"]) == ["public.broken", "public.idle", "public.flaky",
                                   "public.slow", "public.ok_a", "public.ok_b"]  # fmt: skip
    assert list(table["health"]) == ["critical"] + ["warning"] * 3 + ["healthy"] * 2
    broken = table.iloc[0]
    assert broken["reasons"] == "success rate 50.0% < 80%" and broken["last_error"] == "boom"
    assert broken["age_s"] == 60.0 and broken["avg_duration_s"] == 1.0
    assert broken["max_duration_s"] == 2.0
    assert broken["last_success"] == pd.Timestamp(NOW - timedelta(seconds=60))
    idle = table.iloc[1]
    assert pd.isna(idle["age_s"]) and pd.isna(idle["success_rate"])
    assert pd.isna(idle["last_success"])
    assert table.iloc[3]["reasons"] == "avg duration 5.01 s > 5 s"
    assert table.iloc[5]["reasons"] == ""
    assert idle["expected"] == "cron 0 3 * * * (UTC)"
    assert idle["next_due"] == pd.Timestamp(datetime(2030, 6, 2, 3, 0, tzinfo=UTC))
    assert table.iloc[0]["expected"] == "no schedule or freshness target"


def test_health_table_empty() -> None:
    table = health_table([], NOW, T)
    assert table.empty and list(table.columns) == list(HEALTH_COLUMNS)


def test_health_from_real_history(conn: psycopg.Connection[Any]) -> None:
    ensure_history(conn)
    conn.execute(
        """
        CREATE TABLE t (a int, b int);
        INSERT INTO t VALUES (1, 1);
        CREATE MATERIALIZED VIEW mv_ok AS SELECT a FROM t;
        CREATE MATERIALIZED VIEW mv_ratio AS SELECT a / b AS r FROM t;
        INSERT INTO t VALUES (1, 0);
        """
    )
    record_success(conn, DEFAULT_SCHEMA, refresh_view(conn, "public", "mv_ok"), run_id=None)
    started = datetime.now(UTC)
    with pytest.raises(RefreshError) as info:
        refresh_view(conn, "public", "mv_ratio")
    record_failure(
        conn,
        DEFAULT_SCHEMA,
        view_schema="public",
        view_name="mv_ratio",
        error=info.value,
        started_at=started,
        finished_at=datetime.now(UTC),
        run_id=None,
    )
    views = [("public", "mv_ok"), ("public", "mv_ratio"), ("public", "mv_never")]
    last = read_last_successes(conn, DEFAULT_SCHEMA, views)
    assert set(last) == {("public", "mv_ok")}
    since = history_since(conn, DEFAULT_SCHEMA)
    assert since is not None and since <= last[("public", "mv_ok")]
    table = health_table(
        read_stats(conn, DEFAULT_SCHEMA, views=views),
        datetime.now(UTC),
        T,
        expectations={("public", "mv_never"): DAILY},
        last_successes=last,
        history_since=since,
    )
    rows = {r["view"]: (r["health"], r["reasons"]) for _, r in table.iterrows()}
    assert list(table["view"]) == ["public.mv_ratio", "public.mv_never", "public.mv_ok"]
    assert rows["public.mv_ratio"] == (
        "critical",
        "no successful refresh in the window (1 failed)",
    )
    # its daily refresh is not due since the history began
    assert rows["public.mv_never"] == ("healthy", "")
    assert rows["public.mv_ok"] == ("healthy", "")
    assert table.iloc[0]["last_error"] == "division by zero"
