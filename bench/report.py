"""Machine facts and the Markdown/console rendering of the results."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster
import psycopg
from tabulate import tabulate

from bench.discovery import ROWS_PER_TABLE, DiscoveryResult
from bench.overhead import OverheadResult
from bench.stats import fmt_ms
from mv_orchestration.lib.assets import PREVIEW_ROWS


@dataclass(frozen=True)
class RunInfo:
    date: str
    command: str
    total_s: float
    quick: bool
    facts: tuple[tuple[str, str], ...]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _libpq() -> str:
    v = psycopg.pq.version()
    return f"{v // 10000}.{v % 10000}"


def machine_facts(
    conn: psycopg.Connection[Any], instance_storage: str
) -> tuple[tuple[str, str], ...]:
    """Facts about this machine and these libraries, read at run time."""
    settings = {}
    for name in ("server_version", "fsync", "synchronous_commit", "shared_buffers"):
        row = conn.execute("SELECT current_setting(%s)", [name]).fetchone()
        settings[name] = str(row[0]) if row else "?"
    return (
        ("CPUs (nproc)", str(len(os.sched_getaffinity(0)))),
        ("CPU model", _cpu_model()),
        ("OS", platform.platform()),
        ("Python", platform.python_version()),
        ("dagster", dagster.__version__),
        ("psycopg", f"{psycopg.__version__} ({psycopg.pq.__impl__}, libpq {_libpq()})"),
        (
            "PostgreSQL",
            f"{settings['server_version']} (embedded `TemporaryServer`, same machine, TCP "
            f"127.0.0.1; fsync={settings['fsync']}, synchronous_commit="
            f"{settings['synchronous_commit']}, shared_buffers={settings['shared_buffers']})",
        ),
        ("Dagster instance", f"`instance_for_test()`, run storage `{instance_storage}`"),
    )


def _ratio(x: float, base: float) -> str:
    return f"{x / base:,.1f}x" if base > 0 else "n/a"


def overhead_tables(result: OverheadResult, fmt: str) -> tuple[str, str]:
    labels = {
        "bare": "(a) bare `REFRESH ... CONCURRENTLY`",
        "core": "(b) `refresh_view()`",
        "dagster": "(c) Dagster `execute_in_process`",
    }
    rows = []
    for case in result.cases:
        for variant in ("bare", "core", "dagster"):
            s = getattr(case, variant)
            rows.append(
                [
                    f"`{case.qualname}`",
                    labels[variant],
                    s.n,
                    fmt_ms(s.median_ms),
                    fmt_ms(s.p95_ms),
                    fmt_ms(s.min_ms),
                ]
            )
    timings = tabulate(
        rows,
        headers=["MV", "variant", "n", "median ms", "p95 ms", "min ms"],
        tablefmt=fmt,
        disable_numparse=True,
        colalign=("left", "left", "right", "right", "right", "right"),
    )
    ratio_rows = []
    for case in result.cases:
        a, b, c = case.bare.median_ms, case.core.median_ms, case.dagster.median_ms
        ratio_rows.append(
            [
                f"`{case.qualname}` ({case.rows:,} row{'' if case.rows == 1 else 's'}; "
                f"{case.description})",
                _ratio(b, a),
                _ratio(c, a),
                fmt_ms(b - a),
                fmt_ms(c - a),
            ]
        )
    ratios = tabulate(
        ratio_rows,
        headers=["MV", "(b)/(a)", "(c)/(a)", "(b)-(a) ms", "(c)-(a) ms"],
        tablefmt=fmt,
        disable_numparse=True,
        colalign=("left", "right", "right", "right", "right"),
    )
    return timings, ratios


def discovery_tables(result: DiscoveryResult, fmt: str) -> tuple[str, str]:
    shape_rows = []
    time_rows = []
    for case in result.cases:
        s = case.shape
        n = s.matviews
        shape_rows.append(
            [
                f"{n:,}",
                s.tables,
                s.views,
                s.on_table,
                s.on_view,
                s.on_matview,
                s.unique_indexed,
                f"{case.assets:,}",
                f"{case.ddl_s:.2f}",
            ]
        )
        total = case.read_catalog.median_ms + case.definitions_ms
        time_rows.append(
            [
                f"{n:,}",
                fmt_ms(case.read_catalog.median_ms),
                f"{case.read_catalog.median_ms / n:.3f}",
                fmt_ms(case.build.median_ms),
                fmt_ms(case.validate.median_ms),
                fmt_ms(case.snapshot.median_ms),
                f"{case.snapshot_chars / 1e6:.2f}",
                fmt_ms(case.definitions_ms),
                f"{case.definitions_ms / n:.3f}",
                fmt_ms(total),
                f"{total / n:.3f}",
            ]
        )
    shapes = tabulate(
        shape_rows,
        headers=[
            "MVs",
            "tables",
            "plain views",
            "MVs on a table",
            "MVs on a view",
            "MVs on an MV",
            "MVs with unique index",
            "Dagster assets",
            "DDL s",
        ],
        tablefmt=fmt,
        disable_numparse=True,
        colalign=("right",) * 9,
    )
    times = tabulate(
        time_rows,
        headers=[
            "MVs",
            "(1) `read_catalog` ms",
            "ms / MV",
            "(2) `build_definitions` ms",
            "(3) `validate_loadable` ms",
            "(4) repository snapshot ms",
            "snapshot MB",
            "(2)+(3)+(4) ms",
            "ms / MV",
            "(1)+...+(4) ms",
            "ms / MV",
        ],
        tablefmt=fmt,
        disable_numparse=True,
        colalign=("right",) * 11,
    )
    return shapes, times


def render_markdown(info: RunInfo, overhead: OverheadResult, discovery: DiscoveryResult) -> str:
    timings, ratios = overhead_tables(overhead, "github")
    shapes, times = discovery_tables(discovery, "github")
    facts = tabulate(list(info.facts), headers=["", ""], tablefmt="github", disable_numparse=True)
    tiny = overhead.cases[0]
    quick_note = (
        "\n> **Quick run** (`--quick`): few repetitions, for a smoke test only; run without "
        "`--quick` for numbers worth quoting.\n"
        if info.quick
        else ""
    )
    largest = discovery.cases[-1]
    overhead_summary = (
        f"For the trivial MV (`{tiny.qualname}`) the refresh itself is nearly free, so (c)-(a) "
        f"is essentially the fixed cost of one Dagster run around one refresh: "
        f"{fmt_ms(tiny.dagster.median_ms - tiny.bare.median_ms)} ms here (median), of which "
        f"`refresh_view()`'s own bookkeeping, (b)-(a), is "
        f"{fmt_ms(tiny.core.median_ms - tiny.bare.median_ms)} ms."
    )
    discovery_summary = (
        f"At {largest.shape.matviews:,} MVs, steps 1-4 take "
        f"{fmt_ms(largest.read_catalog.median_ms + largest.definitions_ms)} ms, of which "
        f"{fmt_ms(largest.read_catalog.median_ms)} ms are PostgreSQL catalog queries."
    )
    return f"""# Benchmarks

