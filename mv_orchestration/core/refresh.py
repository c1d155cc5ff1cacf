"""Refresh one materialized view safely and measure it.

Safety rules (see docs/architecture.md):

* the method is decided at refresh time from the live catalog: a plain first refresh for an
  unpopulated MV, ``CONCURRENTLY`` when a plain-column unique index allows it, plain otherwise;
* a transaction-scoped advisory lock makes two refreshes of one MV never overlap;
* ``lock_timeout`` bounds how long we queue for a lock: short (0.5 s) for a plain refresh,
  whose waiting ``ACCESS EXCLUSIVE`` request queues every later reader of the MV behind it, so
  no reader waits longer than that; longer (10 s) for ``CONCURRENTLY``, whose ``EXCLUSIVE``
  lock readers (``ACCESS SHARE``) never wait for. ``statement_timeout`` bounds the refresh;
* on a lock timeout the holders are read from ``pg_locks``/``pg_stat_activity`` and named in
  the error (pid, user, application, query, how long their transaction has been open), and
  the attempt is retried after a capped exponential backoff with jitter
  (:func:`retry_delay`), many times (14 by default: at least 31 s, at most 55 s in all);
* a ``record`` of the result (the history row) commits in the refresh's own transaction,
  riding on its last statement; under a savepoint, so a failing record never undoes a
  refresh.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.rows import dict_row

from mv_orchestration.core.locks import LockWait, LockWaitMonitor, sibling_connect
from mv_orchestration.core.sql import advisory_key, qualname, relation
from mv_orchestration.errors import (
    LockTimeoutError,
    RefreshError,
    RefreshInProgressError,
    StatementTimeoutError,
    UnknownViewError,
)

Method = Literal["initial", "concurrently", "blocking"]
# An INSERT (UPDATE, DELETE) with named parameters that stores a refresh's result, and the
# parameters (see refresh_view's record).
Record = Callable[["RefreshResult"], tuple[bytes, Mapping[str, Any]]]
MethodPreference = Literal["auto", "blocking"]


@dataclass(frozen=True)
class RefreshOptions:
    """How a refresh behaves. Defaults suit interactive dashboards."""

    # How long one attempt queues for a lock: plain (and first) refreshes, whose waiting
    # request makes every new reader of the MV wait too, and CONCURRENTLY, which readers
    # never wait for (see docs/architecture.md, Refresh).
    lock_timeout_s: float = 0.5
    concurrent_lock_timeout_s: float = 10.0
    statement_timeout_s: float = 1800.0
    # Attempts after a lock timeout, each after retry_delay(retry, retry_backoff_s,
    # retry_backoff_max_s): with these defaults 15 attempts spread over 31-55 s.
    lock_retries: int = 14
    retry_backoff_s: float = 0.5
    retry_backoff_max_s: float = 4.0
    # "blocking" forces a plain refresh even where CONCURRENTLY is allowed (faster, but
    # readers wait).
    method: MethodPreference = "auto"
    count_rows: bool = True
    # Watch the refresh from a second session to measure its lock waits (core/locks.py).
    measure_lock_wait: bool = True


@dataclass(frozen=True)
class RefreshResult:
    schema: str
    name: str
    method: Method
    started_at: datetime
    finished_at: datetime
    duration_s: float
    lock_wait_s: float | None
    rows_before: int | None
    rows_after: int | None
    size_bytes: int
    server_version: str
    attempts: int = 1
    # Exact for CONCURRENTLY (the diff it applied, from this transaction's own counters);
    # None for plain refreshes, which rewrite the whole relation.
    rows_inserted: int | None = None
    rows_deleted: int | None = None
    # Set when the refresh committed but its ``record`` statement failed (message and
    # SQLSTATE); see :func:`refresh_view`.
    record_error: str | None = None

    @property
    def qualname(self) -> str:
        return qualname(self.schema, self.name)

    @property
    def blocks_readers(self) -> bool:
        return self.method != "concurrently"


_STATE_SQL = """
SELECT c.oid, c.relispopulated AS populated,
       EXISTS (
         SELECT 1 FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
         JOIN pg_am am ON am.oid = ic.relam
         WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid AND i.indimmediate
           AND i.indexprs IS NULL AND i.indpred IS NULL AND am.amname = 'btree'
       ) AS has_unique_index
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s AND c.relkind = 'm'
"""

_SIZE_SQL = "SELECT pg_total_relation_size(%s::oid)"

# Named parameter: a record's statement is prefixed to it as a CTE (see _refresh_once).
_XACT_SQL = (
    b"SELECT pg_stat_get_xact_tuples_inserted(%(mvo_oid)s::oid),"
    b" pg_stat_get_xact_tuples_deleted(%(mvo_oid)s::oid)"
)

# The sessions holding a lock on the MV that a lock request of ours conflicts with and that
# have held it for the whole of our wait: a transaction that began after our request queued
# behind it (a relation lock lasts until the transaction ends), so it cannot be a cause.
# CONCURRENTLY (EXCLUSIVE) conflicts with every mode but ACCESS SHARE; a plain refresh
# (ACCESS EXCLUSIVE) with every mode.
_HOLDERS_SQL = """
SELECT a.pid, coalesce(a.usename, a.backend_type) AS usename, a.application_name, a.state,
       string_agg(DISTINCT l.mode, ', ' ORDER BY l.mode) AS modes,
       left(regexp_replace(a.query, '\\s+', ' ', 'g'), 200) AS query,
       extract(epoch FROM now() - a.xact_start)::float8 AS held_s
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'relation' AND l.relation = %(oid)s AND l.granted
  AND l.pid <> pg_backend_pid()
  AND NOT (%(concurrently)s AND l.mode = 'AccessShareLock')
  AND (a.xact_start IS NULL OR a.xact_start <= now() - make_interval(secs => %(waited_s)s))
