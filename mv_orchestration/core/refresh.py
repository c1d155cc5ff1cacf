"""Refresh one materialized view safely and measure it.

Safety rules (see docs/architecture.md):

* the method is decided at refresh time from the live catalog: a plain first refresh for an
  unpopulated MV, ``CONCURRENTLY`` when a plain-column unique index allows it, plain otherwise;
* a transaction-scoped advisory lock makes two refreshes of one MV never overlap;
* ``lock_timeout`` bounds how long we queue for the MV's lock — a waiting ``REFRESH`` would
  block every later reader queued behind it — and ``statement_timeout`` bounds the refresh;
* on a lock timeout the holders are read from ``pg_locks``/``pg_stat_activity`` and reported,
  and the attempt is retried with backoff;
* a ``record`` of the result (the history row) commits in the refresh's own transaction,
  riding on its last statement; under a savepoint, so a failing record never undoes a
  refresh.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
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

    lock_timeout_s: float = 10.0
    statement_timeout_s: float = 1800.0
    lock_retries: int = 2
    retry_backoff_s: float = 2.0
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

_HOLDERS_SQL = """
SELECT DISTINCT a.pid, a.usename, a.application_name, a.state,
       left(regexp_replace(a.query, '\\s+', ' ', 'g'), 200) AS query,
       a.xact_start
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'relation' AND l.relation = %s AND l.granted AND l.pid <> pg_backend_pid()
ORDER BY a.pid
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


def _lock_holders(
    conn: psycopg.Connection[Any], oid: int
) -> tuple[tuple[int, ...], tuple[str, ...]]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(_HOLDERS_SQL, [oid]).fetchall()
    pids = tuple(int(r["pid"]) for r in rows)
    described = tuple(
        f"pid {r['pid']} ({r['usename']}"
        + (f", {r['application_name']}" if r["application_name"] else "")
        + f", {r['state']}): {r['query']}"
        for r in rows
    )
    return pids, described


def refresh_view(
    conn: psycopg.Connection[Any],
    schema: str,
    name: str,
    options: RefreshOptions | None = None,
    *,
    on_retry: Callable[[RefreshError, int, float], None] | None = None,
    lock_monitor: LockWaitMonitor | None = None,
    record: Record | None = None,
) -> RefreshResult:
    """Refresh ``schema.name`` on ``conn`` (autocommit, idle); raise :class:`RefreshError`.

    ``on_retry(error, attempt, delay_s)`` is told before each retry after a lock timeout.
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
                if not isinstance(exc, LockTimeoutError) or attempt > opts.lock_retries:
                    raise
                delay = opts.retry_backoff_s * (2 ** (attempt - 1))
                if on_retry is not None:
                    on_retry(exc, attempt, delay)
                time.sleep(delay)
                attempt += 1
    finally:
        if own_monitor is not None:
            own_monitor.close()


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
    try:
        with conn.transaction(), conn.cursor() as cur:
            with watch as wait:
                # SET LOCAL takes no parameters; the values are formatted numbers.
                cur.execute(
                    sql.SQL("SET LOCAL lock_timeout = {}; SET LOCAL statement_timeout = {}").format(
                        sql.Literal(_ms(opts.lock_timeout_s)),
                        sql.Literal(_ms(opts.statement_timeout_s)),
                    )
                )
                state = cur.execute(_STATE_SQL, [schema, name]).fetchone()
                if state is None:
                    raise UnknownViewError(f"materialized view {view} does not exist")
                oid, populated, has_unique = int(state[0]), bool(state[1]), bool(state[2])
                method = choose_method(populated, has_unique, opts.method)

                got = cur.execute(
                    "SELECT pg_try_advisory_xact_lock(%s)", [advisory_key(schema, name)]
                ).fetchone()
                if not (got and got[0]):
                    raise RefreshInProgressError(
                        view, "another refresh of this view is running", method=method
                    )
                rows_before: int | None = None
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
        pids, holders = _lock_holders(conn, oid) if oid is not None else ((), ())
        raise LockTimeoutError(
            view,
            _message(exc),
            sqlstate=exc.sqlstate,
            method=method,
            duration_s=time.perf_counter() - t0,
            blocking_pids=pids,
            lock_holders=holders,
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
