"""A run terminated through Dagster (as the UI's Terminate button does, over GraphQL) ends its
server-side REFRESH at once: a real ``dagster dev`` (webserver, daemon, run workers)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest

from mv_orchestration_tests.conftest import PgServer
from mv_orchestration_tests.e2e.test_dagster_dev import DagsterDev, running_dagster_dev
from mv_orchestration_tests.faults.conftest import (
    SLOW_VIEW_SQL,
    Reader,
    history_rows,
    make_slow,
    occupied_slots,
    refresh_active,
    view_sum,
    wait_until,
)

pytestmark = pytest.mark.e2e


class Dev(DagsterDev):
    home: Path

    def launch(self, *views: str) -> str:
        repo = self.gql(
            "{ repositoriesOrError { ... on RepositoryConnection {"
            " nodes { name location { name } } } } }"
        )["repositoriesOrError"]["nodes"][0]
        launched = self.gql(
            """
            mutation Launch($params: ExecutionParams!) {
              launchRun(executionParams: $params) {
                __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
              }
            }
            """,
            {
                "params": {
                    "selector": {
                        "repositoryLocationName": repo["location"]["name"],
                        "repositoryName": repo["name"],
                        "jobName": "__ASSET_JOB",
                        "assetSelection": [{"path": v.split(".")} for v in views],
                    }
                }
            },
        )["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        return str(launched["run"]["runId"])

    def status(self, run_id: str) -> str:
        return str(
            self.gql(
                "query R($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }",
                {"id": run_id},
            )["runOrError"]["status"]
        )

    def finished(self, run_id: str, deadline_s: float = 120) -> str:
        done = ("SUCCESS", "FAILURE", "CANCELED")
        return str(
            wait_until(
                lambda: s if (s := self.status(run_id)) in done else None,
                f"run {run_id} to finish",
                deadline_s,
            )
        )


@pytest.fixture(scope="module")
def faults_db(pg_server: PgServer) -> Iterator[str]:
    name = f"mvo_faults_{uuid.uuid4().hex[:8]}"
    url = pg_server.create_database(name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SLOW_VIEW_SQL)
    try:
        yield url
    finally:
        pg_server.drop_database(name)


@pytest.fixture(scope="module")
def dev(
    pg_server: PgServer, faults_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Dev]:
    home = tmp_path_factory.mktemp("dagster_home")
    with running_dagster_dev(pg_server, faults_db, home) as (running, storage):
        d = Dev(running.url, running.db_url)
        d.home = home
        old = os.environ.get("MVO_DAGSTER_STORAGE_URL")
        os.environ["MVO_DAGSTER_STORAGE_URL"] = storage  # for the test's own instance handle
        try:
            yield d
        finally:
            if old is None:
                os.environ.pop("MVO_DAGSTER_STORAGE_URL", None)
            else:
                os.environ["MVO_DAGSTER_STORAGE_URL"] = old


def test_terminating_the_run_ends_the_refresh_within_2_s(dev: Dev) -> None:
    with psycopg.connect(dev.db_url, autocommit=True) as conn:
        make_slow(conn, 60)
        before = view_sum(conn)
        run_id = dev.launch("faults.slow_mv")
        wait_until(lambda: refresh_active(conn), "the refresh to run", 120)
        reader = Reader(dev.db_url).start()
        wait_until(lambda: reader.waiting(conn), "the reader to queue behind the refresh")
        conn.execute("UPDATE faults.ctl SET sleep_s = 0")
        asked = time.monotonic()
        result = dev.gql(
            "mutation T($id: String!) { terminateRun(runId: $id) { __typename } }", {"id": run_id}
        )["terminateRun"]
        assert result["__typename"] == "TerminateRunSuccess", result
        reader.join(10.0)
        assert reader.finished is not None and reader.finished - asked < 2.0
        wait_until(lambda: not refresh_active(conn), "no refresh", 2.0)
        assert view_sum(conn) == before  # rolled back
        assert dev.finished(run_id) == "CANCELED"
        rows = history_rows(conn)
        assert [(r["status"], r["run_id"]) for r in rows] == [("cancelled", run_id)]
        with dg.DagsterInstance.from_config(str(dev.home)) as instance:
            assert occupied_slots(instance, "mvo_default") == 0
        # the next refresh runs normally
        again = dev.launch("faults.slow_mv")
        assert dev.finished(again) == "SUCCESS"
        assert view_sum(conn) == before + 100
        statuses: list[Any] = [r["status"] for r in history_rows(conn)]
        assert statuses == ["cancelled", "success"]
