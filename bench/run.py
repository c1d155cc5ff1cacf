"""Run the benchmarks and rewrite ``docs/benchmarks.md``: ``python -m bench.run [--quick]``.

One throw-away PostgreSQL server (:class:`~mv_orchestration.demo.embedded.TemporaryServer`)
serves every benchmark, each in its own database; see :mod:`bench.overhead` (A),
:mod:`bench.discovery` (B), :mod:`bench.history_cost` (C), :mod:`bench.writer` (D),
:mod:`bench.fingerprint` (E), :mod:`bench.lag` (F) and :mod:`bench.reader_wait` (G).
"""

from __future__ import annotations

import shlex
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

import click
import dagster as dg
import psycopg

from bench.demo_db import LLM_SCHEMA, clone_database, load_demo_database
from bench.discovery import DiscoveryResult, run_discovery
from bench.fingerprint import ROW_COUNTS, FingerprintResult, run_fingerprint
from bench.history_cost import SYSTEMS as HISTORY_SYSTEMS
from bench.history_cost import HistoryResult, run_history_cost
from bench.lag import LagResult, run_lag
from bench.overhead import OverheadResult, run_overhead
from bench.reader_wait import HOLDS_S, QUICK_HOLDS_S, ReaderWaitResult, run_reader_wait
from bench.report import Results, RunInfo, machine_facts, render_console, render_markdown
from bench.writer import WriterResult, run_writer
from mv_orchestration.demo.embedded import TemporaryServer, create_database

DEFAULT_OUTPUT = Path("docs/benchmarks.md")
SECTIONS = "ABCDEFG"
LLM_TEMPLATE = "bench_llm_template"


def _log(message: str) -> None:
    click.echo(message, err=True)


def _command(quick: bool, output: Path, only: str) -> str:
    args = ["python", "-m", "bench.run"]
    if quick:
        args.append("--quick")
    if only != SECTIONS:
        args += ["--only", only]
    if output != DEFAULT_OUTPUT:
        args += ["--output", str(output)]
    return shlex.join(args)


@click.command()
@click.option(
    "--quick", is_flag=True, help="Few repetitions, small data: a smoke run, not for quoting."
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_OUTPUT,
    show_default=True,
    help="Markdown report to (re)write.",
)
@click.option(
    "--only",
    default=SECTIONS,
    show_default=True,
    help="Run only these benchmarks (letters), e.g. CF; needs --output other than the default.",
)
def main(quick: bool, output: Path, only: str) -> None:
    """Measure the benchmarks A-G; write the results as Markdown."""
    only = "".join(sorted(set(only.upper())))
    if not only or any(c not in SECTIONS for c in only):
        raise click.BadParameter(f"letters among {SECTIONS}", param_hint="--only")
    if only != SECTIONS and output == DEFAULT_OUTPUT:
        raise click.BadParameter(
            f"a partial run must not overwrite {DEFAULT_OUTPUT}; pass --output", param_hint="--only"
        )
    for category in (dg.BetaWarning, dg.PreviewWarning):
        warnings.filterwarnings("ignore", category=category)
    rounds, warmup, repeats = (5, 2, 3) if quick else (30, 3, 7)
    scale = 0.1 if quick else 1.0  # demo data volume for C, D and F (1.0 = `mvo dev`)
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    overhead: OverheadResult | None = None
    discovery: DiscoveryResult | None = None
    history: HistoryResult | None = None
    writer: WriterResult | None = None
    fingerprint: FingerprintResult | None = None
    lag: LagResult | None = None
    reader_wait: ReaderWaitResult | None = None
    _log("starting a temporary PostgreSQL server ...")
    with TemporaryServer() as server:
        if "A" in only:
            _log(f"A. per-refresh overhead ({warmup} warm-up + {rounds} rounds per variant)")
            create_database(server.url, "bench_overhead")
            overhead = run_overhead(
                server.url_for("bench_overhead"), rounds=rounds, warmup=warmup, log=_log
            )
        if "B" in only:
            _log(f"B. catalog discovery (median of {repeats})")
            discovery = run_discovery(server, repeats=repeats, log=_log)
        if "C" in only:
            c_rounds, c_warmup = (20, 2) if quick else (600, 20)
            _log(f"C. history-write overhead ({c_warmup} warm-up + {c_rounds} rounds)")
            counts = load_demo_database(
                server, "bench_history", HISTORY_SYSTEMS, scale=scale, log=_log
            )
            history = run_history_cost(
                server.url_for("bench_history"),
                rounds=c_rounds,
                warmup=c_warmup,
                scale=scale,
                table_rows=sum(counts.values()),
                data_dir=server.root,
                log=_log,
            )
        if "D" in only or "F" in only:
            load_demo_database(server, LLM_TEMPLATE, [LLM_SCHEMA], scale=scale, log=_log)
        if "D" in only:
            d_rounds, window_s = (2, 2.0) if quick else (5, 6.0)
            _log(f"D. writer throughput ({d_rounds} rounds of {window_s:g} s per variant)")
            clone_database(server, "bench_writer", LLM_TEMPLATE)
            writer = run_writer(
                server.url_for("bench_writer"),
                rounds=d_rounds,
                window_s=window_s,
                scale=scale,
                log=_log,
            )
        if "E" in only:
            e_rounds, e_warmup = (10, 2) if quick else (50, 3)
            row_counts = ROW_COUNTS[:2] if quick else ROW_COUNTS
            _log(f"E. fingerprint query time ({e_warmup} warm-up + {e_rounds} rounds)")
            create_database(server.url, "bench_fingerprint")
            fingerprint = run_fingerprint(
                server.url_for("bench_fingerprint"),
                rounds=e_rounds,
                warmup=e_warmup,
                row_counts=row_counts,
                log=_log,
            )
        if "F" in only:
            _log("F. quiet hour and commit-to-visible lag (simulated hours, real queries)")
            clone_database(server, "bench_lag", LLM_TEMPLATE)
            lag = run_lag(server.url_for("bench_lag"), scale=scale, log=_log)
        if "G" in only:
            holds = QUICK_HOLDS_S if quick else HOLDS_S
            _log(f"G. reader wait behind a blocking refresh (holders of {holds} s)")
            create_database(server.url, "bench_reader_wait")
            reader_wait = run_reader_wait(
                server.url_for("bench_reader_wait"), holds_s=holds, log=_log
            )
        with psycopg.connect(server.url) as conn:
            storage = overhead.instance_storage if overhead else None
            facts = machine_facts(conn, storage)
    total_s = time.perf_counter() - t0

    info = RunInfo(
        date=started.strftime("%Y-%m-%d %H:%M UTC"),
        command=_command(quick, output, only),
        total_s=total_s,
        quick=quick,
        facts=facts,
    )
    results = Results(
        overhead=overhead,
        discovery=discovery,
        history=history,
        writer=writer,
        fingerprint=fingerprint,
        lag=lag,
        reader_wait=reader_wait,
    )
    click.echo(render_console(results))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render_markdown(info, results))
    click.echo(f"\nwrote {output} (total {total_s:.0f} s)")


if __name__ == "__main__":
    main()
