"""Stops: signals to ``mvo dev`` and ``mvo refresh`` while a refresh runs or waits for a pool
slot, and a ``mvo refresh`` killed outright. Real processes and signals; asserted on
pg_stat_activity, the Dagster instance and the refresh history."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
from dagster._core.launcher import WorkerStatus

from mv_orchestration.lib.runs import ACTIVE_STATUSES
from mv_orchestration_tests.e2e.test_dagster_dev import _free_port, _wait_for_assets
from mv_orchestration_tests.faults.conftest import (
    MVO,
    ROOT,
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
from mv_orchestration_tests.faults.test_run_termination import Dev

POOL = "mvo_default"
# how fast a stopped process must have answered, and its run and the server with it
ANSWER_S = 2.0
# Dagster's run monitoring (dagster.yaml) must have ended a dead run within the change
# sensor's interval of the next start
SENSOR_INTERVAL_S = 30.0
LINE = re.compile(r"interrupted \((SIG[A-Z]+)\): run (\S+) cancelled")


def _interrupted_run(out: str, signame: str) -> str:
    """The run id in the one line ``mvo refresh`` ends with when interrupted."""
    last = out.strip().splitlines()[-1]
    match = LINE.fullmatch(last)
    assert match is not None and match.group(1) == signame, out
    assert "Traceback" not in out, out
    return match.group(2)


def _answer(proc: subprocess.Popen[str], sig: signal.Signals) -> tuple[float, str]:
    """Send ``sig``; the process must exit within ANSWER_S, with 128 + sig. When it ended,
    and its output."""
    proc.send_signal(sig)
    try:
        proc.wait(timeout=ANSWER_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out = proc.communicate()[0]
        raise AssertionError(f"mvo did not answer {sig.name} within {ANSWER_S} s:\n{out}") from None
    ended = time.monotonic()
    out = proc.communicate()[0]
    assert proc.returncode == 128 + sig, out
    return ended, out


def _left(ended: float) -> float:
    """What is left of ANSWER_S since ``ended`` (at least a little, to look once more)."""
    return max(0.2, ANSWER_S - (time.monotonic() - ended))


@contextmanager
def _dev(env: MvoEnv, log: Path) -> Iterator[tuple[subprocess.Popen[bytes], Dev]]:
    """A real ``mvo dev`` on the test's database, in a session of its own (a terminal's
    foreground job); killed with its process group if the test leaves it running."""
    port = _free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [MVO, "dev", "--port", str(port), "--no-generate"],
            cwd=ROOT,
            env={**os.environ, **env.env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    dev = Dev(f"http://127.0.0.1:{port}", env.env["DATABASE_URL"])
    dev.home = env.home
    try:
        _wait_for_assets(dev, proc, log)
        yield proc, dev
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _stop_dev(proc: subprocess.Popen[bytes], sig: signal.Signals, log: Path) -> float:
    """Stop ``mvo dev`` as a terminal's Ctrl-C does (the signal to its whole process group,
    which holds mvo dev alone); it must exit 0, its terminal without a traceback or a stack
    trace. When it ended."""
    os.killpg(proc.pid, sig)
    code = proc.wait(timeout=120)
    ended = time.monotonic()
    out = log.read_text()
    assert code == 0, out[-4000:]
    # Dagster's logs (the interrupted step's stack among them) are in its log file
    for noise in ("Traceback", "Stack Trace", "DagsterExecutionInterruptedError"):
        assert noise not in out, out[-4000:]
    return ended


def _source_sum(conn: psycopg.Connection[Any]) -> int:
    """What the view sums to once refreshed (make_slow changes the source each time)."""
    row = conn.execute("SELECT sum(v) FROM faults.src").fetchone()
    assert row is not None
    return int(row[0])


def _copy_instance_config(env: MvoEnv) -> None:
    env.home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "dagster.yaml", env.home / "dagster.yaml")


@pytest.mark.e2e
def test_sigint_to_mvo_dev_cancels_the_refresh_and_the_next_start_refreshes(
    slow_view: psycopg.Connection[Any], mvo_env: MvoEnv, db_url: str, tmp_path: Path
) -> None:
    conn = slow_view
    make_slow(conn, 20)
    before = view_sum(conn)
    log = tmp_path / "dev1.log"
    with _dev(mvo_env, log) as (proc, dev):
        run_id = dev.launch("faults.slow_mv")
        wait_until(lambda: refresh_active(conn), "the refresh to run", 120)
        reader = Reader(db_url).start()
        wait_until(lambda: reader.waiting(conn), "the reader to queue behind the refresh")
        ended = _stop_dev(proc, signal.SIGINT, log)
    wait_until(lambda: not refreshes_running(conn), "no refresh left", _left(ended))
    reader.join(_left(ended))
    with mvo_env.instance() as instance:
        assert occupied_slots(instance, POOL) == 0
        run = instance.get_run_by_id(run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.CANCELED
        stuck = instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        assert not stuck
    assert view_sum(conn) == before  # the interrupted refresh was rolled back
    assert [r["status"] for r in history_rows(conn)] == ["cancelled"]
    assert "run(s) terminated" in log.read_text()

    # the next start, on the same instance, refreshes normally; SIGTERM stops it cleanly too
    make_slow(conn, 0)
    log2 = tmp_path / "dev2.log"
    with _dev(mvo_env, log2) as (proc2, dev2):
        again = dev2.launch("faults.slow_mv")
        assert dev2.finished(again, SENSOR_INTERVAL_S + 60) == "SUCCESS"
        _stop_dev(proc2, signal.SIGTERM, log2)
    assert view_sum(conn) == _source_sum(conn) != before
    assert [r["status"] for r in history_rows(conn)] == ["cancelled", "success"]


def _run_story(instance: dg.DagsterInstance, run_id: str) -> str:
    """A run's events, one line each (for an assertion's message)."""
    lines = []
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        kind = event.event_type_value if event is not None else "log"
        lines.append(f"{entry.timestamp:.2f} {kind}: {entry.message[:300]}")
    return "\n".join(lines)


@pytest.mark.e2e
def test_sigint_to_mvo_dev_while_a_run_is_starting_cancels_it(
    slow_view: psycopg.Connection[Any], mvo_env: MvoEnv, tmp_path: Path
) -> None:
    """The stop comes while the run's worker is still starting (STARTING): the run must end
    CANCELED (not FAILURE, not left CANCELING), holding no slot."""
    conn = slow_view
    make_slow(conn, 20)
    before = view_sum(conn)
    log = tmp_path / "dev.log"
    with _dev(mvo_env, log) as (proc, dev), mvo_env.instance() as instance:
        run_id = dev.launch("faults.slow_mv")

        def starting() -> bool:
            run = instance.get_run_by_id(run_id)
            assert run is not None
            assert run.status in (
                dg.DagsterRunStatus.QUEUED,
                dg.DagsterRunStatus.NOT_STARTED,
                dg.DagsterRunStatus.STARTING,
            ), f"the run went {run.status.value} before it was seen STARTING"
            return run.status == dg.DagsterRunStatus.STARTING

        wait_until(starting, "the run to be STARTING", 120)
        _stop_dev(proc, signal.SIGINT, log)
        run = instance.get_run_by_id(run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.CANCELED, (
            run and run.status,
            _run_story(instance, run_id),
            log.read_text()[-3000:],
        )
        assert occupied_slots(instance, POOL) == 0
        active = instance.get_run_records(dg.RunsFilter(statuses=list(ACTIVE_STATUSES)))
        assert not active
    assert not refreshes_running(conn)
    assert view_sum(conn) == before
    assert "cancelled" in log.read_text() and "FAILED" not in log.read_text()


def test_sigterm_to_mvo_refresh_mid_refresh_cancels_its_run(
    slow_view: psycopg.Connection[Any], mvo_env: MvoEnv, db_url: str
) -> None:
    conn = slow_view
    make_slow(conn, 20)
    before = view_sum(conn)
    proc = mvo_env.start("refresh", "faults.slow_mv")
    wait_until(lambda: refresh_active(conn), "the refresh to run", 60)
    reader = Reader(db_url).start()
    wait_until(lambda: reader.waiting(conn), "the reader to queue behind the refresh")
    ended, out = _answer(proc, signal.SIGTERM)
    run_id = _interrupted_run(out, "SIGTERM")
    wait_until(lambda: not refreshes_running(conn), "no refresh left", _left(ended))
    reader.join(_left(ended))
    with mvo_env.instance() as instance:
        run = instance.get_run_by_id(run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.CANCELED
        assert occupied_slots(instance, POOL) == 0
    assert view_sum(conn) == before
    rows = history_rows(conn)
    assert [(r["status"], r["run_id"]) for r in rows] == [("cancelled", run_id)]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_signal_while_waiting_for_a_pool_slot_cancels_the_run(
    slow_view: psycopg.Connection[Any], mvo_env: MvoEnv, sig: signal.Signals
) -> None:
    """Dagster's in-process executor spins waiting for a slot and never looks at the
    interrupt it captured; mvo refresh must answer anyway."""
    _copy_instance_config(mvo_env)
    with mvo_env.instance() as instance:
        storage = instance.event_log_storage
        storage.set_concurrency_slots(POOL, 0)  # `dagster instance concurrency set mvo_default 0`
        proc = mvo_env.start("refresh", "faults.slow_mv")
        wait_until(
            lambda: storage.get_concurrency_info(POOL).pending_step_count == 1,
            "the step to wait for a slot",
            60,
        )
        _, out = _answer(proc, sig)
        run_id = _interrupted_run(out, sig.name)
        run = instance.get_run_by_id(run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.CANCELED
        info = storage.get_concurrency_info(POOL)
        assert (info.pending_step_count, info.active_slot_count) == (0, 0)
    # it never started: not even the history table was created
    row = slow_view.execute("SELECT to_regclass('mvo.refresh_history')").fetchone()
    assert row == (None,) or history_rows(slow_view) == []


def test_a_signal_behind_a_refresh_holding_the_only_slot_cancels_only_its_own_run(
    slow_view: psycopg.Connection[Any], mvo_env: MvoEnv
) -> None:
    conn = slow_view
    make_slow(conn, 20)
    _copy_instance_config(mvo_env)
    with mvo_env.instance() as instance:
        storage = instance.event_log_storage
        storage.set_concurrency_slots(POOL, 1)
        first = mvo_env.start("refresh", "faults.slow_mv")
        wait_until(lambda: refresh_active(conn), "the first refresh to run", 60)
        second = mvo_env.start("refresh", "faults.slow_mv")
        wait_until(
            lambda: storage.get_concurrency_info(POOL).pending_step_count == 1,
            "the second to wait for the slot",
            60,
        )
        _, out = _answer(second, signal.SIGINT)
        waiting = _interrupted_run(out, "SIGINT")
        run = instance.get_run_by_id(waiting)
        assert run is not None and run.status == dg.DagsterRunStatus.CANCELED
        # the first goes on, holding its slot
        assert refresh_active(conn)
        info = storage.get_concurrency_info(POOL)
        assert (info.pending_step_count, info.active_slot_count) == (0, 1)
        ended, out = _answer(first, signal.SIGTERM)
        running = _interrupted_run(out, "SIGTERM")
        wait_until(lambda: not refreshes_running(conn), "no refresh left", _left(ended))
        assert occupied_slots(instance, POOL) == 0
        ran = instance.get_run_by_id(running)
        assert ran is not None and ran.status == dg.DagsterRunStatus.CANCELED
    assert [(r["status"], r["run_id"]) for r in history_rows(conn)] == [("cancelled", running)]


def _ended_and_freed(
    instance: dg.DagsterInstance, run_id: str, *statuses: dg.DagsterRunStatus
) -> None:
    """From a start whose UI just answered: run monitoring ends ``run_id`` (its worker is
    gone) within the change sensor's interval, and frees the slot it held. Dagster frees a
    slot 5 s after the run was last updated, and run retries update a failed run when they
    re-run it: the slot may take a little longer than the run."""
    up = time.monotonic()

    def ended() -> bool:
        current = instance.get_run_by_id(run_id)
        return current is not None and current.status in statuses

    names = " or ".join(s.value for s in statuses)
    wait_until(ended, f"run monitoring to mark the run {names}", SENSOR_INTERVAL_S)
    wait_until(
        lambda: occupied_slots(instance, POOL) == 0, "its slot to be freed", 2 * SENSOR_INTERVAL_S
    )
    print(f"run ended and slot freed {time.monotonic() - up:.1f} s after the UI answered")


def _dagster_dev_pid(mvo_dev: int) -> int:
    """The ``dg dev`` (or ``dagster dev``) child of a ``mvo dev`` process (from /proc)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        server = {b"dagster", b"dagster_dg_cli.cli"} & set(cmdline)  # dagster dev, dg dev
        if int(stat[1]) == mvo_dev and server and b"dev" in cmdline:
            return int(entry)
    raise AssertionError(f"no dagster dev under pid {mvo_dev}")


