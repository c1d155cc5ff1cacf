"""Refresh history in the target database, against a real PostgreSQL server."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from mv_orchestration.core import history
from mv_orchestration.core.history import (
    DEFAULT_SCHEMA,
    HISTORY_COLUMNS,
    ensure_history,
    latest_version,
    migration_lock_key,
    purge_history,
    read_history,
    read_stats,
    record_cancelled,
    record_failure,
    record_success,
    success_record,
)
from mv_orchestration.core.refresh import RefreshOptions, refresh_view
from mv_orchestration.errors import LockTimeoutError, RefreshError

# A schema name that must be quoted everywhere it is used.
ODD = 'Hist "x"'


def _connect(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    return psycopg.connect(conn.info.dsn, password=conn.info.password, autocommit=True)


def _rows(conn: psycopg.Connection[Any], schema: str = DEFAULT_SCHEMA) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            sql.SQL("SELECT * FROM {} ORDER BY id").format(
                sql.Identifier(schema, "refresh_history")
            )
        ).fetchall()


def _insert(
    conn: psycopg.Connection[Any],
    view: str,
    *,
    ago_s: float,
    duration_ms: float,
    status: str = "success",
    error: str | None = None,
    schema: str = DEFAULT_SCHEMA,
) -> datetime:
    """Insert one attempt that started ``ago_s`` before now(); return its finished_at."""
    row = conn.execute(
        sql.SQL(
            """
            INSERT INTO {} (view_schema, view_name, started_at, finished_at, duration_ms,
                            status, error_message, attempts)
            SELECT 'public', %(view)s, t, t + make_interval(secs => %(ms)s / 1000.0), %(ms)s,
                   %(status)s, %(error)s, 1
            FROM (SELECT now() - make_interval(secs => %(ago)s) AS t) s
            RETURNING finished_at
            """
        ).format(sql.Identifier(schema, "refresh_history")),
        {"view": view, "ago": ago_s, "ms": duration_ms, "status": status, "error": error},
    ).fetchone()
    assert row is not None
    finished: datetime = row[0]
    return finished


@pytest.fixture
def hist(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    ensure_history(conn)
    return conn


@pytest.fixture
def sales(hist: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    hist.execute(
        """
        CREATE TABLE sales (id serial PRIMARY KEY, region text NOT NULL, amount int NOT NULL);
        INSERT INTO sales (region, amount) VALUES ('eu', 10), ('us', 7);
        CREATE MATERIALIZED VIEW mv_by_region AS
            SELECT region, sum(amount) AS total FROM sales GROUP BY region;
        CREATE UNIQUE INDEX ON mv_by_region (region);
        """
    )
    return hist


# --- migrations -------------------------------------------------------------------------------


def test_ensure_is_idempotent_and_versioned(conn: psycopg.Connection[Any]) -> None:
    assert latest_version() == 4
    assert ensure_history(conn) == 4
    applied_at = conn.execute("SELECT applied_at FROM mvo.schema_migrations").fetchall()
    assert ensure_history(conn) == 4
    # nothing re-applied: same single row, same timestamp
    assert conn.execute("SELECT applied_at FROM mvo.schema_migrations").fetchall() == applied_at
    objects = conn.execute(
        """
        SELECT c.relname, c.relkind::text FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'mvo' AND c.relkind IN ('r', 'v') ORDER BY 1
        """
    ).fetchall()
    assert objects == [("last_refresh", "v"), ("refresh_history", "r"), ("schema_migrations", "r")]
    indexes = {
        r[0]
        for r in conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'mvo'"
            " AND tablename = 'refresh_history'"
        ).fetchall()
    }
    assert any("(view_schema, view_name, started_at DESC)" in i for i in indexes)
    assert any(i.endswith("(started_at)") for i in indexes)
    assert conn.execute("SELECT count(*) FROM mvo.refresh_stats()").fetchone() == (0,)


def test_later_migration_is_applied_once(
    conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert ensure_history(conn, ODD) == 4
    monkeypatch.setattr(
        history,
        "MIGRATIONS",
        [*history.MIGRATIONS, (5, "ALTER TABLE {schema}.refresh_history ADD COLUMN note text")],
    )
    assert latest_version() == 5
    assert ensure_history(conn, ODD) == 5
    assert ensure_history(conn, ODD) == 5  # would fail "column already exists" if re-run
    versions = conn.execute(
        sql.SQL("SELECT version FROM {} ORDER BY 1").format(
            sql.Identifier(ODD, "schema_migrations")
        )
    ).fetchall()
    assert versions == [(1,), (2,), (3,), (4,), (5,)]


def test_concurrent_ensure_from_two_connections(conn: psycopg.Connection[Any]) -> None:
    """Two callers that start together both succeed; the migration runs once."""
    results: list[int] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with _connect(conn) as c:
                results.append(ensure_history(c))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    with _connect(conn) as holder:
        # Hold the migration lock so both callers are provably queued behind it together.
        with holder.transaction():
            holder.execute("SELECT pg_advisory_xact_lock(%s)", [migration_lock_key("mvo")])
            threads = [threading.Thread(target=run) for _ in range(2)]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 30
            while True:
                waiting = holder.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    " AND database = (SELECT oid FROM pg_database"
                    " WHERE datname = current_database())"
                ).fetchone()
                if waiting == (2,) or time.monotonic() > deadline:
                    break
            assert waiting == (2,)
        for t in threads:
            t.join(timeout=30)
    assert errors == []
    assert results == [latest_version()] * 2
    migrations = conn.execute("SELECT count(*) FROM mvo.schema_migrations").fetchone()
    assert migrations == (latest_version(),)


# --- recording --------------------------------------------------------------------------------


@pytest.mark.parametrize("with_commit", [True, False], ids=["with-commit", "separate"])
def test_success_row_carries_refresh_figures(
    sales: psycopg.Connection[Any], with_commit: bool
) -> None:
    """Sent with the refresh's COMMIT (as the asset step does) or written after it."""
    sales.execute("INSERT INTO sales (region, amount) VALUES ('apac', 1)")
    if with_commit:
        record = success_record(sales, DEFAULT_SCHEMA, run_id="run-1")
        result = refresh_view(sales, "public", "mv_by_region", record=record)
        assert result.record_error is None
    else:
        result = refresh_view(sales, "public", "mv_by_region")
        record_success(sales, DEFAULT_SCHEMA, result, run_id="run-1")
    with _connect(sales) as other:  # committed
        [row] = _rows(other)
    assert row["view_schema"] == "public" and row["view_name"] == "mv_by_region"
    assert row["run_id"] == "run-1"
    assert row["status"] == "success" and row["sqlstate"] is None and row["error_message"] is None
    assert row["method"] == "concurrently"
    assert (row["rows_before"], row["rows_after"]) == (2, 3)
    assert row["size_bytes"] == result.size_bytes > 0
    assert row["started_at"] == result.started_at and row["finished_at"] == result.finished_at
    assert row["duration_ms"] == result.duration_s * 1000
    # nothing stood in the refresh's way
    assert row["lock_wait_ms"] == 0.0 and row["attempts"] == 1


