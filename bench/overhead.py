"""Benchmark A: what one refresh costs bare, through ``refresh_view`` and through Dagster.

For each materialized view the three variants run interleaved in rounds (after warm-up
rounds), the order within a round cycling through all six permutations:

(a) ``REFRESH MATERIALIZED VIEW CONCURRENTLY`` on an open autocommit psycopg connection;
(b) :func:`mv_orchestration.core.refresh.refresh_view` on the same connection (method
    decision, ``SET LOCAL`` timeouts, advisory lock, row counts, size);
(c) ``execute_in_process`` of the project's asset job selecting that one MV, on a real
    sqlite-backed Dagster instance: run record, event log, resource set-up (a connection
    pool that opens a new connection), the refresh, metadata and preview.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dagster as dg
import psycopg
from psycopg import sql

from bench.stats import Summary, timed
from mv_orchestration.core.catalog import RelationRef, read_catalog
from mv_orchestration.core.refresh import refresh_view
from mv_orchestration.core.sql import relation
from mv_orchestration.lib.defs import DatabaseTarget, build_definitions, default_translator
from mv_orchestration.lib.resource import PostgresResource

SCHEMA = "bench"
TINY = "mv_tiny"
SMALL = "mv_sales_by_day"
ORDERS = "orders"
ORDERS_ROWS = 10_000
VARIANTS = ("bare", "core", "dagster")
# Rounds cycle through every order, so each variant runs first, second and last equally often
# and directly after each other variant equally often.
ROUND_ORDERS = tuple(itertools.permutations(VARIANTS))
# Dagster's console logger defaults to DEBUG and prints every event to stderr; at WARNING the
# terminal is not on the clock. Events are still written to the instance's event log.
RUN_CONFIG: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass(frozen=True)
class ViewCase:
    name: str
    description: str
    rows: int
    bare: Summary
    core: Summary
    dagster: Summary

    @property
    def qualname(self) -> str:
        return f"{SCHEMA}.{self.name}"


@dataclass(frozen=True)
class OverheadResult:
    cases: tuple[ViewCase, ...]
    rounds: int
    warmup: int
    instance_storage: str


def setup_sql() -> sql.Composed:
    s = sql.Identifier(SCHEMA)
    tiny = relation(SCHEMA, TINY)
    small = relation(SCHEMA, SMALL)
    orders = relation(SCHEMA, ORDERS)
    statements = [
        sql.SQL("CREATE SCHEMA {}").format(s),
        sql.SQL("CREATE MATERIALIZED VIEW {} AS SELECT 1 AS x").format(tiny),
        sql.SQL("CREATE UNIQUE INDEX {} ON {} (x)").format(sql.Identifier(f"{TINY}_x"), tiny),
        sql.SQL(
            "CREATE TABLE {} (id int PRIMARY KEY, region text NOT NULL, day date NOT NULL,"
            " amount numeric(10, 2) NOT NULL)"
        ).format(orders),
        sql.SQL(
            "INSERT INTO {} SELECT g, (ARRAY['eu', 'us', 'apac', 'latam', 'mea'])[1 + g % 5],"
            " date '2025-01-01' + (g / 5) % 100, (g % 997) / 10.0"
            " FROM generate_series(1, {}) AS g"
        ).format(orders, sql.Literal(ORDERS_ROWS)),
        sql.SQL("ANALYZE {}").format(orders),
        sql.SQL(
            "CREATE MATERIALIZED VIEW {} AS SELECT region, day, count(*) AS orders,"
            " sum(amount) AS revenue FROM {} GROUP BY region, day"
        ).format(small, orders),
        sql.SQL("CREATE UNIQUE INDEX {} ON {} (region, day)").format(
            sql.Identifier(f"{SMALL}_key"), small
        ),
    ]
    return sql.SQL(";\n").join(statements)


def _count(conn: psycopg.Connection[Any], name: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(relation(SCHEMA, name))).fetchone()
    return int(row[0]) if row else 0


def run_overhead(
    db_url: str, *, rounds: int, warmup: int, log: Callable[[str], None]
) -> OverheadResult:
    """Run benchmark A against an empty database at ``db_url``."""
    cases: list[ViewCase] = []
    with psycopg.connect(db_url, autocommit=True) as conn, dg.instance_for_test() as instance:
        conn.execute(setup_sql())
        snapshot = read_catalog(conn, [SCHEMA])
        translator = default_translator("default", prefix_with_alias=False)
        target = DatabaseTarget(
            alias="default", resource=PostgresResource(dsn=db_url), translator=translator
        )
        job = build_definitions([(target, snapshot)]).resolve_implicit_global_asset_job_def()

        views = [
            (TINY, "`SELECT 1 AS x`, unique index"),
            (SMALL, f"aggregate over a {ORDERS_ROWS:,}-row table, unique index"),
        ]
        for name, description in views:
            key = translator.get_asset_key(RelationRef(SCHEMA, name))
            stmt = sql.SQL("REFRESH MATERIALIZED VIEW CONCURRENTLY {}").format(
                relation(SCHEMA, name)
            )

            def bare(stmt: sql.Composed = stmt) -> None:
                conn.execute(stmt)

            def core(name: str = name) -> None:
                result = refresh_view(conn, SCHEMA, name)
                if result.method != "concurrently":
                    raise RuntimeError(f"expected a concurrent refresh, got {result.method}")

            def dagster(key: dg.AssetKey = key) -> None:
                result = job.execute_in_process(
                    instance=instance, asset_selection=[key], run_config=RUN_CONFIG
                )
                mats = result.get_asset_materialization_events()
                if not result.success or [m.asset_key for m in mats] != [key]:
                    raise RuntimeError(f"Dagster run did not materialize {key.to_user_string()}")

            fns: dict[str, Callable[[], None]] = {"bare": bare, "core": core, "dagster": dagster}
            samples: dict[str, list[float]] = {v: [] for v in VARIANTS}
            for i in range(warmup + rounds):
                for variant in ROUND_ORDERS[i % len(ROUND_ORDERS)]:
                    elapsed, _ = timed(fns[variant], collect=False)
                    if i >= warmup:
                        samples[variant].append(elapsed)
            case = ViewCase(
                name=name,
                description=description,
                rows=_count(conn, name),
                bare=Summary.of(samples["bare"]),
                core=Summary.of(samples["core"]),
                dagster=Summary.of(samples["dagster"]),
            )
            log(
                f"  {case.qualname}: bare {case.bare.median_ms:.2f} ms, "
                f"refresh_view {case.core.median_ms:.2f} ms, "
                f"Dagster {case.dagster.median_ms:.1f} ms (medians of {rounds})"
            )
            cases.append(case)
        storage = type(instance.run_storage).__name__
    return OverheadResult(
        cases=tuple(cases), rounds=rounds, warmup=warmup, instance_storage=storage
    )
