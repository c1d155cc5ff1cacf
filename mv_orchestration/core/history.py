"""Refresh history kept in the target database itself.

Replaces the hand-built ``metrics_refresh_log`` + ``get_metrics_refresh_stats()`` +
``cleanup_old_metrics_logs()`` that the SaaS metrics team wrote for one view, for every
materialized view.

What :func:`ensure_history` creates (schema ``mvo`` unless told otherwise), as numbered
migrations recorded in ``<schema>.schema_migrations``:

* the schema, if missing, and ``<schema>.schema_migrations(version, applied_at)``;
* **version 1**

  - ``<schema>.refresh_history``: one row per refresh attempt (view, run id, start, finish,
    duration, method, rows before/after, size, lock wait, ``success``/``failure``, SQLSTATE,
    error message, attempts), indexed on ``(view_schema, view_name, started_at DESC)`` and on
    ``started_at`` (for retention);
  - ``<schema>.last_refresh``: a view with one row per MV — ``data_as_of`` (when its last
    successful refresh finished), its row count then, and the last attempt's status, SQLSTATE
    and error. Apps read it to show "data as of …";
  - ``<schema>.refresh_stats(hours integer DEFAULT 24)`` (like the SaaS metrics
    team's ``get_metrics_refresh_stats``) and ``<schema>.refresh_stats_since(since timestamptz)``
    which it calls: per view over attempts started in the window — total, successes,
    failures, success rate (percent, 2 decimals), avg/min/max duration of the *successful*
    refreshes (a lock-timeout failure's duration measures waiting, not refreshing), last
    successful refresh, last attempt and the latest error message.

* **version 2**: status ``cancelled`` (an attempt stopped on purpose: a terminated run, a
  signal; the view kept its previous contents). Cancelled attempts count neither as
  successes nor as failures in ``refresh_stats``: ``total`` and ``success_rate`` are over
  successes and failures only.
* **version 3**: status ``running``. Each refresh writes its row *before* it starts (status
  ``running``, ``finished_at`` and ``duration_ms`` still NULL, and the session's
  ``backend_pid``/``backend_start``) and completes that same row when it ends. A row still
  ``running`` whose session no longer exists (a SIGKILLed worker, a lost connection, a
  crashed server) is marked ``cancelled`` by :func:`sweep_abandoned`, which every refresh
  step runs when it opens the history; its ``finished_at`` stays NULL (the end was not
  seen). ``last_refresh.last_status`` is ``running`` while a refresh runs.
* **version 4**: target lag. ``data_timestamp`` (every change of every root source
  committed before it is in the view: the start of the refresh, or of the earliest refresh
  upstream of it in the same run), ``lag_at_completion_ms`` (for a refresh requested for a
  target lag: how old the oldest change the view was missing was when the refresh ended)
  and ``target_met``, all NULL on older rows and on failures; status ``no_data`` (a refresh
  that was not needed: nothing changed) is allowed. Written by :func:`record_lag` and
  :func:`record_no_data`. ``last_refresh`` gains ``data_timestamp`` (the latest of its
  successful and ``no_data`` rows; before version 4, a refresh's start), and its
  ``last_*`` columns ignore ``no_data`` rows, which are no attempts.

Migrations run in one transaction under a transaction-level advisory lock, so concurrent
callers (several code servers, run workers) neither race nor fail; a call that finds every
version applied changes nothing and needs no CREATE privilege. Later versions are appended
to :data:`MIGRATIONS`; applied versions are never edited.

Nothing is created unless a caller calls :func:`ensure_history`: opting out (a database
where the product must not create objects) is the caller's decision. Granting apps
``USAGE`` on the schema and ``SELECT`` on ``last_refresh`` is left to the database owner.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
import psycopg
from psycopg import sql
from psycopg.rows import class_row

from mv_orchestration.core.refresh import Record, RefreshResult
from mv_orchestration.core.sql import qualname
from mv_orchestration.errors import RefreshError

DEFAULT_SCHEMA = "mvo"

# (version, SQL). ``{schema}`` is replaced by the quoted schema identifier. Functions use
# SQL-standard bodies (BEGIN ATOMIC, PostgreSQL 14+): parsed at creation, no string quoting,
# and their dependency on the table is recorded by the server.
MIGRATIONS: Sequence[tuple[int, str]] = (
    (
        1,
        """
CREATE TABLE {schema}.refresh_history (
    id            bigserial PRIMARY KEY,
    view_schema   text NOT NULL,
    view_name     text NOT NULL,
    run_id        text,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz NOT NULL,
    duration_ms   double precision NOT NULL,
    method        text,
    rows_before   bigint,
    rows_after    bigint,
    size_bytes    bigint,
    lock_wait_ms  double precision,
    status        text NOT NULL CHECK (status IN ('success', 'failure')),
    sqlstate      text,
    error_message text,
    attempts      integer NOT NULL DEFAULT 1 CHECK (attempts >= 1)
);
CREATE INDEX refresh_history_view_started_idx
    ON {schema}.refresh_history (view_schema, view_name, started_at DESC);
