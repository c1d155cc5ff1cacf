"""End to end: ``dagster dev`` on the demo database, driven over GraphQL like the UI does."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from mv_orchestration.demo import data
from mv_orchestration.devserver import dagster_dev_command
from mv_orchestration_tests.conftest import PgServer

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e

# Independent of core.catalog: each MV's direct relations, partitions mapped to their root.
TRUTH_SQL = """
SELECT mv_ns.nspname, mv.relname,
       coalesce(array_agg(DISTINCT ref_ns.nspname || '.' || ref.relname)
                FILTER (WHERE ref.oid IS NOT NULL), '{}')
FROM pg_class mv
JOIN pg_namespace mv_ns ON mv_ns.oid = mv.relnamespace
JOIN pg_rewrite r ON r.ev_class = mv.oid
LEFT JOIN pg_depend d ON d.objid = r.oid AND d.classid = 'pg_rewrite'::regclass
     AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> mv.oid
LEFT JOIN pg_class ref ON ref.oid = coalesce(pg_partition_root(d.refobjid), d.refobjid)
LEFT JOIN pg_namespace ref_ns ON ref_ns.oid = ref.relnamespace
WHERE mv.relkind = 'm' AND mv_ns.nspname = ANY(%s)
GROUP BY 1, 2
"""


@dataclass
class DagsterDev:
    url: str
    db_url: str

    def gql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        resp = requests.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60
        )
        resp.raise_for_status()
        body: dict[str, Any] = resp.json()
        assert "errors" not in body, body["errors"]
        result: dict[str, Any] = body["data"]
        return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_assets(dev: DagsterDev, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Poll until the webserver answers and the code location has loaded its assets."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"dagster dev exited early:\n{log.read_text()[-4000:]}")
        try:
            nodes = dev.gql("{ assetNodes { id } }")["assetNodes"]
            if nodes:
                return
        except (requests.ConnectionError, requests.HTTPError, AssertionError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"dagster dev did not load assets in time:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def demo_db(pg_server: PgServer) -> Iterator[str]:
    name = f"mvo_e2e_{uuid.uuid4().hex[:8]}"
    url = pg_server.create_database(name)
    with psycopg.connect(url, autocommit=True) as conn:
        data.load_demo(conn, scale=0.05)
    try:
        yield url
    finally:
        pg_server.drop_database(name)


@contextmanager
def running_dagster_dev(
    pg_server: PgServer, db_url: str, home: Path
) -> Iterator[tuple[DagsterDev, str]]:
    """A real ``dg dev`` (what ``mvo dev`` runs) on ``db_url`` with its instance in ``home`` and its storage in a
    new database (dropped after); yields it once its assets have loaded, with the storage
    URL (psycopg2 form, as ``dagster.yaml`` reads it)."""
    shutil.copyfile(ROOT / "dagster.yaml", home / "dagster.yaml")
    storage_db = f"dagster_e2e_{uuid.uuid4().hex[:8]}"
    storage = pg_server.create_database(storage_db).replace(
        "postgresql://", "postgresql+psycopg2://", 1
    )
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "DAGSTER_HOME": str(home),
        "MVO_DAGSTER_STORAGE_URL": storage,
        "MVO_STATE_DIR": str(home / "state"),
    }
    log = home / "dagster-dev.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            dagster_dev_command(ROOT / "workspace.yaml", "127.0.0.1", port),
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    dev = DagsterDev(f"http://127.0.0.1:{port}", db_url)
    try:
        _wait_for_assets(dev, proc, log)
        yield dev, storage
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        pg_server.drop_database(storage_db)


@pytest.fixture(scope="module")
def dagster_dev(
    pg_server: PgServer, demo_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DagsterDev]:
    with running_dagster_dev(pg_server, demo_db, tmp_path_factory.mktemp("dagster_home")) as (
        dev,
        _,
    ):
        yield dev


def test_asset_graph_is_the_catalog_lineage(dagster_dev: DagsterDev) -> None:
    nodes = dagster_dev.gql(
        "{ assetNodes { assetKey { path } dependencyKeys { path } isMaterializable } }"
    )["assetNodes"]
    deps = {
        tuple(n["assetKey"]["path"]): {tuple(d["path"]) for d in n["dependencyKeys"]} for n in nodes
    }
    materializable = {tuple(n["assetKey"]["path"]) for n in nodes if n["isMaterializable"]}
    with psycopg.connect(dagster_dev.db_url) as conn:
        truth = {
            (schema, name): {tuple(ref.split(".", 1)) for ref in refs}
            for schema, name, refs in conn.execute(TRUTH_SQL, [list(data.SYSTEMS)]).fetchall()
        }
    assert materializable == set(truth), "every demo MV, and nothing else, is materializable"
    for mv, sources in truth.items():
        assert deps[mv] == sources, mv
    # the demo's showcase edges
    assert deps[("marketing", "weekly_aggregations")] == {("marketing", "daily_aggregations")}
    assert ("llm_usage", "v_successful_calls") in deps[("llm_usage", "mv_model_costs")]
    assert ("mes", "v_active_wip") in deps[("mes", "mv_process_wip_queue")]
    assert ("llm_usage", "api_usage") in deps[("llm_usage", "v_successful_calls")]
    assert len(truth) >= 12 and {mv[0] for mv in truth} == set(data.SYSTEMS)


def _fingerprint(conn: psycopg.Connection[Any], rel: str) -> str:
    schema, name = rel.split(".")
    row = conn.execute(
        psycopg.sql.SQL(
            "SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {} t"
        ).format(psycopg.sql.Identifier(schema, name))
    ).fetchone()
    assert row is not None
    return str(row[0])


def test_materialize_view_and_downstream_from_the_ui(dagster_dev: DagsterDev) -> None:
    repos = dagster_dev.gql(
        "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"
    )["repositoriesOrError"]["nodes"]
    (repo,) = repos
    assert repo["location"]["name"] == "mv_orchestration"  # workspace.yaml's location_name
    daily, weekly = "marketing.daily_aggregations", "marketing.weekly_aggregations"
    with psycopg.connect(dagster_dev.db_url, autocommit=True) as conn:
        before = {rel: _fingerprint(conn, rel) for rel in (daily, weekly)}
        conn.execute(
            "INSERT INTO marketing.events (user_id, session_id, event_type, revenue, occurred_at)"
            " SELECT 1, 999999, 'purchase', 50, now() FROM generate_series(1, 25)"
        )
        assert _fingerprint(conn, daily) == before[daily]  # an MV does not move by itself
    launched = dagster_dev.gql(
        """
        mutation Launch($params: ExecutionParams!) {
          launchRun(executionParams: $params) {
            __typename
            ... on LaunchRunSuccess { run { runId } }
            ... on PythonError { message }
          }
        }
        """,
        {
            "params": {
                "selector": {
                    "repositoryLocationName": repo["location"]["name"],
                    "repositoryName": repo["name"],
                    "jobName": "__ASSET_JOB",
                    "assetSelection": [{"path": p.split(".")} for p in (weekly, daily)],
                },
            }
        },
    )["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    status = None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        status = dagster_dev.gql(
            "query R($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }", {"id": run_id}
        )["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(0.5)
    assert status == "SUCCESS"
    with psycopg.connect(dagster_dev.db_url) as conn:
        after = {rel: _fingerprint(conn, rel) for rel in (daily, weekly)}
    assert after[daily] != before[daily] and after[weekly] != before[weekly]
    events = dagster_dev.gql(
        """
        query E($id: ID!) { runOrError(runId: $id) { ... on Run {
          eventConnection { events { __typename
            ... on MaterializationEvent { assetKey { path } }
          } } } } }
        """,
        {"id": run_id},
    )["runOrError"]["eventConnection"]["events"]
    order = [
        ".".join(e["assetKey"]["path"]) for e in events if e["__typename"] == "MaterializationEvent"
    ]
    assert order == [daily, weekly], "upstream MV first, in the same run"
