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
from bench.fingerprint import ROWS_PER_SMALL_TABLE, FingerprintResult
from bench.history_cost import TARGET, HistoryResult
from bench.lag import LagResult
from bench.overhead import OverheadResult
from bench.reader_wait import ReaderWaitResult
from bench.stats import Summary, fmt_ms
from bench.writer import WriterResult
from mv_orchestration.core.refresh import lock_retry_span
from mv_orchestration.lib.assets import PREVIEW_ROWS


@dataclass(frozen=True)
class Results:
    """What one run measured; a benchmark left out with ``--only`` is None."""

    overhead: OverheadResult | None = None
    discovery: DiscoveryResult | None = None
    history: HistoryResult | None = None
    writer: WriterResult | None = None
    fingerprint: FingerprintResult | None = None
    lag: LagResult | None = None
    reader_wait: ReaderWaitResult | None = None


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
    conn: psycopg.Connection[Any], instance_storage: str | None
) -> tuple[tuple[str, str], ...]:
    """Facts about this machine and these libraries, read at run time."""
    settings = {}
    for name in ("server_version", "fsync", "synchronous_commit", "shared_buffers"):
        row = conn.execute("SELECT current_setting(%s)", [name]).fetchone()
        settings[name] = str(row[0]) if row else "?"
    facts = (
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
    )
    if instance_storage is None:
        return facts
    return (
        *facts,
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


def _table(rows: list[list[Any]], headers: list[str], fmt: str, align: tuple[str, ...]) -> str:
    return tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True, colalign=align)


def _s(ms: float) -> str:
    """Milliseconds shown as seconds."""
    return f"{ms / 1000.0:,.1f}"


def history_tables(result: HistoryResult, fmt: str) -> tuple[str, str]:
    labels = (
        ("refresh", "(1) `refresh_view()`"),
        ("with_history", "(2) `begin_attempt()`, `refresh_view(record=...)`"),
        ("separate", "(3) `refresh_view()`, then `record_success()`"),
        ("round_trip", "for scale: one round trip, `SELECT 1`"),
    )
    rows = []
    for case in result.cases:
        for attr, label in labels:
            s: Summary = getattr(case, attr)
            rows.append(
                [
                    f"`{case.qualname}`",
                    label,
                    s.n,
                    fmt_ms(s.median_ms),
                    fmt_ms(s.p95_ms),
                    fmt_ms(s.min_ms),
                ]
            )
    timings = _table(
        rows,
        ["MV", "variant", "n", "median ms", "p95 ms", "min ms"],
        fmt,
        ("left", "left", "right", "right", "right", "right"),
    )
    verdict_rows = [
        [
            f"`{c.qualname}` ({c.rows:,} row{'' if c.rows == 1 else 's'}; {c.description})",
            f"{c.ratio:.3f}x",
            f"{c.added_ms:+.3f}",
            f"{c.paired_ratio:.3f}x",
            f"{c.separate_ratio:.3f}x / {c.separate_paired_ratio:.3f}x",
            f"**{'PASS' if c.passed else 'FAIL'}**",
        ]
        for c in result.cases
    ]
    verdicts = _table(
        verdict_rows,
        [
            "MV",
            "(2)/(1), medians",
            "(2)-(1) ms",
            "median of per-round (2)/(1)",
            "(3)/(1): medians / per round",
            f"(2)/(1) < {1 + TARGET:.2f}",
        ],
        fmt,
        ("left", "right", "right", "right", "right", "left"),
    )
    return timings, verdicts


_WRITER_LABELS = {
    "none": "(i) nothing",
    "trigger": "(ii) refresh-on-insert trigger",
    "sensor": "(iii) change sensor, default interval",
    "sensor_fast": "(iv) change sensor, 1 s interval (stress)",
    "busy": "(v) control: a CPU-bound query elsewhere",
}


