"""``mvo dev``: the Dagster UI on the demo (or DATABASE_URL); a thin layer over
:mod:`mv_orchestration.devserver`, which runs and stops ``dagster dev``."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from mv_orchestration.cli.common import (
    DEMO_DB,
    echo_err,
    embedded,
    one_line_errors,
    prepare_instance,
    scoped_env,
    state_dir,
)
from mv_orchestration.errors import ConfigError


def _demo_loaded(url: str) -> bool:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_matviews").fetchone()
    return bool(row and row[0] > 0)


@click.command(short_help="Run the Dagster UI (on the demo without DATABASE_URL).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the UI binds to.")
@click.option("--port", default=3000, show_default=True, type=int, help="Port of the UI.")
@click.option("--reload-demo", is_flag=True, help="Drop and reload the demo data first.")
@click.option("--scale", default=1.0, show_default=True, type=float, help="Demo data volume.")
@click.option(
    "--generate/--no-generate",
    default=True,
    show_default=True,
    help="Keep inserting demo traffic while the UI runs.",
)
@click.option("--verbose", is_flag=True, help="Dagster's logs on the terminal, not in a file.")
@one_line_errors
def dev(
    host: str, port: int, reload_demo: bool, scale: float, generate: bool, verbose: bool
) -> None:
    """Run the Dagster UI; without DATABASE_URL, on the embedded demo database."""
    import psycopg

    from mv_orchestration.demo import data
    from mv_orchestration.demo.embedded import create_database

    project_dir = Path.cwd()
    if not (project_dir / "workspace.yaml").exists():
        raise ConfigError("workspace.yaml not found: run 'mvo dev' from the project directory")
    env = prepare_instance(project_dir)
    url = os.environ.get("DATABASE_URL", "").strip()
    demo = not url
    if demo:
        server = embedded()
        echo_err(f"embedded PostgreSQL running ({server.pgdata}); stop it with 'mvo db stop'")
        create_database(server.url(), DEMO_DB)
        url = str(server.url(DEMO_DB))
        if reload_demo or not _demo_loaded(url):
            echo_err(f"loading the demo systems (scale {scale}) ...")
            with psycopg.connect(url, autocommit=True) as conn:
                counts = data.load_demo(conn, scale=scale)
            echo_err(f"loaded {sum(counts.values()):,} rows into {len(counts)} tables")
        env["DATABASE_URL"] = url
        if not os.environ.get("MVO_POLICIES"):
            env["MVO_POLICIES"] = str(Path(data.__file__).parent / "policies.yaml")
            echo_err(f"refresh policies: {env['MVO_POLICIES']}")
    stop = threading.Event()
    gen: threading.Thread | None = None
    if demo and generate:
        gen = threading.Thread(
            target=data.run_generator,
            args=(url,),
            kwargs={"interval_s": 2.0, "stop": stop},
            daemon=True,
            name="demo-generator",
        )
        gen.start()
        echo_err("demo traffic generator running (disable with --no-generate)")
    from mv_orchestration.devserver import dagster_dev_command, run_dagster_dev

    cmd = dagster_dev_command(project_dir / "workspace.yaml", host, port)
    # Run from DAGSTER_HOME so Dagster doesn't warn about the project's dagster.yaml in the
    # working directory; the workspace path is absolute and the state dir is pinned.
    env["MVO_STATE_DIR"] = str(state_dir())

    @contextmanager
    def instance() -> Iterator[Any]:
        import dagster as dg

        with scoped_env(**env), dg.DagsterInstance.get() as inst:
            yield inst

    try:
        # Ctrl-C, `kill`, a closed terminal: runs in flight are terminated through Dagster
        # before dagster dev stops (mv_orchestration/devserver.py)
        code = run_dagster_dev(
            cmd,
            env={**os.environ, **env},
            cwd=env["DAGSTER_HOME"],
            open_instance=instance,
            ui_url=f"http://{host}:{port}",
            verbose=verbose,
        )
    finally:
        stop.set()
        if gen is not None:
            gen.join(timeout=10)
    sys.exit(code)
