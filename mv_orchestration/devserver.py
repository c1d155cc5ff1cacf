"""``mvo dev`` runs Dagster's development server (``dg dev``) as a child, tells the user what
it does in a few lines, and stops it so that no run is left behind.

Starting:

1. the UI's port must be free (:func:`check_port_free`), and the code location's
   definitions are built once in this process (:func:`check_definitions`), so that a port
   in use, a bad setting or a bad policy file fails ``mvo dev`` with its one-line error
   before any server starts, rather than a UI that never answers or shows the location as
   failed;
2. ``dg dev`` (:func:`dagster_dev_command`; ``dagster dev`` when the dg CLI is not installed)
   starts with its output going to ``dagster.log`` in the state directory (``--verbose``: to
   the terminal);
3. the UI's URL is printed once an HTTP GET on it returns 200;
4. then one line per finished run (:func:`summary_line`): what it refreshed, how long it
   took, the rows, and what started it.

Stopping: ``dg dev`` runs in a session of its own, so a terminal's Ctrl-C (sent to the whole
foreground process group) reaches ``mvo dev`` only: not the webserver, the daemon, the code
servers and the run workers at once, where it interrupted runs without a termination request
(Dagster then ends them FAILURE, or leaves them STARTED when their worker is killed first,
holding their pool slots). On the first SIGINT, SIGTERM or SIGHUP, ``mvo dev``:

1. asks Dagster to terminate every queued and in-progress run of the instance (queued ones
   are cancelled at once; running ones get a termination request, which their worker
   answers by interrupting the step: the refresh step cancels its statement) and waits up
   to :data:`CANCEL_WAIT_S` for them to end CANCELED. A run whose worker was starting when
   it was asked, and that never started, is marked CANCELED. Runs executed by ``mvo
   refresh`` processes are theirs to stop, and left alone;
2. stops ``dg dev`` with SIGINT (its own clean shutdown) and waits for it;
3. ends what is left of its process group (a code server still shutting down);
4. exits 0.

A second signal kills the process group at once and exits 128 + its number; runs still in
flight are then ended by Dagster's run monitoring on the next start (``dagster.yaml``,
:mod:`mv_orchestration.lib.launcher`). Should ``mvo dev`` itself be killed, ``dg dev``
gets SIGTERM (``PR_SET_PDEATHSIG``) and shuts down cleanly, its runs finishing.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import http.client
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import IO

import click
import dagster as dg

from mv_orchestration.cli.common import scoped_env
from mv_orchestration.errors import ConfigError
from mv_orchestration.lib.launcher import WORKER_TAG
from mv_orchestration.lib.runs import ACTIVE_STATUSES, short_id

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# How long runs may take to end CANCELED after their termination was requested.
CANCEL_WAIT_S = 10.0
# How long dagster dev may take to shut down (it waits up to 60 s for each of its children).
CHILD_STOP_S = 60.0
# How long what is left of its process group may take to exit after dagster dev did.
LEFTOVER_WAIT_S = 5.0
# How long the UI may take to answer before mvo dev says so (it keeps waiting).
UI_PATIENCE_S = 180.0
# Dagster's output, in the state directory (the previous start's is kept as dagster.log.1).
LOG_NAME = "dagster.log"
# How many of its last lines to show when dagster dev exits on its own.
LOG_TAIL_LINES = 10
_POLL_S = 0.2
_TICK_S = 0.5
_REPORT_EVERY_S = 1.0
_FINISHED = (
    dg.DagsterRunStatus.SUCCESS,
    dg.DagsterRunStatus.FAILURE,
    dg.DagsterRunStatus.CANCELED,
)
_PR_SET_PDEATHSIG = 1
# ``dagster dev``'s warning that ``dg dev`` supersedes it, for the fallback without the dg CLI:
# a ``-W`` filter by message (a ``-W`` category must be importable at interpreter start-up,
# which Dagster's is not).
_SUPERSESSION_FILTER = "ignore:Function `dev_command` is superseded"


def _echo(message: str) -> None:
    click.echo(message, err=True)


def dagster_dev_command(workspace: Path, host: str, port: int) -> list[str]:
    """The command that serves ``workspace`` on ``host:port``: ``dg dev`` (Dagster's
    current development server) when the dg CLI is installed; ``dagster dev`` otherwise,
    without its warning that ``dg dev`` supersedes it. Given a workspace file, ``dg dev``
    runs the very same server as ``dagster dev`` (no dg project needed)."""
    target = ["-w", str(workspace), "-h", host, "-p", str(port)]
    if importlib.util.find_spec("dagster_dg_cli") is not None:
        return [sys.executable, "-m", "dagster_dg_cli.cli", "dev", *target]
    return [sys.executable, "-W", _SUPERSESSION_FILTER, "-m", "dagster", "dev", *target]


def check_definitions(env: Mapping[str, str]) -> None:
    """Build the stand-alone code location's definitions with ``env``, as the code server
    will: a bad setting or policy file raises its one-line ``ConfigError`` here, before any
    server starts. Dagster's own warnings (beta, preview) are the code server's to log."""
    from mv_orchestration.definitions import build_from_settings
    from mv_orchestration.settings import Settings

    with scoped_env(**env), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_from_settings(Settings.from_env())


def check_port_free(ui_url: str) -> None:
    """The UI's address can be listened on: else a ``ConfigError``. Dagster's webserver
    that cannot bind only logs it, while the daemon goes on running schedules, and the URL
    would lead to whatever holds the port (another ``mvo dev``)."""
    parts = urllib.parse.urlsplit(ui_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as sock:
            # as the webserver (uvicorn) binds: connections closing on the port do not count
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(infos[0][4])
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {host} is in use (another mvo dev or Dagster UI?): stop it, "
                "or choose another port with --port"
            ) from None
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


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


@contextlib.contextmanager
def _dagster_output(log_path: Path, verbose: bool) -> Iterator[IO[bytes] | None]:
    """Where Dagster's output goes: the terminal (``verbose``, None), else ``log_path``
    (the previous start's log kept beside it as ``.1``)."""
    if verbose:
        yield None
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if log_path.exists():
        log_path.replace(log_path.with_name(log_path.name + ".1"))
    with log_path.open("wb") as out:
        yield out


def run_dagster_dev(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str,
    open_instance: Callable[[], AbstractContextManager[dg.DagsterInstance]],
    ui_url: str | None = None,
    verbose: bool = False,
) -> int:
    """Run ``cmd`` (:func:`dagster_dev_command`) until it exits or a stop signal comes, as
    the module docstring says; the exit code: 0 after a stop we made, else the child's.
    ``ui_url`` is printed once it answers; ``env`` must hold the code location's settings
    (checked first, :func:`check_definitions`)."""
    stop = _Stop()
    state_dir = Path(env.get("MVO_STATE_DIR") or ".mvo")
    log_path = (state_dir if state_dir.is_absolute() else Path(cwd) / state_dir) / LOG_NAME
    with _handling(stop):
        if ui_url is not None:
            check_port_free(ui_url)
        check_definitions(env)
        if stop.requested.is_set():
            return 0
        with open_instance() as instance, _dagster_output(log_path, verbose) as out:
            proc = subprocess.Popen(
                list(cmd),
                env=dict(env),
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_child_setup,
                stdout=out,
                stderr=subprocess.STDOUT if out is not None else None,
            )
            stop.pgid = proc.pid  # a new session: its process group is its pid
            if out is not None:
                _echo(f"Dagster's logs: {log_path} (mvo dev --verbose shows them here)")
            session = _Session(instance, ui_url, log_path if out is not None else None)
            while proc.poll() is None and not stop.requested.wait(_TICK_S):
                session.tick()
            if not stop.requested.is_set():
                _reap(proc.pid, wait_s=0.0)
                session.exited(int(proc.returncode))
                return int(proc.returncode)
            assert stop.signum is not None
            _stop_dagster_dev(proc, stop.signum, instance)
            session.report()  # the runs that ended while stopping
        _echo("stopped")
        return 0


def _stop_dagster_dev(
    proc: subprocess.Popen[bytes], signum: int, instance: dg.DagsterInstance
) -> None:
    """The orderly stop: the runs in flight, then dagster dev, then its leftovers."""
    _echo(f"{signal.Signals(signum).name}: stopping (Ctrl-C again to kill at once)")
    try:
        _terminate_runs(instance)
    except Exception as exc:  # the storage is unreachable: still stop the UI
        _echo(f"could not terminate the runs in flight ({type(exc).__name__}); stopping")
    _echo("stopping Dagster ...")
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=CHILD_STOP_S)
    except subprocess.TimeoutExpired:
        _echo(f"Dagster did not stop within {CHILD_STOP_S:.0f} s: killing it")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    _reap(proc.pid, wait_s=LEFTOVER_WAIT_S)


