"""The target-lag sensor against a real PostgreSQL server and a real (temporary) Dagster instance.

Writes are followed by ``flush_stats`` (see conftest), so counters are visible at once. The
sensor's clock is the real one plus an offset the tests move forward instead of sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import dagster as dg
import psycopg
import pytest
from dagster._core.test_utils import freeze_time

from mv_orchestration.core.catalog import CatalogSnapshot, RelationRef, read_catalog
from mv_orchestration.core.lag import DOWNSTREAM, TargetLag
from mv_orchestration.lib.alerting import Notifier
from mv_orchestration.lib.assets import build_refresh_assets
from mv_orchestration.lib.lag_sensor import LAG_TAG, build_lag_sensor, parse_lag_tag
from mv_orchestration.lib.resource import PostgresResource
from mv_orchestration.lib.sensors import RUN_KEY_TAG, SENSOR_NAME_TAG
from mv_orchestration.lib.translator import MvTranslator
from mv_orchestration_tests.conftest import flushed
from mv_orchestration_tests.lib.test_alerting import Receiver

DDL = """
CREATE SCHEMA src;
CREATE TABLE src.orders (id serial PRIMARY KEY, amount int NOT NULL);
CREATE TABLE src.visits (id serial PRIMARY KEY);
INSERT INTO src.orders (amount) VALUES (10), (5);
CREATE SCHEMA mart;
CREATE MATERIALIZED VIEW mart.mv_base AS SELECT sum(amount) AS total FROM src.orders;
CREATE MATERIALIZED VIEW mart.mv_top AS SELECT total * 2 AS doubled FROM mart.mv_base;
CREATE MATERIALIZED VIEW mart.mv_visits AS SELECT count(*) AS n FROM src.visits;
"""

R = RelationRef
BASE, TOP, VISITS = R("mart", "mv_base"), R("mart", "mv_top"), R("mart", "mv_visits")
KEYS = {ref: dg.AssetKey([ref.schema, ref.name]) for ref in (BASE, TOP, VISITS)}
TARGETS: dict[RelationRef, TargetLag] = {
    BASE: DOWNSTREAM,
    TOP: timedelta(minutes=2),
    VISITS: timedelta(minutes=5),
}


@pytest.fixture
def writer(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    flushed(conn, DDL)
    return conn


@pytest.fixture
def snapshot(writer: psycopg.Connection[Any]) -> CatalogSnapshot:
    return read_catalog(writer, ["mart"])


class Harness:
    """The sensor in one Definitions, ticked as the daemon does (cursor carried over); each
    requested run is executed in process, with the tags the daemon would give it."""

    def __init__(
        self,
        db_url: str,
        snapshot: CatalogSnapshot,
        instance: dg.DagsterInstance,
        targets: dict[RelationRef, TargetLag] = TARGETS,
        **sensor_kw: Any,
    ):
        translator = MvTranslator()
        self.resource = PostgresResource(dsn=db_url)
        self.offset = 0.0
        sensor = build_lag_sensor(
            snapshot, translator, targets, clock=lambda: time.time() + self.offset, **sensor_kw
        )
        assert sensor is not None
        self.sensor = sensor
        self.defs = dg.Definitions(
            assets=build_refresh_assets(snapshot, translator, name="refresh_default"),
            sensors=[sensor],
            resources={"postgres": self.resource},
        )
        self.instance = instance
        self.cursor: str | None = None
        self.results: list[dg.ExecuteInProcessResult] = []

    def tick(self) -> Any:
        with dg.build_sensor_context(
            instance=self.instance,
            cursor=self.cursor,
            resources={"postgres": self.resource},
            definitions=self.defs,
        ) as context:
            data = self.sensor.evaluate_tick(context)
        # the daemon stores the events, stamped by Dagster's clock: the sensor's
        with freeze_time(time.time() + self.offset):
            for event in data.asset_events:
                self.instance.report_runless_asset_event(event)
        self.cursor = data.cursor
        requests = data.run_requests or []
        assert len(requests) <= 1  # one run per tick at most
        for request in requests:
            assert self.sensor.job_name is not None and request.run_key is not None
            job = self.defs.resolve_job_def(self.sensor.job_name)
            tags = {
                **request.tags,
                RUN_KEY_TAG: request.run_key,
                SENSOR_NAME_TAG: self.sensor.name,
            }
            result = job.execute_in_process(
                instance=self.instance,
                asset_selection=list(request.asset_selection or []),
                tags=tags,
                raise_on_error=False,
            )
            self.results.append(result)
        return data


@pytest.fixture
def harness(db_url: str, snapshot: CatalogSnapshot, instance: dg.DagsterInstance) -> Harness:
    h = Harness(db_url, snapshot, instance)
    first = h.tick()  # a baseline: the views are taken as fresh
    assert first.run_requests == []
    assert "baseline recorded for 2 source table(s)" in first.skip_message
    return h


def test_definition(harness: Harness, snapshot: CatalogSnapshot) -> None:
    sensor = harness.sensor
    assert sensor.name == "mvo_target_lag"
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 15
    dg.Definitions.validate_loadable(harness.defs)
    # no duration target at all: no sensor
    assert build_lag_sensor(snapshot, MvTranslator(), {BASE: DOWNSTREAM}) is None


def test_no_change_no_run(harness: Harness) -> None:
    for offset in (0.0, 600.0, 7200.0):  # however long it waits, nothing changed
        harness.offset = offset
        data = harness.tick()
        assert data.run_requests == []
        assert data.skip_message.startswith("3 view(s): no change, nothing to do")
    assert harness.results == []


def test_one_change_one_run_just_in_time(
    harness: Harness, writer: psycopg.Connection[Any], instance: dg.DagsterInstance
) -> None:
    flushed(writer, "INSERT INTO src.visits DEFAULT VALUES")
    waiting = harness.tick()
    assert waiting.run_requests == []
    # 5m target; no history yet: 5 s expected refresh, 15 s launch latency; 15 s ticks
    assert waiting.skip_message.startswith("mart.mv_visits: ")
    assert " of 5m used, refresh in 4m" in waiting.skip_message
    assert "(expected 5s for 1 view + 15s launch)" in waiting.skip_message
    assert "2 view(s): no change, nothing to do" in waiting.skip_message

    # latest start: 5m - 20 s after the change (dated at the previous read, 1 s earlier)
    harness.offset = 4 * 60.0  # 40 s left: a later tick (15 s on) can still make it
    assert harness.tick().run_requests == []
    harness.offset = 4 * 60.0 + 30  # the next tick would be too late
    due = harness.tick()
    [request] = due.run_requests
    assert request.asset_selection == [KEYS[VISITS]]
    assert request.tags["mvo/trigger"] == "target_lag"
    assert "mart.mv_visits: 4m3" in request.tags["mvo/reason"]
    assert "of 5m used, refresh now" in request.tags["mvo/reason"]
    [(since, target)] = parse_lag_tag(request.tags[LAG_TAG]).values()
    assert target == 300.0 and time.time() - 10 < since < time.time()
    [result] = harness.results
    assert result.success
    [mat] = result.asset_materializations_for_node("refresh_default")
    meta = mat.metadata
    assert meta["target_met"].value is True and meta["target_lag_s"].value == 300.0
    lag = meta["lag_at_completion_s"].value
    assert isinstance(lag, float) and 0 < lag < time.time() - since + 1
    assert meta["data_timestamp"].value == meta["started_at"].value
    # the same figures in the history row (version 4)
    row = writer.execute(
        "SELECT data_timestamp, lag_at_completion_ms, target_met FROM mvo.refresh_history"
        " WHERE view_name = 'mv_visits' AND status = 'success'"
    ).fetchone()
    assert row is not None
    assert row[0].timestamp() == pytest.approx(meta["data_timestamp"].value)
    assert row[1] == pytest.approx(lag * 1000, abs=1) and row[2] is True

    for offset in (5 * 60.0, 3600.0):  # the refresh is credited: nothing more to do
        harness.offset = offset
        after = harness.tick()
        assert after.run_requests == []
        assert "mart.mv_visits" not in after.skip_message
    assert len(harness.results) == 1


def test_chain_with_downstream_upstream_is_one_run_upstream_first(
    harness: Harness, writer: psycopg.Connection[Any]
) -> None:
    flushed(writer, "INSERT INTO src.orders (amount) VALUES (7)")
    waiting = harness.tick()
    assert waiting.run_requests == []
    assert "mart.mv_top: " in waiting.skip_message
    assert "(expected 10s for 2 views, upstream first + 15s launch)" in waiting.skip_message
    assert "mart.mv_base: changed; refreshed with the views that read it (target 2m)" not in (
        waiting.skip_message
    )  # only views with a target of their own are listed

    harness.offset = 2 * 60.0
    due = harness.tick()
    [request] = due.run_requests
    assert set(request.asset_selection) == {KEYS[BASE], KEYS[TOP]}
    [result] = harness.results
    assert result.success
    mats = result.asset_materializations_for_node("refresh_default")
    assert [m.asset_key for m in mats] == [KEYS[BASE], KEYS[TOP]]
    # one data timestamp: the upstream refresh's start, which top's data reflects
    stamps = [m.metadata["data_timestamp"].value for m in mats]
    assert stamps[0] == stamps[1] == mats[0].metadata["started_at"].value
    assert all(m.metadata["target_met"].value is True for m in mats)
    assert {m.metadata["target_lag_s"].value for m in mats} == {120.0}
    assert writer.execute("SELECT doubled FROM mart.mv_top").fetchone() == (44,)
    assert harness.tick().run_requests == []


def _latest(instance: dg.DagsterInstance, ref: RelationRef) -> dg.EventLogEntry:
    [record] = instance.get_asset_records([KEYS[ref]])
    last = record.asset_entry.last_materialization
    assert last is not None
    return last


def test_idle_views_are_marked_current_without_a_refresh(
    harness: Harness, writer: psycopg.Connection[Any], instance: dg.DagsterInstance
) -> None:
    assert harness.sensor.job_name is not None
    job = harness.defs.resolve_job_def(harness.sensor.job_name)
    assert job.execute_in_process(instance=instance).success  # every view refreshed once
    refreshed = {ref: _latest(instance, ref) for ref in KEYS}
    assert harness.tick().asset_events == []  # just refreshed: nothing to vouch for

    harness.offset = 3 * 60.0  # past half of every target (2m for base and top, 5m visits)
    data = harness.tick()
    assert data.run_requests == []
    assert "3 idle view(s) marked current (no_data, not refreshed)" in data.skip_message
    assert {e.asset_key for e in data.asset_events} == set(KEYS.values())
    for ref, before in refreshed.items():
        mark = _latest(instance, ref)
        assert mark.asset_materialization is not None
        assert mark.asset_materialization.metadata["mvo/no_data"].value is True
        # stamped now (so freshness, measured from it, stays PASS) ...
        assert mark.timestamp == pytest.approx(time.time() + harness.offset, abs=5)
        # ... with the data version it had: nothing downstream turns stale
        assert before.asset_materialization is not None
        version = before.asset_materialization.tags.get("dagster/data_version")
        assert version and mark.asset_materialization.tags.get("dagster/data_version") == version
    rows = writer.execute(
        "SELECT view_name, data_timestamp IS NOT NULL FROM mvo.refresh_history"
        " WHERE status = 'no_data' ORDER BY 1"
    ).fetchall()
    assert rows == [("mv_base", True), ("mv_top", True), ("mv_visits", True)]
    assert harness.tick().asset_events == []  # marked: not again before half a target

    # a mark is no refresh: a later change is still refreshed, in time
    flushed(writer, "INSERT INTO src.visits DEFAULT VALUES")
    assert harness.tick().run_requests == []
    harness.offset += 4 * 60.0 + 30
    [request] = harness.tick().run_requests
    assert request.asset_selection == [KEYS[VISITS]]
    assert len(harness.results) == 1 and harness.results[0].success


def test_a_view_with_a_queued_run_is_not_requested_again(
    harness: Harness, writer: psycopg.Connection[Any], instance: dg.DagsterInstance
) -> None:
    assert harness.sensor.job_name is not None
    job = harness.defs.resolve_job_def(harness.sensor.job_name)
    # a run of another origin (the UI, a schedule) already queued for the view
    queued = instance.create_run_for_job(
        job, status=dg.DagsterRunStatus.NOT_STARTED, asset_selection={KEYS[VISITS]}
    )
    flushed(writer, "INSERT INTO src.visits DEFAULT VALUES")
    harness.offset = 10 * 60.0  # long past the target: it would be due
    data = harness.tick()
    assert data.run_requests == []
    assert f"of 5m used, refresh under way (run {queued.run_id[:8]})" in data.skip_message
    # it ended without refreshing the view (canceled): the change is requested at once
    instance.report_run_canceled(queued)
    [request] = harness.tick().run_requests
    assert request.asset_selection == [KEYS[VISITS]]


FOREIGN_DDL = """
CREATE EXTENSION file_fdw;
CREATE SERVER files FOREIGN DATA WRAPPER file_fdw;
CREATE SCHEMA ext;
CREATE FOREIGN TABLE ext.rates (code text, rate numeric)
    SERVER files OPTIONS (program 'echo USD,1', format 'csv');
