"""Refreshes stopped by the server side, overlapping, or retried: real ``mvo refresh``
processes against a real server, asserting on pg_stat_activity, the history and the
Dagster instance."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest

from mv_orchestration.core import history
from mv_orchestration.demo.embedded import PersistentServer
from mv_orchestration_tests.faults.conftest import (
    SLOW_VIEW_SQL,
    MvoEnv,
    Reader,
    history_rows,
    make_slow,
    occupied_slots,
    refresh_active,
    refreshes_running,
    view_sum,
    wait_until,
)

POOL = "mvo_default"


def _finish(proc: Any, deadline_s: float = 60.0) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=deadline_s)
    return int(proc.returncode), str(out)


def _refresh_pid(conn: psycopg.Connection[Any]) -> int:
    running = wait_until(lambda: refreshes_running(conn), "the refresh to start")
    return int(running[0][0])


def test_terminated_backend_fails_the_attempt_and_the_retry_refreshes(
    slow_view: psycopg.Connection[Any], mvo_env: MvoEnv, db_url: str
) -> None:
    conn = slow_view
    make_slow(conn, 30)
    before = view_sum(conn)
    proc = mvo_env.start("refresh", "faults.slow_mv")
    pid = _refresh_pid(conn)
    reader = Reader(db_url).start()
    wait_until(lambda: reader.waiting(conn), "the reader to queue behind the refresh")
    conn.execute("UPDATE faults.ctl SET sleep_s = 0")  # the retry is quick
    conn.execute("SELECT pg_terminate_backend(%s)", [pid])
    # the reader is let through at once (the retry comes a second later)
    assert reader.join(2.0) < 32
    code, out = _finish(proc)
    assert code == 0, out
    assert "transient failure, retrying the failed views" in out
    assert view_sum(conn) == before + 100
    rows = history_rows(conn)
    assert [r["status"] for r in rows] == ["failure", "success"], rows
    assert rows[0]["sqlstate"] == "57P01"
    with mvo_env.instance() as instance:
        assert occupied_slots(instance, POOL) == 0


def test_server_crash_mid_refresh_is_one_failure_row_then_a_clean_retry(
    pg_server: Any, mvo_env: MvoEnv
) -> None:
    # a server of its own, so it can be crashed; the Dagster storage stays on the other one
    root = Path(tempfile.mkdtemp(prefix="mvo-test-crash-"))
    os.chmod(root, 0o755)
    server = PersistentServer(root / "pg")
    url = server.start()
    try:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(SLOW_VIEW_SQL)
            make_slow(admin, 30)
            before = view_sum(admin)
            proc = mvo_env.start("refresh", "faults.slow_mv", DATABASE_URL=url)
            _refresh_pid(admin)
            reader = Reader(url).start()
            wait_until(lambda: reader.waiting(admin), "the reader to queue behind the refresh")
            admin.execute("UPDATE faults.ctl SET sleep_s = 0")
        server.stop(mode="immediate")
        reader.join(2.0, may_fail=True)
        server.start()
        code, out = _finish(proc)
        assert code == 0, out
        with psycopg.connect(url, autocommit=True) as admin:
            assert not refreshes_running(admin)
            assert view_sum(admin) == before + 100
            rows = history_rows(admin)
        # the interrupted attempt: exactly one row, written once the server was back
        assert [r["status"] for r in rows] == ["failure", "success"], (rows, out)
        with mvo_env.instance() as instance:
            assert occupied_slots(instance, POOL) == 0
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_overlapping_refreshes_are_one_refresh_and_one_skip(
    slow_view: psycopg.Connection[Any], mvo_env: MvoEnv
) -> None:
    conn = slow_view
    make_slow(conn, 20)  # longer than a second mvo process takes to start
    first = mvo_env.start("refresh", "faults.slow_mv")
    wait_until(lambda: refresh_active(conn), "the first refresh to run")
    code, out = _finish(mvo_env.start("refresh", "faults.slow_mv"))
    assert code == 0, out
    with mvo_env.instance() as instance:
        [first_run] = [r.run_id for r in instance.get_runs() if f"run {r.run_id} " not in out]
    assert f"skipped faults.slow_mv: held by run {first_run}" in out, out
    assert "failed" not in out
    code1, out1 = _finish(first)
    assert code1 == 0, out1
    assert [r["status"] for r in history_rows(conn)] == ["success"]  # no failure row
    with mvo_env.instance() as instance:
        statuses = {r.run_id: r.status for r in instance.get_runs()}
        assert set(statuses.values()) == {dg.DagsterRunStatus.SUCCESS}, statuses
        [skip_run] = [rid for rid in statuses if rid != first_run]
        records = instance.get_records_for_run(
            skip_run, of_type=dg.DagsterEventType.ASSET_OBSERVATION
        ).records
        [obs] = [r.event_log_entry.asset_observation for r in records]
        assert obs is not None and obs.metadata["held_by_run"].value == first_run


DAG_SQL = """
CREATE SCHEMA dag;
CREATE TABLE dag.t (x int);
INSERT INTO dag.t VALUES (1);
CREATE MATERIALIZED VIEW dag.a AS SELECT x FROM dag.t;
CREATE MATERIALIZED VIEW dag.b AS SELECT x FROM dag.t;
CREATE MATERIALIZED VIEW dag.c AS SELECT x FROM dag.a;
"""


def _dag_history(conn: psycopg.Connection[Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if conn.execute("SELECT to_regclass('mvo.refresh_history')").fetchone() == (None,):
        return out
    for view, status in conn.execute(
        "SELECT view_name, status FROM mvo.refresh_history WHERE view_schema = 'dag' ORDER BY id"
    ).fetchall():
        out.setdefault(view, []).append(status)
    return out


def test_a_transient_failure_retries_only_the_failed_view_and_its_downstream(
    conn: psycopg.Connection[Any], mvo_env: MvoEnv, db_url: str
) -> None:
    conn.execute(DAG_SQL)
    # dag.a's blocking refresh times out behind an open transaction (55P03, transient)
    # until that transaction ends; dag.b refreshes first time; dag.c waits for dag.a
    holder = psycopg.connect(db_url)
    holder.execute("SELECT count(*) FROM dag.a")
    proc = mvo_env.start("refresh", "--all", MVO_LOCK_RETRIES="0", MVO_RETRY_DELAY_S="2")
    wait_until(lambda: "b" in _dag_history(conn) and "a" in _dag_history(conn), "first attempt")
    holder.rollback()
    holder.close()
    code, out = _finish(proc)
    assert code == 0, out
    assert _dag_history(conn) == {
        "a": ["failure", "success"],
        "b": ["success"],  # not refreshed again by the retry
        "c": ["success"],  # skipped on the first attempt, refreshed by the retry
    }, out
    assert "1 view(s) already refreshed in this run are not refreshed again; 2 left" in out


def test_a_signal_mid_refresh_cancels_the_server_statement(
    slow_view: psycopg.Connection[Any],
    db_url: str,
    instance: dg.DagsterInstance,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Dagster turns the signal into its own interruption, which psycopg does not cancel on:
    the step must end the server's REFRESH itself, record it, and end the run CANCELED."""
    from mv_orchestration.definitions import build_from_settings
    from mv_orchestration.settings import Settings

    conn = slow_view
    make_slow(conn, 30)
    before = view_sum(conn)
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("MVO_STATE_DIR", str(tmp_path))
    defs = build_from_settings(Settings.from_env())
    job = defs.resolve_implicit_global_asset_job_def()
    reader = Reader(db_url)
    stopped: list[float] = []

    def interrupt_when_running() -> None:
        wait_until(lambda: refresh_active(conn), "the refresh to run")
        reader.start()
        wait_until(lambda: reader.waiting(conn), "the reader to queue")
        stopped.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_when_running, daemon=True).start()
    with pytest.raises((KeyboardInterrupt, dg.DagsterExecutionInterruptedError)):
        job.execute_in_process(
            instance=instance,
            asset_selection=[dg.AssetKey(["faults", "slow_mv"])],
        )
    reader.join(2.0)
    assert reader.finished is not None and reader.finished - stopped[0] < 2.0
    assert not refresh_active(conn)
    assert view_sum(conn) == before  # rolled back: the previous contents
    rows = history_rows(conn)
    assert [r["status"] for r in rows] == ["cancelled"], rows
    assert rows[0]["error_message"] == "run terminated"
    [run] = instance.get_runs()
    assert run.status == dg.DagsterRunStatus.CANCELED  # not FAILURE: no failure alert


def test_a_sigkilled_refresh_leaves_one_cancelled_row(
    slow_view: psycopg.Connection[Any], mvo_env: MvoEnv
) -> None:
    """A killed process writes nothing when it dies: its attempt's row, written before the
    refresh began, is closed as cancelled by the next refresh step once its session is gone."""
    conn = slow_view
    make_slow(conn, 20)
    before = view_sum(conn)
    proc = mvo_env.start("refresh", "faults.slow_mv")
    pid = _refresh_pid(conn)
    assert [r["status"] for r in history_rows(conn)] == ["running"]
    proc.kill()
    proc.communicate()
    # the server notices the client is gone (client_connection_check_interval) and ends it
    wait_until(
        lambda: not conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone(),
        "the killed refresh's session to end",
        10,
    )
    assert view_sum(conn) == before
    make_slow(conn, 0)
    code, out = _finish(mvo_env.start("refresh", "faults.slow_mv"))
    assert code == 0, out
    rows = history_rows(conn)
    assert [r["status"] for r in rows] == ["cancelled", "success"], rows
    assert rows[0]["error_message"] == history.ABANDONED_REASON
    assert "recorded as cancelled" in out
    assert view_sum(conn) != before
