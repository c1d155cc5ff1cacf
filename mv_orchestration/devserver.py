"""``mvo dev`` runs ``dagster dev`` as a child and stops it so that no run is left behind.

``dagster dev`` runs in a session of its own, so a terminal's Ctrl-C (sent to the whole
foreground process group) reaches ``mvo dev`` only: not the webserver, the daemon, the code
servers and the run workers at once, where it interrupted runs without a termination request
(Dagster then ends them FAILURE, or leaves them STARTED when their worker is killed first,
holding their pool slots). On the first SIGINT, SIGTERM or SIGHUP, ``mvo dev``:

1. asks Dagster to terminate every queued and in-progress run of the instance (queued ones
   are cancelled at once; running ones get a termination request, which their worker
   answers by interrupting the step: the refresh step cancels its statement) and waits up
   to :data:`CANCEL_WAIT_S` for them to end CANCELED. Runs executed by ``mvo refresh``
   processes are theirs to stop, and left alone;
2. stops ``dagster dev`` with SIGINT (its own clean shutdown) and waits for it;
3. ends what is left of its process group (a code server still shutting down);
4. exits 0.

A second signal kills the process group at once and exits 128 + its number; runs still in
flight are then ended by Dagster's run monitoring on the next start (``dagster.yaml``,
:mod:`mv_orchestration.lib.launcher`). Should ``mvo dev`` itself be killed, ``dagster dev``
gets SIGTERM (``PR_SET_PDEATHSIG``) and shuts down cleanly, its runs finishing.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from types import FrameType

import click
import dagster as dg

from mv_orchestration.lib.launcher import WORKER_TAG
from mv_orchestration.lib.runs import ACTIVE_STATUSES

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# How long runs may take to end CANCELED after their termination was requested.
CANCEL_WAIT_S = 10.0
# How long dagster dev may take to shut down (it waits up to 60 s for each of its children).
CHILD_STOP_S = 60.0
# How long what is left of its process group may take to exit after dagster dev did.
LEFTOVER_WAIT_S = 5.0
_POLL_S = 0.2
_UNSTARTED = (dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING)
_PR_SET_PDEATHSIG = 1


def _echo(message: str) -> None:
    click.echo(message, err=True)


def _child_setup() -> None:  # pragma: no cover - runs in the child between fork and exec
    # A shell starts background jobs with SIGINT ignored, and that survives exec: give
    # dagster dev a working SIGINT whatever started us.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    # SIGTERM (dagster dev's clean shutdown) when mvo dev dies, even by SIGKILL
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class _Stop:
    """Stop requests: the first starts the orderly stop, a second kills at once."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.signum: int | None = None
        self.pgid: int | None = None

    def handler(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            self.requested.set()
            return
        # second signal: now
        _echo(f"{signal.Signals(signum).name} again: killing Dagster now")
        if self.pgid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pgid, signal.SIGKILL)
        sys.stderr.flush()
        os._exit(128 + signum)


@contextlib.contextmanager
def _handling(stop: _Stop) -> Iterator[None]:
    previous = {s: signal.signal(s, stop.handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_dagster_dev(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str,
    open_instance: Callable[[], AbstractContextManager[dg.DagsterInstance]],
) -> int:
    """Run ``cmd`` (``dagster dev …``) until it exits or a stop signal comes; the exit code:
    0 after a stop we made, else the child's."""
    stop = _Stop()
    with _handling(stop):
        proc = subprocess.Popen(
            list(cmd), env=dict(env), cwd=cwd, start_new_session=True, preexec_fn=_child_setup
        )
        stop.pgid = proc.pid  # a new session: its process group is its pid
        while proc.poll() is None and not stop.requested.wait(0.5):
            pass
        if not stop.requested.is_set():
            _reap(proc.pid, wait_s=0.0)
            return int(proc.returncode)
        assert stop.signum is not None
        _echo(f"{signal.Signals(stop.signum).name}: stopping (Ctrl-C again to kill at once)")
        try:
            with open_instance() as instance:
                _terminate_runs(instance)
        except Exception as exc:  # the storage is unreachable: still stop the UI
            _echo(f"could not terminate the runs in flight ({type(exc).__name__}); stopping")
        _echo("stopping dagster dev ...")
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=CHILD_STOP_S)
        except subprocess.TimeoutExpired:
            _echo(f"dagster dev did not stop within {CHILD_STOP_S:.0f} s: killing it")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        _reap(proc.pid, wait_s=LEFTOVER_WAIT_S)
        _echo("stopped")
        return 0


def _terminate_runs(instance: dg.DagsterInstance) -> None:
    """Terminate the instance's queued and in-progress runs (not ``mvo refresh``'s) through
    Dagster and wait, up to :data:`CANCEL_WAIT_S`, for them to end."""
    deadline = time.monotonic() + CANCEL_WAIT_S
    asked: set[str] = set()
    while True:
        records = instance.get_run_records(dg.RunsFilter(statuses=list(ACTIVE_STATUSES)))
        active = [r.dagster_run for r in records if WORKER_TAG not in r.dagster_run.tags]
        for run in active:
            if run.run_id in asked or run.status == dg.DagsterRunStatus.CANCELING:
                continue
            asked.add(run.run_id)
            _terminate(instance, run)
        if not active:
            if asked:
                _echo(f"  {len(asked)} run(s) terminated")
            return
        if time.monotonic() > deadline:
            ids = ", ".join(r.run_id[:8] for r in active)
            _echo(
                f"  {len(active)} run(s) not ended after {CANCEL_WAIT_S:.0f} s ({ids}): "
                "Dagster's run monitoring ends them when it next runs"
            )
            return
        time.sleep(_POLL_S)


def _terminate(instance: dg.DagsterInstance, run: dg.DagsterRun) -> None:
    """Dagster's termination of ``run`` (the UI's Terminate). A run whose worker has not
    started yet, and that Dagster cannot reach, is marked CANCELED: there is nothing to stop."""
    try:
        reached = bool(instance.run_coordinator.cancel_run(run.run_id))
    except Exception as exc:
        _echo(f"  run {run.run_id}: termination failed ({type(exc).__name__}: {exc})")
        reached = False
    if not reached and run.status in _UNSTARTED:
        current = instance.get_run_by_id(run.run_id)
        if current is not None and not current.is_finished:
            instance.report_run_canceled(current, message="mvo dev stopped before it started")


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies, dead but not yet reaped by
    whoever adopted them, do not count)."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        entries = []
    if not entries:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def _reap(pgid: int, *, wait_s: float) -> None:
    """Let what is left of the process group exit on its own for ``wait_s``, then SIGTERM
    it, then SIGKILL."""
    for sig, wait in ((None, wait_s), (signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
        if sig is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
        end = time.monotonic() + wait
        while _group_alive(pgid) and time.monotonic() < end:
            time.sleep(_POLL_S)
        if not _group_alive(pgid):
            return