CREATE INDEX refresh_history_started_idx ON {schema}.refresh_history (started_at);
COMMENT ON TABLE {schema}.refresh_history IS
    'One row per materialized view refresh attempt (mv-orchestration).';

CREATE VIEW {schema}.last_refresh AS
SELECT v.view_schema,
       v.view_name,
       s.finished_at AS data_as_of,
       s.rows_after AS row_count,
       a.started_at AS last_attempt_at,
       a.status AS last_status,
       a.sqlstate AS last_sqlstate,
       a.error_message AS last_error
FROM (SELECT DISTINCT view_schema, view_name FROM {schema}.refresh_history) v
CROSS JOIN LATERAL (
    SELECT h.started_at, h.status, h.sqlstate, h.error_message
    FROM {schema}.refresh_history h
    WHERE h.view_schema = v.view_schema AND h.view_name = v.view_name
    ORDER BY h.started_at DESC, h.id DESC
    LIMIT 1
) a
LEFT JOIN LATERAL (
    SELECT h.finished_at, h.rows_after
    FROM {schema}.refresh_history h
    WHERE h.view_schema = v.view_schema AND h.view_name = v.view_name
      AND h.status = 'success'
    ORDER BY h.started_at DESC, h.id DESC
    LIMIT 1
) s ON true;
COMMENT ON VIEW {schema}.last_refresh IS
    'Per materialized view: data_as_of = end of its last successful refresh; last attempt.';

CREATE FUNCTION {schema}.refresh_stats_since(since timestamptz)
RETURNS TABLE (
    view_schema     text,
    view_name       text,
    total           bigint,
    successes       bigint,
    failures        bigint,
    success_rate    numeric,
    avg_duration_ms double precision,
    min_duration_ms double precision,
    max_duration_ms double precision,
    last_refresh_at timestamptz,
    last_attempt_at timestamptz,
    last_error      text
)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT h.view_schema,
           h.view_name,
           count(*),
           count(*) FILTER (WHERE h.status = 'success'),
           count(*) FILTER (WHERE h.status = 'failure'),
           round(100.0 * count(*) FILTER (WHERE h.status = 'success') / count(*), 2),
           avg(h.duration_ms) FILTER (WHERE h.status = 'success'),
           min(h.duration_ms) FILTER (WHERE h.status = 'success'),
           max(h.duration_ms) FILTER (WHERE h.status = 'success'),
           max(h.finished_at) FILTER (WHERE h.status = 'success'),
           max(h.started_at),
           (array_agg(h.error_message ORDER BY h.started_at DESC, h.id DESC)
               FILTER (WHERE h.status = 'failure'))[1]
    FROM {schema}.refresh_history h
    WHERE h.started_at >= since
    GROUP BY h.view_schema, h.view_name
    ORDER BY h.view_schema, h.view_name;
END;

CREATE FUNCTION {schema}.refresh_stats(hours integer DEFAULT 24)
RETURNS TABLE (
    view_schema     text,
    view_name       text,
    total           bigint,
    successes       bigint,
    failures        bigint,
    success_rate    numeric,
    avg_duration_ms double precision,
    min_duration_ms double precision,
    max_duration_ms double precision,
    last_refresh_at timestamptz,
    last_attempt_at timestamptz,
    last_error      text
)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT * FROM {schema}.refresh_stats_since(now() - make_interval(hours => hours));
END;
""",
    ),
    (
        2,
        """
ALTER TABLE {schema}.refresh_history DROP CONSTRAINT refresh_history_status_check;
ALTER TABLE {schema}.refresh_history ADD CONSTRAINT refresh_history_status_check
    CHECK (status IN ('success', 'failure', 'cancelled'));

CREATE OR REPLACE FUNCTION {schema}.refresh_stats_since(since timestamptz)
RETURNS TABLE (
    view_schema     text,
    view_name       text,
    total           bigint,
    successes       bigint,
    failures        bigint,
    success_rate    numeric,
    avg_duration_ms double precision,
    min_duration_ms double precision,
    max_duration_ms double precision,
    last_refresh_at timestamptz,
    last_attempt_at timestamptz,
    last_error      text
)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT h.view_schema,
           h.view_name,
           count(*) FILTER (WHERE h.status IN ('success', 'failure')),
           count(*) FILTER (WHERE h.status = 'success'),
           count(*) FILTER (WHERE h.status = 'failure'),
           round(100.0 * count(*) FILTER (WHERE h.status = 'success')
                 / nullif(count(*) FILTER (WHERE h.status IN ('success', 'failure')), 0), 2),
           avg(h.duration_ms) FILTER (WHERE h.status = 'success'),
           min(h.duration_ms) FILTER (WHERE h.status = 'success'),
           max(h.duration_ms) FILTER (WHERE h.status = 'success'),
           max(h.finished_at) FILTER (WHERE h.status = 'success'),
           max(h.started_at),
           (array_agg(h.error_message ORDER BY h.started_at DESC, h.id DESC)
               FILTER (WHERE h.status = 'failure'))[1]
    FROM {schema}.refresh_history h
    WHERE h.started_at >= since
    GROUP BY h.view_schema, h.view_name
    ORDER BY h.view_schema, h.view_name;
END;
""",
    ),
    (
        3,
        """
