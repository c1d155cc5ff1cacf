"""The instance's run launcher: Dagster's ``DefaultRunLauncher`` plus a worker health check,
so that Dagster's run monitoring (``run_monitoring`` in ``dagster.yaml``) ends runs whose
worker is gone instead of leaving them STARTED, holding their pool slots, for ever.

``DefaultRunLauncher`` starts each run in a subprocess of the code server that served its
launch and reports no worker health (``supports_check_run_worker_health`` is false), so the
monitoring daemon only times out runs that never start or never finish cancelling. A run
whose code server died with it (``dagster dev`` killed, a code server container replaced)
stayed STARTED for ever. This launcher answers the daemon's ``check_run_worker_health``:

* a run started by a code server (Dagster's ``.dagster/grpc_info`` tag names the server):
  RUNNING while that server answers — a live server reports its own dead workers as failed
  (Dagster's orphan check) — and FAILED once it has refused connections for
  :data:`UNREACHABLE_GRACE_S` (gone, and its workers with it); a server that answers slowly
  counts as alive;
* a run executed in another process, ``mvo refresh``, carrying :data:`WORKER_TAG` (host,
  pid namespace, pid and start time of that process): FAILED once that process is gone, when
  it ran on this host in this pid namespace; otherwise it cannot be checked (RUNNING);
* any other run (no worker known): RUNNING, Dagster's default.

The daemon then marks the run FAILED (Dagster's run retries may re-run it, see
``run_retries``), and ``free_slots_after_run_end_seconds`` frees its pool slots.

``terminate`` also reaches ``mvo refresh`` runs: it sends their process SIGTERM, which
``mvo refresh`` answers by cancelling the run (:mod:`mv_orchestration.interrupt`).

The health types (``CheckRunHealthResult``, ``WorkerStatus``) are not exported at
Dagster's top level; Dagster's own launcher libraries import them from
``dagster._core.launcher`` too.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus

# Dagster's (hidden) tag naming the code server that launched a run: GRPC_INFO_TAG in
# dagster._core.storage.tags.
GRPC_INFO_TAG = ".dagster/grpc_info"
# "host:pidns:pid:start" of the process executing a run in process (mvo refresh).
WORKER_TAG = "mvo/worker"
# A code server that refused connections for this long is gone (a refused connection, not a
# slow answer: a busy server is alive). Two monitoring polls apart with poll_interval 5 s.
UNREACHABLE_GRACE_S = 4.0
SERVER_TIMEOUT_S = 5
# /proc start times have clock-tick resolution and the boot time whole seconds.
_START_SLACK_S = 2.0


@dataclass(frozen=True)
class Worker:
    """The process executing a run, as :data:`WORKER_TAG` records it."""

    host: str
    pid_namespace: str
    pid: int
    started_at: float

    def tag(self) -> str:
        return f"{self.host}:{self.pid_namespace}:{self.pid}:{self.started_at:.2f}"

    @classmethod
    def parse(cls, text: str) -> Worker | None:
        parts = text.split(":")
        if len(parts) != 4:
            return None
        try:
            return cls(parts[0], parts[1], int(parts[2]), float(parts[3]))
        except ValueError:
            return None

    @classmethod
    def this_process(cls) -> Worker:
        pid = os.getpid()
        return cls(socket.gethostname(), _pid_namespace(), pid, process_started_at(pid) or 0.0)

    def is_local(self) -> bool:
        """Whether this process can see the worker's pid (same host, same pid namespace)."""
        return self.host == socket.gethostname() and self.pid_namespace == _pid_namespace()

    def alive(self) -> bool:
        """Whether the worker process still runs (its pid not reused by a later process)."""
        started = process_started_at(self.pid)
        if started is None:
            return False
        return not self.started_at or started <= self.started_at + _START_SLACK_S


def in_process_tags() -> dict[str, str]:
    """Tags for a run executed in this process, so its death can be detected."""
    return {WORKER_TAG: Worker.this_process().tag()}


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "-"