def writer_table(result: WriterResult, fmt: str) -> str:
    base = result.get("none").rate
    rows = []
    for v in result.variants:
        sensor = v.variant.startswith("sensor")
        rows.append(
            [
                _WRITER_LABELS[v.variant],
                len(v.window_rates),
                f"{v.inserts:,}",
                f"{v.seconds:.1f}",
                f"{v.rate:,.1f}",
                f"{v.rate / base:.4f}" if v.rate / base < 0.01 else f"{v.rate / base:.3f}",
                f"{min(v.window_rates):,.1f} - {max(v.window_rates):,.1f}",
                v.ticks if sensor else "",
                v.refresh_runs if sensor else ("every insert" if v.variant == "trigger" else ""),
                f"{v.refresh_s:.1f}" if sensor else "",
            ]
        )
    return _table(
        rows,
        [
            "variant",
            "windows",
            "inserts",
            "s",
            "inserts/s",
            "ratio to (i)",
            "inserts/s per window",
            "sensor ticks",
            "refreshes of the MVs",
            "refresh s",
        ],
        fmt,
        ("left", "right", "right", "right", "right", "right", "right", "right", "right", "right"),
    )


def fingerprint_table(result: FingerprintResult, fmt: str) -> str:
    rows = [
        [
            c.label,
            c.call.n,
            fmt_ms(c.call.median_ms),
            fmt_ms(c.call.p95_ms),
            fmt_ms(c.call.min_ms),
            f"{c.call.median_ms / c.tables:.3f}",
        ]
        for c in result.cases
    ]
    return _table(
        rows,
        [
            "one `fingerprints()` call for",
            "n",
            "median ms",
            "p95 ms",
            "min ms",
            "median ms / table",
        ],
        fmt,
        ("left", "right", "right", "right", "right", "right"),
    )


def lag_tables(result: LagResult, fmt: str) -> tuple[str, str]:
    q = result.quiet
    n_mvs = len(result.matviews)
    quiet = _table(
        [
            [
                f"cron `{result.cron}` ({result.cron_tz})",
                f"{q.cron_ticks} cron ticks",
                q.cron_ticks,
                q.cron_mv_refreshes,
                f"{q.cron_refresh_s:.1f}",
            ],
            [
                f"change sensor, every {result.sensor_interval_s:g} s",
                f"{q.sensor_ticks} ticks, each one real `fingerprints()` call "
                f"(median {fmt_ms(q.fingerprint.median_ms)} ms)",
                q.sensor_triggering_ticks,
                q.sensor_triggering_ticks * n_mvs,
                "0.0" if q.sensor_triggering_ticks == 0 else "n/a",
            ],
        ],
        ["policy", "evaluations in the hour", "refresh runs", "MV refreshes", "refresh s"],
        fmt,
        ("left", "left", "right", "right", "right"),
    )
    rows = []
    for h in result.steady:
        label = (
            f"cron `{result.cron}`"
            if h.policy == "cron"
            else f"change sensor, every {result.sensor_interval_s:g} s"
        )
        rows.append(
            [
                label,
                h.inserts,
                h.ticks,
                h.refresh_runs,
                h.mv_refreshes,
                f"{h.refresh_s:.1f}",
                fmt_ms(h.run.median_ms),
                _s(h.lag.median_ms),
                _s(h.lag.p95_ms),
                _s(h.lag.max_ms),
            ]
        )
    steady = _table(
        rows,
        [
            "policy",
            "inserts",
            "evaluations",
            "refresh runs",
            "MV refreshes",
            "refresh s",
            "one run, median ms",
            "lag median s",
            "lag p95 s",
            "lag max s",
        ],
        fmt,
        ("left",) + ("right",) * 9,
    )
    return quiet, steady


READER_BOUND_S = 1.5  # issue 11: a reader's SELECT returns within this while a refresh waits
_READER_LABELS = {
    "bare": "bare `REFRESH MATERIALIZED VIEW` (no `lock_timeout`)",
    "old": "old defaults: `lock_timeout` 10 s, 2 retries after 2 s, 4 s",
    "new": "new defaults: `lock_timeout` 0.5 s, 14 retries, jittered backoff",
}


def _refresh_outcome(cell: Any) -> str:
    attempts = f"{cell.attempts} attempt{'' if cell.attempts == 1 else 's'}"
    after = cell.ended_s - cell.hold_s
    if not cell.ok:
        return f"failed at {cell.ended_s:.1f} s, after {attempts}"
    return f"done at {cell.ended_s:.1f} s ({after:+.1f} s after the holder's commit), {attempts}"