def test_failure_row_for_division_by_zero(hist: psycopg.Connection[Any]) -> None:
    hist.execute(
        """
        CREATE TABLE t (a int, b int);
        INSERT INTO t VALUES (1, 1);
        CREATE MATERIALIZED VIEW mv_ratio AS SELECT a / b AS r FROM t;
        INSERT INTO t VALUES (1, 0);
        """
    )
    started = datetime.now(UTC)
    with pytest.raises(RefreshError) as info:
        refresh_view(hist, "public", "mv_ratio")
    finished = datetime.now(UTC)
    record_failure(
        hist,
        DEFAULT_SCHEMA,
        view_schema="public",
        view_name="mv_ratio",
        error=info.value,
        started_at=started,
        finished_at=finished,
        run_id=None,
    )
    [row] = _rows(hist)
    assert row["status"] == "failure"
    assert row["sqlstate"] == "22012"
    assert row["error_message"] == "division by zero"
    assert row["method"] == "blocking"
    assert info.value.duration_s is not None
    assert row["duration_ms"] == pytest.approx(info.value.duration_s * 1000)
    assert row["rows_after"] is None and row["run_id"] is None


def test_failure_row_for_lock_timeout(sales: psycopg.Connection[Any]) -> None:
    started = datetime.now(UTC)
    with _connect(sales) as other, other.transaction():
        other.execute("SELECT * FROM mv_by_region")
        with pytest.raises(LockTimeoutError) as info:
            refresh_view(
                sales,
                "public",
                "mv_by_region",
                RefreshOptions(method="blocking", lock_timeout_s=0.1, lock_retries=0),
            )
    record_failure(
        sales,
        DEFAULT_SCHEMA,
        view_schema="public",
        view_name="mv_by_region",
        error=info.value,
        started_at=started,
        finished_at=datetime.now(UTC),
        run_id="run-2",
    )
    [row] = _rows(sales)
    assert row["status"] == "failure" and row["sqlstate"] == "55P03"
    assert "lock timeout" in row["error_message"]
    assert row["method"] == "blocking" and row["run_id"] == "run-2"
    # waited out the whole 100 ms lock_timeout before giving up, all of it for the lock
    assert row["duration_ms"] >= 95
    assert info.value.lock_wait_s is not None
    assert row["lock_wait_ms"] == pytest.approx(info.value.lock_wait_s * 1000)
    assert 90 <= row["lock_wait_ms"] <= row["duration_ms"] + 30


