"""The history's figures for target lag, against a real server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from mv_orchestration.core.history import (
    DEFAULT_SCHEMA,
    ensure_history,
    expected_durations,
    read_lag_stats,
    record_no_data,
)


def _attempt(
    conn: psycopg.Connection[Any], view: str, *, ago_s: float, ms: float, status: str = "success"
) -> None:
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (view_schema, view_name, started_at, finished_at, duration_ms,"
            " status, attempts)"
            " SELECT 'public', %(view)s, t, t, %(ms)s, %(status)s, 1"
            " FROM (SELECT now() - make_interval(secs => %(ago)s) AS t) s"
        ).format(sql.Identifier(DEFAULT_SCHEMA, "refresh_history")),
        {"view": view, "ago": ago_s, "ms": ms, "status": status},
    )


def test_expected_durations_are_the_p90_of_recent_successes(conn: psycopg.Connection[Any]) -> None:
    ensure_history(conn)
    for i in range(1, 11):  # 1..10 s
        _attempt(conn, "a", ago_s=60 * i, ms=1000.0 * i)
    _attempt(conn, "a", ago_s=30, ms=99_000, status="failure")  # failures do not count
    _attempt(conn, "a", ago_s=2 * 86400, ms=500_000)  # outside the 24 h window
    _attempt(conn, "b", ago_s=60, ms=250)
    found = expected_durations(
        conn, DEFAULT_SCHEMA, [("public", "a"), ("public", "b"), ("public", "none")]
    )
    assert found[("public", "a")] == pytest.approx(9.1)  # percentile_cont(0.9) of 1..10
    assert found[("public", "b")] == pytest.approx(0.25)
    assert ("public", "none") not in found
    assert expected_durations(conn, DEFAULT_SCHEMA, []) == {}


def test_lag_stats_over_target_lag_refreshes(conn: psycopg.Connection[Any]) -> None:
    ensure_history(conn)
    table = sql.Identifier(DEFAULT_SCHEMA, "refresh_history")
    for lag_ms, met in ((1000, True), (3000, True), (9000, False), (None, None)):
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (view_schema, view_name, started_at, finished_at, duration_ms,"
                " status, attempts, lag_at_completion_ms, target_met)"
                " VALUES ('public', 'a', now(), now(), 1, 'success', 1, %s, %s)"
            ).format(table),
            [lag_ms, met],
        )
    found = read_lag_stats(conn, DEFAULT_SCHEMA, [("public", "a"), ("public", "b")])
    assert list(found) == [("public", "a")]
    a = found[("public", "a")]
    assert (a.refreshes, a.lag_p50_ms, a.lag_max_ms) == (3, 3000.0, 9000.0)
    assert a.within_target_pct == pytest.approx(66.67)


def test_last_refresh_has_the_data_timestamp_and_ignores_no_data_rows(
    conn: psycopg.Connection[Any],
) -> None:
    ensure_history(conn)
    _attempt(conn, "a", ago_s=600, ms=100)  # a refresh before version 4 wrote its figures
    _attempt(conn, "a", ago_s=300, ms=100, status="failure")
    before = conn.execute(
        "SELECT last_status, data_timestamp FROM mvo.last_refresh WHERE view_name = 'a'"
    ).fetchone()
    assert before is not None and before[0] == "failure"
    stamp = datetime.now(UTC) - timedelta(seconds=5)
    record_no_data(
        conn, DEFAULT_SCHEMA, [("public", "a")], at=datetime.now(UTC), data_timestamp=stamp
    )
    after = conn.execute(
        "SELECT last_status, data_timestamp FROM mvo.last_refresh WHERE view_name = 'a'"
    ).fetchone()
    assert after == ("failure", stamp)  # the failure is still the last attempt
    assert before[1] < stamp  # the data timestamp moved forward without a refresh