def reader_wait_table(result: ReaderWaitResult, fmt: str) -> str:
    rows = [
        [
            f"{c.hold_s:g} s",
            _READER_LABELS[c.variant],
            len(c.readers),
            f"{c.waits.median_ms / 1000:.3f}",
            f"{c.waits.max_ms / 1000:.3f}",
            c.over(READER_BOUND_S),
            _refresh_outcome(c),
        ]
        for c in result.cells
    ]
    return _table(
        rows,
        [
            "holder commits after",
            "refresh",
            "readers",
            "median wait s",
            "max wait s",
            f"readers ≥ {READER_BOUND_S:g} s",
            "the refresh",
        ],
        fmt,
        ("right", "left", "right", "right", "right", "right", "left"),
    )


def _section_g(r: ReaderWaitResult, info: RunInfo) -> str:
    table = reader_wait_table(r, "github")
    o = r.new
    long, short = max(r.holds_s), min(r.holds_s)

    def worst(variant: str) -> str:
        return f"{max(r.get(variant, h).waits.max_ms for h in r.holds_s) / 1000:.2f} s"

    done = [r.get("new", h) for h in r.holds_s]
    shortest, longest = lock_retry_span(o)
    if all(c.ok for c in done):
        outcome = (
            "The new defaults' refresh still succeeded behind both holders, "
            + " and ".join(f"{c.ended_s - c.hold_s:.1f} s" for c in done)
            + " after the holder's commit (its next attempt comes after at most one back-off "
            f"delay, ≤ {o.retry_backoff_max_s:g} s)."
        )
    else:
        outcome = "**The new defaults' refresh failed** (see the table)."
    return f"""## G. A new reader's wait behind a blocking refresh (issue 11)

Measured by `{info.command}` on {info.date} (this section: {r.seconds:.0f} s).

A long reader transaction (the *holder*: `BEGIN`, one `SELECT count(*)` of `mv_report`, then
idle, as a report or a forgotten `psql` session would) holds ACCESS SHARE on `mv_report`
({r.rows:,} rows, no unique index, so every refresh of it is a plain, blocking one). A refresh
starts, and the holder commits {short:g} s or {long:g} s later. A plain refresh asks for ACCESS
EXCLUSIVE, and while that request waits, every new `SELECT` of the MV queues behind it. Three
refreshes, one after another in the same run (`bench/reader_wait.py`):

* **bare** `REFRESH MATERIALIZED VIEW mv_report` with `lock_timeout = 0` (it waits for ever);
* **old defaults** of `refresh_view()` before issue 11: `lock_timeout` 10 s, then 2 retries
  after 2 s and 4 s (replayed as three one-attempt `refresh_view()` calls with those sleeps);
* **new defaults**: `refresh_view(conn, "public", "mv_report")`: `lock_timeout`
  {o.lock_timeout_s:g} s for a plain refresh, {o.lock_retries} retries, retry n after a delay
  drawn from the upper half of min({o.retry_backoff_max_s:g} s, {o.retry_backoff_s:g} s * 2^(n-1)).

Readers start one per {r.reader_every_s:g} s slot, each at a random moment of its slot (a
seeded generator), from the refresh's start until it has ended, each on its own connection
opened beforehand, and time one `SELECT count(*)` of the MV. So they start at every phase of
an attempt's wait, and during the new defaults' back-off sleeps, when nothing is queued. With
nothing in the way that `SELECT` takes {fmt_ms(r.alone.median_ms)} ms (median of
{r.alone.n}). One run per cell.

{table}

The longest wait of a reader was {worst("bare")} behind the bare `REFRESH` and {worst("old")}
with the old defaults: a reader queues behind the waiting request for as long as the holder
keeps it waiting, and the old `lock_timeout` (10 s) lets it wait that long. With the new
defaults it was {worst("new")}: no attempt keeps its request queued longer than
{o.lock_timeout_s:g} s, and between attempts readers pass freely. {outcome} The new retries
give up only after {shortest:.0f}-{longest:.0f} s in all; a holder past that fails the
refresh with a lock-timeout error that names it. `CONCURRENTLY` is not measured here: it asks
for EXCLUSIVE, which no `SELECT` waits for.
"""  # noqa: S608 (Markdown, not SQL)