ALTER TABLE {schema}.refresh_history
    ALTER COLUMN finished_at DROP NOT NULL,
    ALTER COLUMN duration_ms DROP NOT NULL,
    ADD COLUMN backend_pid integer,
    ADD COLUMN backend_start timestamptz;
ALTER TABLE {schema}.refresh_history DROP CONSTRAINT refresh_history_status_check;
ALTER TABLE {schema}.refresh_history ADD CONSTRAINT refresh_history_status_check
    CHECK (status IN ('running', 'success', 'failure', 'cancelled'));
CREATE INDEX refresh_history_running_idx ON {schema}.refresh_history (id)
    WHERE status = 'running';
COMMENT ON COLUMN {schema}.refresh_history.backend_pid IS
    'The refreshing session (with backend_start): a running row whose session is gone was cut off.';
""",
    ),
    (
        4,
        """
ALTER TABLE {schema}.refresh_history
    ADD COLUMN data_timestamp timestamptz,
    ADD COLUMN lag_at_completion_ms bigint,
    ADD COLUMN target_met boolean;
ALTER TABLE {schema}.refresh_history DROP CONSTRAINT refresh_history_status_check;
ALTER TABLE {schema}.refresh_history ADD CONSTRAINT refresh_history_status_check
    CHECK (status IN ('running', 'success', 'failure', 'cancelled', 'no_data'));
COMMENT ON COLUMN {schema}.refresh_history.data_timestamp IS
    'Every change of every root source committed before this time is in the view.';
COMMENT ON COLUMN {schema}.refresh_history.lag_at_completion_ms IS
    'Age of the oldest change the view was missing, when the refresh committed (target-lag runs).';

-- the same columns, and data_timestamp; a no_data row is no attempt (last_* ignore it)
CREATE OR REPLACE VIEW {schema}.last_refresh AS
SELECT v.view_schema,
       v.view_name,
       s.finished_at AS data_as_of,
       s.rows_after AS row_count,
       a.started_at AS last_attempt_at,
       a.status AS last_status,
       a.sqlstate AS last_sqlstate,
       a.error_message AS last_error,
       d.data_timestamp
FROM (SELECT DISTINCT view_schema, view_name FROM {schema}.refresh_history) v
LEFT JOIN LATERAL (
    SELECT h.started_at, h.status, h.sqlstate, h.error_message
    FROM {schema}.refresh_history h
    WHERE h.view_schema = v.view_schema AND h.view_name = v.view_name
      AND h.status <> 'no_data'
    ORDER BY h.started_at DESC, h.id DESC
    LIMIT 1
) a ON true
LEFT JOIN LATERAL (
    SELECT h.finished_at, h.rows_after
    FROM {schema}.refresh_history h
    WHERE h.view_schema = v.view_schema AND h.view_name = v.view_name
      AND h.status = 'success'
    ORDER BY h.started_at DESC, h.id DESC
    LIMIT 1
) s ON true
LEFT JOIN LATERAL (
    SELECT coalesce(h.data_timestamp, h.started_at) AS data_timestamp
    FROM {schema}.refresh_history h
    WHERE h.view_schema = v.view_schema AND h.view_name = v.view_name
      AND h.status IN ('success', 'no_data')
    ORDER BY coalesce(h.data_timestamp, h.started_at) DESC
    LIMIT 1
) d ON true;
COMMENT ON VIEW {schema}.last_refresh IS
    'Per materialized view: data_as_of = end of its last successful refresh; data_timestamp = '
    'every source change before it is in the view (moved by no_data rows too); last attempt.';
