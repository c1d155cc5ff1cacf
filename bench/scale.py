"""Benchmark H: ``mvo refresh --all`` at 1,000 to 10,000 trivial MVs, next to its limit.

For each size N, in its own database on one server: N/2 chains of two trivial MVs (an MV over
a 10-row table, and an MV over that MV); half of the MVs (every other chain) have a unique
index, so they refresh ``CONCURRENTLY``. Measured in one run, side by side:

* **mvo**: a real ``mvo refresh --all`` process (load the definitions, read the catalog, run
  the job in process on a PostgreSQL-backed Dagster instance, write the history): wall time,
  time to its first ``refreshing`` line, peak RSS;
* **bare SQL**: the same ``REFRESH`` statements, one connection, in dependency order;
* **Dagster floor**: a process that builds multi-assets of the same shape (the same chunks,
  outputs and check specs) and runs them on the same kind of instance, reporting the same
  materializations and check results, without any SQL;
* **load**: a process that only loads the code location's definitions (what a code server
  and, today, a run worker do first), wall time and peak RSS.

``limit = floor + bare SQL``; the targets: mvo at most 1.2x its limit, and time linear in N.

Run: ``python -m bench.scale [--sizes 1000,2000,10000]`` (prints a Markdown section).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import psycopg
from psycopg import sql

from mv_orchestration.demo.embedded import TemporaryServer, create_database

SCHEMA = "h"
ROOT = Path(__file__).resolve().parents[1]
MVO = str(Path(sys.executable).with_name("mvo"))


def _mv(i: int) -> str:
    return f"mv_{i:05d}"


def create_views(url: str, n: int) -> None:
    """N trivial MVs in chains of two; every other chain with unique indexes."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
        conn.execute(
            sql.SQL("CREATE TABLE {} (id int PRIMARY KEY)").format(sql.Identifier(SCHEMA, "src"))
        )
        conn.execute(
            sql.SQL("INSERT INTO {} SELECT generate_series(1, 10)").format(
                sql.Identifier(SCHEMA, "src")
            )
        )
        for start in range(0, n, 500):
            with conn.transaction():
                for i in range(start, min(n, start + 500)):
                    source = "src" if i % 2 == 0 else _mv(i - 1)
                    conn.execute(
                        sql.SQL("CREATE MATERIALIZED VIEW {} AS SELECT id FROM {}").format(
                            sql.Identifier(SCHEMA, _mv(i)), sql.Identifier(SCHEMA, source)
                        )
                    )
                    if (i // 2) % 2 == 0:
                        conn.execute(
                            sql.SQL("CREATE UNIQUE INDEX ON {} (id)").format(
                                sql.Identifier(SCHEMA, _mv(i))
                            )
                        )


def bare_sql(url: str, n: int) -> float:
    """Seconds for the same REFRESH statements on one connection, in dependency order."""
    with psycopg.connect(url, autocommit=True) as conn:
        t0 = time.perf_counter()
        for i in range(n):
            how = "CONCURRENTLY " if (i // 2) % 2 == 0 else ""
            conn.execute(
                sql.SQL("REFRESH MATERIALIZED VIEW " + how + "{}").format(
                    sql.Identifier(SCHEMA, _mv(i))
                )
            )
        return time.perf_counter() - t0


@dataclass(frozen=True)
class Proc:
    wall_s: float
    first_s: float | None  # until the first line containing the marker
    peak_rss_mb: float
    output_tail: str


def _run(cmd: Sequence[str], env: dict[str, str], marker: str | None = None) -> Proc:
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    first: float | None = None
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        if first is None and marker is not None and marker in line:
            first = time.perf_counter() - t0
        tail = [*tail[-4:], line.rstrip()]
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited {proc.returncode}: {' | '.join(tail)}")
    return Proc(wall, first, usage.ru_maxrss / 1024.0, "\n".join(tail))  # KiB on Linux


@dataclass(frozen=True)
class SizeResult:
    n: int
    mvo: Proc
    floor: Proc
    load: Proc
    bare_s: float

    @property
    def limit_s(self) -> float:
        return self.floor.wall_s + self.bare_s

    @property
    def ratio(self) -> float:
        return self.mvo.wall_s / self.limit_s


def _env(server: TemporaryServer, db: str, tmp: Path) -> dict[str, str]:
    storage = f"{db}_dagster"
    create_database(server.url, storage)
    return {
        **os.environ,
        "DATABASE_URL": server.url_for(db),
        "MVO_DAGSTER_STORAGE_URL": server.url_for(storage),
        "DAGSTER_HOME": str(tmp / "dagster_home"),
        "MVO_STATE_DIR": str(tmp / "state"),
        "MVO_SCHEMAS": SCHEMA,
        "MVO_AUTOMATION": "0",
    }


def measure(server: TemporaryServer, n: int, log: Any) -> SizeResult:
    db = f"bench_scale_{n}"
    create_database(server.url, db)
    url = server.url_for(db)
    log(f"H. {n} MVs: creating ...")
    create_views(url, n)
    with tempfile.TemporaryDirectory(prefix="mvo-bench-h-") as tmp_dir:
        tmp = Path(tmp_dir)
        env = _env(server, db, tmp)
        log(f"H. {n} MVs: bare SQL ...")
        bare = bare_sql(url, n)
        log(f"H. {n} MVs: loading the definitions ...")
        load = _run([sys.executable, "-m", "bench.scale_load"], env)
        log(f"H. {n} MVs: mvo refresh --all ...")
        mvo = _run([MVO, "refresh", "--all"], env, marker="refreshing h.")
        floor_home = tmp / "floor_home"
        floor_home.mkdir()
        shutil.copy(ROOT / "dagster.yaml", floor_home / "dagster.yaml")
        create_database(server.url, f"{db}_floor")
        floor_env = {
            **env,
            "DAGSTER_HOME": str(floor_home),
            "MVO_DAGSTER_STORAGE_URL": server.url_for(f"{db}_floor").replace(
                "postgresql://", "postgresql+psycopg2://", 1
            ),
        }
        log(f"H. {n} MVs: Dagster floor ...")
        floor = _run([sys.executable, "-m", "bench.scale_floor", str(n)], floor_env)
    return SizeResult(n=n, mvo=mvo, floor=floor, load=load, bare_s=bare)


def render(results: Sequence[SizeResult], command: str, started: datetime) -> str:
    base = results[0]
    lines = [
        "## H. Refreshing 1,000 to 10,000 MVs (issue 13)",
        "",
        f"Measured {started:%Y-%m-%d %H:%M} UTC by `{command}` (see `bench/scale.py`): trivial",
        "MVs in chains of two, half with unique indexes, one database per size, Dagster's",
        "storage on the same server. *limit* = Dagster floor + bare SQL.",
        "",
        "| MVs | mvo refresh --all | first refresh at | bare SQL | Dagster floor | limit |"
        " mvo / limit | time vs first size | load definitions | RSS: refresh / load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        first = f"{r.mvo.first_s:.1f} s" if r.mvo.first_s is not None else "-"
        lines.append(
            f"| {r.n:,} | {r.mvo.wall_s:.1f} s | {first} | {r.bare_s:.1f} s | "
            f"{r.floor.wall_s:.1f} s | {r.limit_s:.1f} s | {r.ratio:.2f}x | "
            f"{r.mvo.wall_s / base.mvo.wall_s:.2f}x for {r.n / base.n:g}x | "
            f"{r.load.wall_s:.1f} s | {r.mvo.peak_rss_mb:.0f} / {r.load.peak_rss_mb:.0f} MB |"
        )
    return "\n".join(lines) + "\n"


def _sizes(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


@click.command()
@click.option("--sizes", default="1000,2000,10000", show_default=True)
def main(sizes: str) -> None:
    """Measure benchmark H and print its Markdown section."""
    started = datetime.now(UTC)
    command = shlex.join(["python", "-m", "bench.scale", "--sizes", sizes])
    results: list[SizeResult] = []
    with TemporaryServer() as server:
        for n in _sizes(sizes):
            results.append(measure(server, n, lambda m: click.echo(m, err=True)))
            click.echo(render(results, command, started), err=True)
    click.echo(render(results, command, started))


def chunks_of(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


if __name__ == "__main__":
    main()