def test_failure_row_for_other_exceptions(hist: psycopg.Connection[Any]) -> None:
    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    record_failure(
        hist,
        DEFAULT_SCHEMA,
        view_schema="s",
        view_name="v",
        error=ValueError("bad config"),
        started_at=t0,
        finished_at=t0 + timedelta(seconds=1.5),
        run_id=None,
        attempts=3,
    )
    [row] = _rows(hist)
    assert row["error_message"] == "ValueError: bad config"
    assert row["sqlstate"] is None and row["method"] is None
    assert row["duration_ms"] == 1500.0 and row["attempts"] == 3


def test_records_into_a_quoted_schema(conn: psycopg.Connection[Any]) -> None:
    ensure_history(conn, ODD)
    conn.execute("CREATE MATERIALIZED VIEW mv_one AS SELECT 1 AS x")
    record_success(conn, ODD, refresh_view(conn, "public", "mv_one"), run_id=None)
    assert [r["view_name"] for r in _rows(conn, ODD)] == ["mv_one"]
    [stats] = read_stats(conn, ODD)
    assert (stats.total, stats.successes) == (1, 1)
    assert conn.execute("SELECT to_regclass('mvo.refresh_history')").fetchone() == (None,)


# --- last_refresh, stats, purge ---------------------------------------------------------------


def test_last_refresh_keeps_data_as_of_after_a_failure(sales: psycopg.Connection[Any]) -> None:
    ok = refresh_view(sales, "public", "mv_by_region")
    record_success(sales, DEFAULT_SCHEMA, ok, run_id=None)
    failed_at = datetime.now(UTC)
    record_failure(
        sales,
        DEFAULT_SCHEMA,
        view_schema="public",
        view_name="mv_by_region",
        error=RefreshError("public.mv_by_region", "boom", sqlstate="XX000"),
        started_at=failed_at,
        finished_at=failed_at,
        run_id=None,
    )
    _insert(sales, "never_ok", ago_s=5, duration_ms=10, status="failure", error="nope")
    with sales.cursor(row_factory=dict_row) as cur:
        rows = cur.execute("SELECT * FROM mvo.last_refresh ORDER BY view_name").fetchall()
    assert [r["view_name"] for r in rows] == ["mv_by_region", "never_ok"]
    mv, never = rows
    assert mv["data_as_of"] == ok.finished_at and mv["row_count"] == 2
    assert mv["last_status"] == "failure" and mv["last_sqlstate"] == "XX000"
    assert mv["last_error"] == "boom" and mv["last_attempt_at"] == failed_at
    assert never["data_as_of"] is None and never["last_error"] == "nope"
    # a later success clears the error and moves data_as_of forward
    again = refresh_view(sales, "public", "mv_by_region")
    record_success(sales, DEFAULT_SCHEMA, again, run_id=None)
    row = sales.execute(
        "SELECT data_as_of, last_status, last_error FROM mvo.last_refresh"
        " WHERE view_name = 'mv_by_region'"
    ).fetchone()
    assert row == (again.finished_at, "success", None)