def _boot_time() -> float | None:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def process_started_at(pid: int) -> float | None:
    """When process ``pid`` started (epoch seconds), or None when there is none (a zombie
    counts as none). Where ``/proc`` is missing: 0.0 for a live process (unknown start)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        stat = ""
    if not stat:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)"; comm may hold spaces
    if fields[0] in ("Z", "X"):  # exited, not yet reaped
        return None
    boot = _boot_time()
    if boot is None:
        return 0.0
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime


class MvoRunLauncher(dg.DefaultRunLauncher):
    """``DefaultRunLauncher`` that reports whether each run's worker is alive (see the
    module docstring); configured as ``run_launcher`` in ``dagster.yaml``."""

    def __init__(self, inst_data: Any = None) -> None:
        super().__init__(inst_data=inst_data)
        self._unreachable_since: dict[str, float] = {}

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        worker = Worker.parse(run.tags.get(WORKER_TAG, ""))
        if worker is not None:
            if not worker.is_local():
                return CheckRunHealthResult(WorkerStatus.RUNNING, "worker on another host")
            if worker.alive():
                return CheckRunHealthResult(WorkerStatus.RUNNING, f"pid {worker.pid} runs")
            return CheckRunHealthResult(
                WorkerStatus.FAILED, f"the process that ran it (pid {worker.pid}) is gone"
            )
        info = run.tags.get(GRPC_INFO_TAG)
        if not info:
            return CheckRunHealthResult(WorkerStatus.RUNNING, "no worker known")
        if _server_refuses(info) is not True:
            self._unreachable_since.pop(run.run_id, None)
            return CheckRunHealthResult(WorkerStatus.RUNNING, "its code server answers")
        now = time.monotonic()
        since = self._unreachable_since.setdefault(run.run_id, now)
        if now - since < UNREACHABLE_GRACE_S:
            return CheckRunHealthResult(WorkerStatus.RUNNING, "its code server does not answer")
        self._unreachable_since.pop(run.run_id, None)
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            "the code server that ran it is gone (it refused connections for "
            f"{now - since:.0f} s), and its run worker with it",
        )

    def terminate(self, run_id: str) -> bool:
        """Dagster's termination; for a run executed by ``mvo refresh`` on this host,
        SIGTERM to that process, which cancels the run."""
        run = self._instance.get_run_by_id(run_id) if self.has_instance else None
        worker = Worker.parse(run.tags.get(WORKER_TAG, "")) if run is not None else None
        if run is None or worker is None or run.is_finished:
            return bool(super().terminate(run_id))  # type: ignore[no-untyped-call]
        if not (worker.is_local() and worker.alive()):
            return False
        self._instance.report_run_canceling(run, message="Sending SIGTERM to mvo refresh.")
        try:
            os.kill(worker.pid, signal.SIGTERM)
        except OSError:
            return False
        return True


def _server_refuses(grpc_info: str) -> bool | None:
    """True when the code server in a ``.dagster/grpc_info`` tag refuses connections (none
    listens there), False when it answers, None when that cannot be told (a timeout)."""
    from dagster._grpc.client import DagsterGrpcClient

    try:
        info = json.loads(grpc_info)
        client = DagsterGrpcClient(
            port=info.get("port"),
            socket=info.get("socket"),
            host=info.get("host", "localhost"),
            use_ssl=bool(info.get("use_ssl", False)),
        )
    except (ValueError, TypeError, AttributeError):
        return None
    try:
        client.get_server_id(timeout=SERVER_TIMEOUT_S)
    except Exception as exc:  # Dagster's DagsterUserCodeUnreachableError, from grpc's error
        code = getattr(exc.__cause__, "code", None)  # grpc.RpcError.code(): a StatusCode
        status = code() if callable(code) else None
        return True if getattr(status, "name", None) == "UNAVAILABLE" else None
    return False