GROUP BY a.pid, a.usename, a.backend_type, a.application_name, a.state, a.query, a.xact_start
ORDER BY a.xact_start NULLS LAST, a.pid
"""


def choose_method(populated: bool, has_unique_index: bool, preference: MethodPreference) -> Method:
    if not populated:
        return "initial"
    if has_unique_index and preference == "auto":
        return "concurrently"
    return "blocking"


def _statement(schema: str, name: str, method: Method) -> sql.Composed:
    if method == "concurrently":
        return sql.SQL("REFRESH MATERIALIZED VIEW CONCURRENTLY {}").format(relation(schema, name))
    return sql.SQL("REFRESH MATERIALIZED VIEW {}").format(relation(schema, name))


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def lock_timeout_for(opts: RefreshOptions, method: Method | None) -> float:
    """The ``lock_timeout`` of one attempt with ``method`` (None: not chosen yet)."""
    return opts.concurrent_lock_timeout_s if method == "concurrently" else opts.lock_timeout_s


def retry_delay(retry: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Seconds to wait before lock retry number ``retry`` (1 for the first).

    Exponential and capped: the ceiling is ``min(cap_s, base_s * 2 ** (retry - 1))``, and the
    delay is drawn uniformly from its upper half, ``[ceiling / 2, ceiling]`` ("equal
    jitter"). The jitter keeps refreshes that timed out together from retrying in step; the
    fixed half gives the retries a guaranteed span (full jitter could draw ~0 every time), so
    the default 14 retries keep trying for at least 31 s.
    """
    if retry < 1:
        raise ValueError("retry counts from 1")
    ceiling = min(cap_s, base_s * 2.0 ** min(retry - 1, 64))
    return ceiling / 2 + rng.uniform(0.0, ceiling / 2)


def lock_retry_span(opts: RefreshOptions) -> tuple[float, float]:
    """Shortest and longest time from a plain refresh's first lock request to the end of its
    last attempt, when every attempt times out (each lasts its lock_timeout, the delays lie
    between their bounds)."""
    ceilings = [
        min(opts.retry_backoff_max_s, opts.retry_backoff_s * 2.0 ** min(n - 1, 64))
        for n in range(1, opts.lock_retries + 1)
    ]
    attempts_s = (opts.lock_retries + 1) * opts.lock_timeout_s
    return attempts_s + sum(ceilings) / 2, attempts_s + sum(ceilings)


def _lock_holders(
    conn: psycopg.Connection[Any], oid: int, method: Method | None, waited_s: float
) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """PIDs and one-line descriptions of the sessions that held our lock for ``waited_s``."""
    params = {"oid": oid, "concurrently": method == "concurrently", "waited_s": waited_s}
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(_HOLDERS_SQL, params).fetchall()
    return tuple(int(r["pid"]) for r in rows), tuple(_holder(r) for r in rows)


