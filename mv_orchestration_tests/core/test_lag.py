"""Pure tests of the target-lag scheduler: a small catalog built in memory, a fixed clock."""

from __future__ import annotations

from datetime import timedelta

import pytest

from mv_orchestration.core.catalog import CatalogSnapshot, MaterializedView, Relation, RelationRef
from mv_orchestration.core.graph import LineageGraph
from mv_orchestration.core.lag import (
    DOWNSTREAM,
    LagScheduler,
    TargetLag,
    effective_targets,
    format_duration,
)

R = RelationRef
T, U = R("src", "t"), R("src", "u")
V = R("src", "v_t")  # a plain view over t
BASE, TOP, SIDE, OTHER = R("m", "base"), R("m", "top"), R("m", "side"), R("m", "other")
NOW = 1_000_000.0
MIN = 60.0


def _mv(ref: RelationRef, *upstream: RelationRef) -> MaterializedView:
    return MaterializedView(ref.schema, ref.name, "o", "SELECT 1", (), upstream, True, 0)


@pytest.fixture(scope="module")
def graph() -> LineageGraph:
    """t → v_t → base → top; base → side; u → other."""
    snapshot = CatalogSnapshot(
        database="d",
        server_version="17",
        schemas=("m",),
        matviews=(_mv(BASE, V), _mv(TOP, BASE), _mv(SIDE, BASE), _mv(OTHER, U)),
        relations=(
            Relation("src", "t", "table", "o"),
            Relation("src", "u", "table", "o"),
            Relation("src", "v_t", "view", "o", upstream=(T,)),
        ),
    )
    return LineageGraph(snapshot)


def _targets(**minutes: float | str) -> dict[RelationRef, TargetLag]:
    return {
        R("m", name): DOWNSTREAM if value == DOWNSTREAM else timedelta(minutes=float(value))
        for name, value in minutes.items()
    }


def test_format_duration() -> None:
    assert format_duration(192) == "3m12s"
    assert format_duration(300) == "5m"
    assert format_duration(5400) == "1h30m"
    assert format_duration(0) == "0s"
    assert format_duration(0.42) == "0.4s"
    assert format_duration(0.01) == "0s"
    assert format_duration(-90) == "-1m30s"


def test_downstream_follows_the_smallest_target_below_it(graph: LineageGraph) -> None:
    declared = _targets(base=DOWNSTREAM, top=5, side=2, other=DOWNSTREAM)
    effective = effective_targets(graph, declared)
    assert effective[BASE] == timedelta(minutes=2)  # side's, the smaller of top and side
    assert effective[TOP] == timedelta(minutes=5)
    assert OTHER not in effective  # nothing with a target reads it
    assert effective_targets(graph, {BASE: DOWNSTREAM, TOP: None}) == {}


def test_no_change_nothing_to_do(graph: LineageGraph) -> None:
    scheduler = LagScheduler(graph, _targets(top=5, other=1))
    plan = scheduler.plan(pending={}, durations={}, launch_latency_s=10, now=NOW)
    assert plan.refresh == ()
    assert plan.lines() == [
        "m.other: no change, nothing to do",
        "m.top: no change, nothing to do",
    ]
    assert plan.next_due_s is None


def test_a_change_waits_until_the_last_tick_that_meets_the_target(graph: LineageGraph) -> None:
    scheduler = LagScheduler(graph, _targets(other=5))
    pending = {OTHER: {U: NOW - 192}}  # first seen 3m12s ago
    # 5m target, 20s refresh, 10s launch: latest start 300 - 30 = 270 s after the change
    early = scheduler.plan(
        pending=pending, durations={OTHER: 20.0}, launch_latency_s=10, now=NOW, margin_s=15
    )
    assert early.refresh == ()
    assert early.reasons[OTHER] == (
        "3m12s of 5m used, refresh in 1m18s (expected 20s for 1 view + 10s launch)"
    )
    assert early.next_due_s == pytest.approx(78 - 15)
    assert early.used[OTHER] == pytest.approx(192 / 300)
    # the last tick before the latest start: now + margin reaches it
    due = scheduler.plan(
        pending=pending, durations={OTHER: 20.0}, launch_latency_s=10, now=NOW + 63, margin_s=15
    )
    assert due.refresh == (OTHER,)
    assert due.reasons[OTHER].startswith("4m15s of 5m used, refresh now (expected 20s")


