"""The production topology of docs/deployment.md on one machine: a gRPC code server, the
webserver and the daemon as three separate processes (no ``dagster dev``), PostgreSQL
instance storage and the QueuedRunCoordinator of ``dagster.yaml``. A materialization launched
over GraphQL is queued by the webserver, launched by the daemon and refreshes the views."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from mv_orchestration_tests.conftest import PgServer
from mv_orchestration_tests.e2e.test_dagster_dev import ROOT, DagsterDev, _free_port
from mv_orchestration_tests.faults.conftest import wait_until

pytestmark = pytest.mark.e2e
LOCATION = "mv_orchestration"
SCHEMA_SQL = """
CREATE SCHEMA dep;
CREATE TABLE dep.orders (id int PRIMARY KEY, region text NOT NULL, amount int NOT NULL);
INSERT INTO dep.orders SELECT g, 'r' || (g % 3), g FROM generate_series(1, 30) g;
CREATE MATERIALIZED VIEW dep.by_region AS
    SELECT region, sum(amount) AS total FROM dep.orders GROUP BY region;
CREATE UNIQUE INDEX ON dep.by_region (region);
CREATE MATERIALIZED VIEW dep.grand_total AS SELECT sum(total) AS total FROM dep.by_region;
"""
LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on PythonError { message }
  }
}
"""
RUN = """
query R($id: ID!) { runOrError(runId: $id) { ... on Run {
  status
  eventConnection { events { __typename ... on MaterializationEvent { assetKey { path } } } }
} } }
"""


def _script(name: str) -> str:
    """A console script of this environment (the same Python and packages as the test)."""
    return str(Path(sys.executable).with_name(name))


@contextmanager
def _process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """One of the three processes, in its own process group, stopped with SIGTERM."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _alive(procs: dict[str, subprocess.Popen[bytes]], logs: Path) -> bool:
    """True while all three run; fails with the log of one that exited."""
    for name, proc in procs.items():
        if proc.poll() is not None:
            tail = (logs / f"{name}.log").read_text()[-3000:]
            raise AssertionError(f"{name} exited with {proc.returncode}:\n{tail}")
    return True


def _assets_loaded(dev: DagsterDev) -> bool:
    try:
        return bool(dev.gql("{ assetNodes { id } }")["assetNodes"])
    except (requests.ConnectionError, requests.HTTPError, AssertionError):
        return False


@pytest.fixture
def deployment(
    pg_server: PgServer, db_url: str, tmp_path: Path
) -> Iterator[tuple[DagsterDev, dict[str, subprocess.Popen[bytes]]]]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(SCHEMA_SQL)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(ROOT / "dagster.yaml", home / "dagster.yaml")
    storage_db = f"dagster_dep_{uuid.uuid4().hex[:8]}"
    storage = pg_server.create_database(storage_db)
    grpc_port, web_port = _free_port(), _free_port()
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        "load_from:\n  - grpc_server:\n      host: 127.0.0.1\n"
        f"      port: {grpc_port}\n      location_name: {LOCATION}\n"
    )
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "MVO_SCHEMAS": "dep",
        "DAGSTER_HOME": str(home),
        "MVO_DAGSTER_STORAGE_URL": storage.replace("postgresql://", "postgresql+psycopg2://", 1),
        "MVO_STATE_DIR": str(tmp_path / "state"),
    }
    dagster = [sys.executable, "-m", "dagster"]
    commands = {
        "code-server": [
            *dagster,
            *("code-server", "start", "-h", "127.0.0.1", "-p", str(grpc_port)),
            *("-m", "mv_orchestration.definitions", "-a", "defs", "--location-name", LOCATION),
        ],
        "webserver": [
            *(_script("dagster-webserver"), "-w", str(workspace)),
            *("-h", "127.0.0.1", "-p", str(web_port)),
        ],
        "daemon": [_script("dagster-daemon"), "run", "-w", str(workspace)],
    }
    try:
        with ExitStack() as stack:
            procs = {
                name: stack.enter_context(_process(args, env, tmp_path / f"{name}.log"))
                for name, args in commands.items()
            }
            dev = DagsterDev(f"http://127.0.0.1:{web_port}", db_url)
            wait_until(
                lambda: _alive(procs, tmp_path) and _assets_loaded(dev),
                "the webserver to load the code server's assets",
                240,
            )
            yield dev, procs
    finally:
        pg_server.drop_database(storage_db)


def test_three_processes_refresh_a_view_launched_over_graphql(
    deployment: tuple[DagsterDev, dict[str, subprocess.Popen[bytes]]],
    db_url: str,
    tmp_path: Path,
) -> None:
    dev, procs = deployment
    (repo,) = dev.gql(
        "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"
    )["repositoriesOrError"]["nodes"]
    assert repo["location"]["name"] == LOCATION
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("INSERT INTO dep.orders VALUES (100, 'r0', 1000)")
    views = ("dep.grand_total", "dep.by_region")
    launched = dev.gql(
        LAUNCH,
        {
            "params": {
                "selector": {
                    "repositoryLocationName": LOCATION,
                    "repositoryName": repo["name"],
                    "jobName": "__ASSET_JOB",
                    "assetSelection": [{"path": v.split(".")} for v in views],
                }
            }
        },
    )["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    # the webserver only queues it (QueuedRunCoordinator); the daemon launches it
    assert launched["run"]["status"] in ("QUEUED", "NOT_STARTED"), launched
    run_id = launched["run"]["runId"]

    def finished() -> dict[str, Any] | None:
        assert all(p.poll() is None for p in procs.values()), "a process exited"
        run: dict[str, Any] = dev.gql(RUN, {"id": run_id})["runOrError"]
        return run if run["status"] in ("SUCCESS", "FAILURE", "CANCELED") else None

    run = wait_until(finished, "the run to finish", 180)
    assert run["status"] == "SUCCESS", run
    kinds = [e["__typename"] for e in run["eventConnection"]["events"]]
    # queued by the webserver, launched by the daemon's run queue
    assert "RunEnqueuedEvent" in kinds, " ".join(sorted(set(kinds)))
    assert "Launched 1 runs" in (tmp_path / "daemon.log").read_text()
    order = [
        ".".join(e["assetKey"]["path"])
        for e in run["eventConnection"]["events"]
        if e["__typename"] == "MaterializationEvent"
    ]
    assert order == ["dep.by_region", "dep.grand_total"]
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT total FROM dep.grand_total").fetchone() == (1465,)