Generated by `bench/run.py` on {info.date}; the whole run took {info.total_s:.0f} s.
Every figure on this page comes from that run: rerun it to refresh the page.
{quick_note}
Reproduce (from the repository root; `make bench` runs the same command in `.venv`):

```sh
{info.command}
```

## Machine

{facts}

Client, PostgreSQL server and Dagster share these CPUs; nothing else was pinned or isolated.

## A. Per-refresh orchestration overhead

What orchestrating one refresh costs on top of the refresh itself. Per MV, the three
variants run interleaved — one sample of each per round, the order within a round cycling
through all six permutations — for {overhead.warmup} warm-up rounds (discarded) and
{overhead.rounds} measured rounds per MV.
Wall time with `time.perf_counter()`. Samples run back to back with Python's garbage
collector left as it normally runs (a forced `gc.collect()` before each sample would leave the
CPU caches cold and add milliseconds to the small variants).

* **(a)** `REFRESH MATERIALIZED VIEW CONCURRENTLY` over an open autocommit psycopg connection.
* **(b)** `mv_orchestration.core.refresh.refresh_view()` on the same connection, default
  options: method decided from the live catalog, `SET LOCAL` lock/statement timeouts, advisory
  lock, `count(*)` before and after, relation size.
* **(c)** `job.execute_in_process(instance=..., asset_selection=[that MV])` on the project's
  asset job (built once from a catalog snapshot), with a real sqlite-backed instance: the
  one-MV subset of the job, run record and event log writes, resource set-up (the
  `PostgresResource` pool opens a new connection per run), `refresh_view()`, materialization
  metadata and a {PREVIEW_ROWS}-row preview. The console logger is set to WARNING so terminal
  output is not timed.

{timings}

Medians compared (ratios and differences of the medians above):

{ratios}

{overhead_summary}

Because the asset job refreshes every selected MV in one step on one connection, the run's
fixed cost is paid once per run, not once per MV. Not included: how runs are launched outside
`execute_in_process` — the default run launcher of `dagster dev` starts a new process per run
and loads the code location there, which adds its own start-up time to every run.

## B. Catalog discovery

Time to discover N materialized views and turn them into Dagster definitions. Each N has its
own database (the lineage query reads every rewrite rule of the database, so separate
databases keep the counts isolated) with one schema, generated as one SQL string and
executed once:

{shapes}

Each MV aggregates a table or a plain view, or selects from the previous MV (chains of up to
three MVs); tables hold {ROWS_PER_TABLE} rows each. Timed, median of {discovery.repeats} runs after one
warm-up `read_catalog`:

1. `read_catalog(conn, [schema])` on an open connection (one REPEATABLE READ transaction);
2. `build_definitions([(target, snapshot)])` from that snapshot;
3. `dg.Definitions.validate_loadable(defs)`: resolving the definitions into a repository
   (asset graph, implicit asset job) and checking it loads;
4. the repository snapshot a code server serializes for the webserver when it loads the code
   location (`RepositorySnap.from_def` + `serialize_value`, Dagster internals of the pinned
   version); "snapshot MB" is its serialized size in millions of characters.

Steps 1-4 are the parts of loading the code location that grow with the number of MVs;
connecting to PostgreSQL, writing the snapshot cache, imports and process start-up are not
included. Sums are sums of the medians.

{times}

{discovery_summary}
"""


def render_console(overhead: OverheadResult, discovery: DiscoveryResult) -> str:
    timings, ratios = overhead_tables(overhead, "simple")
    shapes, times = discovery_tables(discovery, "simple")
    parts = ["A. per-refresh orchestration overhead", timings, ratios]
    parts += ["B. catalog discovery", shapes, times]
    return "\n\n".join(parts).replace("`", "")