def _section_a(overhead: OverheadResult) -> str:
    timings, ratios = overhead_tables(overhead, "github")
    tiny = overhead.cases[0]
    summary = (
        f"For the trivial MV (`{tiny.qualname}`) the refresh itself is nearly free, so (c)-(a) "
        f"is essentially the fixed cost of one Dagster run around one refresh: "
        f"{fmt_ms(tiny.dagster.median_ms - tiny.bare.median_ms)} ms here (median), of which "
        f"`refresh_view()`'s own bookkeeping, (b)-(a), is "
        f"{fmt_ms(tiny.core.median_ms - tiny.bare.median_ms)} ms."
    )
    return f"""## A. Per-refresh orchestration overhead

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

{summary}

Because the asset job refreshes every selected MV in one step on one connection, the run's
fixed cost is paid once per run, not once per MV. Not included: how runs are launched outside
`execute_in_process` — the default run launcher of `dagster dev` starts a new process per run
and loads the code location there, which adds its own start-up time to every run.
"""


def _section_b(discovery: DiscoveryResult) -> str:
    shapes, times = discovery_tables(discovery, "github")
    largest = discovery.cases[-1]
    summary = (
        f"At {largest.shape.matviews:,} MVs, steps 1-4 take "
        f"{fmt_ms(largest.read_catalog.median_ms + largest.definitions_ms)} ms, of which "
        f"{fmt_ms(largest.read_catalog.median_ms)} ms are PostgreSQL catalog queries."
    )
    return f"""## B. Catalog discovery

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

{summary}
"""


