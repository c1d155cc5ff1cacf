"""The run launcher's worker health check (what Dagster's run monitoring asks), against real
processes and a real socket nobody listens on."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
from dagster._core.launcher import WorkerStatus

from mv_orchestration.lib.launcher import (
    GRPC_INFO_TAG,
    UNREACHABLE_GRACE_S,
    WORKER_TAG,
    MvoRunLauncher,
    Worker,
    in_process_tags,
    process_started_at,
)
from mv_orchestration_tests.faults.conftest import wait_until


def _run(tags: dict[str, str], run_id: str = "r1") -> dg.DagsterRun:
    return dg.DagsterRun(job_name="j", run_id=run_id, tags=tags)


def test_an_in_process_run_is_failed_once_its_process_is_gone() -> None:
    launcher = MvoRunLauncher()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = process_started_at(child.pid)
        assert started is not None and abs(started - time.time()) < 30
        this = Worker.this_process()
        tags = {WORKER_TAG: Worker(this.host, this.pid_namespace, child.pid, started).tag()}
        assert launcher.check_run_worker_health(_run(tags)).status == WorkerStatus.RUNNING
    finally:
        child.kill()
        child.wait()
    health = launcher.check_run_worker_health(_run(tags))
    assert health.status == WorkerStatus.FAILED
    assert f"pid {child.pid}" in str(health.msg)


def test_a_reused_pid_is_not_the_worker() -> None:
    """The pid runs, but a process started after the tag's: the worker is gone."""
    this = Worker.this_process()
    old = Worker(this.host, this.pid_namespace, this.pid, this.started_at - 3600)
    health = MvoRunLauncher().check_run_worker_health(_run({WORKER_TAG: old.tag()}))
    assert health.status == WorkerStatus.FAILED
    # this process, as tagged by mvo refresh: alive
    mine = _run(in_process_tags())
    assert MvoRunLauncher().check_run_worker_health(mine).status == WorkerStatus.RUNNING


def test_a_worker_on_another_host_or_an_unknown_one_is_not_judged() -> None:
    launcher = MvoRunLauncher()
    this = Worker.this_process()
    elsewhere = Worker("elsewhere.example", this.pid_namespace, 1, 0.0)
    assert (
        launcher.check_run_worker_health(_run({WORKER_TAG: elsewhere.tag()})).status
        == WorkerStatus.RUNNING
    )
    assert launcher.check_run_worker_health(_run({})).status == WorkerStatus.RUNNING
    bad = _run({GRPC_INFO_TAG: "not json", WORKER_TAG: "garbage"})
    assert launcher.check_run_worker_health(bad).status == WorkerStatus.RUNNING


def test_a_code_server_that_refuses_connections_fails_its_run_after_the_grace(
    tmp_path: Path,
) -> None:
    """A unix socket file nobody listens on (what a killed code server leaves behind)."""
    path = str(tmp_path / "grpc.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(path)  # bound, never listening: connections are refused
        run = _run({GRPC_INFO_TAG: json.dumps({"host": "localhost", "socket": path})})
        launcher = MvoRunLauncher()
        first = time.monotonic()
        assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
        health = wait_until(
            lambda: (
                (h := launcher.check_run_worker_health(run)).status == WorkerStatus.FAILED and h
            ),
            "the run to be failed",
            UNREACHABLE_GRACE_S + 10,
        )
        assert time.monotonic() - first >= UNREACHABLE_GRACE_S  # not on a first refusal
        assert "code server" in str(health.msg)
