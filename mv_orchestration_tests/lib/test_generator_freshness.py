"""The demo under live traffic: change-driven views stay fresh, views with idle sources rest.

The demo database (all five systems, small scale) with the demo's policy file, loaded as a
code location through ``build_from_settings`` as ``mvo dev`` does (with in-process steps, so
the frozen clock stamps their events); Dagster's own
sensor and freshness daemons are iterated under a frozen clock that advances one minute per
round. Each round the demo's traffic generator writes one batch (:func:`insert_batch`, the
generator's tick) into the LLM-usage system only.

The policy file is the demo's, with the LLM-usage and SaaS groups change-driven
(``on_change: true`` instead of their target lags), so the sensor watches a group whose
sources stay idle.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from dagster._core.test_utils import freeze_time

from mv_orchestration.demo import data
from mv_orchestration_tests.conftest import flush_stats
from mv_orchestration_tests.lib.test_alerting import code_location

K = dg.AssetKey
LLM_VIEWS = {
    K(["llm_usage", name])
    for name in ("mv_daily_metrics", "mv_provider_performance", "mv_model_costs", "mv_model_usage")
}
SAAS_VIEWS = {K(["saas", "platform_metrics"])}
SENSOR = "mvo_source_changes"


@pytest.fixture
def demo_url(db_url: str) -> str:
    with psycopg.connect(db_url, autocommit=True) as conn:
        data.load_demo(conn, scale=0.02)
    return db_url


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    launcher = {
        "module": "dagster._core.launcher.sync_in_memory_run_launcher",
        "class": "SyncInMemoryRunLauncher",
    }
    # runs the sensor requests start at once (no queue daemon here) and run synchronously
    coordinator = {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"}
    overrides = {"run_launcher": launcher, "run_coordinator": coordinator}
    with dg.instance_for_test(overrides=overrides) as inst:
        yield inst


def _materializations(instance: dg.DagsterInstance, key: dg.AssetKey) -> int:
    return len(
        instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=1000).records
    )


def test_change_driven_views_stay_fresh_and_idle_ones_are_not_refreshed(
    demo_url: str,
    instance: dg.DagsterInstance,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    demo_policies = (Path(data.__file__).parent / "policies.yaml").read_text()
    policies = tmp_path / "policies.yaml"
    # the LLM and SaaS groups change-driven: on_change instead of their target lags
    policies.write_text(
        demo_policies.replace(
            "    target_lag: 1m\n", "    on_change: true\n    freshness: {warn: 2m, fail: 10m}\n", 1
        ).replace("    target_lag: 5m\n", "    on_change: true\n", 1)
    )
    monkeypatch.setenv("DATABASE_URL", demo_url)
    monkeypatch.setenv("MVO_POLICIES", str(policies))
    monkeypatch.setenv("MVO_STATE_DIR", str(tmp_path / "state"))
    for name in ("MVO_SCHEMAS", "MVO_ALERT_URLS", "MVO_AUTOMATION", "MVO_HISTORY_SCHEMA"):
        monkeypatch.delenv(name, raising=False)

    t0 = datetime.now(UTC).replace(microsecond=0)
    watched = LLM_VIEWS | SAAS_VIEWS
    rng = random.Random(7)
    with (
        code_location(instance, tmp_path, "settings_definitions()") as h,
        psycopg.connect(demo_url, autocommit=True) as generator,
    ):
        with freeze_time(t0):
            run = h.materialize(sorted(watched))  # the views start out fresh
            assert run.status == dg.DagsterRunStatus.SUCCESS
            h.tick_sensors()  # the change sensor's first tick records its baseline
            h.evaluate_freshness()
            assert {h.state(k) for k in watched} == {"PASS"}
        counts = {k: _materializations(instance, k) for k in watched}
        assert set(counts.values()) == {1}

        for minute in range(1, 13):
            assert data.insert_batch(generator, "llm_usage", rng) > 0
            flush_stats(generator)
            with freeze_time(t0 + timedelta(minutes=minute)):
                before = {r.run_id for r in instance.get_runs()}
                h.tick_sensors()
                h.evaluate_freshness()
                new_runs = [r for r in instance.get_runs() if r.run_id not in before]
                # one run per round, from the change sensor, refreshing exactly the LLM views
                assert len(new_runs) == 1, minute
                [sensor_run] = new_runs
                assert sensor_run.tags["dagster/sensor_name"] == SENSOR
                assert sensor_run.tags["mvo/changed_tables"] == "llm_usage.api_usage"
                assert sensor_run.asset_selection == LLM_VIEWS
                assert sensor_run.status == dg.DagsterRunStatus.SUCCESS
                for key in LLM_VIEWS:
                    assert _materializations(instance, key) == counts[key] + minute
                    # refreshed every round: never near the 2-minute warn window
                    assert h.state(key) == "PASS", (minute, key)
                for key in SAAS_VIEWS:
                    # its sources were idle: the sensor never refreshed it
                    assert _materializations(instance, key) == 1
                    # ... so Dagster's time-window freshness ages it: WARN from 10 minutes
                    # (the schedule in the policy is the backstop for this; see the README)
                    assert h.state(key) == ("PASS" if minute < 10 else "WARN"), minute