""",
    ),
)


def latest_version() -> int:
    """The version :func:`ensure_history` migrates to."""
    return max(version for version, _ in MIGRATIONS)


def migration_lock_key(schema: str) -> int:
    """The advisory-lock key that serialises migrations of one history schema."""
    digest = hashlib.blake2b(f"mv_orchestration:history:{schema}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


def ensure_history(conn: psycopg.Connection[Any], schema: str = DEFAULT_SCHEMA) -> int:
    """Create or upgrade the history objects in ``schema``; return the migration version."""
    ident = sql.Identifier(schema)
    with conn.transaction(), conn.cursor() as cur:
        # Serialises concurrent callers: the second one waits, then finds everything applied.
        cur.execute("SELECT pg_advisory_xact_lock(%s)", [migration_lock_key(schema)])
        # Check before creating: CREATE SCHEMA IF NOT EXISTS needs CREATE on the database
        # even when the schema exists, and a role that only writes history may lack it.
        if (
            cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema]).fetchone()
            is None
        ):
            cur.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
        has_table = cur.execute(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = 'schema_migrations'",
            [schema],
        ).fetchone()
        if has_table is None:
            cur.execute(
                sql.SQL(
                    "CREATE TABLE {}.schema_migrations ("
                    " version integer PRIMARY KEY,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                ).format(ident)
            )
        applied = {
            int(row[0])
            for row in cur.execute(
                sql.SQL("SELECT version FROM {}.schema_migrations").format(ident)
            ).fetchall()
        }
        for version, text in sorted(MIGRATIONS):
            if version in applied:
                continue
            cur.execute(sql.SQL(text).format(schema=ident))
            cur.execute(
                sql.SQL("INSERT INTO {}.schema_migrations (version) VALUES (%s)").format(ident),
                [version],
            )
            applied.add(version)
        return max(applied)


def current_version(conn: psycopg.Connection[Any], schema: str) -> int:
    """The migration version applied in ``schema``: 0 when there is no history (or it cannot
    be read)."""
    try:
        with conn.transaction():
            row = conn.execute(
                sql.SQL("SELECT max(version) FROM {}").format(
                    sql.Identifier(schema, "schema_migrations")
                )
            ).fetchone()
    except psycopg.Error:
        if conn.broken:
            raise
        return 0
    return int(row[0]) if row and row[0] is not None else 0


def unavailable_message(conn: psycopg.Connection[Any], schema: str, exc: psycopg.Error) -> str:
    """One line: why :func:`ensure_history` failed in ``schema``, and the GRANT that fixes it."""
    primary = exc.diag.message_primary if exc.diag else None
    reason = (primary or str(exc).strip().splitlines()[0]) + (
        f" [SQLSTATE {exc.sqlstate}]" if exc.sqlstate else ""
    )
    role = conn.info.user or "this role"
    quoted_schema = sql.Identifier(schema).as_string(conn)
    version = current_version(conn, schema)
    exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema]).fetchone()
    if version == 0 and exists:
        grantee = sql.Identifier(role).as_string(conn)
        table = sql.Identifier(schema, "refresh_history").as_string(conn)
        return (
            f"refresh history off for this run: schema {quoted_schema} exists but this role "
            f"cannot use it: {reason}; the views refresh without it. Fix: GRANT USAGE ON SCHEMA "
            f"{quoted_schema} TO {grantee}; GRANT SELECT ON ALL TABLES IN SCHEMA "
            f"{quoted_schema} TO {grantee}; GRANT INSERT, DELETE ON {table} TO {grantee}; "
            f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {quoted_schema} TO {grantee}"
        )
    if version == 0:
        database = sql.Identifier(conn.info.dbname).as_string(conn)
        fix = (
            f"GRANT CREATE ON DATABASE {database} TO {sql.Identifier(role).as_string(conn)} "
            f"(needed once, to create it), or create schema {quoted_schema} owned by that role"
        )
        return (
            f"refresh history off for this run: schema {quoted_schema} could not be created: "
            f"{reason}; the views refresh without it. Fix: {fix}"
        )
    return (
        f"refresh history in schema {quoted_schema} is at version {version} and could not be "
        f"upgraded to {latest_version()}: {reason}; rows are still written where version "
        f"{version} allows. Fix: run one refresh as the owner of {quoted_schema}'s tables, "
        "who may alter them"
    )


# The columns an attempt's outcome sets; a row is either inserted whole (no row written before
# the refresh) or, with an ``attempt_id`` from :func:`begin_attempt`, completed by an UPDATE.
_OUTCOME_COLUMNS = (
    "finished_at",
    "duration_ms",
    "method",
    "rows_before",
    "rows_after",
    "size_bytes",
    "lock_wait_ms",
    "status",
    "sqlstate",
    "error_message",
    "attempts",
)
_ROW_COLUMNS = ("view_schema", "view_name", "run_id", "started_at", *_OUTCOME_COLUMNS)

_INSERT = "INSERT INTO {table} ({columns}) VALUES ({values})"
_UPDATE = "UPDATE {table} SET {assignments} WHERE id = %(attempt_id)s"
_BEGIN = """
INSERT INTO {table} (view_schema, view_name, run_id, started_at, status, backend_pid,
                     backend_start)
VALUES (%s, %s, %s, %s, 'running', %s, %s)
RETURNING id
"""
_SESSION = (
    b"SELECT pg_backend_pid(), backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
)
# A running row is abandoned when no session with its pid and start exists any more. A role
# without pg_read_all_stats sees other roles' backend_start as NULL: the pid alone decides.
_SWEEP = """
UPDATE {table} h
SET status = 'cancelled', error_message = %s
WHERE h.status = 'running'
  AND NOT EXISTS (
      SELECT 1 FROM pg_stat_activity a
      WHERE a.pid = h.backend_pid
        AND (a.backend_start IS NULL OR h.backend_start IS NULL
             OR a.backend_start = h.backend_start))
"""
ABANDONED_REASON = (
    "the refreshing session ended before the refresh did (its process was killed, or the "
    "connection or the server was lost); the view kept its previous data"
)

_statements: dict[tuple[str, str, str], bytes] = {}


def _statement(conn: psycopg.Connection[Any], schema: str, kind: str) -> bytes:
    """The ``kind`` statement (begin, insert, update) for ``schema``, composed once per schema and
    client encoding (all that quoting the identifier depends on): each write then skips
    composing, and the same bytes hit psycopg's query cache and its prepared statement."""
    key = (schema, conn.info.encoding, kind)
    stmt = _statements.get(key)
    if stmt is None:
        table = sql.Identifier(schema, "refresh_history")
        if kind == "begin":
            composed = sql.SQL(_BEGIN).format(table=table)
        elif kind == "insert":
            composed = sql.SQL(_INSERT).format(
                table=table,
                columns=sql.SQL(", ").join(map(sql.Identifier, _ROW_COLUMNS)),
                values=sql.SQL(", ").join(map(sql.Placeholder, _ROW_COLUMNS)),
            )
        else:
            composed = sql.SQL(_UPDATE).format(
                table=table,
                assignments=sql.SQL(", ").join(
                    sql.SQL("{} = {}").format(sql.Identifier(c), sql.Placeholder(c))
                    for c in _OUTCOME_COLUMNS
                ),
            )
        stmt = _statements[key] = composed.as_bytes(conn)
    return stmt


