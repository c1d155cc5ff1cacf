"""Run a job in this process so that SIGINT, SIGTERM or SIGHUP cancel its run within about a
second, whatever the run is doing (``mvo refresh``).

``execute_in_process`` alone does not. Dagster captures SIGINT and SIGTERM for the whole run
and raises them, as ``DagsterExecutionInterruptedError``, only while op code runs. While a
step waits for a concurrency pool slot (its claim loop spins without sleeping) or for a
retry, the in-process executor never looks at a captured interrupt: the process ignored
both signals until it got a slot. And an interrupt that reaches op code ends the run
FAILURE, not CANCELED, unless the run's termination was requested before Dagster noticed.

So, while the job runs, every signal's arrival is also written to a pipe
(``signal.set_wakeup_fd``, by the interpreter's C-level handler, before any Python handler
runs) that a watcher thread reads. On the first SIGINT, SIGTERM or SIGHUP it

1. requests the run's termination (CANCELING, as the UI's Terminate does). A listener on the
   run's events (:meth:`_Watch.on_event`, called in the main thread as each event is stored)
   holds the step's interrupted STEP_FAILURE until that request is written, so Dagster
   always ends the run CANCELED;
2. when Dagster only captured the signal (its handler records it for the next time op code
   is entered) and no op code runs — the step waits for a slot or a retry — raises Dagster's
   ``DagsterExecutionInterruptedError`` in the main thread, and wakes it with SIGUSR1 should
   it sleep. In op code Dagster raises that exception itself, and the refresh step answers
   it by cancelling its statement;
3. if the run has not ended :data:`GRACE_S` later, marks it CANCELED itself, frees its pool
   slots, prints the outcome and exits (Dagster's log mirroring subprocesses notice their
   parent is gone and end).

Once the run ended, the main thread frees any pool slot the run still holds, prints one
line (``interrupted (SIGTERM): run … cancelled``) and exits with 128 + the signal's number,
at once (``os._exit``: tearing down an interpreter that loaded Dagster takes seconds).
A second signal exits at once, after the same bookkeeping. Signals are not blocked, so
processes started meanwhile get them as usual.

Whether Dagster captured a signal is read with ``dagster._utils.interrupts
.check_captured_interrupt``: Dagster exports no public way to ask.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any, NoReturn

import click
import dagster as dg
from dagster._utils.interrupts import check_captured_interrupt

from mv_orchestration.lib.launcher import in_process_tags

HANDLED = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
WAKE = signal.SIGUSR1
# How long the run may take to end after the interrupt before the process exits anyway.
GRACE_S = 1.5
# How long to wait for the run to be created when the signal comes just before.
_RUN_CREATED_WAIT_S = 0.5
# How long the main thread may take to run Dagster's handler for the signal.
_HANDLED_WAIT_S = 0.3

_STEP_BEGINS = frozenset({dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_RESTARTED})
_STEP_ENDS = frozenset(
    {
        dg.DagsterEventType.STEP_SUCCESS,
        dg.DagsterEventType.STEP_FAILURE,
        dg.DagsterEventType.STEP_UP_FOR_RETRY,
        dg.DagsterEventType.STEP_SKIPPED,
    }
)
_INTERRUPTS = frozenset({"DagsterExecutionInterruptedError", "KeyboardInterrupt"})


def execute_interruptibly(
    job: dg.JobDefinition,
    *,
    instance: dg.DagsterInstance,
    tags: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> dg.ExecuteInProcessResult:
    """``job.execute_in_process(instance=instance, tags=tags, **kwargs)``, cancelled by
    SIGINT, SIGTERM or SIGHUP as the module docstring says, after which the process exits
    with 128 + the signal's number.

    The run is also tagged with this process
    (:func:`~mv_orchestration.lib.launcher.in_process_tags`), so that Dagster's run
    monitoring fails it should the process be killed outright, and the UI's Terminate
    reaches it. Outside the main thread, where signals cannot be handled: a plain run.
    """
    run_tags = {**(tags or {}), **in_process_tags()}
    if threading.current_thread() is not threading.main_thread():
        return job.execute_in_process(instance=instance, tags=run_tags, **kwargs)
    watch = _Watch(instance, str(uuid.uuid4()), threading.get_ident())
    instance.add_event_listener(watch.run_id, watch.on_event)
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, WAKE)}
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    # Until Dagster installs its own handlers (and once it has restored them), SIGTERM and
    # SIGHUP act like SIGINT: KeyboardInterrupt.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGHUP, _as_sigint)
    signal.signal(WAKE, _wake)
    watcher = threading.Thread(target=watch.run, args=(read_fd,), name="mvo-interrupts")
    watcher.daemon = True
    result: dg.ExecuteInProcessResult | None = None
    try:
        try:
            watcher.start()
            result = job.execute_in_process(
                instance=instance, run_id=watch.run_id, tags=run_tags, **kwargs
            )
        finally:
            watch.stop(watcher)
    except (KeyboardInterrupt, dg.DagsterExecutionInterruptedError):
        # raised where Dagster does not catch it: before or after the run, or a
        # KeyboardInterrupt outside Dagster's signal handlers
        watch.stop(watcher)
        if watch.signum is None:
            raise
    finally:
        watch.stop(watcher)
        signal.set_wakeup_fd(previous_fd)
        for signum, handler in previous.items():
            if handler is not None:  # None: installed outside Python, cannot be restored
                signal.signal(signum, handler)
        os.close(read_fd)
        os.close(write_fd)
    if watch.signum is not None:
        # Everything is recorded and printed: exit now. Tearing down an interpreter that
        # loaded Dagster takes seconds, longer than a signal should wait.
        watch.exit()
    assert result is not None
    return result


def _wake(signum: int, frame: object) -> None:
    """SIGUSR1: nothing to do. Receiving it makes a sleeping main thread run Python code,
    where a pending exception is raised."""


def _as_sigint(signum: int, frame: Any) -> None:
    """SIGHUP: whatever SIGINT does now (Dagster's capture, or KeyboardInterrupt)."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


def _raise_in(thread_id: int) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(dg.DagsterExecutionInterruptedError)
    )
    signal.pthread_kill(thread_id, WAKE)