def _section_c(h: HistoryResult) -> str:
    timings, verdicts = history_tables(h, "github")
    worst = max(h.cases, key=lambda c: c.ratio)
    passed = all(c.passed for c in h.cases)
    flush = h.disk_flush
    smallest = min(h.cases, key=lambda c: c.refresh.median_ms)
    # Extrapolation, not a measurement: on a durable server the refresh's commit waits for one
    # WAL flush, and (2) one more, for the commit of the attempt's running row.
    f = flush.median_ms
    durable = (smallest.with_history.median_ms + 2 * f) / (smallest.refresh.median_ms + f)
    verdict = f"**{'PASS' if passed else 'FAIL'}** by the ratio of medians: " + (
        f"on every MV measured, the refresh with its history row took less than "
        f"{1 + TARGET:.2f}x the refresh alone; the highest was `{worst.qualname}` at "
        f"{worst.ratio:.3f}x ({worst.added_ms:+.3f} ms)."
        if passed
        else f"`{worst.qualname}` took {worst.ratio:.3f}x the refresh alone "
        f"({worst.added_ms:+.3f} ms on {fmt_ms(worst.refresh.median_ms)} ms), over the "
        f"{100 * TARGET:.0f} % target."
    )
    paired_worst = max(h.cases, key=lambda c: c.paired_ratio)
    paired = (
        f"The median of the per-round ratios, highest for `{paired_worst.qualname}` at "
        f"{paired_worst.paired_ratio:.3f}x, "
        + (
            "agrees."
            if (paired_worst.paired_ratio < 1.0 + TARGET) == passed
            else f"{'exceeds' if passed else 'is within'} the target: the two estimates of "
            "one small difference disagree, so rerun before relying on either."
        )
    )
    heaviest = max(h.cases, key=lambda c: c.separate_ratio)
    before = (
        f"For comparison, (3), the way the asset step wrote history before (a separate "
        f"`INSERT` after the refresh, its own transaction and round trip), came to "
        f"{heaviest.separate_ratio:.3f}x on `{heaviest.qualname}` "
        f"({heaviest.separate.median_ms - heaviest.refresh.median_ms:+.3f} ms)."
    )
    return f"""## C. History-write overhead (issue 4)

Target: *history writes add under {100 * TARGET:.0f} % to the duration of a refresh of a small demo MV.*

Data: the `school` and `saas` demo systems loaded by `mv_orchestration.demo.data.load_demo`
at scale {h.scale:g} ({h.table_rows:,} rows in their tables). Both MVs have a unique index and
refresh `CONCURRENTLY`; both are small, fast refreshes, where a fixed per-refresh cost weighs
most (`saas.platform_metrics` is the view whose refreshes the SaaS metrics team logged by hand). Per MV, {h.warmup} warm-up rounds (discarded) and {h.rounds} measured rounds,
one sample of each variant per round:

* **(1)** `refresh_view(conn, schema, name)` on an open autocommit connection;
* **(2)** the history writes exactly as the refresh step in `lib/refresh_step.py` makes
  them (`ensure_history` ran once before, outside the clock): `history.begin_attempt(...)`
  commits the attempt's `running` row first (one autocommit `INSERT … RETURNING id`, so that
  a killed process still leaves a row), then the same `refresh_view` call with
  `record=history.success_record(conn, "mvo", run_id=..., attempt_id=...)`: the `UPDATE`
  that completes the row runs in the refresh's own transaction, under a savepoint set in the
  same message as the `REFRESH`, as a CTE of the refresh's last statement.

* **(3)** for comparison, `refresh_view()` followed by a separate
  `history.record_success(conn, "mvo", result, run_id=...)`: one autocommit `INSERT`, its own
  transaction and round trip, as the asset step wrote history before.

The order of the three is reversed every other round. One `SELECT 1` round trip per round is
timed for scale.

{timings}

{verdicts}

{verdict} {paired} {before}

What (2) adds to (1): the `running` row's autocommit `INSERT` (one round trip and one
commit), a `SAVEPOINT` sent in the same message as the `REFRESH`, and the single-row `UPDATE`
of `mvo.refresh_history` (a `bigserial` key, two indexes and a partial index on `running`
rows) as a CTE of a statement the refresh sends anyway, plus binding the row's parameters in
Python. The history table held
{h.history_rows:,} rows at the end.

Caveat: this server runs with {h.durability},
like every benchmark here, so no `COMMIT` waits for the disk. On a durable server the
refresh's `COMMIT` waits for one WAL flush, and in (2) the `running` row's commit for one
more (the completed row commits with the refresh and needs none of its own). One 8 KiB
write + `fdatasync` in the server's data directory on this machine took
{fmt_ms(flush.median_ms)} ms (median of {flush.n}, p95 {fmt_ms(flush.p95_ms)} ms).
*Estimate, not measured*: adding one such flush to (1) and two to (2),
`{smallest.qualname}` would come to
({fmt_ms(smallest.with_history.median_ms)} + 2 * {fmt_ms(f)}) / ({fmt_ms(smallest.refresh.median_ms)} + {fmt_ms(f)})
= {durable:.3f}x. Rerun this benchmark against a durable server before relying on the target
there.
"""


