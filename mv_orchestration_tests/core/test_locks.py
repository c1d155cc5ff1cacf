"""Lock-wait measurement from a second session, against a real PostgreSQL server."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from mv_orchestration.core.locks import LockWaitMonitor, sibling_connect
from mv_orchestration.core.refresh import RefreshOptions, RefreshResult, refresh_view

_WAITING_SQL = """
SELECT extract(epoch FROM clock_timestamp() - waitstart)::float8
FROM pg_locks WHERE pid = %s AND NOT granted AND waitstart IS NOT NULL
"""


@pytest.fixture
def views(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    conn.execute(
        """
        CREATE TABLE src (id int PRIMARY KEY);
        INSERT INTO src SELECT generate_series(1, 100);
        CREATE MATERIALIZED VIEW mv_plain AS SELECT id FROM src;
        CREATE MATERIALIZED VIEW mv_slow AS SELECT 1 AS x FROM pg_sleep(0.3);
        """
    )
    return conn


def _other(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    return psycopg.connect(conn.info.dsn, password=conn.info.password, autocommit=True)


def _wait_until_waiting(
    observer: psycopg.Connection[Any], pid: int, at_least_s: float, deadline_s: float = 30.0
) -> float:
    """Poll until backend ``pid`` has waited ``at_least_s`` for a lock (server clock)."""
    give_up = time.monotonic() + deadline_s
    while time.monotonic() < give_up:
        row = observer.execute(_WAITING_SQL, [pid]).fetchone()
        if row is not None and row[0] >= at_least_s:
            return float(row[0])
    raise AssertionError(f"backend {pid} never waited {at_least_s}s for a lock")


def test_uncontended_refresh_waits_zero(views: psycopg.Connection[Any]) -> None:
    quick = refresh_view(views, "public", "mv_plain")
    # longer than several sampling intervals, with nothing in its way
    slow = refresh_view(views, "public", "mv_slow")
    assert slow.duration_s >= 0.3
    assert quick.lock_wait_s == 0.0 and slow.lock_wait_s == 0.0


def test_measures_a_wait_behind_a_reader(views: psycopg.Connection[Any]) -> None:
    results: list[RefreshResult] = []
    errors: list[BaseException] = []

    def refresh() -> None:
        try:
            results.append(
                refresh_view(
                    views,
                    "public",
                    "mv_plain",
                    RefreshOptions(method="blocking", lock_timeout_s=30, lock_retries=0),
                )
            )
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    pid = views.info.backend_pid
    with _other(views) as reader, _other(views) as observer:
        with reader.transaction():
            # ACCESS SHARE held by a long report: a plain refresh (ACCESS EXCLUSIVE) queues
            reader.execute("SELECT count(*) FROM mv_plain")
            worker = threading.Thread(target=refresh)
            worker.start()
            waited_before_release = _wait_until_waiting(observer, pid, 0.4)
        worker.join()
    assert not errors, errors
    [result] = results
    assert result.lock_wait_s is not None
    # at least what the server showed before the reader let go; at most the whole refresh
    # (plus half a sampling interval for the end estimate)
    assert waited_before_release <= result.lock_wait_s <= result.duration_s + 0.03
    assert result.lock_wait_s < 5


def test_monitor_failure_leaves_wait_unknown_not_the_refresh_failed(
    views: psycopg.Connection[Any],
) -> None:
    def refuse() -> psycopg.Connection[Any]:
        return psycopg.connect("host=127.0.0.1 port=1 connect_timeout=2", autocommit=True)

    with LockWaitMonitor(refuse, views.info.backend_pid) as monitor:
        result = refresh_view(views, "public", "mv_slow", lock_monitor=monitor)
    assert result.rows_after == 1 and result.lock_wait_s is None


def test_one_monitor_serves_several_refreshes(views: psycopg.Connection[Any]) -> None:
    opened: list[psycopg.Connection[Any]] = []
    connect = sibling_connect(views, "mvo lock monitor test")

    def counting() -> psycopg.Connection[Any]:
        opened.append(connect())
        return opened[-1]

    with LockWaitMonitor(counting, views.info.backend_pid) as monitor:
        for _ in range(2):
            assert refresh_view(views, "public", "mv_slow", lock_monitor=monitor).lock_wait_s == 0
        assert len(opened) == 1
        app = opened[0].execute("SHOW application_name").fetchone()
        assert app == ("mvo lock monitor test",)
    assert opened[0].closed


def test_opt_out(views: psycopg.Connection[Any]) -> None:
    result = refresh_view(views, "public", "mv_plain", RefreshOptions(measure_lock_wait=False))
    assert result.lock_wait_s is None


def test_bad_intervals() -> None:
    with pytest.raises(ValueError):
        LockWaitMonitor(lambda: None, 1, interval_s=0)  # type: ignore[arg-type,return-value]
