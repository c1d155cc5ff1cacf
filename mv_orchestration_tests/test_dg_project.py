"""The component in a new ``dg`` project, through the real ``create-dagster`` and ``dg`` CLIs.

The project is made by ``create-dagster project`` (offline: its files only, no ``uv sync``);
instead of installing it into a virtual environment of its own, the commands run in this
environment with the project's ``src`` (and this repository) on ``PYTHONPATH``.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import psycopg
import pytest

from mv_orchestration_tests.conftest import PgServer

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TYPE = "mv_orchestration.PostgresMaterializedViews"
DDL = """
CREATE SCHEMA shop;
CREATE TABLE shop.orders (id serial PRIMARY KEY, region text NOT NULL, amount int NOT NULL);
INSERT INTO shop.orders (region, amount) VALUES ('eu', 10), ('us', 5);
CREATE MATERIALIZED VIEW shop.mv_sales AS
    SELECT region, sum(amount) AS total FROM shop.orders GROUP BY region;
CREATE UNIQUE INDEX ON shop.mv_sales (region);
"""
CLOSED = "postgresql://nobody@127.0.0.1:1/none"  # nothing listens on port 1


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def _ok(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = _run(args, cwd, env)
    assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _entry_point_installed() -> bool:
    points = importlib.metadata.entry_points(group="dagster_dg_cli.registry_modules")
    return any(p.value == "mv_orchestration" for p in points)


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    for tool in ("create-dagster", "dg"):
        assert (BIN / tool).exists(), f"{tool} is missing: pip install -e '.[dev]'"
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "MVO_"))},
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "DAGSTER_HOME": str(home),
        "DAGSTER_DG_UPDATE_CHECK_ENABLED": "0",  # no look-up of the newest version
    }
    _ok([str(BIN / "create-dagster"), "project", "--no-uv-sync", "proj"], tmp_path, env)
    root = tmp_path / "proj"
    env["PYTHONPATH"] = os.pathsep.join([str(root / "src"), str(ROOT)])
    if not _entry_point_installed():
        # this environment's install predates the entry point: name the module instead
        pyproject = root / "pyproject.toml"
        text = pyproject.read_text()
        pyproject.write_text(
            text.replace(
                '    "proj.components.*",\n', '    "proj.components.*",\n    "mv_orchestration",\n'
            )
        )
    return root, env


def test_our_pyproject_registers_the_component() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    entry_points = data["project"]["entry-points"]["dagster_dg_cli.registry_modules"]
    assert entry_points == {"mv_orchestration": "mv_orchestration"}


def test_two_databases_in_a_new_dg_project(
    project: tuple[Path, dict[str, str]], pg_server: PgServer, db_url: str
) -> None:
    root, env = project
    dg = str(BIN / "dg")
    listed = json.loads(_ok([dg, "list", "components", "--json"], root, env))
    assert TYPE in {item["key"] for item in listed["items"]}

    second = pg_server.create_database(f"mvo_dg_{os.getpid()}")
    try:
        for url in (db_url, second):
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(DDL)
        _ok([dg, "scaffold", "defs", TYPE, "app_db"], root, env)
        _ok([dg, "scaffold", "defs", TYPE, "warehouse", "--database-url-env", "WH_URL"], root, env)
        defs_dir = root / "src" / "proj" / "defs"
        assert '"{{ env.APP_DB_DATABASE_URL }}"' in (defs_dir / "app_db" / "defs.yaml").read_text()
        wh_yaml = defs_dir / "warehouse" / "defs.yaml"
        # the warehouse: a failed refresh is not retried (the test need not wait for retries)
        wh_yaml.write_text(wh_yaml.read_text() + "  refresh: {retries: 0}\n")
        env = {**env, "APP_DB_DATABASE_URL": db_url, "WH_URL": second}

        _ok([dg, "utils", "refresh-defs-state"], root, env)
        _ok([dg, "check", "defs"], root, env)
        assets = _asset_keys(json.loads(_ok([dg, "list", "defs", "--json"], root, env)))
        assert {"app_db/shop/mv_sales", "warehouse/shop/mv_sales"} <= assets
        assert {"app_db/shop/orders", "warehouse/shop/orders"} <= assets
        _ok([dg, "launch", "--assets", "app_db/shop/mv_sales"], root, env)
    finally:
        pg_server.drop_database(f"mvo_dg_{os.getpid()}")

    # the warehouse is gone: it keeps its last graph, its runs fail, app_db's still succeed
    down = {**env, "WH_URL": CLOSED}
    failed = _run([dg, "utils", "refresh-defs-state"], root, down)
    assert failed.returncode != 0
    assert "cannot read the catalog of database 'warehouse'" in failed.stdout + failed.stderr
    assets = _asset_keys(json.loads(_ok([dg, "list", "defs", "--json"], root, down)))
    assert {"app_db/shop/mv_sales", "warehouse/shop/mv_sales"} <= assets
    _ok([dg, "launch", "--assets", "app_db/shop/mv_sales"], root, down)
    lost = _run([dg, "launch", "--assets", "warehouse/shop/mv_sales"], root, down)
    assert lost.returncode != 0
    assert "couldn't get a connection" in lost.stdout + lost.stderr


def _asset_keys(listing: dict[str, Any]) -> set[str]:
    return {item["asset_key"] for item in listing["assets"]}
