"""Demo databases for benchmarks C, D and F, and small helpers they share.

The demo systems come from :mod:`mv_orchestration.demo.data` (the same DDL, data generator
and default scale as ``mvo dev``). A system loaded once into a template database is cloned
with ``CREATE DATABASE ... TEMPLATE`` (a file copy) for each benchmark that needs it, so each
benchmark starts from the same data without regenerating it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from mv_orchestration.core.catalog import CatalogSnapshot, RelationRef, read_catalog
from mv_orchestration.core.changes import change_sources
from mv_orchestration.core.graph import LineageGraph
from mv_orchestration.core.sql import relation
from mv_orchestration.demo import data
from mv_orchestration.demo.embedded import TemporaryServer, create_database

LLM_SCHEMA = "llm_usage"
API_USAGE = "api_usage"
# The writer's columns: every column of api_usage but the bigserial id and created_at (DEFAULT
# now(), so each row lands in the current month's partition as a live app's row would).
WRITER_COLUMNS = (
    "user_id", "service_type", "provider", "model", "status", "error_code", "input_tokens",
    "output_tokens", "total_tokens", "input_cost", "output_cost", "total_cost", "latency_ms",
)  # fmt: skip
# The all-time MV of the LLM system: sum(request_count) is the number of rows it has seen.
ALL_TIME_MV = "mv_model_usage"


def load_demo_database(
    server: TemporaryServer,
    dbname: str,
    systems: Sequence[str],
    *,
    scale: float,
    log: Callable[[str], None],
) -> dict[str, int]:
    """Create ``dbname`` and load the demo ``systems`` into it; return rows per table."""
    create_database(server.url, dbname)
    with psycopg.connect(server.url_for(dbname), autocommit=True) as conn:
        counts = data.load_demo(conn, scale=scale, systems=systems)
        conn.execute("SELECT pg_stat_force_next_flush()")
    log(
        f"  loaded {', '.join(systems)} (scale {scale}) into {dbname}: {sum(counts.values()):,} rows"
    )
    return counts


def clone_database(server: TemporaryServer, dbname: str, template: str) -> None:
    """``CREATE DATABASE dbname TEMPLATE template`` (nobody may be connected to the template)."""
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(dbname), sql.Identifier(template)
            )
        )


def flush_stats(conn: psycopg.Connection[Any]) -> None:
    """Make this session's pending statistics counters visible to other sessions now.

    Without it a session's counters reach others when it goes idle (at most once a second
    while it keeps writing, within about 10 s after it stops).
    """
    conn.execute("SELECT pg_stat_force_next_flush()")


@dataclass(frozen=True)
class LlmSystem:
    """The LLM-usage demo as the change sensor sees it: MVs, their order and their sources."""

    order: tuple[RelationRef, ...]  # every MV of the schema, upstream first
    sources: dict[RelationRef, frozenset[RelationRef]]  # MV -> tables to fingerprint
    watched: tuple[RelationRef, ...]  # union of the sources, sorted
    uses_now: frozenset[RelationRef]  # MVs whose definition calls now(): they age without writes

    @classmethod
    def read(cls, conn: psycopg.Connection[Any]) -> LlmSystem:
        """The same derivation as :func:`mv_orchestration.lib.sensors.build_change_sensor`."""
        snapshot: CatalogSnapshot = read_catalog(conn, [LLM_SCHEMA])
        sources = change_sources(snapshot)
        order = LineageGraph(snapshot).refresh_order(sources)
        watched = sorted(set().union(*sources.values()))
        uses_now = frozenset(mv.ref for mv in snapshot.matviews if "now()" in mv.definition)
        return cls(order=tuple(order), sources=sources, watched=tuple(watched), uses_now=uses_now)

    def to_refresh(self, moved: set[RelationRef]) -> list[RelationRef]:
        return [mv for mv in self.order if self.sources[mv] & moved]


def sample_rows(conn: psycopg.Connection[Any], n: int, seed: int = 7) -> list[tuple[Any, ...]]:
    """``n`` rows of ``api_usage`` as the demo generator made them, in a seeded random order."""
    stmt = sql.SQL("SELECT {} FROM {} ORDER BY id LIMIT {}").format(
        sql.SQL(", ").join(map(sql.Identifier, WRITER_COLUMNS)),
        relation(LLM_SCHEMA, API_USAGE),
        sql.Literal(n),
    )
    rows = [tuple(r) for r in conn.execute(stmt).fetchall()]
    random.Random(seed).shuffle(rows)
    return rows


def insert_statement() -> sql.Composed:
    """One single-row INSERT into ``api_usage``; ``created_at`` takes its default, now()."""
    return sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        relation(LLM_SCHEMA, API_USAGE),
        sql.SQL(", ").join(map(sql.Identifier, WRITER_COLUMNS)),
        sql.SQL(", ").join(sql.Placeholder() * len(WRITER_COLUMNS)),
    )


def rows_seen_by_all_time_mv(conn: psycopg.Connection[Any]) -> int:
    """How many ``api_usage`` rows the all-time MV counted at its last refresh."""
    row = conn.execute(
        sql.SQL("SELECT coalesce(sum(request_count), 0) FROM {}").format(
            relation(LLM_SCHEMA, ALL_TIME_MV)
        )
    ).fetchone()
    return int(row[0]) if row else 0


def count_rows(conn: psycopg.Connection[Any], schema: str, name: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(relation(schema, name))).fetchone()
    return int(row[0]) if row else 0
