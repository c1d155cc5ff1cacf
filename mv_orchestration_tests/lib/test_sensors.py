"""The change sensor against a real PostgreSQL server and a real (temporary) Dagster instance.

Every write is followed by ``flush_stats`` (see conftest) in the writing session, so the
counters are visible to the sensor's own connection at once and no test sleeps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import Any, Literal

import dagster as dg
import psycopg
import pytest

from mv_orchestration.core.catalog import CatalogSnapshot, RelationRef, read_catalog
from mv_orchestration.core.changes import fingerprints, state_from_json
from mv_orchestration.lib.assets import build_refresh_assets
from mv_orchestration.lib.resource import PostgresResource
from mv_orchestration.lib.sensors import (
    DATA_VERSION_TAG,
    RUN_KEY_TAG,
    SENSOR_NAME_TAG,
    build_change_sensor,
)
from mv_orchestration.lib.translator import MvTranslator
from mv_orchestration_tests.conftest import flush_stats, flushed

DDL = """
CREATE SCHEMA src;
CREATE TABLE src.orders (id serial PRIMARY KEY, region text NOT NULL, amount int NOT NULL);
INSERT INTO src.orders (region, amount) VALUES ('eu', 10), ('us', 5);
CREATE TABLE src."CustomerList" (id int PRIMARY KEY, name text);
CREATE TABLE src.events (id int, at date NOT NULL) PARTITION BY RANGE (at);
CREATE TABLE src.events_2026 PARTITION OF src.events
    FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE src.events_other PARTITION OF src.events DEFAULT;
CREATE EXTENSION file_fdw;
CREATE SERVER files FOREIGN DATA WRAPPER file_fdw;
CREATE FOREIGN TABLE src.rates (code text, rate numeric)
    SERVER files OPTIONS (filename '/nonexistent/rates.csv', format 'csv');

CREATE SCHEMA mart;
CREATE VIEW mart.v_orders AS SELECT * FROM src.orders WHERE amount > 0;
-- through a view
CREATE MATERIALIZED VIEW mart.mv_sales AS
    SELECT region, sum(amount) AS total FROM mart.v_orders GROUP BY region;
