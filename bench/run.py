"""Run the benchmarks and rewrite ``docs/benchmarks.md``: ``python -m bench.run [--quick]``.

One throw-away PostgreSQL server (:class:`~mv_orchestration.demo.embedded.TemporaryServer`)
serves both benchmarks; see :mod:`bench.overhead` and :mod:`bench.discovery`.
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

from bench.discovery import run_discovery
from bench.overhead import run_overhead
from bench.report import RunInfo, machine_facts, render_console, render_markdown
from mv_orchestration.demo.embedded import TemporaryServer, create_database

DEFAULT_OUTPUT = Path("docs/benchmarks.md")


def _log(message: str) -> None:
    click.echo(message, err=True)


def _command(quick: bool, output: Path) -> str:
    args = ["python", "-m", "bench.run"]
    if quick:
        args.append("--quick")
    if output != DEFAULT_OUTPUT:
        args += ["--output", str(output)]
    return shlex.join(args)


@click.command()
@click.option("--quick", is_flag=True, help="Few repetitions: a smoke run, not for quoting.")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_OUTPUT,
    show_default=True,
    help="Markdown report to (re)write.",
)
def main(quick: bool, output: Path) -> None:
    """Measure refresh overhead and catalog discovery; write the results as Markdown."""
    for category in (dg.BetaWarning, dg.PreviewWarning):
        warnings.filterwarnings("ignore", category=category)
    rounds, warmup, repeats = (5, 2, 3) if quick else (30, 3, 7)
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    _log("starting a temporary PostgreSQL server ...")
    with TemporaryServer() as server:
        _log(f"A. per-refresh overhead ({warmup} warm-up + {rounds} rounds per variant)")
        create_database(server.url, "bench_overhead")
        overhead = run_overhead(
            server.url_for("bench_overhead"), rounds=rounds, warmup=warmup, log=_log
        )
        _log(f"B. catalog discovery (median of {repeats})")
        discovery = run_discovery(server, repeats=repeats, log=_log)
        with psycopg.connect(server.url) as conn:
            facts = machine_facts(conn, overhead.instance_storage)
    total_s = time.perf_counter() - t0

    info = RunInfo(
        date=started.strftime("%Y-%m-%d %H:%M UTC"),
        command=_command(quick, output),
        total_s=total_s,
        quick=quick,
        facts=facts,
    )
    click.echo(render_console(overhead, discovery))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render_markdown(info, overhead, discovery))
    click.echo(f"\nwrote {output} (total {total_s:.0f} s)")


if __name__ == "__main__":
    main()
