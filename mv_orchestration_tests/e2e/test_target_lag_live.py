"""Live: a 1-minute target lag met by a real ``dagster dev`` (daemon, queue, run workers).

The demo database with the demo's policy file (LLM usage ``target_lag: 1m``); a row committed
to ``llm_usage.api_usage`` must be visible in ``llm_usage.mv_daily_metrics`` within the
minute, measured from its commit, with no other help than the target-lag sensor.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from mv_orchestration.demo import data
from mv_orchestration_tests.conftest import PgServer
from mv_orchestration_tests.e2e.test_dagster_dev import DagsterDev, demo_db, running_dagster_dev

pytestmark = pytest.mark.e2e
__all__ = ["demo_db"]  # the module-scoped fixture, shared

TICKS = """
{ repositoriesOrError { ... on RepositoryConnection { nodes {
    sensors { name sensorState { ticks(limit: 1) { status skipReason } } }
} } } }
"""
RUNS = """
{ runsOrError(filter: {tags: [{key: "mvo/trigger", value: "target_lag"}]}) {
    ... on Runs { results { runId status tags { key value } } } } }
"""


@pytest.fixture
def live(
    pg_server: PgServer, demo_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[DagsterDev]:
    monkeypatch.setenv("MVO_POLICIES", str(Path(data.__file__).parent / "policies.yaml"))
    for name in ("MVO_AUTOMATION", "MVO_SCHEMAS", "MVO_ALERT_URLS", "MVO_HISTORY_SCHEMA"):
        monkeypatch.delenv(name, raising=False)
    with running_dagster_dev(pg_server, demo_db, tmp_path) as (dev, _):
        yield dev


def _first_tick(dev: DagsterDev, sensor: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for repo in dev.gql(TICKS)["repositoriesOrError"]["nodes"]:
            for s in repo["sensors"]:
                ticks = s["sensorState"]["ticks"]
                if s["name"] == sensor and ticks and ticks[0]["status"] != "STARTED":
                    return dict(ticks[0])
        time.sleep(1)
    raise AssertionError(f"{sensor} did not tick within {timeout_s:.0f} s")


def _finished_runs(dev: DagsterDev, timeout_s: float) -> list[dict[str, Any]]:
    """The target-lag sensor's runs, once none of them is queued or running."""
    deadline = time.monotonic() + timeout_s
    while True:
        runs: list[dict[str, Any]] = dev.gql(RUNS)["runsOrError"]["results"]
        done = all(r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in runs)
        if done or time.monotonic() > deadline:
            return runs
        time.sleep(1)


def _requests(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT sum(total_requests) FROM llm_usage.mv_daily_metrics").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def test_a_committed_row_is_visible_within_the_one_minute_target(live: DagsterDev) -> None:
    baseline = _first_tick(live, "mvo_target_lag", timeout_s=180)
    assert "baseline recorded" in (baseline["skipReason"] or ""), baseline
    with psycopg.connect(live.db_url, autocommit=True) as reader:
        before = _requests(reader)
        # the writer disconnects: its counters reach the sensor at once
        with psycopg.connect(live.db_url, autocommit=True) as writer:
            added = data.insert_batch(writer, "llm_usage", random.Random(3))
            committed = time.time()
        assert added > 0
        deadline = committed + 90  # fail late enough to show by how much a target was missed
        while _requests(reader) < before + added and time.time() < deadline:
            time.sleep(0.5)
        visible = time.time()
        assert _requests(reader) >= before + added, "the row never became visible"
    lag = visible - committed
    print(f"commit-to-visible lag: {lag:.1f} s")
    assert lag <= 60, f"visible {lag:.1f} s after its commit: the 1m target was missed"
    runs = _finished_runs(live, timeout_s=120)
    assert runs and all(r["status"] == "SUCCESS" for r in runs), runs
    reasons = [t["value"] for r in runs for t in r["tags"] if t["key"] == "mvo/reason"]
    assert any("llm_usage.mv_daily_metrics: " in r and "of 1m used" in r for r in reasons)