CREATE UNIQUE INDEX ON mart.mv_sales (region);
-- MV on MV
CREATE MATERIALIZED VIEW mart.mv_grand AS SELECT sum(total) AS total FROM mart.mv_sales;
-- other tables
CREATE MATERIALIZED VIEW mart.mv_customers AS SELECT count(*) AS n FROM src."CustomerList";
CREATE MATERIALIZED VIEW mart.mv_events AS SELECT count(*) AS n FROM src.events;
-- foreign table: refreshed by schedule only
CREATE MATERIALIZED VIEW mart.mv_rates AS SELECT * FROM src.rates WITH NO DATA;
"""

R = RelationRef
K = dg.AssetKey
SALES, GRAND = K(["mart", "mv_sales"]), K(["mart", "mv_grand"])
CUSTOMERS, EVENTS, RATES = (
    K(["mart", "mv_customers"]),
    K(["mart", "mv_events"]),
    K(["mart", "mv_rates"]),
)
ORDERS_KEY = K(["src", "orders"])
FINGERPRINTED = [SALES, GRAND, CUSTOMERS, EVENTS]  # mv_rates reads a foreign table


@pytest.fixture
def writer(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    flushed(conn, DDL)
    return conn


@pytest.fixture
def snapshot(writer: psycopg.Connection[Any]) -> CatalogSnapshot:
    return read_catalog(writer, ["mart"])


Submit = Literal["queue", "execute", "drop"]


class Harness:
    """One sensor in one Definitions, ticked like the daemon does (cursor carried over).

    Each requested run is created in the instance as the daemon would, with the request's
    run key and the sensor's name: left NOT_STARTED (``"queue"``, the default: waiting for the
    run coordinator; QUEUED would need a code location's origin), executed in process (``"execute"``), or dropped.
    ``now`` is the sensor's clock for backoff; tests move it forward instead of sleeping.
    """

    def __init__(
        self,
        db_url: str,
        snapshot: CatalogSnapshot,
        instance: dg.DagsterInstance,
        **sensor_kw: Any,
    ) -> None:
        translator = MvTranslator()
        self.resource = PostgresResource(dsn=db_url)
        self.now = time.time()
        sensor_kw.setdefault("clock", lambda: self.now)
        self.sensor = build_change_sensor(snapshot, translator, **sensor_kw)
        self.defs = dg.Definitions(
            assets=build_refresh_assets(snapshot, translator, name="refresh_default"),
            sensors=[self.sensor],
            resources={"postgres": self.resource},
        )
        self.instance = instance
        self.cursor: str | None = None
        self.runs: list[str] = []  # ids of the runs created for requests, oldest first
        self.results: list[dg.ExecuteInProcessResult] = []

    @property
    def job(self) -> dg.JobDefinition:
        assert self.sensor.job_name is not None
        return self.defs.resolve_job_def(self.sensor.job_name)

    def tick(self, submit: Submit = "queue") -> Any:
        with dg.build_sensor_context(
            instance=self.instance,
            cursor=self.cursor,
            resources={"postgres": self.resource},
            definitions=self.defs,
        ) as context:
            data = self.sensor.evaluate_tick(context)
        # the daemon stores the events and the cursor, and creates the runs
        for event in data.asset_events:
            self.instance.report_runless_asset_event(event)
        self.cursor = data.cursor
        for request in data.run_requests:
            self._submit(request, submit)
        return data

    def _submit(self, request: dg.RunRequest, submit: Submit) -> None:
        assert request.run_key
        tags = {**request.tags, RUN_KEY_TAG: request.run_key, SENSOR_NAME_TAG: self.sensor.name}
        keys = list(request.asset_selection or [])
        if submit == "queue":
            run = self.instance.create_run_for_job(
                self.job,
                status=dg.DagsterRunStatus.NOT_STARTED,
                tags=tags,
                asset_selection=set(keys),
            )
            self.runs.append(run.run_id)
        elif submit == "execute":
            result = self.job.execute_in_process(
                instance=self.instance, asset_selection=keys, tags=tags, raise_on_error=False
            )
            self.runs.append(result.run_id)
            self.results.append(result)

    def requested(self, submit: Submit = "queue") -> set[dg.AssetKey]:
        """Tick once; the asset keys of the (at most one) requested run."""
        data = self.tick(submit)
        assert len(data.run_requests) <= 1
        if not data.run_requests:
            assert data.skip_message
            return set()
        return set(data.run_requests[0].asset_selection)

    def seen(self) -> dict[RelationRef, str]:
        """The source tokens the last tick read."""
        assert self.cursor is not None
        return dict(state_from_json(self.cursor).seen)


@pytest.fixture
def harness(db_url: str, snapshot: CatalogSnapshot, instance: dg.DagsterInstance) -> Harness:
    h = Harness(db_url, snapshot, instance)
    assert h.requested() == set()  # the first tick records a baseline
    return h


def test_sensor_definition(db_url: str, snapshot: CatalogSnapshot) -> None:
    sensor = build_change_sensor(snapshot, MvTranslator())
    assert sensor.name == "mvo_source_changes"
    assert sensor.minimum_interval_seconds == 30
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert sensor.required_resource_keys == {"postgres"}
    defs = dg.Definitions(
        assets=build_refresh_assets(snapshot, MvTranslator()),
        sensors=[sensor],
        resources={"postgres": PostgresResource(dsn=db_url)},
    )
    dg.Definitions.validate_loadable(defs)
    # the target is a job over exactly the change-driven MVs
    assert sensor.job_name is not None
    job = defs.resolve_job_def(sensor.job_name)
    assert set(job.asset_layer.selected_asset_keys) == {SALES, GRAND, CUSTOMERS, EVENTS, RATES}


def test_baseline_then_insert_refreshes_exactly_the_downstream_mvs(
    db_url: str,
    snapshot: CatalogSnapshot,
    instance: dg.DagsterInstance,
    writer: psycopg.Connection[Any],
) -> None:
    h = Harness(db_url, snapshot, instance)
    first = h.tick()
    assert first.run_requests == [] and "baseline" in first.skip_message
    # the baseline records a data version for every watched source table
    watched = {K(["src", "orders"]), K(["src", "CustomerList"]), K(["src", "events"])}
    assert {e.asset_key for e in first.asset_events} == watched
    assert set(h.seen()) == {
        R("src", "orders"),
        R("src", "CustomerList"),
        R("src", "events"),
    }
    # nothing changed: no run, no events
    second = h.tick()
    assert second.run_requests == [] and second.asset_events == []

    flushed(writer, "INSERT INTO src.orders (region, amount) VALUES ('apac', 7)")
    data = h.tick("execute")  # the daemon runs the request at once
    [request] = data.run_requests
    assert set(request.asset_selection) == {SALES, GRAND}
    assert request.run_key and request.tags["mvo/changed_tables"] == "src.orders"
    # the changed table's fingerprint is its source asset's data version
    [event] = data.asset_events
    token = h.seen()[R("src", "orders")]
    assert event.asset_key == ORDERS_KEY and event.tags[DATA_VERSION_TAG] == token
    record = instance.get_latest_data_version_record(ORDERS_KEY)
    assert record is not None
    assert record.asset_observation is not None
    assert record.asset_observation.data_version == token

    # the requested run refreshed the MVs upstream first; its refreshes are no new change
    [result] = h.results
    assert result.success
    mats = result.asset_materializations_for_node("refresh_default")
    assert [m.asset_key for m in mats] == [SALES, GRAND]
    with psycopg.connect(db_url) as check:
        assert check.execute("SELECT total FROM mart.mv_grand").fetchone() == (22,)
    after = h.tick()
    assert after.run_requests == []
    assert after.skip_message == "2 view(s) refreshed; no change in 3 source table(s)"
    assert h.tick().skip_message == "no change in 3 source table(s)"


def _copy(conn: psycopg.Connection[Any]) -> None:
    with conn.cursor() as cur, cur.copy("COPY src.orders (region, amount) FROM STDIN") as copy:
        copy.write_row(("eu", 1))
    flush_stats(conn)


def _sql(statement: str) -> Callable[[psycopg.Connection[Any]], None]:
    return lambda conn: flushed(conn, statement)


@pytest.mark.parametrize(
    "write",
    [
        _sql("TRUNCATE src.orders"),
        _sql("UPDATE src.orders SET amount = amount + 1"),
        _sql("DELETE FROM src.orders WHERE region = 'us'"),
        _copy,
    ],
    ids=["truncate", "update", "delete", "copy"],
)
def test_every_kind_of_write_is_a_change(
    harness: Harness,
    writer: psycopg.Connection[Any],
    write: Callable[[psycopg.Connection[Any]], None],
) -> None:
    write(writer)
    assert harness.requested() == {SALES, GRAND}
    assert harness.requested() == set()


def test_partition_write_refreshes_the_mv_on_the_parent(
    harness: Harness, writer: psycopg.Connection[Any]
) -> None:
    flushed(writer, "INSERT INTO src.events_other VALUES (1, '2020-01-01')")
    assert harness.requested() == {EVENTS}


def test_quoted_names(harness: Harness, writer: psycopg.Connection[Any]) -> None:
    flushed(writer, "INSERT INTO src.\"CustomerList\" VALUES (1, 'a')")
    assert harness.requested() == {CUSTOMERS}


def test_stats_reset_counts_as_change(harness: Harness, writer: psycopg.Connection[Any]) -> None:
    flushed(writer, "SELECT pg_stat_reset()")
    assert harness.requested() == {SALES, GRAND, CUSTOMERS, EVENTS}
    assert harness.requested() == set()


def test_foreign_tables_never_trigger(
    db_url: str,
    snapshot: CatalogSnapshot,
    instance: dg.DagsterInstance,
    writer: psycopg.Connection[Any],
) -> None:
    assert fingerprints(writer, [R("src", "rates")]) == {}
    only_rates = Harness(db_url, snapshot, instance, views=[R("mart", "mv_rates")])
    everything = Harness(db_url, snapshot, instance, name="all", treat_first_as_change=True)
    first = everything.requested()
    assert first == {SALES, GRAND, CUSTOMERS, EVENTS}  # every MV with a fingerprint, no rates
    assert only_rates.requested() == set()
    flushed(writer, "SELECT pg_stat_reset()")
    flushed(writer, "INSERT INTO src.orders (region, amount) VALUES ('eu', 1)")
    assert only_rates.requested() == set()
    assert only_rates.cursor is None or only_rates.seen() == {}
    assert RATES not in everything.requested()


@pytest.mark.parametrize("views", [[R("mart", "mv_customers")], []])
def test_only_change_driven_views_are_requested(
    db_url: str,
    snapshot: CatalogSnapshot,
    instance: dg.DagsterInstance,
    writer: psycopg.Connection[Any],
    views: Collection[RelationRef],
) -> None:
    h = Harness(db_url, snapshot, instance, views=views)
    assert h.requested() == set()
    flushed(writer, "INSERT INTO src.orders (region, amount) VALUES ('eu', 1)")
    assert h.requested() == set()
    flushed(writer, "INSERT INTO src.\"CustomerList\" VALUES (1, 'a')")
    assert h.requested() == ({CUSTOMERS} if views else set())


def test_upstream_mv_not_change_driven_is_watched_itself(
    db_url: str,
    snapshot: CatalogSnapshot,
    instance: dg.DagsterInstance,
    writer: psycopg.Connection[Any],
) -> None:
    # mv_sales refreshes on its own schedule; mv_grand follows it when it has refreshed
    h = Harness(db_url, snapshot, instance, views=[R("mart", "mv_grand")])
    assert h.requested() == set()
    flushed(writer, "INSERT INTO src.orders (region, amount) VALUES ('eu', 1)")
    assert h.requested() == set()
    flushed(writer, "REFRESH MATERIALIZED VIEW CONCURRENTLY mart.mv_sales")
    assert h.requested() == {GRAND}


def test_same_state_gives_same_run_key(harness: Harness, writer: psycopg.Connection[Any]) -> None:
    baseline = harness.cursor
    flushed(writer, "INSERT INTO src.orders (region, amount) VALUES ('eu', 1)")
    first = harness.tick("drop").run_requests[0].run_key
    harness.cursor = baseline  # e.g. the tick's result was lost before its run was created
    assert harness.tick("queue").run_requests[0].run_key == first
    # the tick's result is lost after its run was created: the tick coalesces into the run
    harness.cursor = baseline
    again = harness.tick()
    assert again.run_requests == []
    assert again.skip_message == (
        f"2 view(s) busy in run {harness.runs[0][:8]}; changed: src.orders"
    )


# --- changes are never lost ---------------------------------------------------------------------

FRAGILE_DDL = """
CREATE TABLE src.fragile (x int NOT NULL);
INSERT INTO src.fragile VALUES (1);
CREATE FUNCTION src.inverse(x int) RETURNS int LANGUAGE sql AS 'SELECT 100 / x';
CREATE MATERIALIZED VIEW mart.mv_inverse AS SELECT sum(src.inverse(x)) AS total FROM src.fragile;
CREATE MATERIALIZED VIEW mart.mv_inverse_x2 AS SELECT total * 2 AS total FROM mart.mv_inverse;
"""
INVERSE, INVERSE_X2 = K(["mart", "mv_inverse"]), K(["mart", "mv_inverse_x2"])


@pytest.fixture
def fragile(db_url: str, writer: psycopg.Connection[Any], instance: dg.DagsterInstance) -> Harness:
    """A sensor for two MVs whose refresh divides by zero once ``src.fragile`` holds a 0."""
    flushed(writer, FRAGILE_DDL)
    views = [R("mart", "mv_inverse"), R("mart", "mv_inverse_x2"), R("mart", "mv_customers")]
    h = Harness(db_url, read_catalog(writer, ["mart"]), instance, views=views)
    assert h.requested() == set()
    return h


def _total(db_url: str, view: str) -> Any:
    with psycopg.connect(db_url) as check:
        row = check.execute(f"SELECT total FROM mart.{view}").fetchone()  # noqa: S608 (literal)
    assert row is not None
    return row[0]


def test_failed_run_is_requested_again_until_it_succeeds(
    fragile: Harness, writer: psycopg.Connection[Any], db_url: str
) -> None:
    h = fragile
    flushed(writer, "INSERT INTO src.fragile VALUES (0)")  # the refresh now divides by zero
    assert h.requested("execute") == {INVERSE, INVERSE_X2}
    failed = h.results[-1]
    assert not failed.success  # mv_inverse failed, mv_inverse_x2 was skipped after it
    assert failed.asset_materializations_for_node("refresh_default") == []

    # no source changed since, yet the next tick requests both again, under a new run key
    data = h.tick("execute")
    [request] = data.run_requests
    assert set(request.asset_selection) == {INVERSE, INVERSE_X2}
    assert request.tags["mvo/changed_tables"] == "src.fragile"
    assert request.run_key != h.results[0].dagster_run.tags[RUN_KEY_TAG]
    assert not h.results[-1].success

    # a second failure in a row: the views wait one sensor interval
    data = h.tick("execute")
    assert data.run_requests == []
    assert data.skip_message.startswith(
        "2 view(s) not refreshed by the run requested for them: "
        "mart.mv_inverse (failure 2), mart.mv_inverse_x2 (failure 2); "
        "2 view(s) backing off after failed refreshes, next try in 30s"
    )
    # the function is fixed; no source table changes, and the change is still not lost
    writer.execute(
        "CREATE OR REPLACE FUNCTION src.inverse(x int) RETURNS int LANGUAGE sql"
        " AS 'SELECT 100 / nullif(x, 0)'"
    )
    h.now += 10
    assert h.requested("execute") == set()
    h.now += 20
    assert h.requested("execute") == {INVERSE, INVERSE_X2}
    assert h.results[-1].success
    assert _total(db_url, "mv_inverse_x2") == 200
    data = h.tick()
    assert data.skip_message == "2 view(s) refreshed; no change in 2 source table(s)"
    state = state_from_json(h.cursor or "")
    assert all(v.failures == 0 and not v.claims for v in state.views.values())


def test_a_run_dagster_will_retry_is_waited_for(
    fragile: Harness, writer: psycopg.Connection[Any], db_url: str
) -> None:
    h = fragile
    flushed(writer, "INSERT INTO src.fragile VALUES (0)")
    assert h.requested("execute") == {INVERSE, INVERSE_X2}
    [failed] = h.results
    # run retries (dagster.yaml) mark a crashed run for re-execution, then create it
    h.instance.add_run_tags(failed.run_id, {"dagster/will_retry": "true"})
    data = h.tick()
    assert data.run_requests == []
    assert data.skip_message == (
        "2 view(s) waiting for the retry of their run; no change in 2 source table(s)"
    )
    writer.execute(
        "CREATE OR REPLACE FUNCTION src.inverse(x int) RETURNS int LANGUAGE sql"
        " AS 'SELECT 100 / nullif(x, 0)'"
    )
    # the retry carries its parent's tags, run key included
    retry = h.job.execute_in_process(
        instance=h.instance,
        asset_selection=[INVERSE, INVERSE_X2],
        tags={**failed.dagster_run.tags, "dagster/parent_run_id": failed.run_id},
    )
    assert retry.success
    h.instance.add_run_tags(failed.run_id, {"dagster/auto_retry_run_id": retry.run_id})
    data = h.tick()
    assert data.run_requests == []
    assert data.skip_message == "2 view(s) refreshed; no change in 2 source table(s)"
    assert _total(db_url, "mv_inverse") == 100


def test_backoff_doubles_per_failure_up_to_30_minutes(
    fragile: Harness, writer: psycopg.Connection[Any]
) -> None:
    h = fragile
    flushed(writer, "INSERT INTO src.fragile VALUES (0)")
    assert h.requested("execute") == {INVERSE, INVERSE_X2}
    assert h.requested("execute") == {INVERSE, INVERSE_X2}  # failure 1: again at once
    waits = []
    for _ in range(8):
        data = h.tick("execute")  # sees the last failure
        assert data.run_requests == []
        waited = 0
        while not h.tick("execute").run_requests:  # one tick per interval
            h.now += 30
            waited += 30
            assert waited <= 1800
        waits.append(waited)
    assert waits == [30, 60, 120, 240, 480, 960, 1800, 1800]
    # a change of another view's table is requested at once, without waiting for them
    flushed(writer, "INSERT INTO src.\"CustomerList\" VALUES (1, 'a')")
    assert h.requested("execute") == {CUSTOMERS}
    assert h.results[-1].success


def test_canceled_queued_run_leaves_the_change_pending(
    harness: Harness, writer: psycopg.Connection[Any]
) -> None:
    flushed(writer, "INSERT INTO src.orders (region, amount) VALUES ('eu', 1)")
    assert harness.requested() == {SALES, GRAND}
    # queued: the views are busy, nothing new is requested
    data = harness.tick()
    assert data.run_requests == []
    [run_id] = harness.runs
    assert (
        data.skip_message == f"2 view(s) busy in run {run_id[:8]}; no change in 3 source table(s)"
    )
    run = harness.instance.get_run_by_id(run_id)
    assert run is not None
    harness.instance.report_run_canceled(run)
    data = harness.tick()
    assert set(data.run_requests[0].asset_selection) == {SALES, GRAND}


def test_runs_of_any_origin_coalesce_and_count(
    harness: Harness, writer: psycopg.Connection[Any], instance: dg.DagsterInstance
) -> None:
    h = harness
    flushed(writer, "INSERT INTO src.orders (region, amount) VALUES ('eu', 1)")
    # a run from the UI, a schedule or mvo refresh is queued for one of the views
    manual = instance.create_run_for_job(
        h.job, status=dg.DagsterRunStatus.NOT_STARTED, asset_selection={GRAND}
    )
    data = h.tick()
    assert set(data.run_requests[0].asset_selection) == {SALES}  # GRAND is busy
    busy = h.tick()
    assert busy.run_requests == []
    held = sorted([h.runs[0][:8], manual.run_id[:8]])
    assert busy.skip_message == (
        f"1 view(s) busy in run {held[0]}; 1 view(s) busy in run {held[1]}; "
        "no change in 3 source table(s)"
    )
    for run_id in (manual.run_id, h.runs[0]):
        run = instance.get_run_by_id(run_id)
        assert run is not None
        instance.report_run_canceled(run)
    # a manual run that starts after the change was read refreshes both: no request follows
    flushed(writer, "INSERT INTO src.orders (region, amount) VALUES ('us', 2)")
    assert h.requested("drop") == {SALES, GRAND}  # its run is lost (never created) ...
    result = h.job.execute_in_process(instance=instance, asset_selection=[SALES, GRAND])
    assert result.success
    data = h.tick()
    assert data.run_requests == []  # ... and the manual run counts instead
    assert data.skip_message == "2 view(s) refreshed; no change in 3 source table(s)"


# --- an unreadable cursor ------------------------------------------------------------------------


def _garbage_cursors(good: str) -> list[str]:
    return [
        "not json",
        good[: len(good) // 2],  # truncated
        '{"v": 1, "tables": {"src": {"orders": "0123"}}}',  # the format before views
        '{"v": 2, "tables": [], "views": {}, "seen_at": 0}',  # wrong shape
        "[]",
        good.replace('"failures":0', '"failures":"x"'),
    ]


@pytest.mark.parametrize("kind", range(6))
def test_unreadable_cursor_is_rebuilt_from_the_instance(
    kind: int,
    harness: Harness,
    writer: psycopg.Connection[Any],
    instance: dg.DagsterInstance,
    capfd: pytest.CaptureFixture[str],
) -> None:
    h = harness
    # every view refreshed after the baseline's observations
    assert h.job.execute_in_process(instance=instance, asset_selection=FINGERPRINTED).success
    # a change is observed (its run is lost), and another is not even seen yet
    flushed(writer, "INSERT INTO src.\"CustomerList\" VALUES (1, 'a')")
    assert h.requested("drop") == {CUSTOMERS}
    flushed(writer, "INSERT INTO src.orders (region, amount) VALUES ('eu', 1)")
    assert h.cursor is not None
    garbage = _garbage_cursors(h.cursor)[kind]
    assert garbage != h.cursor
    h.cursor = garbage
    capfd.readouterr()
    data = h.tick()
    # no tick raises. mv_customers was refreshed before its source's last observation, and
    # orders moved since its last one: exactly the views downstream of both are requested
    [request] = data.run_requests
    assert set(request.asset_selection) == {SALES, GRAND, CUSTOMERS}
    assert state_from_json(h.cursor or "").views  # written back, readable
    assert h.requested() == set()  # busy in the run just requested
    # logged once, as a warning (Dagster's log manager writes to stderr)
    logged = [line for line in capfd.readouterr().err.splitlines() if "unreadable" in line]
    assert len(logged) == 1 and " - WARNING - " in logged[0]


def test_rebuild_with_nothing_pending_requests_nothing(
    harness: Harness, instance: dg.DagsterInstance
) -> None:
    h = harness
    assert h.job.execute_in_process(instance=instance, asset_selection=FINGERPRINTED).success
    h.cursor = "{truncated"
    data = h.tick()
    assert data.run_requests == []
    assert data.skip_message.startswith("cursor rebuilt (unreadable change cursor: ")
    assert data.skip_message.endswith("; 3 source table(s) read")
    assert h.tick().skip_message == "no change in 3 source table(s)"
