"""Pure tests (no database): Definitions built from a JSON catalog snapshot of the demo.

``snapshots/demo_catalog.json`` is a real catalog read of the demo schemas (sizes and times
pinned). ``snapshots/demo_asset_graph.json`` is the asset graph it must produce; regenerate
it deliberately with ``MVO_UPDATE_SNAPSHOTS=1 pytest mv_orchestration_tests/test_definitions.py``
and review the diff.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from mv_orchestration.core.catalog import CatalogSnapshot, RelationRef
from mv_orchestration.core.graph import LineageGraph
from mv_orchestration.demo import data
from mv_orchestration.lib.alerting import Notifier
from mv_orchestration.lib.defs import DatabaseTarget, build_definitions, default_translator
from mv_orchestration.lib.policies import PolicyFile, load_policies
from mv_orchestration.lib.resource import PostgresResource

SNAPSHOTS = Path(__file__).parent / "snapshots"


@pytest.fixture(scope="module")
def snapshot() -> CatalogSnapshot:
    return CatalogSnapshot.from_json((SNAPSHOTS / "demo_catalog.json").read_text())


def _defs(
    snapshot: CatalogSnapshot, alias: str = "default", policies: PolicyFile | None = None
) -> dg.Definitions:
    target = DatabaseTarget(
        alias=alias,
        resource=PostgresResource(dsn=dg.EnvVar("DATABASE_URL")),
        translator=default_translator(
            alias, prefix_with_alias=alias != "default", policies=policies
        ),
    )
    return build_definitions(
        [(target, snapshot)],
        automation_running=True,
        notifier=Notifier(["json://127.0.0.1:9/alerts"]),
    )


def test_demo_policies_become_schedules_sensors_and_freshness(snapshot: CatalogSnapshot) -> None:
    policies = load_policies(Path(data.__file__).parent / "policies.yaml")
    defs = _defs(snapshot, policies=policies)
    dg.Definitions.validate_loadable(defs)
    schedules = {s.name: defs.resolve_schedule_def(s.name) for s in defs.schedules or []}
    mes = next(s for n, s in schedules.items() if "6_22" in n)
    assert mes.cron_schedule in ("*/2 6-22 * * *", ["*/2 6-22 * * *"])
    assert mes.execution_timezone == "Asia/Seoul"
    assert mes.default_status == dg.DefaultScheduleStatus.RUNNING
    weekly = next(s for n, s in schedules.items() if "weekly" in n)
    assert weekly.cron_schedule in ("0 4 * * 1", ["0 4 * * 1"])
    sensors = {s.name for s in defs.sensors or []}
    assert {"mvo_target_lag", "mvo_freshness_alerts", "mvo_refresh_failures"} <= sensors
    assert "mvo_source_changes" not in sensors  # no view is on_change any more
    lag = defs.resolve_sensor_def("mvo_target_lag")
    assert lag.job_name is not None
    targeted = defs.resolve_job_def(lag.job_name).asset_layer.selected_asset_keys
    assert {k.path[0] for k in targeted} == {"llm_usage", "school", "saas"}
    # freshness follows the target unless set: LLM usage 1m (FAIL 3m), school 2m, SaaS its own
    for key, warn, fail in (
        ("llm_usage/mv_daily_metrics", timedelta(minutes=1), timedelta(minutes=3)),
        ("school/mv_school_overview", timedelta(minutes=2), timedelta(minutes=6)),
        ("saas/platform_metrics", timedelta(minutes=10), timedelta(minutes=30)),
        ("mes/mv_wip_status_dashboard", timedelta(minutes=20), timedelta(hours=1)),
    ):
        assert _windows(defs, key, warn, fail), key
    assert "mvo_history_retention_default" in {j.name for j in defs.resolve_all_job_defs()}


def _windows(defs: dg.Definitions, key: str, warn: timedelta, fail: timedelta) -> bool:
    policy = defs.resolve_asset_graph().get(dg.AssetKey(key.split("/"))).freshness_policy
    return policy == dg.FreshnessPolicy.time_window(fail_window=fail, warn_window=warn)


def test_without_policies_every_view_has_the_default_target_lag(snapshot: CatalogSnapshot) -> None:
    defs = _defs(snapshot)
    sensor = defs.resolve_sensor_def("mvo_target_lag")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    graph = defs.resolve_asset_graph()
    views = {k for k in graph.get_all_asset_keys() if graph.get(k).is_materializable}
    assert sensor.job_name is not None
    job = defs.resolve_job_def(sensor.job_name)
    assert set(job.asset_layer.selected_asset_keys) == views  # every MV, none left out
    # freshness follows the 1h target: WARN past 1h, FAIL past 3h
    for key in views:
        assert _windows(defs, "/".join(key.path), timedelta(hours=1), timedelta(hours=3))


def _graph_summary(defs: dg.Definitions) -> dict[str, Any]:
    graph = defs.resolve_asset_graph()
    out: dict[str, Any] = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: tuple(k.path)):
        node = graph.get(key)
        out["/".join(key.path)] = {
            "deps": sorted("/".join(p.path) for p in node.parent_keys),
            "group": node.group_name,
            "kinds": sorted(node.kinds),
            "materializable": node.is_materializable,
            "code_version": node.code_version,
            "owners": list(node.owners),
        }
    return out


def test_demo_asset_graph_snapshot(snapshot: CatalogSnapshot) -> None:
    summary = _graph_summary(_defs(snapshot))
    path = SNAPSHOTS / "demo_asset_graph.json"
    if os.environ.get("MVO_UPDATE_SNAPSHOTS") == "1":
        path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    assert summary == json.loads(path.read_text())


def test_definitions_validate_and_deps_equal_catalog(snapshot: CatalogSnapshot) -> None:
    defs = _defs(snapshot)
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    for mv in snapshot.matviews:
        node = graph.get(dg.AssetKey([mv.schema, mv.name]))
        assert {tuple(k.path) for k in node.parent_keys} == {
            (r.schema, r.name) for r in mv.upstream
        }
    assert graph.materializable_asset_keys == {
        dg.AssetKey([mv.schema, mv.name]) for mv in snapshot.matviews
    }


def test_alias_prefixes_every_key(snapshot: CatalogSnapshot) -> None:
    graph = _defs(snapshot, alias="warehouse").resolve_asset_graph()
    assert all(k.path[0] == "warehouse" for k in graph.get_all_asset_keys())


def test_demo_refresh_order(snapshot: CatalogSnapshot) -> None:
    order = LineageGraph(snapshot).refresh_order()
    pos = {ref: i for i, ref in enumerate(order)}
    r = RelationRef
    assert pos[r("marketing", "daily_aggregations")] < pos[r("marketing", "weekly_aggregations")]
    assert pos[r("school", "mv_attendance_daily")] < pos[r("school", "mv_school_overview")]
    assert pos[r("school", "mv_fee_collection")] < pos[r("school", "mv_school_overview")]


def test_json_round_trip_is_stable(snapshot: CatalogSnapshot) -> None:
    assert CatalogSnapshot.from_json(snapshot.to_json()).to_json() == snapshot.to_json()
