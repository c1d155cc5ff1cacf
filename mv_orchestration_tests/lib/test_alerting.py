"""Alerts end to end: real database, real Dagster instance, the real freshness and sensor daemons.

The code location is loaded in process (so dagster's ``freeze_time`` moves the clock for the
freshness daemon, the sensors and the runs alike); runs are launched from the workspace with a
synchronous in-memory run launcher, so they carry a code-location origin as UI-launched runs do.
Notifications go through apprise to a local HTTP receiver.
"""

from __future__ import annotations

import itertools
import json
import logging
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
from dagster._core.definitions.assets.job.asset_job import IMPLICIT_ASSET_JOB_NAME
from dagster._core.definitions.instigation_logger import get_instigation_log_records
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.remote_representation.code_location import InProcessCodeLocation
from dagster._core.scheduler.instigation import TickStatus
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus
from dagster._core.test_utils import create_test_daemon_workspace_context, freeze_time
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._daemon.freshness import FreshnessDaemon
from dagster._daemon.sensor import execute_sensor_iteration
from dagster_graphql.test.utils import execute_dagster_graphql

from mv_orchestration.core.catalog import read_catalog
from mv_orchestration.definitions import build_from_settings
from mv_orchestration.lib.alerting import (
    Notifier,
    RefreshFailure,
    alert_targets,
    asset_url,
    build_freshness_alert_sensor,
    build_refresh_failure_sensor,
    format_duration,
    freshness_alert,
    run_failure_alert,
    transition,
)
from mv_orchestration.lib.defs import DatabaseTarget, build_definitions, default_translator
from mv_orchestration.lib.resource import PostgresResource
from mv_orchestration.settings import Settings

K = dg.AssetKey
SALES = K(["shop", "mv_sales"])
RATIO = K(["shop", "mv_ratio"])
WARN_AFTER = timedelta(minutes=10)
FAIL_AFTER = timedelta(minutes=30)
UI = "http://dagster.example:3000"
LOCATION = "mvo_alerting_test"

DDL = """
CREATE SCHEMA shop;
CREATE TABLE shop.orders (id serial PRIMARY KEY, region text NOT NULL, amount int NOT NULL);
INSERT INTO shop.orders (region, amount) VALUES ('eu', 10), ('us', 5);
CREATE MATERIALIZED VIEW shop.mv_sales AS
    SELECT region, sum(amount) AS total FROM shop.orders GROUP BY region;
CREATE UNIQUE INDEX ON shop.mv_sales (region);
CREATE TABLE shop.divisors (d int);
INSERT INTO shop.divisors VALUES (1);
CREATE MATERIALIZED VIEW shop.mv_ratio AS SELECT 100 / d AS r FROM shop.divisors;
"""


# --- the code location under test -----------------------------------------------------------
def alerting_definitions(db_url: str, alert_url: str, fast_locks: bool = False) -> dg.Definitions:
    """MV assets from the live catalog, a freshness policy on each MV, and both alert sensors.

    ``fast_locks``: give up on a lock after 0.3 s, with no retry.
    """
    with psycopg.connect(db_url, autocommit=True) as conn:
        snapshot = read_catalog(conn, ["shop"])
    locks: dict[str, Any] = (
        {"lock_timeout_s": 0.3, "lock_retries": 0, "transient_retries": 0} if fast_locks else {}
    )
    target = DatabaseTarget(
        alias="default",
        resource=PostgresResource(dsn=db_url, **locks),
        translator=default_translator("default", prefix_with_alias=False),
    )
    policy = dg.FreshnessPolicy.time_window(fail_window=FAIL_AFTER, warn_window=WARN_AFTER)
    assets = build_definitions([(target, snapshot)]).map_asset_specs(
        func=lambda spec: (
            spec.replace_attributes(freshness_policy=policy) if spec.key in (SALES, RATIO) else spec
        )
    )
    targets = alert_targets(assets.resolve_all_asset_specs())
    notifier = Notifier([alert_url])
    sensors = [
        build_freshness_alert_sensor(
            targets.asset_keys,
            notifier,
            group_of=targets.group_of,
            labels=targets.labels,
            ui_base_url=UI,
            default_status=dg.DefaultSensorStatus.RUNNING,
        ),
        build_refresh_failure_sensor(
            notifier,
            ui_base_url=UI,
            group_of=targets.group_of,
            labels=targets.labels,
            default_status=dg.DefaultSensorStatus.RUNNING,
        ),
    ]
    # in-process steps: events are stamped with the (frozen) clock of this process
    extra = dg.Definitions(sensors=sensors, executor=dg.in_process_executor)
    return dg.Definitions.merge(assets, extra)


def settings_definitions() -> dg.Definitions:
    """The code location as Dagster loads it (environment → Settings → Definitions), with
    in-process steps."""
    return dg.Definitions.merge(
        build_from_settings(Settings.from_env()), dg.Definitions(executor=dg.in_process_executor)
    )