def _section_d(w: WriterResult, cpus: str) -> str:
    table = writer_table(w, "github")
    base = w.get("none")
    trig = w.get("trigger")
    sens = w.get("sensor")
    fast = w.get("sensor_fast")
    busy = w.get("busy")
    control = (
        f"The control (v) ran at {busy.rate / base.rate:.3f}x (i) with no refreshing at all. "
        "Most likely, on this virtual machine a lone writer spends much of each round trip "
        "waiting for an idle CPU to wake up (writer and server process hand every statement "
        "back and forth), and a busy process nearby keeps the CPUs awake. So a variant above "
        "(i) does not mean that refreshing helps the writer: the cost of the background work "
        "is mixed with this effect, whose size (v) shows."
        if busy.rate > base.rate
        else f"The control (v) ran at {busy.rate / base.rate:.3f}x (i): a busy CPU nearby "
        "slows the writer by about that much with no refreshing at all."
    )
    summary = (
        f"With that trigger every single-row insert waits for four full `REFRESH`es: the "
        f"writer managed {trig.rate:,.1f} inserts/s, {trig.rate / base.rate:.4f}x the "
        f"{base.rate:,.0f} inserts/s without it. With the change sensor at its default interval "
        f"it managed {sens.rate / base.rate:.3f}x, and with the sensor ticking every "
        f"{w.fast_interval_s:g} s ({fast.refresh_runs} refresh runs, {fast.refresh_s:.1f} s of "
        f"refreshing in {fast.seconds:.0f} s of writing) {fast.rate / base.rate:.3f}x. The "
        f"sensor's refreshes run in another session, never inside the writer's transaction; "
        f"they share the machine's {cpus} CPUs with the writer and its server process."
    )
    overlap = min(sens.window_rates) <= max(base.window_rates) and min(base.window_rates) <= max(
        sens.window_rates
    )
    spread = (
        f" At the default interval the sensor refreshed for {sens.refresh_s:.1f} s of its "
        f"{sens.seconds:.0f} s ({100 * sens.refresh_s / sens.seconds:.1f} %)"
        + (
            f"; its windows' rates ({min(sens.window_rates):,.0f} - "
            f"{max(sens.window_rates):,.0f} inserts/s) overlap those of (i) "
            f"({min(base.window_rates):,.0f} - {max(base.window_rates):,.0f}), so the "
            "difference between them is within this machine's window-to-window noise."
            if overlap
            else "."
        )
    )
    summary += spread
    return f"""## D. Writer throughput on `llm_usage.api_usage` (issue 3 a)

The LLM-usage demo loaded by `load_demo` at scale {w.scale:g}: `api_usage`
(RANGE-partitioned by month, plus a DEFAULT partition) holds {w.table_rows:,} rows at the
start of every window, and four MVs read it: {", ".join(f"`{m}`" for m in w.matviews)}.
One writer session inserts single rows, one autocommit `INSERT ... VALUES` (one transaction)
after another, for {w.window_s:g} s per window. The rows are the demo generator's own (sampled
from the loaded table, `created_at` left to its default `now()`, so each lands in the current
month's partition). Variants:

* **(i)** nothing: no refresh machinery.
* **(ii)** the LLM-usage team's refresh-on-insert trigger, translated: its two `FOR EACH
  STATEMENT` triggers on `api_usage` run `trigger_refresh_analytics_views()`, whose body their
  setup does not show; it says the function "sends notification" and lists "database triggers
  (automatic)" among the callers of `refresh_analytics_views()` (four plain `REFRESH`es). No
  listener appears anywhere in that setup, so the trigger function does both, in the inserting
  transaction — the only reading under which their views refresh at all. One call of
  `refresh_analytics_views()` took {fmt_ms(w.trigger_refresh_ms)} ms on this table (median of
  3, before the windows). After each window the all-time MV is checked to have counted every
  row, i.e. the trigger refreshed on every insert. As installed:

```sql
{w.trigger_sql}
```

* **(iii)** this project's change sensor: a background thread with its own connection that
  ticks every {w.sensor_interval_s:g} s (`build_change_sensor`'s default
  `minimum_interval_seconds`), runs `core.changes.fingerprints` for the MVs' source tables
  ({", ".join(f"`{t}`" for t in w.watched)}) and refreshes the MVs downstream of a change,
  upstream first, with `refresh_view` — the same database work as the sensor tick plus the
  run it requests, minus Dagster's run launch, and without the run's history row, checks and
  preview (a few small queries per MV).
* **(iv)** the same thread ticking every {w.fast_interval_s:g} s: a stress case,
  {w.sensor_interval_s / w.fast_interval_s:g}x the default rate.
* **(v)** a control: no refresh machinery, but another session runs a CPU-bound query
  (`count(*)` over `generate_series`) for the whole window, cancelled at its end.

Windows rotate through the variants, the order shifting by one each round, for {w.rounds}
rounds of {len(w.variants)} windows. After each window the rows it inserted are deleted and the table vacuumed (outside the
clock), so every window starts from the same table. A sensor's cursor and tick clock carry
over between its windows, and its clock runs only while its own windows run: over its
{w.rounds} x {w.window_s:g} s it ticks as often as it would in that much wall time (for (iii),
{sens.ticks} tick(s)). The changes the sensor sees include other variants' inserts and the
clean-up deletes since its last tick, as a real sensor would. Inserts/s = inserts / wall
time, summed over a variant's windows.

{table}

{summary}

{control}
"""