# --- what the terminal shows while Dagster runs -----------------------------------------------


def ui_answers(url: str, timeout_s: float = 2.0) -> bool:
    """Whether an HTTP GET on ``url`` returns 200 now (a server bound to every address is
    asked on the loopback one)."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname in ("0.0.0.0", "::"):
        port = f":{parts.port}" if parts.port else ""
        url = parts._replace(netloc=f"127.0.0.1{port}").geturl()
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return int(resp.status) == 200
    except (OSError, http.client.HTTPException, ValueError):
        return False


class _Session:
    """The terminal's view of a running Dagster: the URL once the UI answers, then one line
    per run that ends (:func:`summary_line`)."""

    def __init__(
        self, instance: dg.DagsterInstance, ui_url: str | None, log_path: Path | None
    ) -> None:
        self.instance = instance
        self.ui_url = ui_url
        self.log_path = log_path
        self.started = time.monotonic()
        self.ready = ui_url is None
        self.impatient = False
        self.next_report = 0.0
        self.reported: set[str] = set()
        # runs that end from now on (less a margin for the clocks of other hosts)
        self.since = datetime.now(UTC) - timedelta(seconds=5)
        self.session_start = self.since.timestamp()
        self.storage_error: str | None = None

    def tick(self) -> None:
        if not self.ready:
            self._await_ui()
        elif time.monotonic() >= self.next_report:
            self.next_report = time.monotonic() + _REPORT_EVERY_S
            self.report()

    def _await_ui(self) -> None:
        assert self.ui_url is not None
        if ui_answers(self.ui_url):
            self.ready = True
            _echo(f"Dagster UI: {self.ui_url}  (Ctrl-C to stop)")
        elif not self.impatient and time.monotonic() - self.started > UI_PATIENCE_S:
            self.impatient = True
            where = f" (see {self.log_path})" if self.log_path else ""
            _echo(f"the UI has not answered after {UI_PATIENCE_S:.0f} s; still waiting{where}")

    def report(self) -> None:
        """One line for each run that ended since the last report."""
        try:
            records = self.instance.get_run_records(
                dg.RunsFilter(statuses=list(_FINISHED), updated_after=self.since),
                order_by="update_timestamp",
                ascending=True,
            )
            new = [r for r in records if r.dagster_run.run_id not in self.reported]
            # a run that ended before this start, updated since (run retries tag it)
            new = [r for r in new if (r.end_time or self.session_start) >= self.session_start]
            lines = [self._line(r) for r in new]
        except Exception as exc:  # a storage hiccup: say so once, try again next time
            problem = type(exc).__name__
            if problem != self.storage_error:
                _echo(f"cannot read the runs from Dagster's storage ({problem}); retrying")
            self.storage_error = problem
            return
        self.storage_error = None
        for run_id, line in lines:
            self.reported.add(run_id)
            _echo(line)
        if records:  # next time, from a little before the latest end seen
            latest = max(r.update_timestamp for r in records)
            self.since = max(self.since, latest - timedelta(seconds=5))

    def _line(self, record: dg.RunRecord) -> tuple[str, str]:
        run = record.dagster_run
        ok = run.status == dg.DagsterRunStatus.SUCCESS
        rows = _rows_of(self.instance, run.run_id) if ok else None
        return run.run_id, summary_line(record, rows)

    def exited(self, code: int) -> None:
        """dagster dev ended on its own: say so, with the end of its log."""
        _echo(f"Dagster exited with code {code}")
        if self.log_path is None:
            return
        with contextlib.suppress(OSError):
            lines = self.log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            _echo(f"the last lines of {self.log_path}:")
            for line in lines:
                _echo(f"  {line}")


def _rows_of(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The rows of the views a run materialized (``dagster/row_count``), None if none says."""
    total: int | None = None
    cursor: str | None = None
    while True:
        page = instance.get_records_for_run(
            run_id,
            cursor=cursor,
            of_type=dg.DagsterEventType.ASSET_MATERIALIZATION,
            limit=1000,
        )
        for rec in page.records:
            mat = rec.event_log_entry.asset_materialization
            value = mat.metadata.get("dagster/row_count") if mat is not None else None
            if isinstance(value, dg.IntMetadataValue) and value.value is not None:
                total = (total or 0) + int(value.value)
        if not page.has_more:
            return total
        cursor = page.cursor


