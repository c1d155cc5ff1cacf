"""Benchmark E: how long one change-fingerprint query takes, by tables and by table size.

:func:`~mv_orchestration.core.changes.fingerprints` reads the statistics counters, never the
tables, so its time should grow with the number of tables asked for and stay flat in their
size. One database holds:

* 1,000 small tables (10 rows each); calls ask for the first 10, 100 or all 1,000;
* one table each of 10^4, 10^5, 10^6 and 10^7 rows (filled with ``INSERT ... SELECT
  generate_series``); each call asks for one of them.

The filling session runs ``pg_stat_force_next_flush()`` afterwards, and before timing each
case is checked: the fingerprint's insert counter must equal the rows inserted, so the
counters read are the real ones. Autovacuum is off for these tables so that a background
vacuum or analyze of the big tables does not compete for the two CPUs while calls are timed
(it would not change the counters the query reads). Calls run on one autocommit connection
(each call is its own transaction, so it sees fresh counters), interleaved: each round calls
every case once, in a fresh random order.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import psycopg
from psycopg import sql

from bench.stats import Summary, timed
from mv_orchestration.core.catalog import RelationRef
from mv_orchestration.core.changes import fingerprints
from mv_orchestration.core.sql import relation

SCHEMA = "fp_bench"
TABLE_COUNTS = (10, 100, 1000)
ROWS_PER_SMALL_TABLE = 10
ROW_COUNTS = (10**4, 10**5, 10**6, 10**7)
SEED = 11


@dataclass(frozen=True)
class FingerprintCase:
    kind: str  # "tables" (N small tables) or "rows" (one table of N rows)
    tables: int
    rows_per_table: int
    call: Summary

    @property
    def label(self) -> str:
        if self.kind == "tables":
            return f"{self.tables:,} tables of {self.rows_per_table:,} rows"
        return f"1 table of {self.rows_per_table:,} rows"


@dataclass(frozen=True)
class FingerprintResult:
    cases: tuple[FingerprintCase, ...]
    rounds: int
    warmup: int
    fill_s: float  # time to create and fill all tables

    def of_kind(self, kind: str) -> tuple[FingerprintCase, ...]:
        return tuple(c for c in self.cases if c.kind == kind)

    def spread(self, kind: str) -> float:
        """Median of the largest case over the median of the smallest, for ``kind``."""
        cases = self.of_kind(kind)
        return cases[-1].call.median_ms / cases[0].call.median_ms


def _small(i: int) -> RelationRef:
    return RelationRef(SCHEMA, f"t_{i:04d}")


def _big(rows: int) -> RelationRef:
    return RelationRef(SCHEMA, f"rows_{rows}")


def _create_sql(n_small: int, row_counts: Sequence[int]) -> sql.Composed:
    no_autovacuum = sql.SQL("WITH (autovacuum_enabled = false)")
    statements: list[sql.Composable] = [sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA))]
    for i in range(n_small):
        t = _small(i)
        statements += [
            sql.SQL("CREATE TABLE {} (id bigint NOT NULL, val int NOT NULL) {}").format(
                relation(t.schema, t.name), no_autovacuum
            ),
            sql.SQL("INSERT INTO {} SELECT g, g % 7 FROM generate_series(1, {}) AS g").format(
                relation(t.schema, t.name), sql.Literal(ROWS_PER_SMALL_TABLE)
            ),
        ]
    for rows in row_counts:
        t = _big(rows)
        statements += [
            sql.SQL("CREATE TABLE {} (id bigint NOT NULL, val int NOT NULL) {}").format(
                relation(t.schema, t.name), no_autovacuum
            ),
            sql.SQL("INSERT INTO {} SELECT g, g % 7 FROM generate_series(1, {}) AS g").format(
                relation(t.schema, t.name), sql.Literal(rows)
            ),
        ]
    return sql.SQL(";\n").join(statements)


def run_fingerprint(
    db_url: str,
    *,
    rounds: int,
    warmup: int,
    row_counts: Sequence[int] = ROW_COUNTS,
    log: Callable[[str], None],
) -> FingerprintResult:
    """Run benchmark E against an empty database at ``db_url``."""
    n_small = max(TABLE_COUNTS)
    with psycopg.connect(db_url, autocommit=True, application_name="bench-fill") as filler:
        t0 = time.perf_counter()
        filler.execute(_create_sql(n_small, row_counts))
        filler.execute("SELECT pg_stat_force_next_flush()")
        fill_s = time.perf_counter() - t0
    log(
        f"  created {n_small:,} small tables and tables of {', '.join(f'{r:,}' for r in row_counts)} rows in {fill_s:.1f} s"
    )

    cases: list[tuple[str, int, int, list[RelationRef]]] = [
        ("tables", n, ROWS_PER_SMALL_TABLE, [_small(i) for i in range(n)]) for n in TABLE_COUNTS
    ]
    cases += [("rows", 1, rows, [_big(rows)]) for rows in row_counts]
    samples: list[list[float]] = [[] for _ in cases]
    with psycopg.connect(db_url, autocommit=True, application_name="bench-fingerprint") as conn:
        for kind, _n, rows, tables in cases:
            fps = fingerprints(conn, tables)
            if len(fps) != len(tables) or any(fp.inserted != rows for fp in fps.values()):
                raise RuntimeError(f"counters not flushed for {kind} case of {len(tables)} tables")
        rng = random.Random(SEED)
        for r in range(warmup + rounds):
            # A fresh random order each round: a case must not always follow the same one (a
            # call over 1,000 tables leaves the caches cold for whatever comes next).
            for i in rng.sample(range(len(cases)), len(cases)):
                elapsed, _ = timed(partial(fingerprints, conn, cases[i][3]), collect=False)
                if r >= warmup:
                    samples[i].append(elapsed)
    result = FingerprintResult(
        cases=tuple(
            FingerprintCase(kind=kind, tables=n, rows_per_table=rows, call=Summary.of(s))
            for (kind, n, rows, _t), s in zip(cases, samples, strict=True)
        ),
        rounds=rounds,
        warmup=warmup,
        fill_s=fill_s,
    )
    for case in result.cases:
        log(f"  {case.label}: {case.call.median_ms:.2f} ms (median of {rounds})")
    return result