# --- a local webhook receiver -----------------------------------------------------------------
class Receiver:
    """Records every POST; answers 500 to the next ``fail_next`` requests."""

    def __init__(self) -> None:
        self.delivered: list[dict[str, Any]] = []
        self.attempts = 0
        self.fail_next = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    receiver.attempts += 1
                    failing = receiver.fail_next > 0
                    if failing:
                        receiver.fail_next -= 1
                    else:
                        receiver.delivered.append({"path": self.path, **json.loads(body)})
                self.send_response(500 if failing else 200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str = "alerts") -> str:
        return f"json://127.0.0.1:{self.port}/{path}"

    def take(self) -> list[dict[str, Any]]:
        with self._lock:
            got, self.delivered = self.delivered, []
        return got

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    launcher = {
        "module": "dagster._core.launcher.sync_in_memory_run_launcher",
        "class": "SyncInMemoryRunLauncher",
    }
    with dg.instance_for_test(overrides={"run_launcher": launcher}) as inst:
        yield inst


# --- driving the daemons ----------------------------------------------------------------------
class Harness:
    def __init__(self, instance: dg.DagsterInstance, ctx: WorkspaceProcessContext) -> None:
        self.instance = instance
        self.ctx = ctx
        self.freshness_daemon = FreshnessDaemon()
        self.log = logging.getLogger("mvo.test.sensor_daemon")

    def _location(self) -> InProcessCodeLocation:
        location = self.ctx.create_request_context().get_code_location(LOCATION)
        assert isinstance(location, InProcessCodeLocation)
        return location

    def evaluate_freshness(self) -> None:
        """One iteration of Dagster's own freshness daemon."""
        list(self.freshness_daemon.run_iteration(self.ctx))

    def tick_sensors(self) -> None:
        """One iteration of Dagster's own sensor daemon; no tick of a running sensor may fail
        (the definitions' own automation, such as the target-lag sensor, stays stopped)."""
        list(execute_sensor_iteration(self.ctx, self.log, None, None))
        repo = next(iter(self._location().get_repositories().values()))
        for sensor in repo.get_sensors():
            if sensor.default_status != dg.DefaultSensorStatus.RUNNING:
                continue
            ticks = self.instance.get_ticks(
                sensor.get_remote_origin_id(), sensor.selector_id, limit=1
            )
            assert ticks, sensor.name
            assert ticks[0].status != TickStatus.FAILURE, ticks[0].error

    def materialize(self, keys: Sequence[dg.AssetKey]) -> DagsterRun:
        """Launch a run from the workspace, as the UI's Materialize button does."""
        location = self._location()
        repo_name, repo = next(iter(location.get_repositories().items()))
        remote_job = repo.get_full_job(IMPLICIT_ASSET_JOB_NAME)
        job_def = location.get_reconstructable_job(repo_name, IMPLICIT_ASSET_JOB_NAME)
        run = self.instance.create_run_for_job(
            job_def=job_def.get_definition(),
            asset_selection=set(keys),
            remote_job_origin=remote_job.get_remote_origin(),
            job_code_origin=remote_job.get_python_origin(),
        )
        self.instance.launch_run(run.run_id, self.ctx.create_request_context())
        done = self.instance.get_run_by_id(run.run_id)
        assert done is not None
        return done

    def state(self, key: dg.AssetKey) -> str:
        record = self.instance.get_freshness_state_records([key]).get(key)
        assert record is not None
        return str(record.freshness_state.value)

    def _sensor_state(self, name: str) -> Any:
        repo = next(iter(self._location().get_repositories().values()))
        sensor = repo.get_sensor(name)
        return sensor, self.instance.get_instigator_state(
            sensor.get_remote_origin_id(), sensor.selector_id
        )

    def cursor(self, name: str) -> str:
        _, state = self._sensor_state(name)
        assert state is not None and state.instigator_data is not None
        return str(state.instigator_data.cursor)

    def set_cursor(self, name: str, cursor: str) -> None:
        """Set a sensor's cursor as the UI's "Set cursor" does: Dagster's GraphQL mutation."""
        context = self.ctx.create_request_context()
        repo_name = next(iter(self._location().get_repositories()))
        selector = {"repositoryLocationName": LOCATION, "repositoryName": repo_name}
        result = execute_dagster_graphql(
            context,
            SET_SENSOR_CURSOR,
            {"sensorSelector": {**selector, "sensorName": name}, "cursor": cursor},
        )
        assert result.data["setSensorCursor"]["__typename"] == "Sensor", result
        assert self.cursor(name) == cursor

    def last_tick_warnings(self, name: str) -> list[str]:
        """The warnings the sensor's latest tick logged (what the UI shows for that tick)."""
        sensor, _ = self._sensor_state(name)
        (tick,) = self.instance.get_ticks(
            sensor.get_remote_origin_id(), sensor.selector_id, limit=1
        )
        assert tick.log_key
        return [
            str(r["msg"])
            for r in get_instigation_log_records(self.instance, tick.log_key)
            if r.get("levelname") == "WARNING"
        ]


SET_SENSOR_CURSOR = """
mutation SetSensorCursor($sensorSelector: SensorSelector!, $cursor: String) {
  setSensorCursor(sensorSelector: $sensorSelector, cursor: $cursor) { __typename }
}
"""


@contextmanager
def harness(
    instance: dg.DagsterInstance, tmp_path: Path, db_url: str, alert_url: str
) -> Iterator[Harness]:
    with code_location(instance, tmp_path, f"alerting_definitions({db_url!r}, {alert_url!r})") as h:
        yield h


_locations = itertools.count()