def _write_statement(
    conn: psycopg.Connection[Any], schema: str, row: dict[str, Any], attempt_id: int | None
) -> tuple[bytes, dict[str, Any]]:
    if attempt_id is None:
        return _statement(conn, schema, "insert"), row
    return _statement(conn, schema, "update"), {**row, "attempt_id": attempt_id}


def _run(
    conn: psycopg.Connection[Any], stmt: bytes | sql.Composed, params: Any
) -> psycopg.Cursor[Any]:
    """Execute one statement as its own transaction; the cursor's result stays readable."""
    if conn.autocommit and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        # A single statement is its own transaction: one round trip instead of the three of
        # BEGIN/statement/COMMIT (its cost against a small refresh: docs/benchmarks.md, C).
        return conn.execute(stmt, params)
    with conn.transaction():
        return conn.execute(stmt, params)


def _write(
    conn: psycopg.Connection[Any], schema: str, row: dict[str, Any], attempt_id: int | None
) -> None:
    _run(conn, *_write_statement(conn, schema, row, attempt_id))


def begin_attempt(
    conn: psycopg.Connection[Any],
    schema: str,
    *,
    view_schema: str,
    view_name: str,
    started_at: datetime,
    run_id: str | None,
) -> int:
    """Write an attempt's ``running`` row before it starts (committed at once, version 3);
    return its id, which the outcome's record completes."""
    pid, backend_start = _session(conn)
    params = [view_schema, view_name, run_id, started_at, pid, backend_start]
    row = _run(conn, _statement(conn, schema, "begin"), params).fetchone()
    assert row is not None
    return int(row[0])


_sessions: weakref.WeakKeyDictionary[psycopg.Connection[Any], tuple[int, datetime | None]] = (
    weakref.WeakKeyDictionary()
)


def _session(conn: psycopg.Connection[Any]) -> tuple[int, datetime | None]:
    """The connection's backend pid and start, read once per connection (a pid alone could
    be reused by a later session)."""
    known = _sessions.get(conn)
    if known is None or known[0] != conn.info.backend_pid:
        row = _run(conn, _SESSION, None).fetchone()
        known = _sessions[conn] = (conn.info.backend_pid, row[1] if row else None)
    return known


def forget_attempt(conn: psycopg.Connection[Any], schema: str, attempt_id: int) -> None:
    """Delete a ``running`` row of an attempt that did not happen (the view was being
    refreshed by another session)."""
    stmt = sql.SQL("DELETE FROM {} WHERE id = %s").format(sql.Identifier(schema, "refresh_history"))
    _run(conn, stmt, [attempt_id])


def sweep_abandoned(conn: psycopg.Connection[Any], schema: str) -> int:
    """Mark ``cancelled`` every ``running`` row whose session has ended; return how many."""
    stmt = sql.SQL(_SWEEP).format(table=sql.Identifier(schema, "refresh_history"))
    return _run(conn, stmt, [ABANDONED_REASON]).rowcount


def _success_row(result: RefreshResult, run_id: str | None) -> dict[str, Any]:
    return {
        "view_schema": result.schema,
        "view_name": result.name,
        "run_id": run_id,
        "started_at": result.started_at,
        "finished_at": result.finished_at,
        "duration_ms": result.duration_s * 1000.0,
        "method": result.method,
        "rows_before": result.rows_before,
        "rows_after": result.rows_after,
        "size_bytes": result.size_bytes,
        "lock_wait_ms": None if result.lock_wait_s is None else result.lock_wait_s * 1000.0,
        "status": "success",
        "sqlstate": None,
        "error_message": None,
        "attempts": result.attempts,
    }


def success_record(
    conn: psycopg.Connection[Any],
    schema: str,
    *,
    run_id: str | None,
    attempt_id: int | None = None,
) -> Record:
    """The ``record`` for :func:`~mv_orchestration.core.refresh.refresh_view` that writes
    the ``success`` row (completing ``attempt_id``'s ``running`` row, if given). Run in the
    refresh's own transaction, on its last statement, it costs the refresh no round trip of
    its own (docs/benchmarks.md, C), and commits with it or not at all."""
    return lambda result: _write_statement(conn, schema, _success_row(result, run_id), attempt_id)


def record_success(
    conn: psycopg.Connection[Any], schema: str, result: RefreshResult, *, run_id: str | None
) -> None:
    """Append one ``success`` row for ``result`` (a refresh done without
    :func:`success_record`)."""
    _write(conn, schema, _success_row(result, run_id), None)


