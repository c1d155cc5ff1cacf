"""The Dagster component, loaded from a defs folder the way a ``dg`` project loads it
(Dagster's public component sandbox), against real PostgreSQL databases."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dagster as dg
import psycopg
import pytest

# how Dagster tells a run worker's load from a code server's (see definitions.py)
from dagster._core.definitions.definitions_load_context import (
    DefinitionsLoadContext,
    DefinitionsLoadType,
)
from dagster._utils.test.definitions import scoped_reconstruction_metadata
from dagster.components.testing import DefsFolderSandbox, create_defs_folder_sandbox

from mv_orchestration.definitions import defs as stand_alone_defs
from mv_orchestration.demo.embedded import TemporaryServer
from mv_orchestration.lib.component import DatabaseUrlError, PostgresMaterializedViews
from mv_orchestration_tests.conftest import PgServer

DDL = """
CREATE SCHEMA shop;
CREATE TABLE shop.orders (id serial PRIMARY KEY, region text NOT NULL, amount int NOT NULL);
INSERT INTO shop.orders (region, amount) VALUES ('eu', 10), ('us', 5);
CREATE MATERIALIZED VIEW shop.mv_sales AS
    SELECT region, sum(amount) AS total FROM shop.orders GROUP BY region;
CREATE UNIQUE INDEX ON shop.mv_sales (region);
CREATE MATERIALIZED VIEW shop.mv_grand AS SELECT sum(total) AS total FROM shop.mv_sales;
"""
K = dg.AssetKey
CLOSED = "postgresql://nobody@127.0.0.1:1/none"  # nothing listens on port 1


@pytest.fixture
def second_db(pg_server: PgServer) -> Iterator[str]:
    name = f"mvo_second_{id(pg_server) % 10_000}"
    url = pg_server.create_database(name)
    try:
        yield url
    finally:
        pg_server.drop_database(name)


def _shop(url: str, extra: str = "") -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(DDL + extra)


def _instance(sandbox: DefsFolderSandbox, name: str, env: str, **attributes: Any) -> Path:
    return sandbox.scaffold_component(
        PostgresMaterializedViews,
        defs_path=name,
        defs_yaml_contents={
            "type": "mv_orchestration.PostgresMaterializedViews",
            "attributes": {"database_url": f"{{{{ env.{env} }}}}", **attributes},
        },
    )


def _refresh_state(sandbox: DefsFolderSandbox) -> None:
    """What ``dg utils refresh-defs-state`` does, per component."""
    with sandbox.build_component_tree() as tree:
        for component in tree.get_all_components(of_type=PostgresMaterializedViews):
            asyncio.run(component.refresh_state(sandbox.project_root))


@contextmanager
def _loading_as(load_type: DefinitionsLoadType) -> Iterator[DefinitionsLoadContext]:
    with DefinitionsLoadContext.scoped(DefinitionsLoadContext(load_type=load_type)) as context:
        yield context


def _keys(defs: dg.Definitions) -> set[tuple[str, ...]]:
    return {tuple(k.path) for k in defs.resolve_asset_graph().materializable_asset_keys}


@pytest.fixture
def sandbox() -> Iterator[DefsFolderSandbox]:
    with create_defs_folder_sandbox() as box:
        yield box


def test_two_databases_each_with_their_own_names_and_state(
    sandbox: DefsFolderSandbox,
    db_url: str,
    second_db: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _shop(db_url)
    _shop(second_db, "CREATE MATERIALIZED VIEW shop.mv_only_here AS SELECT 1 AS one;")
    monkeypatch.setenv("APP_DB_URL", db_url)
    monkeypatch.setenv("WAREHOUSE_URL", second_db)
    monkeypatch.delenv("DAGSTER_IS_DEV_CLI", raising=False)
    monkeypatch.setenv("MVO_TEST_WH_ALERTS", "json://127.0.0.1:9/warehouse")
    hourly = {"defaults": {"schedules": [{"cron": "0 * * * *", "timezone": "UTC"}]}}
    _instance(sandbox, "app_db", "APP_DB_URL", alerts=["json://127.0.0.1:9/app"], policies=hourly)
    _instance(
        sandbox,
        "warehouse",
        "WAREHOUSE_URL",
        history={"schema": "wh_history"},
        alerts=[{"env": "MVO_TEST_WH_ALERTS"}],
    )

    # no state yet: no assets, and a line saying how to read it
    with caplog.at_level(logging.WARNING, "mv_orchestration"), sandbox.build_all_defs() as defs:
        assert _keys(defs) == set()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("dg utils refresh-defs-state" in line for line in lines)

    _refresh_state(sandbox)
    with sandbox.build_all_defs() as defs:
        dg.Definitions.validate_loadable(defs)
        assert _keys(defs) == {
            ("app_db", "shop", "mv_sales"),
            ("app_db", "shop", "mv_grand"),
            ("warehouse", "shop", "mv_sales"),
            ("warehouse", "shop", "mv_grand"),
            ("warehouse", "shop", "mv_only_here"),
        }
        resources = defs.resources or {}
        assert set(resources) == {"postgres_app_db", "postgres_warehouse"}
        # the URL stays a variable: the UI shows its name only
        assert [r.dsn for r in resources.values()] == [
            dg.EnvVar("APP_DB_URL"),
            dg.EnvVar("WAREHOUSE_URL"),
        ]
        graph = defs.resolve_asset_graph()
        pools = {frozenset(n.pools or ()) for n in graph.asset_nodes if n.is_materializable}
        assert pools == {frozenset({"mvo_app_db"}), frozenset({"mvo_warehouse"})}
        jobs = {j.name for j in defs.resolve_all_job_defs()}
        assert {"mvo_history_retention_app_db", "mvo_history_retention_warehouse"} <= jobs
        purge = defs.resolve_job_def("mvo_history_retention_warehouse")
        assert "wh_history" in (purge.description or "")
        sensors = {s.name for s in defs.sensors or []}
        # the inline policies: app_db's views hourly, with a schedule of its own name
        (hourly_schedule,) = [s for s in defs.schedules or [] if "retention" not in s.name]
        assert hourly_schedule.name.startswith("mvo_app_db_")
        # alerts of their own; warehouse, without policies, has every view on the default
        # target lag, and freshness policies (so freshness alerts) that follow it; app_db's
        # hourly schedule leaves its views without a target or freshness policy
        assert sensors == {
            "mvo_app_db_refresh_failures",
            "mvo_warehouse_refresh_failures",
            "mvo_warehouse_freshness_alerts",
            "mvo_warehouse_target_lag",
        }
        # automation runs by default: nothing to switch on in the UI
        assert {s.default_status for s in defs.sensors or []} == {dg.DefaultSensorStatus.RUNNING}
        assert hourly_schedule.default_status == dg.DefaultScheduleStatus.RUNNING


def test_a_run_worker_reads_no_catalog(
    sandbox: DefsFolderSandbox,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _shop(db_url)
    monkeypatch.setenv("APP_DB_URL", db_url)
    _instance(sandbox, "app_db", "APP_DB_URL")
    _refresh_state(sandbox)
    # the database is now out of reach, and loads refresh the state as `dagster dev` does
    monkeypatch.setenv("APP_DB_URL", CLOSED)
    monkeypatch.setenv("DAGSTER_IS_DEV_CLI", "1")
    expected = {("app_db", "shop", "mv_sales"), ("app_db", "shop", "mv_grand")}
    with caplog.at_level(logging.WARNING, "mv_orchestration"):
        with _loading_as(DefinitionsLoadType.RECONSTRUCTION), sandbox.build_all_defs() as defs:
            assert _keys(defs) == expected
        assert caplog.records == []  # no read was tried
        # the control: a code server's load tries, fails, and keeps the last state
        with _loading_as(DefinitionsLoadType.INITIALIZATION), sandbox.build_all_defs() as defs:
            assert _keys(defs) == expected
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("cannot read the catalog of database 'app_db': ")
    assert line.endswith(
        "showing the last state read (refresh it with: dg utils refresh-defs-state)"
    )


def test_the_stand_alone_run_worker_reads_no_catalog(
    pg_server: PgServer, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _shop(db_url)
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("MVO_STATE_DIR", str(tmp_path / "state"))
    for name in ("MVO_SCHEMAS", "MVO_EXCLUDE_SCHEMAS", "MVO_POLICIES", "MVO_HISTORY_SCHEMA"):
        monkeypatch.delenv(name, raising=False)
    with _loading_as(DefinitionsLoadType.INITIALIZATION) as loading:
        defs = stand_alone_defs()
        passed = dict(loading.get_pending_reconstruction_metadata())
        (key,) = passed
        assert key.startswith("mv_orchestration/catalog-")
        # no database to read and no stored catalog: only what the code server passed along
        stored = tmp_path / "state" / "catalog"
        assert [p.stem for p in stored.iterdir()] == [key.partition("/")[2]]
        shutil.rmtree(stored)
        pg_server.drop_database(urlsplit(db_url).path[1:])
        with scoped_reconstruction_metadata(passed):
            rebuilt = stand_alone_defs()
    assert _keys(rebuilt) == _keys(defs) == {("shop", "mv_sales"), ("shop", "mv_grand")}


def test_database_url_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    def url(text: str) -> str:
        component = PostgresMaterializedViews.resolve_from_yaml(f"database_url: {text}")
        assert isinstance(component, PostgresMaterializedViews)
        return component.database_url

    assert url('"{{ env.APP_DB_URL }}"') == dg.EnvVar("APP_DB_URL")
    assert isinstance(url('"{{ env.APP_DB_URL }}"'), dg.EnvVar)
    assert isinstance(url("\"{{ env('APP_DB_URL') }}\""), dg.EnvVar)
    assert url("postgresql://app@db.internal:5432/app") == "postgresql://app@db.internal:5432/app"
    monkeypatch.setenv("MVO_TEST_HOST", "db.internal")
    assert (
        url('"postgresql://app@{{ env.MVO_TEST_HOST }}/app"') == "postgresql://app@db.internal/app"
    )
    for literal in ("postgresql://app:s3cret@db/app", "'host=db password=s3cret'"):
        with pytest.raises(DatabaseUrlError) as info:
            url(literal)
        assert str(info.value) == (
            "database_url holds a password, which the Dagster UI would show: put the URL in "
            'an environment variable and write database_url: "{{ env.NAME }}"'
        )
    monkeypatch.setenv("MVO_TEST_SECRET", "s3cret")
    with pytest.raises(DatabaseUrlError, match="holds a password") as info:
        url('"postgresql://app:{{ env.MVO_TEST_SECRET }}@db/app"')
    with pytest.raises(DatabaseUrlError) as info:
        url("postgresql//app:s3cret@db/app")
    assert "s3cret" not in str(info.value) and len(str(info.value).splitlines()) == 1


def test_an_unreachable_database_leaves_the_other_refreshable(
    sandbox: DefsFolderSandbox,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    instance: dg.DagsterInstance,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _shop(db_url)
    monkeypatch.setenv("APP_DB_URL", db_url)
    _instance(sandbox, "app_db", "APP_DB_URL")
    with TemporaryServer() as other:  # a server of its own, so that it can really go away
        _shop(other.url)
        monkeypatch.setenv("OTHER_URL", other.url)
        _instance(sandbox, "other", "OTHER_URL", refresh={"retries": 0})
        _refresh_state(sandbox)
    monkeypatch.setenv("DAGSTER_IS_DEV_CLI", "1")  # loads refresh the state, as dagster dev's do
    with (
        caplog.at_level(logging.WARNING, "mv_orchestration"),
        _loading_as(DefinitionsLoadType.INITIALIZATION),
        sandbox.build_all_defs() as defs,
    ):
        keys = _keys(defs)
        # the other database still shows its last known graph
        assert ("other", "shop", "mv_grand") in keys and ("app_db", "shop", "mv_grand") in keys
        job = defs.resolve_implicit_global_asset_job_def()
        mine = [K(["app_db", "shop", "mv_sales"]), K(["app_db", "shop", "mv_grand"])]
        ok = job.execute_in_process(instance=instance, asset_selection=mine)
        assert ok.success and len(ok.get_asset_materialization_events()) == 2
        failed = job.execute_in_process(
            instance=instance,
            asset_selection=[K(["other", "shop", "mv_sales"])],
            raise_on_error=False,
        )
        assert not failed.success
    (line,) = [r.getMessage() for r in caplog.records if "cannot read" in r.getMessage()]
    assert line.startswith("cannot read the catalog of database 'other': ")


def test_a_view_dropped_after_the_state_was_read(
    sandbox: DefsFolderSandbox,
    db_url: str,
    conn: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
    instance: dg.DagsterInstance,
) -> None:
    conn.execute(DDL)
    monkeypatch.setenv("APP_DB_URL", db_url)
    monkeypatch.delenv("DAGSTER_IS_DEV_CLI", raising=False)
    _instance(sandbox, "app_db", "APP_DB_URL", refresh={"retries": 0})
    _refresh_state(sandbox)
    conn.execute("DROP MATERIALIZED VIEW shop.mv_grand")
    with sandbox.build_all_defs() as defs:
        job = defs.resolve_implicit_global_asset_job_def()
        result = job.execute_in_process(
            instance=instance,
            asset_selection=[K(["app_db", "shop", "mv_grand"])],
            raise_on_error=False,
        )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    data = failure.step_failure_data.user_failure_data
    assert data is not None
    # one line naming the view (the words come from core/refresh.py)
    assert data.description is not None and len(data.description.splitlines()) == 1
    assert data.description.startswith("materialized view shop.mv_grand does not exist")