def _group_members(pgid: int) -> list[int]:
    """Live processes (not zombies) of process group ``pgid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(stat[2]) == pgid and stat[0] not in ("Z", "X"):
            found.append(int(entry))
    return found


@pytest.mark.e2e
def test_a_second_sigint_kills_at_once_and_the_next_start_ends_the_orphaned_run(
    slow_view: psycopg.Connection[Any], mvo_env: MvoEnv, tmp_path: Path
) -> None:
    """Ctrl-C twice: no time to terminate the run. Its worker dies with the code server, the
    run stays STARTED holding its slot; the next start's run monitoring (lib/launcher.py:
    the code server that ran it refuses connections) fails it and frees the slot."""
    conn = slow_view
    make_slow(conn, 20)
    before = view_sum(conn)
    log = tmp_path / "dev1.log"
    with _dev(mvo_env, log) as (proc, dev):
        run_id = dev.launch("faults.slow_mv")
        wait_until(lambda: refresh_active(conn), "the refresh to run", 120)
        dagster_dev = _dagster_dev_pid(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)
        wait_until(lambda: "stopping (Ctrl-C again" in log.read_text(), "the stop to begin", 10)
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=10)
        assert time.monotonic() - sent < ANSWER_S
    assert code == 128 + signal.SIGINT, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()
    wait_until(lambda: not _group_members(dagster_dev), "every Dagster process to be gone", 5)
    # the server ends the statement of a client that is gone (client_connection_check_interval)
    wait_until(lambda: not refreshes_running(conn), "the server to end the refresh", 10)
    with mvo_env.instance() as instance:
        stuck = instance.get_run_by_id(run_id)
        assert stuck is not None
        assert stuck.status in (dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING)
    make_slow(conn, 0)  # Dagster's run retries may re-run the failed run: quickly
    log2 = tmp_path / "dev2.log"
    with _dev(mvo_env, log2) as (proc2, dev2), mvo_env.instance() as instance:
        # FAILURE (its code server is gone), or CANCELED if its termination had been asked
        # (cancel_timeout_seconds)
        _ended_and_freed(
            instance, run_id, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED
        )
        again = dev2.launch("faults.slow_mv")
        assert dev2.finished(again) == "SUCCESS"
        _stop_dev(proc2, signal.SIGINT, log2)
    assert view_sum(conn) == _source_sum(conn) != before


@pytest.mark.e2e
def test_a_killed_refresh_is_failed_by_run_monitoring_and_its_slot_freed(
    slow_view: psycopg.Connection[Any], mvo_env: MvoEnv, tmp_path: Path
) -> None:
    """SIGKILL leaves the run STARTED holding its slot; the next mvo dev's run monitoring
    (dagster.yaml, lib/launcher.py) fails it and frees the slot within a sensor interval."""
    conn = slow_view
    make_slow(conn, 20)
    before = view_sum(conn)
    proc = mvo_env.start("refresh", "faults.slow_mv")
    wait_until(lambda: refresh_active(conn), "the refresh to run", 60)
    with mvo_env.instance() as instance:
        [run] = instance.get_runs()
        wait_until(lambda: occupied_slots(instance, POOL) == 1, "the run to hold its slot")
        proc.kill()
        proc.communicate()
        # the server ends the statement of a client that is gone (client_connection_check_interval)
        wait_until(lambda: not refreshes_running(conn), "the server to end the refresh", 10)
        stuck = instance.get_run_by_id(run.run_id)
        assert stuck is not None and stuck.status == dg.DagsterRunStatus.STARTED
        assert occupied_slots(instance, POOL) == 1  # nothing else would ever free it
        health = instance.run_launcher.check_run_worker_health(stuck)
        assert health.status == WorkerStatus.FAILED, health
    make_slow(conn, 0)
    log = tmp_path / "dev.log"
    with _dev(mvo_env, log) as (dev_proc, dev), mvo_env.instance() as instance:
        _ended_and_freed(instance, run.run_id, dg.DagsterRunStatus.FAILURE)
        again = dev.launch("faults.slow_mv")
        assert dev.finished(again) == "SUCCESS"
        _stop_dev(dev_proc, signal.SIGINT, log)
    assert view_sum(conn) == _source_sum(conn) != before


def test_terminate_in_the_ui_reaches_a_run_of_mvo_refresh(
    slow_view: psycopg.Connection[Any], mvo_env: MvoEnv
) -> None:
    """No code server runs it: the launcher sends its process SIGTERM (lib/launcher.py),
    what the UI's Terminate calls (run_coordinator.cancel_run)."""
    conn = slow_view
    make_slow(conn, 20)
    proc = mvo_env.start("refresh", "faults.slow_mv")
    wait_until(lambda: refresh_active(conn), "the refresh to run", 60)
    with mvo_env.instance() as instance:
        [run] = instance.get_runs()
        assert instance.run_coordinator.cancel_run(run.run_id)
        code = proc.wait(timeout=ANSWER_S + 1)
        ended = time.monotonic()
        out = proc.communicate()[0]
        assert code == 128 + signal.SIGTERM, out
        assert _interrupted_run(out, "SIGTERM") == run.run_id
        wait_until(lambda: not refreshes_running(conn), "no refresh left", _left(ended))
        current = instance.get_run_by_id(run.run_id)
        assert current is not None and current.status == dg.DagsterRunStatus.CANCELED
        assert occupied_slots(instance, POOL) == 0
    assert [r["status"] for r in history_rows(conn)] == ["cancelled"]
