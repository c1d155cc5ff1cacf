"""Pure tests (no database): Definitions built from a JSON catalog snapshot of the demo.

``snapshots/demo_catalog.json`` is a real catalog read of the demo schemas (sizes and times
pinned). ``snapshots/demo_asset_graph.json`` is the asset graph it must produce; regenerate
it deliberately with ``MVO_UPDATE_SNAPSHOTS=1 pytest mv_orchestration_tests/test_definitions.py``
and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from mv_orchestration.core.catalog import CatalogSnapshot, RelationRef
from mv_orchestration.core.graph import LineageGraph
from mv_orchestration.lib.defs import DatabaseTarget, build_definitions, default_translator
from mv_orchestration.lib.resource import PostgresResource

SNAPSHOTS = Path(__file__).parent / "snapshots"


@pytest.fixture(scope="module")
def snapshot() -> CatalogSnapshot:
    return CatalogSnapshot.from_json((SNAPSHOTS / "demo_catalog.json").read_text())


def _defs(snapshot: CatalogSnapshot, alias: str = "default") -> dg.Definitions:
    target = DatabaseTarget(
        alias=alias,
        resource=PostgresResource(dsn=dg.EnvVar("DATABASE_URL")),
        translator=default_translator(alias, prefix_with_alias=alias != "default"),
    )
    return build_definitions([(target, snapshot)])


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
