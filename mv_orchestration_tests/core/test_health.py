"""Health classification (seed 004 rules): pure tests plus one from a real history table."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import psycopg
import pytest

from mv_orchestration.core.health import (
    HEALTH_COLUMNS,
    HealthThresholds,
    classify,
    health_table,
)
from mv_orchestration.core.history import (
    DEFAULT_SCHEMA,
    ViewStats,
    ensure_history,
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


def test_defaults_are_seed_004() -> None:
    assert (T.success_rate_warn, T.success_rate_critical) == (95.0, 80.0)
    assert (T.avg_duration_warn_s, T.last_refresh_warn_s) == (5.0, 600.0)


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


@pytest.mark.parametrize(
    ("age_s", "health", "reasons"),
    [
        (600, "healthy", []),
        (601, "warning", ["last success 601 s ago > 600 s"]),
        (-5, "healthy", []),  # clock skew: a success "in the future" is fresh, not an error
    ],
)
def test_last_success_threshold(age_s: int, health: str, reasons: list[str]) -> None:
    s = stats(last_refresh_at=NOW - timedelta(seconds=age_s))
    assert classify(s, NOW, T) == (health, reasons)


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


def test_no_attempts_is_a_warning() -> None:
    s = stats(
        total=0,
        successes=0,
        success_rate=None,
        avg_duration_ms=None,
        max_duration_ms=None,
        last_refresh_at=None,
        last_attempt_at=None,
    )
    assert classify(s, NOW, T) == ("warning", ["no refresh attempts in the window"])


def test_reasons_accumulate_and_worst_wins() -> None:
    s = stats(success_rate=70.0, avg_duration_ms=6000.0, last_refresh_at=NOW - timedelta(hours=1))
    health, reasons = classify(s, NOW, T)
    assert health == "critical"
    assert reasons == [
        "success rate 70.0% < 80%",
        "avg duration 6.0 s > 5 s",
        "last success 3600 s ago > 600 s",
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
            stats(
                "idle",
                total=0,
                successes=0,
                success_rate=None,
                avg_duration_ms=None,
                max_duration_ms=None,
                last_refresh_at=None,
            ),
        ],
        NOW,
        T,
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
    table = health_table(read_stats(conn, DEFAULT_SCHEMA, views=views), datetime.now(UTC), T)
    rows = {r["view"]: (r["health"], r["reasons"]) for _, r in table.iterrows()}
    assert list(table["view"]) == ["public.mv_ratio", "public.mv_never", "public.mv_ok"]
    assert rows["public.mv_ratio"] == (
        "critical",
        "no successful refresh in the window (1 failed)",
    )
    assert rows["public.mv_never"] == ("warning", "no refresh attempts in the window")
    assert rows["public.mv_ok"] == ("healthy", "")
    assert table.iloc[0]["last_error"] == "division by zero"