_OUTCOME = {"SUCCESS": "refreshed", "FAILURE": "FAILED", "CANCELED": "cancelled"}
# views named on a run's line: at least one, more while they fit in this many characters
_NAMES_WIDTH = 40


def summary_line(record: dg.RunRecord, rows: int | None) -> str:
    """``14:03:12 refreshed marketing.daily_aggregations +1 more  2.1 s  1,234 rows
    schedule mvo_marketing_daily  run 1a2b3c4d``: when it ended, the outcome, its views,
    how long it ran, the rows, what started it, and the run's short id."""
    run = record.dagster_run
    ended = record.end_time or record.update_timestamp.timestamp()
    when = datetime.fromtimestamp(ended).strftime("%H:%M:%S")
    views = _views_of(run)
    took = (
        _seconds(record.end_time - record.start_time)
        if record.start_time is not None and record.end_time is not None
        else "not started"
    )
    parts = [f"{when} {_OUTCOME.get(run.status.value, run.status.value)} {views}", took]
    if rows is not None:
        parts.append(f"{rows:,} row{'s' if rows != 1 else ''}")
    parts += [trigger_of(run.tags), f"run {short_id(run.run_id)}"]
    return "  ".join(parts)


def _views_of(run: dg.DagsterRun) -> str:
    """``a.b, a.c +3 more``: the run's views, as many as fit in :data:`_NAMES_WIDTH`."""
    names = sorted(".".join(k.path) for k in run.asset_selection or ())
    if not names:
        return run.job_name
    shown = names[:1]
    for name in names[1:]:
        if len(", ".join([*shown, name])) > _NAMES_WIDTH:
            break
        shown.append(name)
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" +{more} more" if more else "")


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 60 else f"{int(s // 60)} min {int(s % 60):02d} s"