def record_failure(
    conn: psycopg.Connection[Any],
    schema: str,
    *,
    view_schema: str,
    view_name: str,
    error: RefreshError | Exception,
    started_at: datetime,
    finished_at: datetime,
    run_id: str | None,
    attempts: int | None = None,
    attempt_id: int | None = None,
) -> None:
    """Write one ``failure`` row (completing ``attempt_id``'s ``running`` row, if given).

    A :class:`RefreshError` gives SQLSTATE, the server's message, the method, the duration
    of the failed attempt and the number of attempts (unless ``attempts`` is given); any
    other exception gives its SQLSTATE if it is a psycopg error, and its text (1 attempt).
    Without a measured duration, ``finished_at - started_at``.
    """
    method: str | None = None
    duration_s: float | None = None
    lock_wait_s: float | None = None
    if isinstance(error, RefreshError):
        sqlstate, message = error.sqlstate, error.message
        method, duration_s, lock_wait_s = error.method, error.duration_s, error.lock_wait_s
        attempts = error.attempts if attempts is None else attempts
    elif isinstance(error, psycopg.Error):
        sqlstate = error.sqlstate
        primary = error.diag.message_primary if error.diag else None
        message = primary or str(error).strip() or type(error).__name__
    else:
        sqlstate = None
        text = str(error).strip()
        message = f"{type(error).__name__}: {text}" if text else type(error).__name__
    if duration_s is None:
        duration_s = max(0.0, (finished_at - started_at).total_seconds())
    _write(
        conn,
        schema,
        _outcome_row(
            view_schema,
            view_name,
            run_id,
            started_at,
            finished_at,
            status="failure",
            duration_s=duration_s,
            method=method,
            lock_wait_s=lock_wait_s,
            sqlstate=sqlstate,
            message=message,
            attempts=1 if attempts is None else attempts,
        ),
        attempt_id,
    )


def record_cancelled(
    conn: psycopg.Connection[Any],
    schema: str,
    *,
    view_schema: str,
    view_name: str,
    reason: str,
    started_at: datetime,
    finished_at: datetime,
    run_id: str | None,
    method: str | None = None,
    attempt_id: int | None = None,
) -> None:
    """Write one ``cancelled`` row (completing ``attempt_id``'s, if given): an attempt stopped
    on purpose (``reason``), rolled back."""
    _write(
        conn,
        schema,
        _outcome_row(
            view_schema,
            view_name,
            run_id,
            started_at,
            finished_at,
            status="cancelled",
            duration_s=max(0.0, (finished_at - started_at).total_seconds()),
            method=method,
            message=reason,
        ),
        attempt_id,
    )


def _outcome_row(
    view_schema: str,
    view_name: str,
    run_id: str | None,
    started_at: datetime,
    finished_at: datetime,
    *,
    status: str,
    duration_s: float,
    method: str | None,
    message: str,
    lock_wait_s: float | None = None,
    sqlstate: str | None = None,
    attempts: int = 1,
) -> dict[str, Any]:
    """A row without a refresh result (failure, cancelled)."""
    return {
        "view_schema": view_schema,
        "view_name": view_name,
        "run_id": run_id,
        "started_at": started_at,
        "finished_at": finished_at,
        "duration_ms": duration_s * 1000.0,
        "method": method,
        "rows_before": None,
        "rows_after": None,
        "size_bytes": None,
        "lock_wait_ms": None if lock_wait_s is None else lock_wait_s * 1000.0,
        "status": status,
        "sqlstate": sqlstate,
        "error_message": message,
        "attempts": attempts,
    }


def purge_history(
    conn: psycopg.Connection[Any], schema: str, *, older_than: timedelta = timedelta(days=30)
) -> int:
    """Delete attempts that started before ``now() - older_than``; return how many."""
    stmt = sql.SQL("DELETE FROM {} WHERE started_at < now() - %s::interval").format(
        sql.Identifier(schema, "refresh_history")
    )
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(stmt, [older_than])
        return cur.rowcount


@dataclass(frozen=True)
class ViewStats:
    """One row of ``<schema>.refresh_stats``: a view's refreshes within a window."""

    view_schema: str
    view_name: str
    total: int
    successes: int
    failures: int
    success_rate: float | None  # percent, None without attempts
    avg_duration_ms: float | None  # of successful refreshes
    min_duration_ms: float | None
    max_duration_ms: float | None
    last_refresh_at: datetime | None  # end of the last successful refresh in the window
    last_attempt_at: datetime | None  # start of the last attempt in the window
    last_error: str | None  # latest failure's message in the window

    @property
    def qualname(self) -> str:
        return qualname(self.view_schema, self.view_name)


def _view_filter(views: Sequence[tuple[str, str]] | None) -> dict[str, Any]:
    wanted = list(dict.fromkeys(views or ()))
    return {
        "all": views is None,
        "schemas": [s for s, _ in wanted],
        "names": [n for _, n in wanted],
    }


_STATS_ALL = """
SELECT view_schema, view_name, total, successes, failures,
       success_rate::double precision AS success_rate, avg_duration_ms, min_duration_ms,
       max_duration_ms, last_refresh_at, last_attempt_at, last_error
FROM {fn}(now() - %(window)s::interval)
"""