def _holder(r: Mapping[str, Any]) -> str:
    parts = [f"user {r['usename']}"]
    if r["application_name"]:
        parts.append(f"application {r['application_name']!r}")
    if r["state"]:
        parts.append(str(r["state"]))
    parts.append(f"holds {r['modes']}")
    if r["held_s"] is not None:
        parts.append(f"transaction open {float(r['held_s']):.1f} s")
    return f"pid {r['pid']} ({', '.join(parts)}): {r['query'] or '(no query)'}"


def _lock_message(
    exc: psycopg.Error, holders: tuple[str, ...], attempt: int, opts: RefreshOptions
) -> str:
    """The server's message, which attempt this was, and who held the lock."""
    text = f"{_message(exc)} (attempt {attempt} of {opts.lock_retries + 1})"
    if not holders:
        return (
            f"{text}; no session holds a conflicting lock on the view any more (the holder "
            "has ended, or the wait was for a lock on another relation, e.g. a source table)"
        )
    return f"{text}; lock held by {'; '.join(holders)}"


def refresh_view(
    conn: psycopg.Connection[Any],
    schema: str,
    name: str,
    options: RefreshOptions | None = None,
    *,
    on_retry: Callable[[RefreshError, int, float], None] | None = None,
    lock_monitor: LockWaitMonitor | None = None,
    record: Record | None = None,
    rng: random.Random | None = None,
) -> RefreshResult:
    """Refresh ``schema.name`` on ``conn`` (autocommit, idle); raise :class:`RefreshError`.

    ``on_retry(error, attempt, delay_s)`` is told before each retry after a lock timeout;
    the delay is :func:`retry_delay`'s, drawn from ``rng`` (default: a fresh
    ``random.Random()``). The result's (or the error's) ``attempts`` counts every attempt
    made, the last one included.
    Lock waits are measured by ``lock_monitor`` (watching ``conn``'s backend), or with
    ``options.measure_lock_wait`` by a monitor opened for this call; the result's (or the
    error's) ``lock_wait_s`` is the total over every attempt.

    ``record(result)`` gives a data-modifying statement (``INSERT``, ``UPDATE``, ``DELETE``)
    with named parameters, and its parameters, that store the result (the history row:
    :func:`mv_orchestration.core.history.success_record`). It runs in the refresh's own
    transaction, as a CTE of the refresh's last statement, so it costs no round trip and no
    commit of its own, and it commits with the refresh or not at all. A savepoint set in the
    same message as the ``REFRESH`` lets a failing record be undone alone: the refresh then
    commits without it, and the failure is in ``result.record_error``. The result passed to
    ``record`` has no ``rows_inserted``/``rows_deleted`` yet: they are read by that same
    last statement.

    A result's ``duration_s`` and ``finished_at`` end before that last statement (a read of
    two counters) and the ``COMMIT``, so the record can hold them.
    """
    opts = options or RefreshOptions()
    monitor = lock_monitor
    own_monitor: LockWaitMonitor | None = None
    if monitor is None and opts.measure_lock_wait:
        monitor = own_monitor = LockWaitMonitor(
            sibling_connect(conn, "mvo lock monitor"), conn.info.backend_pid
        )
    waited: float | None = 0.0 if monitor is not None else None
    jitter = rng or random.Random()
    attempt = 1
    try:
        while True:
            wait = LockWait()
            watch = monitor.watch(wait) if monitor is not None else nullcontext(wait)
            try:
                return _refresh_once(conn, schema, name, opts, attempt, watch, waited, record)
            except RefreshError as exc:
                waited = _plus(waited, wait.seconds)
                exc.lock_wait_s = waited
                exc.attempts = attempt
                if not isinstance(exc, LockTimeoutError) or attempt > opts.lock_retries:
                    raise
                delay = retry_delay(attempt, opts.retry_backoff_s, opts.retry_backoff_max_s, jitter)
                if on_retry is not None:
                    on_retry(exc, attempt, delay)
                time.sleep(delay)
                attempt += 1
    finally:
        if own_monitor is not None:
            own_monitor.close()


def _set_lock_timeout(cur: psycopg.Cursor[Any], opts: RefreshOptions, method: Method) -> None:
    """Switch to ``method``'s lock timeout if it is not the one the attempt began with."""
    seconds = lock_timeout_for(opts, method)
    if seconds != opts.lock_timeout_s:
        # SET LOCAL takes no parameters; the value is a formatted number.
        cur.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(_ms(seconds))))