def test_refresh_stats_window_and_math(hist: psycopg.Connection[Any]) -> None:
    _insert(hist, "a", ago_s=3600, duration_ms=100)
    _insert(hist, "a", ago_s=1800, duration_ms=200, status="failure", error="first")
    _insert(hist, "a", ago_s=900, duration_ms=9000, status="failure", error="latest")
    last_ok = _insert(hist, "a", ago_s=600, duration_ms=600)
    _insert(hist, "a", ago_s=60, duration_ms=200)  # started later, finished after last_ok
    # outside a 24 h window
    _insert(hist, "a", ago_s=25 * 3600, duration_ms=50_000, status="failure", error="old")
    _insert(hist, "b", ago_s=30 * 3600, duration_ms=1)

    with hist.cursor(row_factory=dict_row) as cur:
        rows = cur.execute("SELECT * FROM mvo.refresh_stats()").fetchall()
    assert [r["view_name"] for r in rows] == ["a"]  # b has nothing in the last 24 h
    a = rows[0]
    assert (a["total"], a["successes"], a["failures"]) == (5, 3, 2)
    assert a["success_rate"] == Decimal("60.00")
    # durations of successful refreshes only: the 9 s failure does not count
    assert a["avg_duration_ms"] == pytest.approx(300.0)
    assert (a["min_duration_ms"], a["max_duration_ms"]) == (100.0, 600.0)
    assert a["last_refresh_at"] > last_ok
    assert a["last_error"] == "latest"

    wide = hist.execute(
        "SELECT view_name, total, failures, success_rate, max_duration_ms"
        " FROM mvo.refresh_stats(hours => 31)"
    ).fetchall()
    assert wide == [("a", 6, 3, Decimal("50.00"), 600.0), ("b", 1, 0, Decimal("100.00"), 1.0)]

    # fractional hours through read_stats: the last 12 minutes hold two attempts of "a"
    [recent] = read_stats(hist, DEFAULT_SCHEMA, hours=0.2)
    assert (recent.view_name, recent.total, recent.successes) == ("a", 2, 2)
    assert recent.success_rate == 100.0 and isinstance(recent.success_rate, float)
    assert recent.last_error is None

    # selected views come back in the order asked, a view without attempts with zero counts
    picked = read_stats(hist, DEFAULT_SCHEMA, views=[("public", "missing"), ("public", "a")])
    assert [(s.view_name, s.total) for s in picked] == [("missing", 0), ("a", 5)]
    assert picked[0].success_rate is None and picked[0].last_refresh_at is None
    assert picked[1].success_rate == 60.0 and picked[1].last_error == "latest"
    assert picked[1].qualname == "public.a"


def test_read_history_frame(hist: psycopg.Connection[Any]) -> None:
    _insert(hist, "a", ago_s=7200, duration_ms=100)
    _insert(hist, "b", ago_s=60, duration_ms=20, status="failure", error="x")
    _insert(hist, "a", ago_s=30, duration_ms=300)
    frame = read_history(hist, DEFAULT_SCHEMA, since=timedelta(hours=1))
    assert list(frame.columns) == list(HISTORY_COLUMNS)
    assert list(frame["view_name"]) == ["b", "a"]  # oldest first, 2 h old row excluded
    assert str(frame["started_at"].dt.tz) == "UTC"
    assert frame["rows_after"].isna().all() and str(frame["rows_after"].dtype) == "Int64"
    only_a = read_history(hist, DEFAULT_SCHEMA, since=timedelta(days=1), views=[("public", "a")])
    assert list(only_a["duration_ms"]) == [100.0, 300.0]
    empty = read_history(hist, DEFAULT_SCHEMA, since=timedelta(days=1), views=[])
    assert empty.empty and list(empty.columns) == list(HISTORY_COLUMNS)


def test_purge_deletes_only_old_rows(hist: psycopg.Connection[Any]) -> None:
    day = 86_400
    for ago in (40 * day, 31 * day, 29 * day, 60):
        _insert(hist, "a", ago_s=ago, duration_ms=1)
    assert purge_history(hist, DEFAULT_SCHEMA) == 2
    assert purge_history(hist, DEFAULT_SCHEMA) == 0
    assert purge_history(hist, DEFAULT_SCHEMA, older_than=timedelta(days=1)) == 1
    remaining = hist.execute(
        "SELECT count(*) FROM mvo.refresh_history WHERE started_at > now() - interval '1 hour'"
    ).fetchone()
    assert remaining == (1,) and len(_rows(hist)) == 1


