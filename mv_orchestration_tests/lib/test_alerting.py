"""Alerts end to end: real database, real Dagster instance, the real freshness and sensor daemons.

The code location is loaded in process (so dagster's ``freeze_time`` moves the clock for the
freshness daemon, the sensors and the runs alike); runs are launched from the workspace with a
synchronous in-memory run launcher, so they carry a code-location origin as UI-launched runs do.
Notifications go through apprise to a local HTTP receiver.
"""

from __future__ import annotations

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

from mv_orchestration.core.catalog import read_catalog
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
def alerting_definitions(db_url: str, alert_url: str) -> dg.Definitions:
    """MV assets from the live catalog, a freshness policy on each MV, and both alert sensors."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        snapshot = read_catalog(conn, ["shop"])
    target = DatabaseTarget(
        alias="default",
        resource=PostgresResource(dsn=db_url),
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
        """One iteration of Dagster's own sensor daemon; no sensor tick may fail."""
        list(execute_sensor_iteration(self.ctx, self.log, None, None))
        repo = next(iter(self._location().get_repositories().values()))
        for sensor in repo.get_sensors():
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


@contextmanager
def harness(
    instance: dg.DagsterInstance, tmp_path: Path, db_url: str, alert_url: str
) -> Iterator[Harness]:
    code = tmp_path / "alerting_location.py"
    code.write_text(
        "from mv_orchestration_tests.lib.test_alerting import alerting_definitions\n"
        f"defs = alerting_definitions({db_url!r}, {alert_url!r})\n"
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


def test_notifier_rejects_bad_url_without_echoing_it() -> None:
    with pytest.raises(ValueError, match="destination #2") as info:
        Notifier(["json://127.0.0.1/ok", "nosuchscheme://user:s3cret@host"])
    assert "s3cret" not in str(info.value)


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
