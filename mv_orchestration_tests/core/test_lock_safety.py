"""Lock safety for readers (issue 11, item 9), against a real server with real sessions.

A plain ``REFRESH`` asks for ACCESS EXCLUSIVE; while that request waits, every new reader of
the MV queues behind it. With the default options no reader waits longer than 1.5 s, the
refresh keeps retrying until the holder is gone, and a lock-timeout error names the holders.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from mv_orchestration.core import history
from mv_orchestration.core.refresh import (
    RefreshOptions,
    RefreshResult,
    _lock_holders,
    refresh_view,
    retry_delay,
)
from mv_orchestration.errors import LockTimeoutError, RefreshError

READER_BOUND_S = 1.5  # the bound for a SELECT started while a refresh waits
DEADLINE_S = 90.0  # for conditions; far above every expected duration

_WAITING_SQL = """
SELECT extract(epoch FROM clock_timestamp() - waitstart)::float8, mode
FROM pg_locks WHERE pid = %s AND NOT granted AND waitstart IS NOT NULL
"""


@pytest.fixture
def views(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    conn.execute(
        """
        CREATE TABLE src (id int PRIMARY KEY);
        INSERT INTO src SELECT generate_series(1, 100);
        CREATE MATERIALIZED VIEW mv_plain AS SELECT id FROM src;
        CREATE MATERIALIZED VIEW mv_unique AS SELECT id FROM src;
        CREATE UNIQUE INDEX ON mv_unique (id);
        """
    )
    return conn


def _other(conn: psycopg.Connection[Any], app: str = "test") -> psycopg.Connection[Any]:
    return psycopg.connect(
        conn.info.dsn, password=conn.info.password, autocommit=True, application_name=app
    )


def _until(condition: Callable[[], bool], what: str, deadline_s: float = DEADLINE_S) -> None:
    give_up = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def _waiting(observer: psycopg.Connection[Any], pid: int) -> tuple[float, str] | None:
    """How long backend ``pid`` has waited for a lock, and for which mode; None if not."""
    row = observer.execute(_WAITING_SQL, [pid]).fetchone()
    return None if row is None else (float(row[0]), str(row[1]))


@contextmanager
def _in_background(fn: Callable[[], Any]) -> Iterator[list[Any]]:
    """Run ``fn`` in a thread; the list gets its result or exception. Joined on exit."""
    out: list[Any] = []

    def target() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # surfaced by the test
            out.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        thread.join(DEADLINE_S)
        assert not thread.is_alive(), "background refresh did not end"


def _timed_read(reader: psycopg.Connection[Any], view: str) -> float:
    t0 = time.perf_counter()
    reader.execute(f"SELECT count(*) FROM {view}").fetchone()  # noqa: S608 (a test constant)
    return time.perf_counter() - t0


# --- the backoff, deterministically ---------------------------------------------------------


def test_retry_delay_is_capped_exponential_with_equal_jitter() -> None:
    rng = random.Random(11)
    for retry in range(1, 40):
        ceiling = min(4.0, 0.5 * 2 ** (retry - 1))
        draws = [retry_delay(retry, 0.5, 4.0, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in draws), retry
        # jittered: the draws spread over most of the upper half, not one value
        assert max(draws) - min(draws) > 0.8 * ceiling / 2
    # the same seed gives the same delays; a huge retry number neither overflows nor escapes
    # the cap
    a, b = random.Random(3), random.Random(3)
    assert [retry_delay(n, 0.5, 4.0, a) for n in range(1, 20)] == [
        retry_delay(n, 0.5, 4.0, b) for n in range(1, 20)
    ]
    assert 2.0 <= retry_delay(10_000, 0.5, 4.0, a) <= 4.0
    assert retry_delay(3, 0.0, 4.0, a) == 0.0
    with pytest.raises(ValueError):
        retry_delay(0, 0.5, 4.0, a)


def test_default_retries_span_a_25_s_reader_transaction() -> None:
    """Attempts (each at least one lock_timeout when it fails) and delays, at their bounds."""
    opts = RefreshOptions()
    ceilings = [
        min(opts.retry_backoff_max_s, opts.retry_backoff_s * 2 ** (n - 1))
        for n in range(1, opts.lock_retries + 1)
    ]
    attempts_s = (opts.lock_retries + 1) * opts.lock_timeout_s
    shortest = attempts_s + sum(c / 2 for c in ceilings)
    longest = attempts_s + sum(ceilings)
    assert opts.lock_timeout_s <= 1.0 < opts.concurrent_lock_timeout_s
    assert (shortest, longest) == (31.25, 55.0)  # as docs/architecture.md says


# --- readers behind a waiting plain refresh ---------------------------------------------------


def test_reader_never_waits_long_behind_a_blocking_refresh_with_defaults(
    views: psycopg.Connection[Any],
) -> None:
    """A long report holds ACCESS SHARE; a default refresh (plain: no unique index) waits
    and retries; readers started at the start of each wait, and back to back throughout,
    each return within 1.5 s. Once the report commits, the refresh succeeds, and its
    ``attempts`` is every attempt it made."""
    retries: list[tuple[RefreshError, int, float]] = []
    at_wait_start: list[float] = []
    back_to_back: list[float] = []
    done = threading.Event()
    pid = views.info.backend_pid

    def reads_at_each_wait_start() -> None:
        with _other(views, "reader_a") as reader, _other(views) as observer:
            while not done.is_set():
                _until(lambda: done.is_set() or _waiting(observer, pid) is not None, "a wait")
                if not done.is_set():
                    at_wait_start.append(_timed_read(reader, "mv_plain"))
                    # the next wait, not this one again
                    _until(lambda: done.is_set() or _waiting(observer, pid) is None, "its end")

    def reads_back_to_back() -> None:
        with _other(views, "reader_b") as reader:
            while not done.is_set():
                back_to_back.append(_timed_read(reader, "mv_plain"))

    with _other(views, "long_report") as holder:
        holder.execute("BEGIN; SELECT count(*) FROM mv_plain")
        with _in_background(
            lambda: refresh_view(
                views, "public", "mv_plain", on_retry=lambda e, n, d: retries.append((e, n, d))
            )
        ) as outcome:
            readers = [
                threading.Thread(target=reads_at_each_wait_start, daemon=True),
                threading.Thread(target=reads_back_to_back, daemon=True),
            ]
            for t in readers:
                t.start()
            try:
                # readers have met at least three attempts' waits before the report ends
                _until(lambda: len(retries) >= 3 and len(at_wait_start) >= 3, "3 retries")
                holder.execute("COMMIT")
                _until(lambda: bool(outcome), "the refresh")
            finally:
                done.set()
                for t in readers:
                    t.join(DEADLINE_S)
    [result] = outcome
    assert isinstance(result, RefreshResult), result
    assert result.method == "blocking"
    assert result.attempts == len(retries) + 1 >= 4
    assert [n for _, n, _ in retries] == list(range(1, len(retries) + 1))
    assert all(isinstance(e, LockTimeoutError) for e, _, _ in retries)
    # readers really queued behind the waiting refresh (about one lock_timeout each) ...
    assert max(at_wait_start) >= 0.2, at_wait_start
    # ... and none waited longer than the bound
    assert max(at_wait_start + back_to_back) < READER_BOUND_S, (at_wait_start, back_to_back)


def test_concurrently_waits_longer_and_readers_do_not_queue(
    views: psycopg.Connection[Any],
) -> None:
    """CONCURRENTLY asks for EXCLUSIVE, which ACCESS SHARE does not conflict with: a reader
    passes a waiting concurrent refresh at once, so that refresh keeps its longer timeout."""
    pid = views.info.backend_pid
    with (
        _other(views, "analyzer") as holder,
        _other(views) as observer,
        _other(views, "reader") as reader,
    ):
        # ANALYZE holds SHARE UPDATE EXCLUSIVE until commit: it conflicts with EXCLUSIVE
        holder.execute("BEGIN; ANALYZE mv_unique")
        with _in_background(lambda: refresh_view(views, "public", "mv_unique")) as outcome:
            _until(lambda: _waiting(observer, pid) is not None, "the refresh to wait")
            waited = _timed_read(reader, "mv_unique")
            # past the blocking method's timeout, and still waiting: the long one applies
            _until(
                lambda: (
                    (w := _waiting(observer, pid)) is not None
                    and w[0] > 2 * RefreshOptions().lock_timeout_s
                ),
                "a long wait",
            )
            wait = _waiting(observer, pid)
            holder.execute("COMMIT")
    assert wait is not None and wait[1] == "ExclusiveLock"
    assert waited < 0.5 * READER_BOUND_S
    [result] = outcome
    assert isinstance(result, RefreshResult), result
    assert result.method == "concurrently" and result.attempts == 1


# --- the lock-timeout error -----------------------------------------------------------------


def test_lock_timeout_names_holders_and_counts_attempts(views: psycopg.Connection[Any]) -> None:
    history.ensure_history(views)
    started = datetime.now(UTC)
    retries: list[int] = []
    with _other(views, "long_report") as holder:
        holder.execute("BEGIN")
        holder.execute("SELECT count(*) AS report_marker FROM mv_plain")
        user = holder.info.user
        with pytest.raises(LockTimeoutError) as info:
            refresh_view(
                views,
                "public",
                "mv_plain",
                RefreshOptions(lock_timeout_s=0.2, lock_retries=2, retry_backoff_s=0.05),
                on_retry=lambda e, n, d: retries.append(n),
                rng=random.Random(1),
            )
        holder_pid = holder.info.backend_pid
        err = info.value
        history.record_failure(
            views,
            history.DEFAULT_SCHEMA,
            view_schema="public",
            view_name="mv_plain",
            error=err,
            started_at=started,
            finished_at=datetime.now(UTC),
            run_id=None,
        )
    assert retries == [1, 2] and err.attempts == 3
    assert err.blocking_pids == (holder_pid,)
    [described] = err.lock_holders
    assert described.startswith(f"pid {holder_pid} (user {user}, application 'long_report', ")
    assert "idle in transaction" in described and "holds AccessShareLock" in described
    assert described.endswith("SELECT count(*) AS report_marker FROM mv_plain")
    # how long it has held the lock: its transaction spans all three attempts (3 x 0.2 s)
    held = re.search(r"transaction open (\d+\.\d) s", described)
    assert held is not None and float(held.group(1)) >= 0.6
    assert err.message == (
        f"canceling statement due to lock timeout (attempt 3 of 3); lock held by {described}"
    )
    # the CLI prints str(err); the history row stores the message and the attempts
    assert err.message in str(err)
    row = views.execute(
        "SELECT error_message, attempts, sqlstate FROM mvo.refresh_history"
    ).fetchone()
    assert row == (err.message, 3, "55P03")


def test_readers_that_queued_behind_the_refresh_are_not_named(
    views: psycopg.Connection[Any],
) -> None:
    """Only sessions that held the lock for the whole wait can have caused it."""
    pid = views.info.backend_pid
    with (
        _other(views, "long_report") as holder,
        _other(views, "late_reader") as late,
        _other(views) as observer,
    ):
        holder.execute("BEGIN; SELECT count(*) FROM mv_plain")
        opts = RefreshOptions(lock_timeout_s=0.5, lock_retries=0)
        with _in_background(lambda: refresh_view(views, "public", "mv_plain", opts)) as outcome:
            _until(lambda: _waiting(observer, pid) is not None, "the refresh to wait")
            # queues behind the refresh; granted when it gives up; stays in its transaction
            late.execute("BEGIN; SELECT count(*) FROM mv_plain")
        [err] = outcome
        assert isinstance(err, LockTimeoutError), err
        assert err.blocking_pids == (holder.info.backend_pid,)
        # the late reader does hold the lock now: it was left out for its transaction's age
        oid = views.execute("SELECT 'mv_plain'::regclass::oid").fetchone()
        assert oid is not None
        pids, _ = _lock_holders(views, int(oid[0]), "blocking", 0.0)
        assert set(pids) == {holder.info.backend_pid, late.info.backend_pid}
        # for CONCURRENTLY, ACCESS SHARE holders are no cause at all
        assert _lock_holders(views, int(oid[0]), "concurrently", 0.0) == ((), ())
        late.execute("COMMIT")
        holder.execute("COMMIT")