def _plus(total: float | None, seconds: float | None) -> float | None:
    return None if total is None or seconds is None else total + seconds


def _refresh_once(
    conn: psycopg.Connection[Any],
    schema: str,
    name: str,
    opts: RefreshOptions,
    attempt: int,
    watch: AbstractContextManager[LockWait],
    waited: float | None,
    record: Record | None,
) -> RefreshResult:
    view = qualname(schema, name)
    started_at = datetime.now(UTC)
    t0 = time.perf_counter()
    method: Method | None = None
    oid: int | None = None
    # when the statement that may queue for a lock was sent: only sessions whose transaction
    # began before it can be the cause of a lock timeout (see _HOLDERS_SQL)
    lock_request = t0
    try:
        with conn.transaction(), conn.cursor() as cur, _cancelled_on_interrupt(conn):
            with watch as wait:
                # SET LOCAL takes no parameters; the values are formatted numbers.
                cur.execute(
                    sql.SQL(_SETTINGS_SQL).format(
                        sql.Literal(_ms(opts.lock_timeout_s)),
                        sql.Literal(_ms(opts.statement_timeout_s)),
                    )
                )
                state = cur.execute(_STATE_SQL, [schema, name]).fetchone()
                if state is None:
                    raise UnknownViewError(
                        f"materialized view {view} does not exist (dropped or renamed since the "
                        "catalog was read? reload the definitions, or run dg utils "
                        "refresh-defs-state)"
                    )
                oid, populated, has_unique = int(state[0]), bool(state[1]), bool(state[2])
                method = choose_method(populated, has_unique, opts.method)
                _set_lock_timeout(cur, opts, method)

                got = cur.execute(
                    "SELECT pg_try_advisory_xact_lock(%s)", [advisory_key(schema, name)]
                ).fetchone()
                if not (got and got[0]):
                    raise _in_progress(cur, view, advisory_key(schema, name), method)
                rows_before: int | None = None
                lock_request = time.perf_counter()
                if opts.count_rows and populated:
                    rows_before = _count(cur, schema, name)
                # The session's pending (unflushed) counters also hold earlier
                # transactions' writes, so the refresh's own inserts/deletes are a
                # before/after delta (reads in between do not move them).
                before = cur.execute(_XACT_SQL, {"mvo_oid": oid}).fetchone()
                refresh = _statement(schema, name, method)
                if record is not None:
                    # in the same message as the REFRESH: no round trip of its own
                    refresh = sql.Composed([refresh, sql.SQL("; "), sql.SQL(_SAVEPOINT)])
                lock_request = time.perf_counter()
                cur.execute(refresh)
                rows_after = _count(cur, schema, name) if opts.count_rows else None
                size_row = cur.execute(_SIZE_SQL, [oid]).fetchone()
                size = int(size_row[0]) if size_row else 0
            result = RefreshResult(
                schema=schema,
                name=name,
                method=method,
                started_at=started_at,
                finished_at=datetime.now(UTC),
                duration_s=time.perf_counter() - t0,
                lock_wait_s=_plus(waited, wait.seconds),
                rows_before=rows_before,
                rows_after=rows_after,
                size_bytes=size,
                server_version=conn.info.parameter_status("server_version") or "",
                attempts=attempt,
            )
            after = None
            if record is not None:
                # The record rides on the last statement, the counters' read: a
                # data-modifying CTE, so it costs no round trip of its own.
                statement, params = record(result)
                try:
                    after = cur.execute(
                        b"WITH mvo_record AS (" + statement + b") " + _XACT_SQL,
                        {**params, "mvo_oid": oid},
                    ).fetchone()
                except psycopg.Error as exc:
                    if conn.broken:
                        raise
                    # undo the record only; the refresh stays, and commits
                    cur.execute(_ROLLBACK_TO)
                    result = replace(result, record_error=_described(exc))
            if after is None:
                after = cur.execute(_XACT_SQL, {"mvo_oid": oid}).fetchone()
            if method == "concurrently" and before is not None and after is not None:
                result = replace(
                    result,
                    rows_inserted=int(after[0]) - int(before[0]),
                    rows_deleted=int(after[1]) - int(before[1]),
                )
        return result
    except RefreshError:
        raise
    except pg_errors.LockNotAvailable as exc:
        waited_s = time.perf_counter() - lock_request
        pids, holders = _lock_holders(conn, oid, method, waited_s) if oid is not None else ((), ())
        raise LockTimeoutError(
            view,
            _lock_message(exc, holders, attempt, opts),
            sqlstate=exc.sqlstate,
            method=method,
            duration_s=time.perf_counter() - t0,
            blocking_pids=pids,
            lock_holders=holders,
            attempts=attempt,
        ) from exc
    except pg_errors.QueryCanceled as exc:
        raise StatementTimeoutError(
            view, _message(exc), sqlstate=exc.sqlstate, method=method,
            duration_s=time.perf_counter() - t0,
        ) from exc  # fmt: skip
    except psycopg.Error as exc:
        raise RefreshError(
            view, _message(exc), sqlstate=exc.sqlstate, method=method,
            duration_s=time.perf_counter() - t0,
        ) from exc  # fmt: skip