def test_version_2_upgrades_a_version_1_history_and_counts_cancelled_apart(
    conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = [m for m in history.MIGRATIONS if m[0] == 1]
    with monkeypatch.context() as m:
        m.setattr(history, "MIGRATIONS", v1)
        assert ensure_history(conn) == 1
    _insert(conn, "a", ago_s=60, duration_ms=100)
    _insert(conn, "a", ago_s=50, duration_ms=100, status="failure", error="boom")
    with pytest.raises(psycopg.errors.CheckViolation):
        _insert(conn, "a", ago_s=40, duration_ms=1, status="cancelled")

    assert ensure_history(conn) == latest_version()  # the v1 rows stay
    now = datetime.now(UTC)
    record_cancelled(
        conn,
        DEFAULT_SCHEMA,
        view_schema="public",
        view_name="a",
        reason="run terminated",
        started_at=now - timedelta(seconds=3),
        finished_at=now,
        run_id="r1",
        method="blocking",
    )
    rows = _rows(conn)
    assert [r["status"] for r in rows] == ["success", "failure", "cancelled"]
    assert rows[-1]["error_message"] == "run terminated" and rows[-1]["run_id"] == "r1"
    assert rows[-1]["duration_ms"] == pytest.approx(3000.0, abs=1.0)
    [a] = read_stats(conn, DEFAULT_SCHEMA, views=[("public", "a")])
    # a cancelled attempt is neither a success nor a failure
    assert (a.total, a.successes, a.failures, a.success_rate) == (2, 1, 1, 50.0)
    assert a.last_error == "boom"
    last = conn.execute("SELECT last_status FROM mvo.last_refresh").fetchone()
    assert last == ("cancelled",)


def test_version_3_attempt_rows_are_completed_forgotten_or_swept(
    sales: psycopg.Connection[Any],
) -> None:
    """Each attempt's row is written before it starts; the outcome completes that same row,
    an attempt that did not happen removes it, and one whose session died is swept."""
    start = datetime.now(UTC)
    done = history.begin_attempt(
        sales, DEFAULT_SCHEMA, view_schema="public", view_name="mv_by_region",
        started_at=start, run_id="r1",
    )  # fmt: skip
    [running] = _rows(sales)
    assert running["status"] == "running" and running["finished_at"] is None
    assert running["backend_pid"] == sales.info.backend_pid and running["backend_start"]
    assert sales.execute("SELECT last_status FROM mvo.last_refresh").fetchone() == ("running",)
    assert history.sweep_abandoned(sales, DEFAULT_SCHEMA) == 0  # its session is alive
    record = success_record(sales, DEFAULT_SCHEMA, run_id="r1", attempt_id=done)
    assert refresh_view(sales, "public", "mv_by_region", record=record).record_error is None
    skipped = history.begin_attempt(
        sales, DEFAULT_SCHEMA, view_schema="public", view_name="mv_by_region",
        started_at=start, run_id="r2",
    )  # fmt: skip
    history.forget_attempt(sales, DEFAULT_SCHEMA, skipped)

    with _connect(sales) as killed:
        history.begin_attempt(
            killed, DEFAULT_SCHEMA, view_schema="public", view_name="mv_by_region",
            started_at=start, run_id="r3",
        )  # fmt: skip
        sales.execute("SELECT pg_terminate_backend(%s)", [killed.info.backend_pid])
        deadline = time.monotonic() + 10
        while sales.execute(
            "SELECT 1 FROM pg_stat_activity WHERE pid = %s", [killed.info.backend_pid]
        ).fetchone():
            assert time.monotonic() < deadline, "the terminated session did not end"
            time.sleep(0.05)
    assert history.sweep_abandoned(sales, DEFAULT_SCHEMA) == 1
    assert history.sweep_abandoned(sales, DEFAULT_SCHEMA) == 0
    rows = _rows(sales)
    assert [(r["run_id"], r["status"]) for r in rows] == [("r1", "success"), ("r3", "cancelled")]
    assert rows[0]["id"] == done and rows[0]["finished_at"] is not None
    assert rows[1]["error_message"] == history.ABANDONED_REASON
    assert rows[1]["finished_at"] is None  # its end was not seen
    [stats] = read_stats(sales, DEFAULT_SCHEMA)
    assert (stats.total, stats.successes, stats.failures) == (1, 1, 0)