def trigger_of(tags: Mapping[str, str]) -> str:
    """What started a run, from its tags (Dagster's system tags, and ``mvo refresh``'s)."""
    if name := tags.get("dagster/schedule_name"):
        return f"schedule {name}"
    if name := tags.get("dagster/sensor_name"):
        return f"sensor {name}"
    if parent := tags.get("dagster/parent_run_id"):
        return f"retry of {short_id(parent)}"
    if "dagster/backfill" in tags:
        return "backfill"
    if WORKER_TAG in tags or tags.get("mvo/trigger") == "cli":
        return "mvo refresh"
    return "manual"


# --- stopping -----------------------------------------------------------------------------------


def _terminate_runs(instance: dg.DagsterInstance) -> None:
    """Terminate the instance's queued and in-progress runs (not ``mvo refresh``'s) through
    Dagster and wait, up to :data:`CANCEL_WAIT_S`, for them to end.

    A run is asked again when its status moved on from the one it was asked in: a worker
    that was starting writes STARTED over the CANCELING of the request, and its run would
    then end FAILURE when the interruption reaches it."""
    deadline = time.monotonic() + CANCEL_WAIT_S
    asked: set[tuple[str, dg.DagsterRunStatus]] = set()
    while True:
        records = instance.get_run_records(dg.RunsFilter(statuses=list(ACTIVE_STATUSES)))
        active = [r.dagster_run for r in records if WORKER_TAG not in r.dagster_run.tags]
        for run in active:
            if (run.run_id, run.status) in asked or run.status == dg.DagsterRunStatus.CANCELING:
                continue
            asked.add((run.run_id, run.status))
            _terminate(instance, run)
        if not active:
            if asked:
                _echo(f"  {len({run_id for run_id, _ in asked})} run(s) terminated")
            return
        if time.monotonic() > deadline:
            ids = ", ".join(short_id(r.run_id) for r in active)
            _echo(
                f"  {len(active)} run(s) not ended after {CANCEL_WAIT_S:.0f} s ({ids}): "
                "Dagster's run monitoring ends them when it next runs"
            )
            return
        time.sleep(_POLL_S)


def _terminate(instance: dg.DagsterInstance, run: dg.DagsterRun) -> None:
    """Dagster's termination of ``run`` (the UI's Terminate). A run whose worker has not
    started it (no RUN_START) is then marked CANCELED: there is nothing to stop, and its
    worker, should it start after all, sees the run canceled and does nothing. Left
    CANCELING, such a worker exits without running it and its code server marks it FAILURE
    ("unexpectedly exited"). Its status is read again: a run listed QUEUED may have been
    launched since."""
    error: str | None = None
    try:
        instance.run_coordinator.cancel_run(run.run_id)
    except Exception as exc:  # e.g. no code server runs it yet
        first = (str(exc).strip().splitlines() or [""])[0]  # no stack trace on the terminal
        error = f"{type(exc).__name__}: {first}"
    current = instance.get_run_by_id(run.run_id)
    if current is None or current.is_finished:
        return
    if not _started(instance, run.run_id):
        instance.report_run_canceled(current, message="mvo dev stopped before the run started")
    elif error is not None:
        _echo(f"  run {short_id(run.run_id)}: termination failed ({error})")


def _started(instance: dg.DagsterInstance, run_id: str) -> bool:
    """Whether the run's worker has started executing it (its RUN_START event)."""
    page = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_START, limit=1)
    return bool(page.records)


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