@contextmanager
def _cancelled_on_interrupt(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """End the server's statement when the refresh is interrupted while it runs.

    psycopg cancels a running statement itself only on ``KeyboardInterrupt`` and
    ``SystemExit``; any other exception raised while it waits for the server (Dagster's
    ``DagsterExecutionInterruptedError`` on a run's termination) leaves the ``REFRESH``
    running, holding its locks, with every reader of the view queued behind it. So on any
    exception while a statement is in flight the statement is cancelled (bounded wait) and
    the connection closed: the server rolls the transaction back, and the view keeps its
    previous contents. (A killed process cannot do this; ``client_connection_check_interval``
    in :data:`_SETTINGS_SQL` makes the server notice the closed socket within a second.)
    """
    try:
        yield
    except BaseException:
        if conn.info.transaction_status == psycopg.pq.TransactionStatus.ACTIVE:
            with suppress(Exception):
                conn.cancel_safe(timeout=CANCEL_TIMEOUT_S)
            conn.close()
        raise


def _in_progress(
    cur: psycopg.Cursor[Any], view: str, key: int, method: Method
) -> RefreshInProgressError:
    """The overlap error, naming the session that holds the view's advisory lock."""
    # a bigint advisory key is stored as two oids: the high and the low 32 bits
    row = cur.execute(_ADVISORY_HOLDER_SQL, [(key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF]).fetchone()
    pid, app = (int(row[0]), str(row[1] or "")) if row else (None, "")
    who = f" (pid {pid}, application {app!r})" if pid is not None else ""
    return RefreshInProgressError(
        view,
        f"another refresh of this view is running{who}",
        method=method,
        holder_pid=pid,
        holder_application=app,
    )


_ADVISORY_HOLDER_SQL = """
SELECT l.pid, a.application_name
FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.pid <> pg_backend_pid()
LIMIT 1
"""

# Each attempt's session settings, for its transaction only. The server checks every second
# that the client is still connected while the refresh runs (and probes an idle socket by
# TCP keepalive after 10 s): a killed client's REFRESH ends within about a second, not when
# it next writes to the socket or at statement_timeout.
_SETTINGS_SQL = (
    "SET LOCAL lock_timeout = {}; SET LOCAL statement_timeout = {};"
    " SET LOCAL client_connection_check_interval = 1000;"
    " SET LOCAL tcp_keepalives_idle = 10; SET LOCAL tcp_keepalives_interval = 5;"
    " SET LOCAL tcp_keepalives_count = 3"
)
CANCEL_TIMEOUT_S = 2.0

_SAVEPOINT = "SAVEPOINT mvo_record"
_ROLLBACK_TO = b"ROLLBACK TO SAVEPOINT mvo_record"


def _described(exc: psycopg.Error) -> str:
    code = f" [SQLSTATE {exc.sqlstate}]" if exc.sqlstate else ""
    return f"{_message(exc)}{code}"


def _count(cur: psycopg.Cursor[Any], schema: str, name: str) -> int:
    row = cur.execute(sql.SQL("SELECT count(*) FROM {}").format(relation(schema, name))).fetchone()
    return int(row[0]) if row else 0


def _message(exc: psycopg.Error) -> str:
    primary = exc.diag.message_primary if exc.diag else None
    detail = exc.diag.message_detail if exc.diag else None
    text = primary or str(exc).strip().splitlines()[0]
    return f"{text} ({detail})" if detail else text