CREATE MATERIALIZED VIEW ext.mv_rates AS SELECT * FROM ext.rates;
"""
RATES = R("ext", "mv_rates")


def test_a_view_over_a_foreign_table_is_refreshed_once_per_target(
    db_url: str, conn: psycopg.Connection[Any], instance: dg.DagsterInstance
) -> None:
    conn.execute(FOREIGN_DDL)
    snapshot = read_catalog(conn, ["ext"])
    h = Harness(db_url, snapshot, instance, targets={RATES: timedelta(minutes=2)})
    first = h.tick()  # the baseline: fresh now, whatever the foreign table holds
    assert first.run_requests == []
    assert "ext.mv_rates: " in first.skip_message and "of 2m used" in first.skip_message
    for _ in range(2):
        h.offset = 2 * 60.0  # a target after the last refresh (or the baseline): due
        [request] = h.tick().run_requests
        assert request.asset_selection == [dg.AssetKey(["ext", "mv_rates"])]
        assert h.results[-1].success
        h.offset = 0.0  # just refreshed (the clock is back to the real one): not due
        again = h.tick()
        assert again.run_requests == []
        assert again.skip_message.startswith("ext.mv_rates: ")
        assert "s of 2m used, refresh in 1m5" in again.skip_message
    assert len(h.results) == 2


BREAKER_DDL = """
CREATE SCHEMA src;
CREATE TABLE src.nums (x int NOT NULL);
INSERT INTO src.nums VALUES (1);
CREATE SCHEMA mart;
CREATE MATERIALIZED VIEW mart.mv_inv AS SELECT sum(1 / x) AS inv FROM src.nums;
CREATE MATERIALIZED VIEW mart.mv_inv_total AS SELECT inv FROM mart.mv_inv;
"""
INV, INV_TOTAL = R("mart", "mv_inv"), R("mart", "mv_inv_total")
KEYS_OF = {ref: dg.AssetKey([ref.schema, ref.name]) for ref in (INV, INV_TOTAL)}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


def test_five_failures_suspend_the_view_and_its_downstream_until_a_success(
    db_url: str,
    conn: psycopg.Connection[Any],
    instance: dg.DagsterInstance,
    receiver: Receiver,
) -> None:
    flushed(conn, BREAKER_DDL)
    snapshot = read_catalog(conn, ["mart"])
    targets: dict[RelationRef, TargetLag] = {INV: DOWNSTREAM, INV_TOTAL: timedelta(minutes=1)}
    h = Harness(db_url, snapshot, instance, targets, notifier=Notifier([receiver.url()]))
    assert h.tick().run_requests == []  # baseline
    flushed(conn, "INSERT INTO src.nums VALUES (0)")  # every refresh of mv_inv now fails
    suspended = None
    for _ in range(12):  # each round past the target and any backoff
        h.offset += 120.0
        data = h.tick()
        if "suspended:" in (data.skip_message or ""):
            suspended = data
            break
    assert suspended is not None
    assert [r.success for r in h.results] == [False] * 5  # five requested runs, all failed
    assert suspended.skip_message.startswith(
        "suspended: mart.mv_inv (5 failures); upstream_suspended: 1 view(s); "
    )
    states = {
        e.asset_key: e.metadata["mvo/state"].value
        for e in suspended.asset_events
        if isinstance(e, dg.AssetObservation) and "mvo/state" in e.metadata
    }
    assert states == {KEYS_OF[INV]: "suspended", KEYS_OF[INV_TOTAL]: "upstream_suspended"}
    [alert] = receiver.take()  # one alert, naming the view, the failures and the way back
    assert "mart.mv_inv failed 5 consecutive refreshes and is suspended" in alert["message"]
    assert "upstream_suspended: mart.mv_inv_total" in alert["message"]
    assert "mvo resume mart.mv_inv" in alert["message"]

    for _ in range(3):  # long past the target: still nothing requested, no second alert
        h.offset += 600.0
        data = h.tick()
        assert data.run_requests == []
        assert "upstream_suspended (mart.mv_inv)" in data.skip_message
        assert not [e for e in data.asset_events if isinstance(e, dg.AssetObservation)]
    assert receiver.take() == [] and len(h.results) == 5

    # fixed, and refreshed by hand (as the UI or 'mvo resume' would): resumed
    flushed(conn, "DELETE FROM src.nums WHERE x = 0")
    assert h.sensor.job_name is not None
    job = h.defs.resolve_job_def(h.sensor.job_name)
    assert job.execute_in_process(instance=instance, asset_selection=[KEYS_OF[INV]]).success
    resumed = h.tick()
    states = {
        e.asset_key: e.metadata["mvo/state"].value
        for e in resumed.asset_events
        if isinstance(e, dg.AssetObservation) and "mvo/state" in e.metadata
    }
    assert states == {KEYS_OF[INV]: "resumed", KEYS_OF[INV_TOTAL]: "resumed"}
    # the downstream view, long past its target, is refreshed at once, upstream first
    [request] = resumed.run_requests
    assert KEYS_OF[INV_TOTAL] in request.asset_selection
    assert h.results[-1].success
    assert "suspended" not in h.tick().skip_message