def _clear_pending(thread_id: int) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)


class _Watch:
    """Shared by the main thread (the run's event listener) and the watcher thread."""

    def __init__(self, instance: dg.DagsterInstance, run_id: str, main_id: int) -> None:
        self.instance = instance
        self.run_id = run_id
        self.main_id = main_id
        self.signum: int | None = None
        self.termination_requested = threading.Event()
        self._in_step = False
        self._interrupted_step = False
        self._lock = threading.Lock()
        self._done = False
        self._finished = False
        self._stop_r, self._stop_w = os.pipe()

    # --- main thread ---------------------------------------------------------------------

    def on_event(self, entry: Any) -> None:
        """Each event of the run, as it is stored: follow whether op code runs; hold an
        interrupted step's failure until the run's termination has been requested."""
        event = entry.dagster_event
        if event is None:
            return
        if event.event_type in _STEP_BEGINS:
            self._in_step = True
        elif event.event_type in _STEP_ENDS:
            self._in_step = False
        if event.event_type == dg.DagsterEventType.STEP_FAILURE:
            error = event.step_failure_data.error
            if error is not None and error.cls_name in _INTERRUPTS:
                self._interrupted_step = True
                self.termination_requested.wait(GRACE_S)

    def stop(self, watcher: threading.Thread) -> None:
        """The main thread is done with the run: no exception is raised in it after this.
        The watcher reads the signals already written to the pipe before it ends."""
        with self._lock:
            first = not self._done
            self._done = True
            _clear_pending(self.main_id)
        if first:
            os.write(self._stop_w, b"x")
            if watcher.ident is not None:
                watcher.join(timeout=GRACE_S + 1.0)
            os.close(self._stop_w)

    def finish(self) -> int:
        """Make sure the run ended CANCELED and holds no pool slot; print the outcome.
        The exit code: 128 + the signal's number."""
        assert self.signum is not None
        with self._lock:
            if self._finished:
                return 128 + self.signum
            self._finished = True
        name = signal.Signals(self.signum).name
        run = self.instance.get_run_by_id(self.run_id)
        if run is None:
            outcome = f"run {self.run_id} was not started"
        else:
            if not run.is_finished:
                self.instance.report_run_canceled(
                    run, message=f"mvo refresh stopped on {name} before the run ended"
                )
            storage = self.instance.event_log_storage
            if storage.supports_global_concurrency_limits:
                storage.free_concurrency_slots_for_run(self.run_id)
            ended = self.instance.get_run_by_id(self.run_id)
            status = ended.status if ended is not None else run.status
            outcome = (
                f"run {self.run_id} cancelled"
                if status == dg.DagsterRunStatus.CANCELED
                else f"run {self.run_id} had already ended ({status.value})"
            )
        click.echo(f"interrupted ({name}): {outcome}", err=True)
        return 128 + self.signum

    # --- watcher thread ------------------------------------------------------------------

    def run(self, read_fd: int) -> None:
        try:
            self._watch(read_fd)
        finally:
            os.close(self._stop_r)

    def _watch(self, read_fd: int) -> None:
        deadline: float | None = None
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([read_fd, self._stop_r], [], [], timeout)
            received = [s for s in _drain(read_fd) if s in HANDLED]
            with self._lock:
                first = bool(received) and self.signum is None
                if first:
                    self.signum = received[0]
                done = self._done
            if done:
                return
            if not ready or (received and not first):
                # the run did not end in time after the first signal, or a second signal
                self._exit_now()
            if not first:
                continue
            assert self.signum is not None
            self._request_termination(self.signum)
            self._raise_if_only_captured()
            deadline = time.monotonic() + GRACE_S

    def _raise_if_only_captured(self) -> None:
        """Raise the interrupt in the main thread if Dagster's handler only recorded it and
        no op code runs (see the module docstring, 2)."""
        end = time.monotonic() + _HANDLED_WAIT_S
        while not check_captured_interrupt() and time.monotonic() < end and not self._done:
            time.sleep(0.01)
        with self._lock:
            if (
                not self._done
                and not self._in_step
                and not self._interrupted_step
                and check_captured_interrupt()
            ):
                _raise_in(self.main_id)

    def _request_termination(self, signum: int) -> None:
        try:
            end = time.monotonic() + _RUN_CREATED_WAIT_S
            run = self.instance.get_run_by_id(self.run_id)
            while run is None and time.monotonic() < end and not self._done:
                time.sleep(0.02)
                run = self.instance.get_run_by_id(self.run_id)
            if (
                run is not None
                and not run.is_finished
                and run.status != dg.DagsterRunStatus.CANCELING
            ):
                self.instance.report_run_canceling(
                    run, message=f"mvo refresh received {signal.Signals(signum).name}"
                )
        finally:
            self.termination_requested.set()

    def _exit_now(self) -> None:
        """From the watcher: the run did not end in time, or a second signal came."""
        self.exit()

    def exit(self) -> NoReturn:
        """:meth:`finish`, then leave the process at once with its exit code."""
        self.signum = self.signum or signal.SIGTERM
        code = 128 + self.signum
        try:
            code = self.finish()
        except Exception as exc:  # the instance's storage is unreachable: exit all the same
            click.echo(
                f"interrupted: run {self.run_id} not marked cancelled ({type(exc).__name__})",
                err=True,
            )
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)


def _drain(fd: int) -> list[int]:
    """The signal numbers written to the wakeup pipe since the last read."""
    data = b""
    while True:
        try:
            chunk = os.read(fd, 512)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return list(data)
