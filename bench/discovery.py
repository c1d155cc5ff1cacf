"""Benchmark B: how long discovering N materialized views takes.

Each N gets its own database (the lineage query reads every rewrite rule of a database, so
separate schemas in one database would not isolate the counts), holding one schema with:

* one table per 10 MVs (20 rows each) and a plain view over each table;
* MVs reading a table (1 in 5), a plain view (2 in 5) or the previous MV (2 in 5, giving
  table/view → MV → MV → MV chains);
* a unique index on every other MV.

The whole schema is one generated SQL string executed once. Timed: ``read_catalog`` on an
open connection, ``build_definitions`` from the snapshot, ``Definitions.validate_loadable``
(resolve the repository, asset graph and jobs) and the serialized repository snapshot a code
server hands the webserver when it loads the code location.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import dagster as dg
import psycopg
from dagster._core.remote_representation.external_data import RepositorySnap
from dagster._serdes import serialize_value
from psycopg import sql

from bench.stats import Summary, timed
from mv_orchestration.core.catalog import CatalogSnapshot, read_catalog
from mv_orchestration.core.sql import relation
from mv_orchestration.demo.embedded import TemporaryServer, create_database
from mv_orchestration.lib.defs import DatabaseTarget, build_definitions, default_translator
from mv_orchestration.lib.resource import PostgresResource

SCHEMA = "catalog_bench"
SIZES = (10, 100, 1000)
MVS_PER_TABLE = 10
ROWS_PER_TABLE = 20


@dataclass(frozen=True)
class Shape:
    matviews: int
    tables: int
    views: int
    on_table: int
    on_view: int
    on_matview: int
    unique_indexed: int


@dataclass(frozen=True)
class DiscoveryCase:
    shape: Shape
    ddl_s: float
    assets: int
    snapshot_chars: int
    read_catalog: Summary
    build: Summary
    validate: Summary
    snapshot: Summary

    @property
    def definitions_ms(self) -> float:
        """Medians of build, validate and snapshot added: the Dagster side of a load."""
        return self.build.median_ms + self.validate.median_ms + self.snapshot.median_ms


@dataclass(frozen=True)
class DiscoveryResult:
    cases: tuple[DiscoveryCase, ...]
    repeats: int


def _source(i: int) -> str:
    """What MV ``i`` reads: 'table', 'view' or 'matview' (the previous MV)."""
    return ("table", "view", "view", "matview", "matview")[i % 5]


def _mv(i: int) -> str:
    return f"mv_{i:04d}"


def schema_sql(n: int) -> tuple[sql.Composed, Shape]:
    """One SQL string creating the schema for ``n`` MVs, and what it contains."""
    statements: list[sql.Composable] = [sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA))]
    tables = -(-n // MVS_PER_TABLE)
    for g in range(tables):
        table = relation(SCHEMA, f"t_{g:03d}")
        statements += [
            sql.SQL(
                "CREATE TABLE {} (id int PRIMARY KEY, grp int NOT NULL, val int NOT NULL)"
            ).format(table),
            sql.SQL("INSERT INTO {} SELECT g, g % 3, g FROM generate_series(1, {}) AS g").format(
                table, sql.Literal(ROWS_PER_TABLE)
            ),
            sql.SQL("CREATE VIEW {} AS SELECT id, grp, val FROM {} WHERE val >= 0").format(
                relation(SCHEMA, f"v_{g:03d}"), table
            ),
        ]
    unique = 0
    for i in range(n):
        g = i // MVS_PER_TABLE
        mv = relation(SCHEMA, _mv(i))
        match _source(i):
            case "table" | "view" as kind:
                src = relation(SCHEMA, f"{kind[0]}_{g:03d}")
                query = sql.SQL(
                    "SELECT grp, count(*) AS n, sum(val) AS total FROM {} GROUP BY grp"
                ).format(src)
            case _:
                query = sql.SQL("SELECT grp, n, total FROM {}").format(relation(SCHEMA, _mv(i - 1)))
        statements.append(sql.SQL("CREATE MATERIALIZED VIEW {} AS {}").format(mv, query))
        if i % 2 == 0:
            unique += 1
            statements.append(
                sql.SQL("CREATE UNIQUE INDEX {} ON {} (grp)").format(
                    sql.Identifier(f"{_mv(i)}_grp"), mv
                )
            )
    kinds = [_source(i) for i in range(n)]
    shape = Shape(
        matviews=n,
        tables=tables,
        views=tables,
        on_table=kinds.count("table"),
        on_view=kinds.count("view"),
        on_matview=kinds.count("matview"),
        unique_indexed=unique,
    )
    return sql.SQL(";\n").join(statements), shape


def _definitions(db_url: str, snapshot: CatalogSnapshot) -> dg.Definitions:
    target = DatabaseTarget(
        alias="default",
        resource=PostgresResource(dsn=db_url),
        translator=default_translator("default", prefix_with_alias=False),
    )
    return build_definitions([(target, snapshot)])


def run_discovery(
    server: TemporaryServer,
    *,
    sizes: Sequence[int] = SIZES,
    repeats: int,
    log: Callable[[str], None],
) -> DiscoveryResult:
    cases: list[DiscoveryCase] = []
    for n in sizes:
        dbname = f"bench_catalog_{n}"
        create_database(server.url, dbname)
        db_url = server.url_for(dbname)
        with psycopg.connect(db_url, autocommit=True) as conn:
            ddl, shape = schema_sql(n)
            t0 = time.perf_counter()
            conn.execute(ddl)
            ddl_s = time.perf_counter() - t0
            conn.execute("ANALYZE")

            snapshot = read_catalog(conn, [SCHEMA])  # warm-up, and a correctness check
            _check_snapshot(snapshot, shape)
            reads = [timed(lambda: read_catalog(conn, [SCHEMA]))[0] for _ in range(repeats)]

        builds: list[float] = []
        validates: list[float] = []
        snapshots: list[float] = []
        assets = snapshot_chars = 0
        for _ in range(repeats):
            build_s, defs = timed(partial(_definitions, db_url, snapshot))
            validate_s, _ = timed(partial(dg.Definitions.validate_loadable, defs))
            repo = defs.get_repository_def()  # cached by validate_loadable
            snapshot_s, snapshot_chars = timed(partial(_serialized_snapshot, repo))
            builds.append(build_s)
            validates.append(validate_s)
            snapshots.append(snapshot_s)
            graph = repo.asset_graph
            if len(graph.materializable_asset_keys) != n:
                raise RuntimeError(f"expected {n} materializable assets")
            assets = len(graph.get_all_asset_keys())
        case = DiscoveryCase(
            shape=shape,
            ddl_s=ddl_s,
            assets=assets,
            snapshot_chars=snapshot_chars,
            read_catalog=Summary.of(reads),
            build=Summary.of(builds),
            validate=Summary.of(validates),
            snapshot=Summary.of(snapshots),
        )
        log(
            f"  N={n}: read_catalog {case.read_catalog.median_ms:.1f} ms, "
            f"build_definitions {case.build.median_ms:.1f} ms, "
            f"validate_loadable {case.validate.median_ms:.1f} ms, "
            f"snapshot {case.snapshot.median_ms:.1f} ms (medians of {repeats})"
        )
        cases.append(case)
    return DiscoveryResult(cases=tuple(cases), repeats=repeats)


def _serialized_snapshot(repo: dg.RepositoryDefinition) -> int:
    """What a code server sends the webserver on load: the repository snapshot, serialized.

    Internal Dagster API (pinned version); returns the serialized size in characters.
    """
    return len(serialize_value(RepositorySnap.from_def(repo)))


def _check_snapshot(snapshot: CatalogSnapshot, shape: Shape) -> None:
    mvs = len(snapshot.matviews)
    chained = sum(
        1 for mv in snapshot.matviews if any(u.name.startswith("mv_") for u in mv.upstream)
    )
    indexed = sum(1 for mv in snapshot.matviews if mv.has_usable_unique_index)
    # tables and views both appear as relations upstream of some MV
    rels = len(snapshot.relations)
    expected = (shape.matviews, shape.on_matview, shape.unique_indexed, shape.tables + shape.views)
    if (mvs, chained, indexed, rels) != expected:
        raise RuntimeError(
            f"catalog mismatch: got {(mvs, chained, indexed, rels)}, expected {expected}"
        )