# Requested views come back in the order asked, with zero counts when they had no attempts.
_STATS_SELECTED = """
SELECT v.view_schema, v.view_name,
       coalesce(s.total, 0) AS total, coalesce(s.successes, 0) AS successes,
       coalesce(s.failures, 0) AS failures,
       s.success_rate::double precision AS success_rate, s.avg_duration_ms, s.min_duration_ms,
       s.max_duration_ms, s.last_refresh_at, s.last_attempt_at, s.last_error
FROM unnest(%(schemas)s::text[], %(names)s::text[]) WITH ORDINALITY AS v(view_schema, view_name, ord)
LEFT JOIN {fn}(now() - %(window)s::interval) s
       ON s.view_schema = v.view_schema AND s.view_name = v.view_name
ORDER BY v.ord
"""


def read_stats(
    conn: psycopg.Connection[Any],
    schema: str,
    *,
    hours: float = 24,
    views: Sequence[tuple[str, str]] | None = None,
) -> list[ViewStats]:
    """Per-view refresh statistics over the last ``hours`` (fractions allowed).

    Without ``views``: every view with an attempt in the window, sorted by name. With
    ``views`` (``(schema, name)`` pairs): exactly those, in that order, zero counts for a view
    with no attempt in the window.
    """
    params = {"window": timedelta(hours=hours), **_view_filter(views)}
    text = _STATS_ALL if views is None else _STATS_SELECTED
    stmt = sql.SQL(text).format(fn=sql.Identifier(schema, "refresh_stats_since"))
    with conn.cursor(row_factory=class_row(ViewStats)) as cur:
        return cur.execute(stmt, params).fetchall()


_LAST_SUCCESSES = """
SELECT v.view_schema, v.view_name, last.finished_at
FROM unnest(%(schemas)s::text[], %(names)s::text[]) AS v(view_schema, view_name)
CROSS JOIN LATERAL (
    SELECT max(h.finished_at) AS finished_at FROM {table} h
    WHERE h.view_schema = v.view_schema AND h.view_name = v.view_name
      AND h.status IN ('success', 'no_data')
) last
WHERE last.finished_at IS NOT NULL
"""


def read_last_successes(
    conn: psycopg.Connection[Any], schema: str, views: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], datetime]:
    """When each of ``views`` last refreshed successfully, however long ago (views never
    refreshed are left out). A ``no_data`` row (version 4) counts: the view was current then,
    with nothing to refresh."""
    stmt = sql.SQL(_LAST_SUCCESSES).format(table=sql.Identifier(schema, "refresh_history"))
    rows = conn.execute(stmt, _view_filter(views)).fetchall()
    return {(str(s), str(n)): at for s, n, at in rows}


def history_since(conn: psycopg.Connection[Any], schema: str) -> datetime | None:
    """When the refresh history begins: its oldest attempt of any view (None when empty)."""
    stmt = sql.SQL("SELECT min(started_at) FROM {}").format(
        sql.Identifier(schema, "refresh_history")
    )
    row = conn.execute(stmt).fetchone()
    return row[0] if row else None


HISTORY_COLUMNS = ("id", *_ROW_COLUMNS)

_HISTORY = """
SELECT {columns} FROM {table}
WHERE started_at >= now() - %(window)s::interval
  AND (%(all)s OR (view_schema, view_name) IN (
        SELECT * FROM unnest(%(schemas)s::text[], %(names)s::text[])))
ORDER BY started_at, id
"""


def read_history(
    conn: psycopg.Connection[Any],
    schema: str,
    *,
    since: timedelta,
    views: Sequence[tuple[str, str]] | None = None,
) -> pd.DataFrame:
    """Attempts started within ``since`` of now, oldest first, one row each.

    Columns are :data:`HISTORY_COLUMNS`; timestamps are UTC, counts are nullable ``Int64``.
    """
    stmt = sql.SQL(_HISTORY).format(
        columns=sql.SQL(", ").join(sql.Identifier(c) for c in HISTORY_COLUMNS),
        table=sql.Identifier(schema, "refresh_history"),
    )
    with conn.cursor() as cur:
        rows = cur.execute(stmt, {"window": since, **_view_filter(views)}).fetchall()
    frame = pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))
    for col in ("started_at", "finished_at"):
        frame[col] = pd.to_datetime(frame[col], utc=True)
    for col in ("id", "rows_before", "rows_after", "size_bytes", "attempts"):
        frame[col] = frame[col].astype("Int64")
    for col in ("duration_ms", "lock_wait_ms"):
        frame[col] = frame[col].astype("float64")
    return frame


# --- target lag -------------------------------------------------------------------------------

_LAG = """
UPDATE {table}
SET data_timestamp = %(data_timestamp)s, lag_at_completion_ms = %(lag_ms)s,
    target_met = %(target_met)s
WHERE id = coalesce(%(attempt_id)s, (
    SELECT max(id) FROM {table}
    WHERE run_id = %(run_id)s AND view_schema = %(view_schema)s
      AND view_name = %(view_name)s AND status = 'success'))
"""