def test_late_views_say_by_how_much(graph: LineageGraph) -> None:
    scheduler = LagScheduler(graph, _targets(other=1))
    plan = scheduler.plan(
        pending={OTHER: {U: NOW - 2 * MIN}}, durations={}, launch_latency_s=10, now=NOW
    )
    assert plan.refresh == (OTHER,)
    # unknown duration: DEFAULT_DURATION_S (5 s)
    assert plan.reasons[OTHER] == (
        "2m of 1m used, refresh now, 1m15s late (expected 5s for 1 view + 10s launch)"
    )


def test_a_chain_is_one_refresh_upstream_first(graph: LineageGraph) -> None:
    scheduler = LagScheduler(graph, _targets(base=DOWNSTREAM, top=2))
    assert scheduler.managed == {BASE, TOP}
    # t changed: base and top both miss it; the chain costs both durations
    pending = {BASE: {T: NOW - 60}, TOP: {T: NOW - 60}}
    durations = {BASE: 30.0, TOP: 20.0}
    # latest start: 2m after the change, minus 50 s of refreshes and 10 s of launch
    wait = scheduler.plan(pending=pending, durations=durations, launch_latency_s=10, now=NOW - 10)
    assert wait.refresh == ()
    assert wait.reasons[TOP] == (
        "50s of 2m used, refresh in 10s (expected 50s for 2 views, upstream first + 10s launch)"
    )
    assert wait.reasons[BASE] == "changed; refreshed with the views that read it (target 2m)"
    due = scheduler.plan(pending=pending, durations=durations, launch_latency_s=10, now=NOW)
    assert due.refresh == (BASE, TOP)
    assert due.reasons[BASE] == "refreshed now, upstream of m.top"
    assert "2 views, upstream first" in due.reasons[TOP]


def test_a_downstream_view_waits_for_the_views_that_read_it(graph: LineageGraph) -> None:
    scheduler = LagScheduler(graph, _targets(base=DOWNSTREAM, top=10))
    plan = scheduler.plan(
        pending={BASE: {T: NOW - 60}, TOP: {T: NOW - 60}},
        durations={},
        launch_latency_s=10,
        now=NOW,
    )
    assert plan.refresh == ()
    assert plan.reasons[BASE] == "changed; refreshed with the views that read it (target 10m)"


def test_an_upstream_change_alone_makes_the_chain_pending(graph: LineageGraph) -> None:
    """top reads base only: when base (not refreshed by target lag here) misses a change of t,
    top's lag counts from that change, and base refreshes first in the same run."""
    scheduler = LagScheduler(graph, _targets(top=1))
    assert scheduler.managed == {BASE, TOP}
    plan = scheduler.plan(
        pending={BASE: {T: NOW - 50}}, durations={}, launch_latency_s=10, now=NOW, margin_s=15
    )
    assert plan.refresh == (BASE, TOP)


def test_due_views_share_one_run_and_others_wait(graph: LineageGraph) -> None:
    scheduler = LagScheduler(graph, _targets(top=1, side=1, other=60))
    plan = scheduler.plan(
        pending={
            BASE: {T: NOW - 55},
            TOP: {T: NOW - 55},
            SIDE: {T: NOW - 55},
            OTHER: {U: NOW - 55},
        },
        durations={},
        launch_latency_s=5,
        now=NOW,
    )
    assert plan.refresh == (BASE, SIDE, TOP)  # base once, first
    assert plan.reasons[BASE] == "refreshed now, upstream of m.side, m.top"
    assert plan.reasons[OTHER].startswith("55s of 1h used, refresh in")


def test_busy_and_backing_off_views_are_not_requested(graph: LineageGraph) -> None:
    scheduler = LagScheduler(graph, _targets(top=1, other=1))
    plan = scheduler.plan(
        pending={BASE: {T: NOW - 90}, TOP: {T: NOW - 90}, OTHER: {U: NOW - 90}},
        durations={},
        launch_latency_s=5,
        now=NOW,
        busy={BASE: "run 1a2b3c4d"},
        unavailable={OTHER: "backing off after 3 failed refreshes, next try in 40s"},
    )
    assert plan.refresh == ()
    assert plan.reasons[TOP] == "1m30s of 1m used, refresh under way (run 1a2b3c4d)"
    assert plan.reasons[OTHER] == (  # its own reason, unnamed; an upstream one is named
        "1m30s of 1m used, not requested: backing off after 3 failed refreshes, next try in 40s"
    )
