"""Shared fixtures: a real PostgreSQL server and one fresh database per test.

The server is the embedded one (started once per test session, dies with pytest) unless
``MVO_TEST_DATABASE_URL`` points at an existing server whose role may CREATE DATABASE.
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from mv_orchestration.demo.embedded import TemporaryServer

_counter = itertools.count()


@dataclass(frozen=True)
class PgServer:
    """Admin URL of the test server and a way to derive URLs for other databases."""

    admin_url: str

    def url_for(self, dbname: str) -> str:
        """The admin URL with another database name (URLs, since Dagster needs URL form)."""
        parts = urlsplit(self.admin_url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError("MVO_TEST_DATABASE_URL must be a postgresql:// URL")
        return urlunsplit(parts._replace(path="/" + quote(dbname)))

    def create_database(self, name: str, template: str | None = None) -> str:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if template:
                stmt += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
            conn.execute(stmt)
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def server_major(conn: psycopg.Connection[Any]) -> int:
    """The server's major version (``server_version_num`` // 10000)."""
    return conn.info.server_version // 10000


_STATS_TIMEOUT_S = 20.0


def flush_stats(conn: psycopg.Connection[Any]) -> None:
    """Make the statistics counters of everything ``conn`` committed visible to other sessions.

    PostgreSQL 15+ keeps them in shared memory: ``pg_stat_force_next_flush()`` publishes them
    when the session next goes idle, i.e. before this call returns. PostgreSQL 14 has no such
    function: a session sends its counters to the statistics collector (at most every
    500 ms, and only when it goes idle) and readers see the collector's last written file.
    There a marker row is inserted into a new temporary table and the session keeps going
    idle until it reads the marker's counter back; counters are sent and applied in order,
    so every earlier write (and a ``pg_stat_reset()``) is then visible to any new reading
    transaction.
    """
    if server_major(conn) >= 15:
        conn.execute("SELECT pg_stat_force_next_flush()")
        return
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE, (
        "flush_stats needs a session outside a transaction (autocommit)"
    )
    name = f"mvo_stats_marker_{uuid.uuid4().hex[:12]}"
    marker = sql.Identifier(name)
    conn.execute(sql.SQL("CREATE TEMP TABLE {} (x int)").format(marker))
    conn.execute(sql.SQL("INSERT INTO pg_temp.{} VALUES (1)").format(marker))
    row = conn.execute("SELECT to_regclass(%s)::oid", [f"pg_temp.{name}"]).fetchone()
    assert row is not None and row[0] is not None
    deadline = time.monotonic() + _STATS_TIMEOUT_S
    # every statement ends a transaction, and going idle afterwards sends pending counters
    while True:
        seen = conn.execute("SELECT pg_stat_get_tuples_inserted(%s)", [row[0]]).fetchone()
        if seen is not None and seen[0] >= 1:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"statistics not visible after {_STATS_TIMEOUT_S:.0f} s")
        time.sleep(0.05)
    conn.execute(sql.SQL("DROP TABLE pg_temp.{}").format(marker))


def flushed(conn: psycopg.Connection[Any], statement: str) -> None:
    """Run ``statement`` and make its statistics visible to other sessions at once."""
    conn.execute(statement)
    flush_stats(conn)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    url = os.environ.get("MVO_TEST_DATABASE_URL")
    if url:
        yield PgServer(url)
        return
    server = TemporaryServer().start()
    try:
        yield PgServer(server.url)
    finally:
        server.stop()


@pytest.fixture
def db_url(pg_server: PgServer) -> Iterator[str]:
    """URL of a fresh, empty database, dropped after the test."""
    name = f"mvo_t{next(_counter)}_{uuid.uuid4().hex[:8]}"
    url = pg_server.create_database(name)
    try:
        yield url
    finally:
        pg_server.drop_database(name)


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to a fresh database."""
    with psycopg.connect(db_url, autocommit=True) as c:
        yield c


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    """A real, temporary Dagster instance."""
    with dg.instance_for_test() as inst:
        yield inst