def record_lag(
    conn: psycopg.Connection[Any],
    schema: str,
    *,
    view_schema: str,
    view_name: str,
    run_id: str | None,
    attempt_id: int | None,
    data_timestamp: datetime,
    lag_at_completion_s: float | None,
    target_met: bool | None,
) -> None:
    """Add a successful refresh's target-lag figures (version 4) to its row: the attempt's
    row, or without one the run's latest ``success`` row of the view."""
    stmt = sql.SQL(_LAG).format(table=sql.Identifier(schema, "refresh_history"))
    lag_ms = None if lag_at_completion_s is None else round(lag_at_completion_s * 1000.0)
    params = {
        "data_timestamp": data_timestamp,
        "lag_ms": lag_ms,
        "target_met": target_met,
        "attempt_id": attempt_id,
        "run_id": run_id,
        "view_schema": view_schema,
        "view_name": view_name,
    }
    _run(conn, stmt, params)


_DURATION_QUANTILE = """
SELECT h.view_schema, h.view_name,
       percentile_cont(%(quantile)s) WITHIN GROUP (ORDER BY h.duration_ms) AS ms
FROM {table} h
JOIN unnest(%(schemas)s::text[], %(names)s::text[]) AS v(view_schema, view_name)
  ON h.view_schema = v.view_schema AND h.view_name = v.view_name
WHERE h.status = 'success' AND h.started_at >= now() - %(window)s::interval
GROUP BY h.view_schema, h.view_name
"""


def expected_durations(
    conn: psycopg.Connection[Any],
    schema: str,
    views: Sequence[tuple[str, str]],
    *,
    hours: float = 24,
    quantile: float = 0.9,
) -> dict[tuple[str, str], float]:
    """The ``quantile`` (default p90) of each view's successful refresh durations in seconds,
    over attempts started in the last ``hours``; views without one are absent. One query."""
    if not views:
        return {}
    stmt = sql.SQL(_DURATION_QUANTILE).format(table=sql.Identifier(schema, "refresh_history"))
    params = {"quantile": quantile, "window": timedelta(hours=hours), **_view_filter(views)}
    with conn.cursor() as cur:
        rows = cur.execute(stmt, params).fetchall()
    return {(s, n): float(ms) / 1000.0 for s, n, ms in rows if ms is not None}


_NO_DATA = """
INSERT INTO {table} (view_schema, view_name, started_at, finished_at, duration_ms, status,
                     data_timestamp)
SELECT v.view_schema, v.view_name, %(at)s, %(at)s, 0, 'no_data', %(data_timestamp)s
FROM unnest(%(schemas)s::text[], %(names)s::text[]) AS v(view_schema, view_name)
"""


def record_no_data(
    conn: psycopg.Connection[Any],
    schema: str,
    views: Sequence[tuple[str, str]],
    *,
    at: datetime,
    data_timestamp: datetime,
) -> None:
    """One ``no_data`` row per view (version 4): a refresh that was not needed, since no
    source changed; its data is current as of ``data_timestamp``. One statement."""
    if not views:
        return
    stmt = sql.SQL(_NO_DATA).format(table=sql.Identifier(schema, "refresh_history"))
    _run(conn, stmt, {"at": at, "data_timestamp": data_timestamp, **_view_filter(views)})


@dataclass(frozen=True)
class LagStats:
    """A view's achieved lag over a window: refreshes the target-lag sensor requested."""

    view_schema: str
    view_name: str
    refreshes: int  # with a lag recorded
    lag_p50_ms: float | None
    lag_max_ms: float | None
    within_target_pct: float | None  # share of those refreshes that met the target


_LAG_STATS = """
SELECT h.view_schema, h.view_name, count(*) AS refreshes,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY h.lag_at_completion_ms) AS lag_p50_ms,
       max(h.lag_at_completion_ms)::double precision AS lag_max_ms,
       round(100.0 * count(*) FILTER (WHERE h.target_met) / count(*), 2)::double precision
           AS within_target_pct
FROM {table} h
JOIN unnest(%(schemas)s::text[], %(names)s::text[]) AS v(view_schema, view_name)
  ON h.view_schema = v.view_schema AND h.view_name = v.view_name
WHERE h.status = 'success' AND h.lag_at_completion_ms IS NOT NULL
  AND h.started_at >= now() - %(window)s::interval
GROUP BY h.view_schema, h.view_name
"""


def read_lag_stats(
    conn: psycopg.Connection[Any],
    schema: str,
    views: Sequence[tuple[str, str]],
    *,
    hours: float = 24,
) -> dict[tuple[str, str], LagStats]:
    """Per view, the lag its target-lag refreshes achieved over the last ``hours`` (version 4):
    median and max ``lag_at_completion_ms`` and the percentage that met the target. Views
    with none are absent. One query."""
    if not views:
        return {}
    stmt = sql.SQL(_LAG_STATS).format(table=sql.Identifier(schema, "refresh_history"))
    params = {"window": timedelta(hours=hours), **_view_filter(views)}
    with conn.cursor(row_factory=class_row(LagStats)) as cur:
        rows = cur.execute(stmt, params).fetchall()
    return {(r.view_schema, r.view_name): r for r in rows}
