"""Schedules from policies: names, targets, and tick times (local hours, DST) on an instance."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
from dagster._core.definitions.unresolved_asset_job_definition import (
    UnresolvedAssetJobDefinition,
)
from dagster._utils.schedules import schedule_execution_time_iterator

import mv_orchestration.demo
from mv_orchestration.core.catalog import CatalogSnapshot
from mv_orchestration.lib.assets import build_refresh_assets
from mv_orchestration.lib.defs import default_translator
from mv_orchestration.lib.policies import Schedule, ViewPolicy, load_policies
from mv_orchestration.lib.resource import PostgresResource
from mv_orchestration.lib.schedules import build_schedules, describe_cron, schedule_name

SNAPSHOTS = Path(__file__).parent.parent / "snapshots"
DEMO_POLICIES = Path(mv_orchestration.demo.__file__).parent / "policies.yaml"
BERLIN = ZoneInfo("Europe/Berlin")
EDGES = ("06:00", "06:02", "22:56", "22:58")
Built = tuple[list[dg.JobDefinition | UnresolvedAssetJobDefinition], list[dg.ScheduleDefinition]]


@pytest.fixture(scope="module")
def snapshot() -> CatalogSnapshot:
    return CatalogSnapshot.from_json((SNAPSHOTS / "demo_catalog.json").read_text())


@pytest.fixture(scope="module")
def demo_policies(snapshot: CatalogSnapshot) -> dict[dg.AssetKey, ViewPolicy]:
    translator = default_translator("default", prefix_with_alias=False)
    policies = load_policies(DEMO_POLICIES)
    return {
        translator.get_asset_key(ref): policy
        for ref, policy in policies.resolve_all(snapshot, translator.get_group_name).items()
    }


@pytest.fixture(scope="module")
def demo_built(
    demo_policies: dict[dg.AssetKey, ViewPolicy],
) -> Built:
    return build_schedules(demo_policies)


@pytest.fixture(scope="module")
def demo_defs(
    snapshot: CatalogSnapshot,
    demo_built: Built,
) -> dg.Definitions:
    """The demo's refresh multi-asset (as ``lib.assets`` builds it) with only our schedules."""
    jobs, schedules = demo_built
    translator = default_translator("default", prefix_with_alias=False)
    return dg.Definitions(
        assets=build_refresh_assets(snapshot, translator),
        jobs=jobs,
        schedules=schedules,
        resources={"postgres": PostgresResource(dsn=dg.EnvVar("DATABASE_URL"))},
    )


def _key(path: str) -> dg.AssetKey:
    return dg.AssetKey(path.split("/"))


def _mvs(keys: Iterable[dg.AssetKey]) -> dg.AssetsDefinition:
    """A subsettable multi-asset with these outputs, like ``lib.assets`` builds per database."""

    @dg.multi_asset(specs=[dg.AssetSpec(k, skippable=True) for k in keys], can_subset=True)
    def refresh() -> Iterator[dg.MaterializeResult[Any]]:  # never run: jobs are only resolved
        yield from ()

    return refresh


def _one(cron: str, timezone: str) -> dg.ScheduleDefinition:
    policies = {_key("s/v"): ViewPolicy(schedules=(Schedule(cron, timezone),))}
    _, schedules = build_schedules(policies)
    assert len(schedules) == 1
    return schedules[0]


def _ticks(schedule: dg.ScheduleDefinition, start: datetime, end: datetime) -> Iterator[datetime]:
    """The schedule's execution times in [start, end), as Dagster's scheduler computes them."""
    for tick in schedule_execution_time_iterator(
        start.timestamp(), schedule.cron_schedule, schedule.execution_timezone
    ):
        if tick >= end:
            return
        yield tick


def _local_day(schedule: dg.ScheduleDefinition, day: datetime) -> list[datetime]:
    start = day.replace(tzinfo=BERLIN)
    end = (day + timedelta(days=1)).replace(tzinfo=BERLIN)
    return [t.astimezone(BERLIN) for t in _ticks(schedule, start, end)]


# --- the demo ---------------------------------------------------------------------------------


def test_demo_schedule_and_job_names(
    demo_built: Built,
) -> None:
    jobs, schedules = demo_built
    assert [s.name for s in schedules] == [
        "mvo_daily_0300_utc",
        "mvo_every_15_min_0_5_23_asia_seoul",
        "mvo_every_2_min_6_22_asia_seoul",
        "mvo_weekly_mon_0400_utc",
    ]  # school, LLM usage and SaaS have target lags, not crons
    assert [j.name for j in jobs] == [
        "mvo_daily_0300_utc_job",
        "mvo_every_15_min_0_5_23_and_every_2_min_6_22_asia_seoul_job",
        "mvo_weekly_mon_0400_utc_job",
    ]