def _section_e(fp: FingerprintResult) -> str:
    table = fingerprint_table(fp, "github")
    rows = fp.of_kind("rows")
    tables = fp.of_kind("tables")
    return f"""## E. Fingerprint query time (issue 3 b)

One `fingerprints(conn, tables)` call (the query the change sensor runs per tick) on one
database holding {max(c.tables for c in tables):,} small tables ({ROWS_PER_SMALL_TABLE} rows
each; calls ask for the first 10, 100 or all of them) and one table each of
{", ".join(f"{c.rows_per_table:,}" for c in rows)} rows, all filled with
`INSERT ... SELECT generate_series` ({fp.fill_s:.1f} s). The filling session then ran
`pg_stat_force_next_flush()`, and before timing, each case's fingerprint was checked to count
exactly the rows inserted, so the counters read are the real ones. Autovacuum is off for these
tables, so no background vacuum of the big tables competes for the CPUs while calls are timed
(vacuum does not change the counters read). Calls run on one autocommit connection (each its
own transaction, so each sees fresh counters; see the `changes.py` docstring),
{fp.warmup} warm-up rounds and {fp.rounds} measured rounds, each calling every case once in a
fresh random order (a call over 1,000 tables leaves the caches cold for the next call, so no
case may always come after it).

{table}

Flat in rows: one table of {rows[-1].rows_per_table:,} rows costs
{fp.spread("rows"):.2f}x one of {rows[0].rows_per_table:,} rows (medians) — the query reads
`pg_class`, `pg_namespace`, `pg_database` and the statistics counters, never the table. It
grows with the number of tables asked for: {tables[-1].tables:,} tables take
{fp.spread("tables"):.1f}x the time of {tables[0].tables:,}
({tables[-1].call.median_ms / tables[-1].tables:.3f} ms per table at {tables[-1].tables:,}).
"""


def _section_f(lag: LagResult) -> str:
    quiet, steady = lag_tables(lag, "github")
    q = lag.quiet
    cron = lag.get("cron")
    sens = lag.get("sensor")
    n_mvs = len(lag.matviews)
    if not q.cron_changed:
        changed_note = ""
    else:
        names = ", ".join(f"`{m}`" for m in q.cron_changed)
        aging = set(q.cron_changed) <= set(q.uses_now)
        changed_note = (
            f" The other {q.cron_concurrent - q.cron_concurrent_noop} changed rows of {names}"
            + (
                ", whose definitions filter on `now()` (a 30-day window): their aggregates change "
                "as rows age out of the window, without any write (here during the seconds of "
                "real time the simulated hour took). A change-driven refresh never sees that: "
                "such MVs also need a schedule (a freshness policy at least flags them)."
                if aging
                else "."
            )
        )
    return f"""## F. Quiet hour and commit-to-visible lag (issue 3 c)

Cron `{lag.cron}` ({lag.cron_tz}; the demo's school policy) against the change sensor
(`build_change_sensor`'s default interval, {lag.sensor_interval_s:g} s), both keeping the
{n_mvs} LLM-usage MVs fresh ({", ".join(f"`{m}`" for m in lag.matviews)}) over
`llm_usage.api_usage` ({lag.table_rows:,} rows, demo scale {lag.scale:g}).

**Method: a simulation on a virtual clock, with real queries and real refresh durations.**
An hour is too long for a benchmark, so each hour is simulated event by event. Everything
that touches the database is real: single-row `INSERT`s into `api_usage` at their simulated
commit times; at each sensor tick one real `fingerprints()` call, refreshing only when a
token moved; at each cron tick (from Dagster's cron iterator, as its scheduler uses) a real
refresh. A refresh is the {n_mvs} MVs in dependency order with `refresh_view`, and the
virtual clock advances by the measured duration of each fingerprint call and each refresh.
The inserts of a simulated minute run back to back in real time, and a busy session hands its
statistics counters to others at most once a second, so the writer session runs
`pg_stat_force_next_flush()` before each simulated tick. A real deployment sees a change up
to about 1 s later while the writer is busy (up to ~10 s after a burst ends), and Dagster adds
its run launch (see A; seconds with a process-per-run launcher) — neither is simulated.

**(1) A quiet hour (no writes).** The sensor's {q.sensor_ticks} ticks are {q.sensor_ticks}
real fingerprint calls on the idle table; "refresh runs" counts those whose tokens moved. The
cron refreshes at each of its ticks whatever the data did; its {q.cron_mv_refreshes} MV
refreshes were run for real, to time them.

{quiet}

Of the cron's {q.cron_concurrent} `CONCURRENTLY` refreshes in the quiet hour,
{q.cron_concurrent_noop} inserted and deleted no row — work that changed nothing (the
plain refreshes of the MV without a unique index cannot tell).{changed_note}

**(2) Steady inserts.** One insert every {lag.insert_every_s:g} simulated seconds (at
{lag.insert_every_s / 2:g} s, {lag.insert_every_s * 1.5:g} s, ..., between ticks),
{cron.inserts} in the hour, once per policy. A row's lag is the virtual time at which the
first refresh that started after its commit finished, minus its commit time; a refresh starts
at its tick, or when the previous one ends if that is later. After every refresh the
all-time MV was checked to count exactly the rows committed before it started. Every tick
falls within the hour (the last one at its end), and each refresh run belongs to one tick.

{steady}

In the quiet hour the cron refreshed {q.cron_ticks} times ({q.cron_mv_refreshes} MV refreshes,
{q.cron_refresh_s:.1f} s of refreshing) and the sensor {q.sensor_triggering_ticks} times. Under
steady inserts the sensor refreshed {sens.refresh_runs} times against the cron's
{cron.refresh_runs}, and a committed row became visible after
{_s(sens.lag.median_ms)} s (median; p95 {_s(sens.lag.p95_ms)} s) against
{_s(cron.lag.median_ms)} s (p95 {_s(cron.lag.p95_ms)} s). The sensor refreshes once per tick
that saw a change, so under steady writes it refreshes as often as it ticks, and not at all
when nothing changes.
"""


