"""The Dagster layer against a real PostgreSQL server and a real (temporary) Dagster instance."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from mv_orchestration.core.catalog import read_catalog
from mv_orchestration.demo.embedded import TemporaryServer
from mv_orchestration.errors import CatalogError
from mv_orchestration.lib.assets import build_refresh_assets
from mv_orchestration.lib.defs import DatabaseTarget, build_definitions, default_translator
from mv_orchestration.lib.resource import PostgresResource
from mv_orchestration.lib.snapshot import load_snapshot
from mv_orchestration.lib.translator import definition_hash

DDL = '''
CREATE SCHEMA shop;
CREATE TABLE shop.orders (id serial PRIMARY KEY, region text NOT NULL, amount int NOT NULL);
INSERT INTO shop.orders (region, amount) VALUES ('eu', 10), ('us', 5);
CREATE VIEW shop.v_orders AS SELECT * FROM shop.orders WHERE amount > 0;
CREATE MATERIALIZED VIEW shop.mv_sales AS
    SELECT region, sum(amount) AS total, count(*) AS n FROM shop.v_orders GROUP BY region;
CREATE UNIQUE INDEX ON shop.mv_sales (region);
COMMENT ON MATERIALIZED VIEW shop.mv_sales IS 'Sales per region';
CREATE MATERIALIZED VIEW shop.mv_grand AS SELECT sum(total) AS total FROM shop.mv_sales;
CREATE TABLE shop."Customer List" ("Id" int PRIMARY KEY);
CREATE MATERIALIZED VIEW shop."Customers ""Total""" AS SELECT count(*) AS n FROM shop."Customer List";
CREATE TABLE shop.divisors (d int);
INSERT INTO shop.divisors VALUES (1);
CREATE MATERIALIZED VIEW shop.mv_ratio AS SELECT 100 / d AS r FROM shop.divisors;
CREATE MATERIALIZED VIEW shop.mv_ratio_sum AS SELECT sum(r) AS s FROM shop.mv_ratio;
'''


@pytest.fixture
def shop(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    conn.execute(DDL)
    return conn


def make_defs(db_url: str, conn: psycopg.Connection[Any], **resource_kw: Any) -> dg.Definitions:
    target = DatabaseTarget(
        alias="default",
        resource=PostgresResource(dsn=db_url, **resource_kw),
        translator=default_translator("default", prefix_with_alias=False),
    )
    return build_definitions([(target, read_catalog(conn, ["shop"]))])


K = dg.AssetKey


def test_asset_graph_matches_catalog(db_url: str, shop: psycopg.Connection[Any]) -> None:
    defs = make_defs(db_url, shop)
    graph = defs.resolve_asset_graph()
    names = ("mv_sales", "mv_grand", "mv_ratio", "mv_ratio_sum", 'Customers "Total"')
    mvs = {K(["shop", n]) for n in names}
    assert graph.materializable_asset_keys == mvs
    assert graph.get(K(["shop", "mv_sales"])).parent_keys == {K(["shop", "v_orders"])}
    assert graph.get(K(["shop", "v_orders"])).parent_keys == {K(["shop", "orders"])}
    assert graph.get(K(["shop", "mv_grand"])).parent_keys == {K(["shop", "mv_sales"])}
    assert not graph.get(K(["shop", "orders"])).is_materializable
    odd = graph.get(K(["shop", 'Customers "Total"']))
    assert odd.parent_keys == {K(["shop", "Customer List"])}
    spec = graph.get(K(["shop", "mv_sales"]))
    assert spec.kinds == {"postgres", "view"}
    assert spec.group_name == "shop"
    assert spec.owners == ["team:postgres"] or spec.owners[0].startswith("team:")
    assert spec.description is not None and spec.description.startswith("Sales per region")
    assert "CONCURRENTLY" in spec.description and "```sql" in spec.description
    schema = spec.metadata["dagster/column_schema"]
    assert [c.name for c in schema.columns] == ["region", "total", "n"]
    blocking = graph.get(K(["shop", "mv_grand"]))
    assert blocking.description is not None and "blocks readers" in blocking.description


def test_code_version_follows_definition(db_url: str, shop: psycopg.Connection[Any]) -> None:
    before = make_defs(db_url, shop).resolve_asset_graph().get(K(["shop", "mv_grand"])).code_version
    shop.execute(
        "DROP MATERIALIZED VIEW shop.mv_grand;"
        "CREATE MATERIALIZED VIEW shop.mv_grand AS SELECT max(total) AS total FROM shop.mv_sales"
    )
    after = make_defs(db_url, shop).resolve_asset_graph().get(K(["shop", "mv_grand"])).code_version
    assert before != after
    assert definition_hash("SELECT  1\n") == definition_hash("SELECT 1")


def _materializations(result: dg.ExecuteInProcessResult) -> Sequence[dg.AssetMaterialization]:
    return result.asset_materializations_for_node("refresh_default")


def test_materialize_chain_in_dependency_order(
    db_url: str, shop: psycopg.Connection[Any], instance: dg.DagsterInstance
) -> None:
    shop.execute("INSERT INTO shop.orders (region, amount) VALUES ('apac', 7)")
    job = make_defs(db_url, shop).resolve_implicit_global_asset_job_def()
    # selection order deliberately reversed: the run must still refresh upstream first
    result = job.execute_in_process(
        instance=instance, asset_selection=[K(["shop", "mv_grand"]), K(["shop", "mv_sales"])]
    )
    assert result.success
    mats = _materializations(result)
    assert [m.asset_key for m in mats] == [K(["shop", "mv_sales"]), K(["shop", "mv_grand"])]
    sales = mats[0].metadata
    assert sales["method"].value == "concurrently"
    assert sales["dagster/row_count"].value == 3 and sales["rows_before"].value == 2
    assert sales["duration_s"].value > 0 and sales["size_bytes"].value > 0
    assert sales["lock_wait_s"].value == 0.0  # measured, and nothing was in the way
    assert "apac" in sales["preview"].value
    assert mats[1].metadata["method"].value == "blocking"
    assert shop.execute("SELECT total FROM shop.mv_grand").fetchone() == (22,)
    # the run is in the instance's history
    assert instance.get_latest_materialization_event(K(["shop", "mv_grand"])) is not None


def test_failed_history_write_keeps_the_refresh(
    db_url: str, shop: psycopg.Connection[Any], instance: dg.DagsterInstance
) -> None:
    """A history row that cannot be written is logged as an error; the refresh stands."""
    job = make_defs(db_url, shop).resolve_implicit_global_asset_job_def()
    sales_and_grand = [K(["shop", "mv_sales"]), K(["shop", "mv_grand"])]
    assert job.execute_in_process(instance=instance, asset_selection=sales_and_grand).success
    # from now on the history refuses rows for mv_sales only
    shop.execute(
        "ALTER TABLE mvo.refresh_history ADD CONSTRAINT no_sales"
        " CHECK (view_name <> 'mv_sales') NOT VALID"
    )
    shop.execute("INSERT INTO shop.orders (region, amount) VALUES ('apac', 7)")
    result = job.execute_in_process(instance=instance, asset_selection=sales_and_grand)
    assert result.success
    assert [m.asset_key for m in _materializations(result)] == sales_and_grand
    assert shop.execute("SELECT total FROM shop.mv_grand").fetchone() == (22,)
    errors = [
        e.user_message
        for e in instance.all_logs(result.run_id)
        if e.level >= 40 and "history row" in e.user_message
    ]
    assert len(errors) == 1 and "shop.mv_sales" in errors[0] and "SQLSTATE 23514" in errors[0]
    rows = shop.execute(
        "SELECT view_name, count(*) FROM mvo.refresh_history GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert rows == [("mv_grand", 2), ("mv_sales", 1)]


def test_history_that_cannot_be_created_never_stops_the_refresh(
    db_url: str, shop: psycopg.Connection[Any], instance: dg.DagsterInstance
) -> None:
    """A role that owns its views but may not create a schema: the views refresh, and the
    reason is exactly one line naming the schema, the error and the GRANT that fixes it."""
    role = f"owner_{shop.info.backend_pid}"
    shop.execute(sql.SQL("CREATE ROLE {r} LOGIN PASSWORD 'pw'").format(r=sql.Identifier(role)))
    try:
        shop.execute(sql.SQL("GRANT USAGE ON SCHEMA shop TO {r}").format(r=sql.Identifier(role)))
        shop.execute(
            sql.SQL("ALTER MATERIALIZED VIEW shop.mv_sales OWNER TO {r}").format(
                r=sql.Identifier(role)
            )
        )
        shop.execute(
            sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA shop TO {r}").format(
                r=sql.Identifier(role)
            )
        )
        url = psycopg.conninfo.make_conninfo(db_url, user=role, password="pw")
        job = make_defs(url, shop).resolve_implicit_global_asset_job_def()
        shop.execute("INSERT INTO shop.orders (region, amount) VALUES ('apac', 7)")
        result = job.execute_in_process(
            instance=instance, asset_selection=[K(["shop", "mv_sales"])]
        )
        assert result.success
        assert shop.execute("SELECT count(*) FROM shop.mv_sales").fetchone() == (3,)
        lines = [
            e.user_message
            for e in instance.all_logs(result.run_id)
            if e.dagster_event is None and "history" in (e.user_message or "")
        ]
        assert len(lines) == 1, lines
        assert 'schema "mvo" could not be created' in lines[0]
        assert "SQLSTATE 42501" in lines[0]
        assert "GRANT CREATE ON DATABASE" in lines[0] and role in lines[0]
        assert shop.execute("SELECT to_regnamespace('mvo')").fetchone() == (None,)
        # the success-rate check says why it has no figure (it is not silently missing)
        [rate] = [c for c in result.get_asset_check_evaluations() if c.check_name == "success_rate"]
        assert not rate.passed and "success rate unknown" in (rate.description or "")
    finally:
        shop.execute(
            sql.SQL("REASSIGN OWNED BY {r} TO CURRENT_USER; DROP OWNED BY {r}").format(
                r=sql.Identifier(role)
            )
        )
        shop.execute(sql.SQL("DROP ROLE {r}").format(r=sql.Identifier(role)))


def test_failure_skips_downstream_and_reports_sqlstate(
    db_url: str, shop: psycopg.Connection[Any], instance: dg.DagsterInstance
) -> None:
    shop.execute("INSERT INTO shop.divisors VALUES (0)")
    job = make_defs(db_url, shop).resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    done = {m.asset_key for m in _materializations(result)}
    assert done == {
        K(["shop", "mv_sales"]),
        K(["shop", "mv_grand"]),
        K(["shop", 'Customers "Total"']),
    }
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    info = failure.step_failure_data
    assert info.user_failure_data is not None
    meta = info.user_failure_data.metadata
    assert meta["sqlstate"].value == "22012"
    assert meta["view"].value == "shop.mv_ratio"
    assert "division by zero" in (info.user_failure_data.description or "")
    assert "skipped downstream: shop.mv_ratio_sum" in (info.user_failure_data.description or "")
    # a data error is not transient: no retry
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]


def test_lock_timeout_fails_run_with_holder(
    db_url: str, shop: psycopg.Connection[Any], instance: dg.DagsterInstance
) -> None:
    defs = make_defs(
        db_url,
        shop,
        lock_timeout_s=0.1,
        lock_retries=0,
        transient_retries=1,
        transient_retry_delay_s=0,
    )
    job = defs.resolve_implicit_global_asset_job_def()
    with (
        psycopg.connect(db_url, autocommit=True) as other,
        other.transaction(),
    ):
        other.execute("SELECT * FROM shop.mv_grand")  # plain refresh of mv_grand must wait
        holder = other.info.backend_pid
        result = job.execute_in_process(
            instance=instance, asset_selection=[K(["shop", "mv_grand"])], raise_on_error=False
        )
    assert not result.success
    # a lock timeout is transient: the step ran once more, then failed with the details
    retried = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retried) == 1
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert failure.step_failure_data.user_failure_data is not None
    meta = failure.step_failure_data.user_failure_data.metadata
    assert meta["sqlstate"].value == "55P03"
    assert meta["blocking_pids"].value == str(holder)
    # the whole 100 ms lock_timeout was spent waiting for the lock, measured by the monitor
    assert 0.09 <= meta["lock_wait_s"].value < 1


def test_lost_connection_is_retried_and_every_attempt_recorded(
    db_url: str, shop: psycopg.Connection[Any], instance: dg.DagsterInstance
) -> None:
    shop.execute("CREATE MATERIALIZED VIEW shop.mv_slow AS SELECT 1 AS x FROM pg_sleep(0.5)")
    defs = make_defs(db_url, shop, transient_retries=2, transient_retry_delay_s=0)
    job = defs.resolve_implicit_global_asset_job_def()
    killed: list[int] = []

    def kill_first_refresh() -> None:
        """Terminate the backend running the first REFRESH of mv_slow (a server restart)."""
        with psycopg.connect(db_url, autocommit=True) as killer:
            give_up = time.monotonic() + 60
            while not killed and time.monotonic() < give_up:
                row = killer.execute(
                    "SELECT pid FROM pg_stat_activity WHERE state = 'active'"
                    " AND query LIKE 'REFRESH MATERIALIZED VIEW%%mv_slow%%'"
                ).fetchone()
                if row is not None:
                    killer.execute("SELECT pg_terminate_backend(%s)", [row[0]])
                    killed.append(int(row[0]))

    thread = threading.Thread(target=kill_first_refresh)
    thread.start()
    result = job.execute_in_process(
        instance=instance, asset_selection=[K(["shop", "mv_slow"])], raise_on_error=False
    )
    thread.join()
    assert killed, "the refresh was never seen running"
    assert result.success
    retried = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retried) == 1
    assert [m.asset_key for m in _materializations(result)] == [K(["shop", "mv_slow"])]
    # both attempts are in the history: the failed one written on a fresh connection
    rows = shop.execute(
        "SELECT status, sqlstate FROM mvo.refresh_history WHERE view_name = 'mv_slow'"
        " ORDER BY started_at"
    ).fetchall()
    assert rows == [("failure", "57P01"), ("success", None)]


def test_chunks_of_views_refresh_as_one_run(
    db_url: str, shop: psycopg.Connection[Any], instance: dg.DagsterInstance
) -> None:
    """Several multi-assets per database (chunk_size 2): one run refreshes them all, and a
    failing chunk does not stop the others."""
    snapshot = read_catalog(shop, ["shop"])
    assets = build_refresh_assets(
        snapshot,
        default_translator("default", prefix_with_alias=False),
        name="refresh_default",
        chunk_size=2,
    )
    refreshers = [a for a in assets if isinstance(a, dg.AssetsDefinition)]
    assert len(refreshers) == 3
    assert sorted(len(a.keys) for a in refreshers) == [1, 2, 2]
    defs = dg.Definitions(
        assets=assets,
        resources={"postgres": PostgresResource(dsn=db_url)},
        executor=dg.in_process_executor,
    )
    shop.execute("INSERT INTO shop.divisors VALUES (0)")  # mv_ratio fails
    job = defs.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    done = {
        e.asset_key for e in result.get_asset_materialization_events() if e.asset_key is not None
    }
    assert done == {
        K(["shop", "mv_sales"]),
        K(["shop", "mv_grand"]),
        K(["shop", 'Customers "Total"']),
    }


def test_snapshot_cache_when_database_is_down(tmp_path: Path) -> None:
    # a server of its own, so that it can really go away
    with TemporaryServer() as server:
        url = server.url
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(DDL)
        live = load_snapshot(url, alias="shop", schemas=["shop"], cache_dir=tmp_path)
    # the server is gone: the same database's last catalog is served from the cache
    cached = load_snapshot(url, alias="shop", schemas=["shop"], cache_dir=tmp_path)
    assert cached == live and cached.matviews
    # ... but never for another database, another schema selection or another alias
    for other_url, schemas, alias in [
        ("postgresql://nobody@127.0.0.1:1/none", ["shop"], "shop"),
        (url, ["public"], "shop"),
        (url, ["shop"], "other"),
    ]:
        with pytest.raises(CatalogError, match="cannot read the catalog of database"):
            load_snapshot(other_url, alias=alias, schemas=schemas, cache_dir=tmp_path)
    # the cache file names no secret
    assert all(server.password not in p.read_text() for p in tmp_path.iterdir())