def test_each_schedule_job_targets_exactly_its_views(
    demo_defs: dg.Definitions,
    demo_built: Built,
    demo_policies: dict[dg.AssetKey, ViewPolicy],
) -> None:
    dg.Definitions.validate_loadable(demo_defs)
    jobs, schedules = demo_built
    assert len(schedules) == 4
    for schedule in schedules:
        assert isinstance(schedule.cron_schedule, str)
        this = Schedule(schedule.cron_schedule, schedule.execution_timezone or "UTC")
        wanted = {key for key, policy in demo_policies.items() if this in policy.schedules}
        job = demo_defs.resolve_job_def(schedule.job_name)
        assert job.asset_layer.selected_asset_keys == wanted, schedule.name
        assert wanted
    mes = demo_defs.resolve_schedule_def("mvo_every_2_min_6_22_asia_seoul")
    assert mes.job_name == "mvo_every_15_min_0_5_23_and_every_2_min_6_22_asia_seoul_job"
    assert demo_defs.resolve_job_def(mes.job_name).asset_layer.selected_asset_keys == {
        _key("mes/mv_process_wip_queue"),
        _key("mes/mv_wip_status_dashboard"),
    }
    assert demo_defs.resolve_job_def(
        "mvo_weekly_mon_0400_utc_job"
    ).asset_layer.selected_asset_keys == {_key("marketing/weekly_aggregations")}
    # a target lag only: no schedule selects the LLM usage views
    assert not any(
        k.path[0] == "llm_usage"
        for job in jobs
        for k in demo_defs.resolve_job_def(job.name).asset_layer.selected_asset_keys
    )


def test_descriptions_show_the_cron(demo_defs: dg.Definitions) -> None:
    schedule = demo_defs.resolve_schedule_def("mvo_every_2_min_6_22_asia_seoul")
    assert schedule.description == (
        "Every 2 minutes, hours 6-22 (Asia/Seoul; cron `*/2 6-22 * * *`): refreshes 2 "
        "materialized view(s): mes/mv_process_wip_queue, mes/mv_wip_status_dashboard."
    )
    assert schedule.execution_timezone == "Asia/Seoul"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED


def test_schedule_per_pair_and_job_per_view_set() -> None:
    seoul = Schedule("*/2 6-22 * * *", "Asia/Seoul")
    berlin = Schedule("*/2 6-22 * * *", "Europe/Berlin")
    daily = Schedule("0 3 * * *", "UTC")
    jobs, schedules = build_schedules(
        {
            _key("a/x"): ViewPolicy(schedules=(seoul, daily)),
            _key("a/y"): ViewPolicy(schedules=(seoul, berlin)),
            _key("b/z"): ViewPolicy(schedules=(daily,)),
            _key("b/w"): ViewPolicy(on_change=True),
        },
        job_prefix="acme",
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
    assert [(s.name, s.job_name) for s in schedules] == [
        ("acme_daily_0300_utc", "acme_daily_0300_utc_job"),
        ("acme_every_2_min_6_22_asia_seoul", "acme_every_2_min_6_22_asia_seoul_job"),
        ("acme_every_2_min_6_22_europe_berlin", "acme_every_2_min_6_22_europe_berlin_job"),
    ]
    assert all(s.default_status == dg.DefaultScheduleStatus.RUNNING for s in schedules)
    defs = dg.Definitions(
        assets=[_mvs([_key("a/x"), _key("a/y"), _key("b/z"), _key("b/w")])],
        jobs=jobs,
        schedules=schedules,
    )
    selected = {j.name: defs.resolve_job_def(j.name).asset_layer.selected_asset_keys for j in jobs}
    assert selected == {
        "acme_daily_0300_utc_job": {_key("a/x"), _key("b/z")},
        "acme_every_2_min_6_22_asia_seoul_job": {_key("a/x"), _key("a/y")},
        "acme_every_2_min_6_22_europe_berlin_job": {_key("a/y")},
    }


def test_no_schedules_no_definitions() -> None:
    assert build_schedules({}) == ([], [])
    assert build_schedules({_key("a/b"): ViewPolicy(on_change=True)}) == ([], [])


def test_names_are_dagster_safe_and_distinct() -> None:
    # "@daily" and "0 0 * * *" read the same; each still gets its own stable name
    jobs, schedules = build_schedules(
        {
            _key("a/x"): ViewPolicy(schedules=(Schedule("@daily"),)),
            _key("a/y"): ViewPolicy(schedules=(Schedule("0 0 * * *"),)),
            _key("a/z"): ViewPolicy(schedules=(Schedule("0 */6 * * *", "Etc/GMT+9"),)),
        }
    )
    names = [s.name for s in schedules]
    assert len(set(names)) == 3
    assert names[0] == "mvo_cron_0_x_6_x_x_x_etc_gmt_9"
    assert all(re.fullmatch(r"mvo_daily_0000_utc_[0-9a-f]{6}", n) for n in names[1:])
    # stable: the same schedules in another order give the same names
    _, again = build_schedules(
        {
            _key("a/z"): ViewPolicy(schedules=(Schedule("0 */6 * * *", "Etc/GMT+9"),)),
            _key("a/y"): ViewPolicy(schedules=(Schedule("0 0 * * *"),)),
            _key("a/x"): ViewPolicy(schedules=(Schedule("@daily"),)),
        }
    )
    assert [s.name for s in again] == names
    assert len({j.name for j in jobs}) == 3


@pytest.mark.parametrize(
    ("cron", "slug", "text"),
    [
        ("*/2 6-22 * * *", "every_2_min_6_22", "Every 2 minutes, hours 6-22"),
        ("*/15 0-5,23 * * *", "every_15_min_0_5_23", "Every 15 minutes, hours 0-5,23"),
        ("*/5 * * * *", "every_5_min", "Every 5 minutes"),
        ("* * * * *", "every_min", "Every minute"),
        ("*/10 * * * 1-5", "every_10_min_mon_fri", "Every 10 minutes, Mon-Fri"),
        ("0 * * * *", "hourly_00", "Hourly at :00"),
        ("0 3 * * *", "daily_0300", "Daily at 03:00"),
        ("0 4 * * 1", "weekly_mon_0400", "Mondays at 04:00"),
        ("30 7 * * 1-5", "mon_fri_0730", "Mon-Fri at 07:30"),
        ("0 0 1 * *", "monthly_1_0000", "Monthly on day 1 at 00:00"),
        ("0 */6 * * *", "cron_0_x_6_x_x_x", "On cron `0 */6 * * *`"),
    ],
)
def test_cron_names_and_descriptions(cron: str, slug: str, text: str) -> None:
    assert schedule_name(Schedule(cron, "Asia/Seoul")) == f"mvo_{slug}_asia_seoul"
    assert describe_cron(cron) == text


# --- ticks ------------------------------------------------------------------------------------


def test_production_hours_in_berlin_tick_every_2_min_from_6_to_22_58() -> None:
    schedule = _one("*/2 6-22 * * *", "Europe/Berlin")
    ticks = _local_day(schedule, datetime(2026, 6, 10))
    assert ticks[0].time().isoformat() == "06:00:00"
    assert ticks[-1].time().isoformat() == "22:58:00"
    assert len(ticks) == 17 * 30
    assert all(b - a == timedelta(minutes=2) for a, b in itertools.pairwise(ticks))
    assert all(6 <= t.hour <= 22 for t in ticks)  # nothing at 23:00-05:58


@pytest.mark.parametrize(
    ("before", "change", "after"),
    [
        # clocks go forward (CET -> CEST): 06:00 local is 05:00Z before, 04:00Z after
        (datetime(2026, 3, 28), datetime(2026, 3, 29), datetime(2026, 3, 30)),
        # clocks go back (CEST -> CET): 06:00 local is 04:00Z before, 05:00Z after
        (datetime(2026, 10, 24), datetime(2026, 10, 25), datetime(2026, 10, 26)),
    ],
)
def test_local_hours_hold_across_dst(before: datetime, change: datetime, after: datetime) -> None:
    schedule = _one("*/2 6-22 * * *", "Europe/Berlin")
    firsts = []
    for day in (before, change, after):
        ticks = _local_day(schedule, day)
        assert len(ticks) == 510, day  # the DST hour (02:00-03:00) is outside 6-22
        assert (ticks[0].hour, ticks[0].minute) == (6, 0)
        assert (ticks[-1].hour, ticks[-1].minute) == (22, 58)
        firsts.append(ticks[0].astimezone(UTC))
    first_before, _, first_after = firsts
    # two days apart, yet one hour more or less, so that both are 06:00 local
    assert abs((first_after - first_before) - timedelta(days=2)) == timedelta(hours=1)
    assert abs(first_after.hour - first_before.hour) == 1
    assert {first_before.hour, first_after.hour} == {4, 5}


def test_daily_0300_utc() -> None:
    schedule = _one("0 3 * * *", "UTC")
    start = datetime(2026, 3, 27, tzinfo=UTC)  # across the European DST change: no effect
    ticks = list(_ticks(schedule, start, start + timedelta(days=4)))
    assert ticks == [datetime(2026, 3, d, 3, 0, tzinfo=UTC) for d in (27, 28, 29, 30)]


def test_ticks_on_an_instance_request_the_schedule_job() -> None:
    """Evaluate ticks against a Dagster instance, as the scheduler daemon would."""
    policies = {
        _key("mes/mv_wip_status_dashboard"): ViewPolicy(
            schedules=(Schedule("*/2 6-22 * * *", "Europe/Berlin"),)
        ),
        _key("marketing/daily_aggregations"): ViewPolicy(schedules=(Schedule("0 3 * * *"),)),
    }
    jobs, schedules = build_schedules(policies)
    defs = dg.Definitions(assets=[_mvs(policies)], jobs=jobs, schedules=schedules)
    berlin = defs.resolve_schedule_def("mvo_every_2_min_6_22_europe_berlin")
    daily = defs.resolve_schedule_def("mvo_daily_0300_utc")
    start = datetime(2026, 3, 28, 22, 0, tzinfo=UTC)  # 23:00 CET, the night clocks go forward
    end = start + timedelta(days=2)
    # Evaluating all ~1000 ticks takes a minute: take the edges of each production window.
    edges = [
        t for t in _ticks(berlin, start, end) if t.astimezone(BERLIN).strftime("%H:%M") in EDGES
    ]
    assert [t.astimezone(BERLIN).strftime("%d %H:%M") for t in edges] == [
        f"{day} {hhmm}" for day in (29, 30) for hhmm in EDGES
    ]
    samples = [(berlin, t) for t in edges] + [(daily, t) for t in _ticks(daily, start, end)]
    assert len(samples) == 2 * len(EDGES) + 2
    with dg.instance_for_test() as instance:
        for schedule, tick in samples:
            context = dg.build_schedule_context(instance=instance, scheduled_execution_time=tick)
            result = schedule.evaluate_tick(context)
            assert result.run_requests is not None and len(result.run_requests) == 1
            request = result.run_requests[0]
            assert request.tags["dagster/schedule_name"] == schedule.name
            assert request.job_name in (None, schedule.job_name)
    assert defs.resolve_job_def(berlin.job_name).asset_layer.selected_asset_keys == {
        _key("mes/mv_wip_status_dashboard")
    }
    assert defs.resolve_job_def(daily.job_name).asset_layer.selected_asset_keys == {
        _key("marketing/daily_aggregations")
    }


# --- coalescing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "blocks"),
    [
        (dg.DagsterRunStatus.NOT_STARTED, True),
        (dg.DagsterRunStatus.STARTED, True),
        (dg.DagsterRunStatus.CANCELING, True),
        (dg.DagsterRunStatus.SUCCESS, False),
        (dg.DagsterRunStatus.FAILURE, False),
        (dg.DagsterRunStatus.CANCELED, False),
    ],
)
def test_a_tick_leaves_out_views_with_a_queued_or_running_refresh(
    status: dg.DagsterRunStatus, blocks: bool
) -> None:
    wip, dashboard = _key("mes/mv_process_wip_queue"), _key("mes/mv_wip_status_dashboard")
    every_2 = Schedule("*/2 * * * *")
    policies = {k: ViewPolicy(schedules=(every_2,)) for k in (wip, dashboard)}
    jobs, schedules = build_schedules(policies)
    defs = dg.Definitions(assets=[_mvs(policies)], jobs=jobs, schedules=schedules)
    [schedule] = schedules
    tick = datetime(2026, 6, 10, 8, 0, tzinfo=UTC)

    def evaluate(instance: dg.DagsterInstance) -> dg.ScheduleExecutionData:
        context = dg.build_schedule_context(instance=instance, scheduled_execution_time=tick)
        return schedule.evaluate_tick(context)

    with dg.instance_for_test() as instance:
        job = defs.resolve_job_def(schedule.job_name)  # resolving loads with the instance
        [request] = evaluate(instance).run_requests or []
        assert set(request.asset_selection or ()) == {wip, dashboard}  # nothing under way
        # a run of another origin (the UI, a sensor) holds the dashboard
        first = instance.create_run_for_job(job, status=status, asset_selection={dashboard})
        result = evaluate(instance)
        [request] = result.run_requests or []
        assert request.tags["dagster/schedule_name"] == schedule.name
        assert set(request.asset_selection or ()) == ({wip} if blocks else {wip, dashboard})
        if not blocks:
            return
        # a second run holds the other view: the tick requests nothing and says why
        second = instance.create_run_for_job(job, status=status, asset_selection={wip})
        skipped = evaluate(instance)
        assert skipped.run_requests == []
        assert skipped.skip_message == (
            "all 2 view(s) busy, refreshes already queued or running: "
            f"mes/mv_process_wip_queue (run {second.run_id[:8]}), "
            f"mes/mv_wip_status_dashboard (run {first.run_id[:8]})"
        )
        for run in (first, second):
            instance.report_run_canceled(run)
        [request] = evaluate(instance).run_requests or []
        assert set(request.asset_selection or ()) == {wip, dashboard}