def render_markdown(info: RunInfo, results: Results) -> str:
    facts = tabulate(list(info.facts), headers=["", ""], tablefmt="github", disable_numparse=True)
    cpus = dict(info.facts).get("CPUs (nproc)", "?")
    quick_note = (
        "\n> **Quick run** (`--quick`): few repetitions and small data, for a smoke test only; "
        "run without `--quick` for numbers worth quoting.\n"
        if info.quick
        else ""
    )
    sections: list[str] = []
    r = results
    if r.overhead is not None:
        sections.append(_section_a(r.overhead))
    if r.discovery is not None:
        sections.append(_section_b(r.discovery))
    if r.history is not None:
        sections.append(_section_c(r.history))
    if r.writer is not None:
        sections.append(_section_d(r.writer, cpus))
    if r.fingerprint is not None:
        sections.append(_section_e(r.fingerprint))
    if r.lag is not None:
        sections.append(_section_f(r.lag))
    if r.reader_wait is not None:
        sections.append(_section_g(r.reader_wait, info))
    body = "\n".join(sections)
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

{body}"""


def render_console(results: Results) -> str:
    parts: list[str] = []
    r = results
    if r.overhead is not None:
        parts += ["A. per-refresh orchestration overhead", *overhead_tables(r.overhead, "simple")]
    if r.discovery is not None:
        parts += ["B. catalog discovery", *discovery_tables(r.discovery, "simple")]
    if r.history is not None:
        parts += ["C. history-write overhead", *history_tables(r.history, "simple")]
    if r.writer is not None:
        parts += ["D. writer throughput", writer_table(r.writer, "simple")]
    if r.fingerprint is not None:
        parts += ["E. fingerprint query time", fingerprint_table(r.fingerprint, "simple")]
    if r.lag is not None:
        parts += ["F. quiet hour and commit-to-visible lag", *lag_tables(r.lag, "simple")]
    if r.reader_wait is not None:
        parts += [
            "G. reader wait behind a blocking refresh",
            reader_wait_table(r.reader_wait, "simple"),
        ]
    return "\n\n".join(parts).replace("`", "").replace("**", "")