@contextmanager
def code_location(instance: dg.DagsterInstance, tmp_path: Path, call: str) -> Iterator[Harness]:
    """A workspace whose code location is ``defs = <call>`` of a function of this module.

    Each call writes a new file: Dagster caches a loaded file's module by name and path, so
    reusing one would reuse the definitions it built before.
    """
    code = tmp_path / f"alerting_location_{next(_locations)}.py"
    code.write_text(
        f"from mv_orchestration_tests.lib import test_alerting\ndefs = test_alerting.{call}\n"
    )
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(
            executable_path=sys.executable,
            python_file=str(code),
            attribute="defs",
            working_directory=str(tmp_path),
        ),
        location_name=LOCATION,
    )
    with create_test_daemon_workspace_context(
        InProcessWorkspaceLoadTarget(origin), instance
    ) as ctx:
        yield Harness(instance, ctx)


@pytest.fixture
def shop(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    conn.execute(DDL)
    return conn


# --- end to end -------------------------------------------------------------------------------
def test_freshness_warn_fail_recover_alert_once_each(
    db_url: str,
    shop: psycopg.Connection[Any],
    instance: dg.DagsterInstance,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    t0 = datetime.now(UTC).replace(microsecond=0)

    def at(minutes: float) -> datetime:
        return t0 + timedelta(minutes=minutes)

    with harness(instance, tmp_path, db_url, receiver.url()) as h:
        with freeze_time(at(0)):
            h.evaluate_freshness()
            h.tick_sensors()
            assert h.state(SALES) == "UNKNOWN"
            assert h.materialize([SALES]).status == DagsterRunStatus.SUCCESS
        with freeze_time(at(1)):
            h.evaluate_freshness()
            assert h.state(SALES) == "PASS"
            h.tick_sensors()
            assert receiver.take() == []  # first PASS is not news

        # the refresh stops: past the warn window
        with freeze_time(at(11)):
            h.evaluate_freshness()
            assert h.state(SALES) == "WARN"
            h.tick_sensors()
        (warn,) = receiver.take()
        assert warn["path"] == "/alerts" and warn["type"] == "warning"
        assert warn["title"] == "[WARN] shop.mv_sales is getting stale"
        assert "freshness PASS → WARN" in warn["message"]
        assert "Last successful refresh: 11m 00s ago" in warn["message"]
        assert f"{UI}/assets/shop/mv_sales" in warn["message"]

        for minute in (12, 20, 29):  # still WARN: daemon and sensor keep ticking, no repeats
            with freeze_time(at(minute)):
                h.evaluate_freshness()
                h.tick_sensors()
        assert receiver.take() == []

        # past the fail window; the first delivery attempt fails and is retried next tick
        receiver.fail_next = 1
        attempts = receiver.attempts
        with freeze_time(at(31)):
            h.evaluate_freshness()
            assert h.state(SALES) == "FAIL"
            h.tick_sensors()
        assert receiver.take() == [] and receiver.attempts == attempts + 1
        with freeze_time(at(32)):
            h.evaluate_freshness()
            h.tick_sensors()
        (fail,) = receiver.take()
        assert fail["type"] == "failure"
        assert fail["title"] == "[FAIL] shop.mv_sales is stale: freshness policy failed"
        assert "freshness WARN → FAIL" in fail["message"]
        assert "Last successful refresh: 32m 00s ago" in fail["message"]

        with freeze_time(at(40)):
            h.evaluate_freshness()
            h.tick_sensors()
        assert receiver.take() == []

    # a restart of every daemon (new workspace, new daemon objects): the cursor survives
    with harness(instance, tmp_path, db_url, receiver.url()) as h:
        with freeze_time(at(45)):
            h.evaluate_freshness()
            h.tick_sensors()
        assert receiver.take() == []

        # a refresh brings it back
        with freeze_time(at(50)):
            assert h.materialize([SALES]).status == DagsterRunStatus.SUCCESS
        with freeze_time(at(51)):
            h.evaluate_freshness()
            assert h.state(SALES) == "PASS"
            h.tick_sensors()
        (recovered,) = receiver.take()
        assert recovered["type"] == "success"
        assert recovered["title"] == "[RECOVERED] shop.mv_sales is fresh again"
        assert "freshness FAIL → PASS" in recovered["message"]
        assert "Last successful refresh: 1m 00s ago" in recovered["message"]
        assert "It was stale for 40m 00s." in recovered["message"]  # WARN at 11, PASS at 51

        with freeze_time(at(53)):
            h.evaluate_freshness()
            h.tick_sensors()
        assert receiver.take() == []

    # shop.mv_ratio was never refreshed: UNKNOWN throughout, never alerted
    assert instance.get_freshness_state_records([RATIO])[RATIO].freshness_state.value == "UNKNOWN"


def test_failed_refresh_run_alerts_once_with_view_and_sqlstate(
    db_url: str,
    shop: psycopg.Connection[Any],
    instance: dg.DagsterInstance,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    t0 = datetime.now(UTC).replace(microsecond=0)
    shop.execute("INSERT INTO shop.divisors VALUES (0)")
    with harness(instance, tmp_path, db_url, receiver.url()) as h:
        with freeze_time(t0):
            h.tick_sensors()  # the run failure sensor starts watching from here
        with freeze_time(t0 + timedelta(minutes=1)):
            run = h.materialize([RATIO])
            assert run.status == DagsterRunStatus.FAILURE
        with freeze_time(t0 + timedelta(minutes=2)):
            h.tick_sensors()
        (alert,) = receiver.take()
        assert alert["type"] == "failure"
        assert alert["title"] == "[FAILED] refresh of shop.mv_ratio failed (SQLSTATE 22012)"
        body = alert["message"]
        assert "View(s): shop.mv_ratio" in body and "SQLSTATE: 22012" in body
        assert "Error: division by zero" in body
        assert f"Run: {run.run_id}" in body and f"{UI}/runs/{run.run_id}" in body

        for minute in (3, 4):
            with freeze_time(t0 + timedelta(minutes=minute)):
                h.tick_sensors()
        assert receiver.take() == []


def test_undelivered_failure_alert_is_retried_until_delivered_even_across_restarts(
    db_url: str,
    shop: psycopg.Connection[Any],
    instance: dg.DagsterInstance,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    t0 = datetime.now(UTC).replace(microsecond=0)
    shop.execute("INSERT INTO shop.divisors VALUES (0)")
    title = "[FAILED] refresh of shop.mv_ratio failed (SQLSTATE 22012)"
    with harness(instance, tmp_path, db_url, receiver.url()) as h:
        with freeze_time(t0):
            h.tick_sensors()
        with freeze_time(t0 + timedelta(minutes=1)):
            first = h.materialize([RATIO])
            assert first.status == DagsterRunStatus.FAILURE
        # the destination is down for two ticks: nothing arrives, the ticks do not fail
        receiver.fail_next = 2
        attempts = receiver.attempts
        for minute in (2, 3):
            with freeze_time(t0 + timedelta(minutes=minute)):
                h.tick_sensors()
        assert receiver.take() == [] and receiver.attempts == attempts + 2
        # a second failure while the first is still pending
        with freeze_time(t0 + timedelta(minutes=4)):
            second = h.materialize([RATIO])
            assert second.status == DagsterRunStatus.FAILURE

    # the daemon restarts (a new workspace over the same instance): both are still owed
    receiver.fail_next = 1  # the first of the two deliveries fails once more
    with harness(instance, tmp_path, db_url, receiver.url()) as h:
        with freeze_time(t0 + timedelta(minutes=5)):
            h.tick_sensors()
        (delivered,) = receiver.take()
        assert delivered["title"] == title and f"Run: {second.run_id}" in delivered["message"]
        with freeze_time(t0 + timedelta(minutes=6)):
            h.tick_sensors()
        (delivered,) = receiver.take()
        assert delivered["title"] == title and f"Run: {first.run_id}" in delivered["message"]
        for minute in (7, 8):
            with freeze_time(t0 + timedelta(minutes=minute)):
                h.tick_sensors()
        assert receiver.take() == []


def test_failed_cli_run_alerts_too(
    db_url: str,
    shop: psycopg.Connection[Any],
    instance: dg.DagsterInstance,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    """``mvo refresh`` executes its run in process (no code-location origin); a failure of
    one of the location's views still alerts."""
    t0 = datetime.now(UTC).replace(microsecond=0)
    shop.execute("INSERT INTO shop.divisors VALUES (0)")
    with harness(instance, tmp_path, db_url, receiver.url()) as h:
        with freeze_time(t0):
            h.tick_sensors()
        job = alerting_definitions(db_url, receiver.url()).resolve_implicit_global_asset_job_def()
        with freeze_time(t0 + timedelta(minutes=1)):
            result = job.execute_in_process(
                instance=instance, asset_selection=[RATIO], raise_on_error=False
            )
        assert not result.success
        with freeze_time(t0 + timedelta(minutes=2)):
            h.tick_sensors()
        (alert,) = receiver.take()
        assert alert["title"] == "[FAILED] refresh of shop.mv_ratio failed (SQLSTATE 22012)"
        assert f"Run: {result.run_id}" in alert["message"]


def test_lock_timeout_alert_names_the_lock_holder(
    db_url: str,
    shop: psycopg.Connection[Any],
    instance: dg.DagsterInstance,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    t0 = datetime.now(UTC).replace(microsecond=0)
    call = f"alerting_definitions({db_url!r}, {receiver.url()!r}, fast_locks=True)"
    with code_location(instance, tmp_path, call) as h:
        with freeze_time(t0):
            h.tick_sensors()
        # another session's plain refresh, left uncommitted, holds the MV exclusively
        with psycopg.connect(db_url, application_name="nightly_etl") as holder:
            holder.execute("REFRESH MATERIALIZED VIEW shop.mv_ratio")
            holder_pid = holder.info.backend_pid
            with freeze_time(t0 + timedelta(minutes=1)):
                run = h.materialize([RATIO])
            holder.rollback()
        assert run.status == DagsterRunStatus.FAILURE
        with freeze_time(t0 + timedelta(minutes=2)):
            h.tick_sensors()
    (alert,) = receiver.take()
    assert alert["title"] == "[FAILED] refresh of shop.mv_ratio failed (SQLSTATE 55P03)"
    holder_line = next(
        line for line in alert["message"].splitlines() if line.startswith(f"- pid {holder_pid} ")
    )
    assert "nightly_etl" in holder_line and "REFRESH MATERIALIZED VIEW shop.mv_ratio" in holder_line
    assert "Lock held by:" in alert["message"]


# --- unreadable cursors -----------------------------------------------------------------------
FRESHNESS_SENSOR = "mvo_freshness_alerts"
FAILURE_SENSOR = "mvo_refresh_failures"


def _reshaped(cursor: str, field: str) -> str:
    """The cursor with ``field`` turned into something of the wrong type."""
    data = json.loads(cursor)
    data[field] = [data[field]]
    return json.dumps(data)


def _other_version(cursor: str) -> str:
    data = json.loads(cursor)
    data["version"] = 99
    return json.dumps(data)


# How the cursor gets damaged, from the cursor the last tick wrote; and whether the damaged text
# still holds the cursor's delivered_through (then a pending alert survives too).
DAMAGE: dict[str, tuple[Any, bool]] = {
    "not JSON": (lambda c, field: "not a cursor {", False),
    "JSON of another shape": (lambda c, field: "[1, 2, 3]", False),
    "a field of the wrong type": (_reshaped, True),
    "another version": (lambda c, field: _other_version(c), True),
    "truncated": (lambda c, field: c[:-10], True),
}


def _unreadable_warnings(h: Harness, sensor: str) -> list[str]:
    return [w for w in h.last_tick_warnings(sensor) if "unreadable" in w]


@pytest.mark.parametrize("damage", DAMAGE)
def test_unreadable_freshness_cursor_is_rebuilt_without_realerting(
    damage: str,
    db_url: str,
    shop: psycopg.Connection[Any],
    instance: dg.DagsterInstance,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    t0 = datetime.now(UTC).replace(microsecond=0)

    def at(minutes: float) -> datetime:
        return t0 + timedelta(minutes=minutes)

    corrupt, keeps_delivered_through = DAMAGE[damage]
    sales_warn = "[WARN] shop.mv_sales is getting stale"
    ratio_recovered = "[RECOVERED] shop.mv_ratio is fresh again"
    with harness(instance, tmp_path, db_url, receiver.url()) as h:
        with freeze_time(at(0)):
            h.evaluate_freshness()
            h.tick_sensors()
            assert h.materialize([RATIO]).status == DagsterRunStatus.SUCCESS
        with freeze_time(at(5)):
            assert h.materialize([SALES]).status == DagsterRunStatus.SUCCESS
        with freeze_time(at(6)):
            h.evaluate_freshness()
            h.tick_sensors()
        with freeze_time(at(11)):
            h.evaluate_freshness()
        with freeze_time(at(11.5)):
            h.tick_sensors()
        assert [a["title"] for a in receiver.take()] == ["[WARN] shop.mv_ratio is getting stale"]
        # shop.mv_sales goes WARN too, and its alert is not delivered: it is pending
        with freeze_time(at(16)):
            h.evaluate_freshness()
            assert h.state(SALES) == "WARN"
        receiver.fail_next = 1
        attempts = receiver.attempts
        with freeze_time(at(16.5)):
            h.tick_sensors()
        assert receiver.take() == [] and receiver.attempts == attempts + 1

        # the cursor is damaged; then, after that last tick, shop.mv_ratio is refreshed
        h.set_cursor(FRESHNESS_SENSOR, corrupt(h.cursor(FRESHNESS_SENSOR), "assets"))
        with freeze_time(at(17)):
            assert h.materialize([RATIO]).status == DagsterRunStatus.SUCCESS
        with freeze_time(at(17.2)):
            h.evaluate_freshness()
            assert h.state(RATIO) == "PASS"
        with freeze_time(at(17.5)):
            h.tick_sensors()  # asserts that no tick failed
        delivered = {a["title"]: a["message"] for a in receiver.take()}
        # shop.mv_ratio's WARN is not alerted again; its recovery after the last tick is, with
        # the incident's start read back from the event log
        assert "freshness WARN → PASS" in delivered.pop(ratio_recovered)
        # (the text of the damaged cursor is never echoed)
        (warning,) = _unreadable_warnings(h, FRESHNESS_SENSOR)
        assert "rebuilt from the event log" in warning and "not a cursor" not in warning
        if keeps_delivered_through:
            # the pending alert is delivered
            assert "freshness PASS → WARN" in delivered.pop(sales_warn)
            assert "the last tick that delivered every alert" in warning
        else:
            # nothing to tell a pending alert by: what the last tick saw counts as notified
            assert "(the last tick)" in warning
        assert delivered == {}
        rebuilt = json.loads(h.cursor(FRESHNESS_SENSOR))
        assert rebuilt["version"] == 1 and set(rebuilt["assets"]) == {
            SALES.to_string(),
            RATIO.to_string(),
        }

        # the next ticks: no warning, nothing repeated
        for minute in (18, 19):
            with freeze_time(at(minute)):
                h.evaluate_freshness()
                h.tick_sensors()
            assert _unreadable_warnings(h, FRESHNESS_SENSOR) == []
        assert receiver.take() == []

        # shop.mv_sales recovers: the rebuilt cursor knows since when it was stale
        with freeze_time(at(20)):
            assert h.materialize([SALES]).status == DagsterRunStatus.SUCCESS
            h.evaluate_freshness()
            h.tick_sensors()
        (recovered,) = receiver.take()
        assert recovered["title"] == "[RECOVERED] shop.mv_sales is fresh again"
        assert "It was stale for 4m 00s." in recovered["message"]  # WARN at 16, PASS at 20


def test_freshness_cursor_damaged_before_any_tick_starts_afresh(
    db_url: str,
    shop: psycopg.Connection[Any],
    instance: dg.DagsterInstance,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    """Without an earlier tick there is nothing to rebuild from: stale views alert once, as on
    a first start, and the tick does not fail."""
    t0 = datetime.now(UTC).replace(microsecond=0)
    with harness(instance, tmp_path, db_url, receiver.url()) as h:
        with freeze_time(t0):
            assert h.materialize([SALES]).status == DagsterRunStatus.SUCCESS
        with freeze_time(t0 + timedelta(minutes=11)):
            h.evaluate_freshness()
        h.set_cursor(FRESHNESS_SENSOR, "not a cursor {")
        with freeze_time(t0 + timedelta(minutes=12)):
            h.tick_sensors()
        (warning,) = _unreadable_warnings(h, FRESHNESS_SENSOR)
        assert "no earlier tick" in warning
        assert [a["title"] for a in receiver.take()] == ["[WARN] shop.mv_sales is getting stale"]
        with freeze_time(t0 + timedelta(minutes=13)):
            h.tick_sensors()
        assert receiver.take() == [] and _unreadable_warnings(h, FRESHNESS_SENSOR) == []


@pytest.mark.parametrize("damage", DAMAGE)
def test_unreadable_failure_cursor_is_rebuilt_and_delivers_pending_alerts(
    damage: str,
    db_url: str,
    shop: psycopg.Connection[Any],
    instance: dg.DagsterInstance,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    t0 = datetime.now(UTC).replace(microsecond=0)

    def at(minutes: float) -> datetime:
        return t0 + timedelta(minutes=minutes)

    corrupt, keeps_delivered_through = DAMAGE[damage]
    shop.execute("INSERT INTO shop.divisors VALUES (0)")

    def failed_run() -> str:
        run = h.materialize([RATIO])
        assert run.status == DagsterRunStatus.FAILURE
        return run.run_id

    def alerted_runs() -> list[str]:
        return [
            next(line for line in a["message"].splitlines() if line.startswith("Run: ")).split()[1]
            for a in receiver.take()
        ]

    with harness(instance, tmp_path, db_url, receiver.url()) as h:
        with freeze_time(at(0)):
            h.tick_sensors()
        with freeze_time(at(1)):
            first = failed_run()
        with freeze_time(at(2)):
            h.tick_sensors()
        assert alerted_runs() == [first]
        # the second failure's alert is not delivered: it is pending
        with freeze_time(at(3)):
            second = failed_run()
        receiver.fail_next = 1
        with freeze_time(at(4)):
            h.tick_sensors()
        assert alerted_runs() == []
        assert json.loads(h.cursor(FAILURE_SENSOR))["pending"] == [second]

        # the cursor is damaged; a third run fails after that last tick
        h.set_cursor(FAILURE_SENSOR, corrupt(h.cursor(FAILURE_SENSOR), "pending"))
        with freeze_time(at(5)):
            third = failed_run()
        with freeze_time(at(6)):
            h.tick_sensors()  # asserts that no tick failed
        (warning,) = _unreadable_warnings(h, FAILURE_SENSOR)
        assert "rebuilt from the event log" in warning and "not a cursor" not in warning
        if keeps_delivered_through:
            assert alerted_runs() == [second, third]  # the first, delivered, is not repeated
            assert "after the last one known to be alerted" in warning
        else:
            # nothing to tell what was delivered: an hour back from the last tick, again
            assert alerted_runs() == [first, second, third]
            assert "1h 00m before the last tick" in warning
        assert json.loads(h.cursor(FAILURE_SENSOR))["pending"] == []

        for minute in (7, 8):
            with freeze_time(at(minute)):
                h.tick_sensors()
            assert _unreadable_warnings(h, FAILURE_SENSOR) == []
        assert alerted_runs() == []
        with freeze_time(at(9)):
            fourth = failed_run()
        with freeze_time(at(10)):
            h.tick_sensors()
        assert alerted_runs() == [fourth]


def test_canceled_run_raises_no_alert(
    db_url: str,
    shop: psycopg.Connection[Any],
    instance: dg.DagsterInstance,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    """An interrupted run ends CANCELED, not FAILURE: the failure sensor says nothing."""
    t0 = datetime.now(UTC).replace(microsecond=0)
    shop.execute("INSERT INTO shop.divisors VALUES (0)")
    with harness(instance, tmp_path, db_url, receiver.url()) as h:
        with freeze_time(t0):
            h.tick_sensors()
        with freeze_time(t0 + timedelta(minutes=1)):
            # a run of the failing view, launched as the UI does, canceled while it starts
            location = h._location()
            repo_name, repo = next(iter(location.get_repositories().items()))
            remote_job = repo.get_full_job(IMPLICIT_ASSET_JOB_NAME)
            job_def = location.get_reconstructable_job(repo_name, IMPLICIT_ASSET_JOB_NAME)
            run = instance.create_run_for_job(
                job_def=job_def.get_definition(),
                asset_selection={RATIO},
                remote_job_origin=remote_job.get_remote_origin(),
                job_code_origin=remote_job.get_python_origin(),
            )
            instance.report_run_canceling(run)
            instance.report_run_canceled(run)
        canceled = instance.get_run_by_id(run.run_id)
        assert canceled is not None and canceled.status == DagsterRunStatus.CANCELED
        attempts = receiver.attempts
        with freeze_time(t0 + timedelta(minutes=2)):
            h.tick_sensors()
        assert receiver.attempts == attempts and receiver.take() == []
        # the sensor was watching: a failure after it alerts
        with freeze_time(t0 + timedelta(minutes=3)):
            failed = h.materialize([RATIO])
            assert failed.status == DagsterRunStatus.FAILURE
        with freeze_time(t0 + timedelta(minutes=4)):
            h.tick_sensors()
        (alert,) = receiver.take()
        assert f"Run: {failed.run_id}" in alert["message"]


# --- routing by group: policy file + environment, through build_from_settings -----------------
FIN_SALES = K(["fin", "mv_sales"])
FIN_RATIO = K(["fin", "mv_ratio"])
OPS_EVENTS = K(["ops", "mv_events"])
OPS_RATIO = K(["ops", "mv_ratio"])

ROUTING_DDL = """
CREATE SCHEMA fin;
CREATE TABLE fin.orders (id serial PRIMARY KEY, region text NOT NULL, amount int NOT NULL);
INSERT INTO fin.orders (region, amount) VALUES ('eu', 10), ('us', 5);
CREATE MATERIALIZED VIEW fin.mv_sales AS
    SELECT region, sum(amount) AS total FROM fin.orders GROUP BY region;
CREATE UNIQUE INDEX ON fin.mv_sales (region);
CREATE TABLE fin.divisors (d int);
INSERT INTO fin.divisors VALUES (1);
CREATE MATERIALIZED VIEW fin.mv_ratio AS SELECT 100 / d AS r FROM fin.divisors;
CREATE SCHEMA ops;
CREATE TABLE ops.events (id serial PRIMARY KEY, kind text NOT NULL);
INSERT INTO ops.events (kind) VALUES ('a'), ('b');
CREATE MATERIALIZED VIEW ops.mv_events AS SELECT kind, count(*) AS n FROM ops.events GROUP BY kind;
CREATE UNIQUE INDEX ON ops.mv_events (kind);
CREATE TABLE ops.divisors (d int);
INSERT INTO ops.divisors VALUES (1);
CREATE MATERIALIZED VIEW ops.mv_ratio AS SELECT 100 / d AS r FROM ops.divisors;
"""

# Groups: fin (fin.*), oncall (ops.mv_events, moved there by the file), ops (ops.mv_ratio,
# no destinations of its own). fin.mv_ratio has no freshness policy: failures still route.
ROUTING_POLICIES = """
defaults:
  freshness: {warn: 10m, fail: 30m}
  alerts: ["DEFAULTS_URL"]
groups:
  fin:
    alerts: [{env: MVO_TEST_FIN_ALERTS}]
  oncall:
    alerts: [{env: MVO_TEST_ONCALL_ALERTS}]
views:
  fin.mv_ratio: {freshness: null}
  ops.mv_events: {group: oncall}
"""


@pytest.fixture
def routing_env(
    db_url: str,
    conn: psycopg.Connection[Any],
    receiver: Receiver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    """Two schemas and the environment of a deployment: global URLs, per-group variables."""
    conn.execute(ROUTING_DDL)
    policies = tmp_path / "policies.yaml"
    policies.write_text(ROUTING_POLICIES.replace("DEFAULTS_URL", receiver.url("defaults")))
    for name, value in {
        "DATABASE_URL": db_url,
        "MVO_SCHEMAS": "fin,ops",
        "MVO_STATE_DIR": str(tmp_path / "state"),
        "MVO_HISTORY_SCHEMA": "off",
        "MVO_POLICIES": str(policies),
        "MVO_ALERT_URLS": receiver.url("global"),
        "MVO_TEST_FIN_ALERTS": f"{receiver.url('fin1')}, {receiver.url('fin2')}",
        "MVO_TEST_ONCALL_ALERTS": receiver.url("oncall"),
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("MVO_AUTOMATION", "MVO_EXCLUDE_SCHEMAS", "MVO_DATABASE_ALIAS"):
        monkeypatch.delenv(name, raising=False)
    return policies


def _titles_by_path(delivered: list[dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for alert in delivered:
        out.setdefault(alert["path"], []).append(alert["title"])
    return {path: sorted(titles) for path, titles in out.items()}


def test_freshness_alerts_reach_global_and_own_group_destinations_only(
    routing_env: Path, instance: dg.DagsterInstance, receiver: Receiver, tmp_path: Path
) -> None:
    t0 = datetime.now(UTC).replace(microsecond=0)
    with code_location(instance, tmp_path, "settings_definitions()") as h:
        with freeze_time(t0):
            h.tick_sensors()
            run = h.materialize([FIN_SALES, OPS_EVENTS, OPS_RATIO])
            assert run.status == DagsterRunStatus.SUCCESS
        with freeze_time(t0 + timedelta(minutes=1)):
            h.evaluate_freshness()
            h.tick_sensors()
        assert receiver.take() == []
        with freeze_time(t0 + timedelta(minutes=11)):
            h.evaluate_freshness()
            assert {h.state(k) for k in (FIN_SALES, OPS_EVENTS, OPS_RATIO)} == {"WARN"}
            h.tick_sensors()
    sales = "[WARN] fin.mv_sales is getting stale"
    events = "[WARN] ops.mv_events is getting stale"
    ratio = "[WARN] ops.mv_ratio is getting stale"
    assert _titles_by_path(receiver.take()) == {
        "/global": sorted([sales, events, ratio]),  # MVO_ALERT_URLS: everything
        "/defaults": sorted([sales, events, ratio]),  # defaults.alerts: everything
        "/fin1": [sales],  # both URLs of the fin group's variable, fin's views only
        "/fin2": [sales],
        "/oncall": [events],  # the group ops.mv_events was moved to; ops has none
    }


def test_failure_alerts_route_by_the_failing_views_group(
    routing_env: Path,
    instance: dg.DagsterInstance,
    receiver: Receiver,
    tmp_path: Path,
    conn: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t0 = datetime.now(UTC).replace(microsecond=0)
    conn.execute("UPDATE fin.divisors SET d = 0; UPDATE ops.divisors SET d = 0")
    title = "[FAILED] refresh of {} failed (SQLSTATE 22012)"
    with code_location(instance, tmp_path, "settings_definitions()") as h:
        with freeze_time(t0):
            h.tick_sensors()
        with freeze_time(t0 + timedelta(minutes=1)):
            assert h.materialize([FIN_RATIO]).status == DagsterRunStatus.FAILURE
        with freeze_time(t0 + timedelta(minutes=2)):
            h.tick_sensors()
        # fin.mv_ratio has no freshness policy: routed by its group all the same
        assert _titles_by_path(receiver.take()) == {
            path: [title.format("fin.mv_ratio")]
            for path in ("/global", "/defaults", "/fin1", "/fin2")
        }

    # only per-group destinations: a failure in a group without any sends nothing and does
    # not fail the sensor's tick (the harness asserts that); fin's still reach fin's
    routing_env.write_text(
        "defaults: {freshness: {warn: 10m, fail: 30m}}\n"
        "groups: {fin: {alerts: [{env: MVO_TEST_FIN_ALERTS}]}}\n"
    )
    monkeypatch.delenv("MVO_ALERT_URLS")
    with code_location(instance, tmp_path, "settings_definitions()") as h:
        with freeze_time(t0 + timedelta(minutes=3)):
            h.tick_sensors()
        with freeze_time(t0 + timedelta(minutes=4)):
            assert h.materialize([OPS_RATIO]).status == DagsterRunStatus.FAILURE
        attempts = receiver.attempts
        with freeze_time(t0 + timedelta(minutes=5)):
            h.tick_sensors()
        assert receiver.attempts == attempts and receiver.take() == []
        with freeze_time(t0 + timedelta(minutes=6)):
            assert h.materialize([FIN_RATIO]).status == DagsterRunStatus.FAILURE
        with freeze_time(t0 + timedelta(minutes=7)):
            h.tick_sensors()
        assert _titles_by_path(receiver.take()) == {
            "/fin1": [title.format("fin.mv_ratio")],
            "/fin2": [title.format("fin.mv_ratio")],
        }


# --- pieces -----------------------------------------------------------------------------------
def test_notifier_routes_groups_in_addition_to_global(receiver: Receiver) -> None:
    notifier = Notifier(
        [receiver.url("all")], {"daily": [receiver.url("daily")], "ops": [receiver.url("ops")]}
    )
    assert notifier.send("t1", "b1", group="daily", severity="warning")
    assert sorted(p["path"] for p in receiver.take()) == ["/all", "/daily"]
    assert notifier.send("t2", "b2", group=None)
    assert [p["path"] for p in receiver.take()] == ["/all"]
    assert notifier.send("t3", "b3", group="unknown")
    assert [p["path"] for p in receiver.take()] == ["/all"]
    assert notifier.send("t4", "b4", group=["daily", "ops"])
    assert sorted(p["path"] for p in receiver.take()) == ["/all", "/daily", "/ops"]
    receiver.fail_next = 1
    assert not Notifier([receiver.url("x")]).send("t", "b")
    assert not Notifier([]).send("t", "b")


def test_notifier_rejects_bad_url_without_echoing_it(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ValueError, match="destination #2") as info:
        Notifier(["json://127.0.0.1/ok", "nosuchscheme://user:s3cret@host"])
    assert "s3cret" not in str(info.value)
    with caplog.at_level(logging.DEBUG), pytest.raises(ValueError) as info:
        Notifier([], {"fin": ["slack://T000/s3cretB/"]})
    assert str(info.value) == (
        "notification destination #1 of 'fin' is not a valid apprise URL (scheme 'slack')"
    )
    assert "s3cret" not in caplog.text  # apprise's own log quotes the URL: muted meanwhile


def test_transitions() -> None:
    assert transition(None, "PASS") is None
    assert transition("UNKNOWN", "PASS") is None
    assert transition("PASS", "WARN") == "warn"
    assert transition(None, "WARN") == "warn"
    assert transition("WARN", "FAIL") == "fail"
    assert transition("PASS", "FAIL") == "fail"
    assert transition("WARN", "PASS") == "recovered"
    assert transition("FAIL", "PASS") == "recovered"
    assert transition("FAIL", "FAIL") is None
    assert transition("FAIL", "UNKNOWN") is None


def test_messages() -> None:
    key = K(["shop", "my view"])
    assert asset_url(UI + "/", key) == f"{UI}/assets/shop/my%20view"
    assert format_duration(45) == "45s" and format_duration(3 * 3600 + 240) == "3h 04m"
    alert = freshness_alert("shop.v", key, "PASS", "WARN", last_success=None, now=0.0)
    assert "No successful refresh recorded." in alert.body and "/assets/" not in alert.body
    plain = run_failure_alert(
        job_name="j",
        run_id="r1",
        failures=[RefreshFailure(view=None, sqlstate=None, error=None, description="boom")],
    )
    assert plain.title == "[FAILED] run of j failed" and "Details: boom" in plain.body
    assert "/runs/" not in plain.body
