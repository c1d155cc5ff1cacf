"""Asset checks and history through real runs (real PostgreSQL, real Dagster instance)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from mv_orchestration.core import history
from mv_orchestration.core.catalog import RelationRef, read_catalog
from mv_orchestration.errors import ConfigError
from mv_orchestration.lib.assets import build_refresh_assets
from mv_orchestration.lib.checks import CheckThresholds
from mv_orchestration.lib.resource import PostgresResource
from mv_orchestration.lib.translator import MvTranslator

DDL = """
CREATE SCHEMA shop;
CREATE TABLE shop.orders (id serial PRIMARY KEY, region text NOT NULL, amount int NOT NULL);
INSERT INTO shop.orders (region, amount) VALUES ('eu', 10), ('us', 5);
CREATE MATERIALIZED VIEW shop.mv_sales AS
    SELECT region, sum(amount) AS total FROM shop.orders GROUP BY region;
CREATE UNIQUE INDEX ON shop.mv_sales (region);
CREATE MATERIALIZED VIEW shop.mv_big AS SELECT region, total FROM shop.mv_sales WHERE total > 100;
CREATE MATERIALIZED VIEW shop.mv_after_big AS SELECT count(*) AS n FROM shop.mv_big;
CREATE TABLE shop.d (d int);
INSERT INTO shop.d VALUES (1);
CREATE MATERIALIZED VIEW shop.mv_ratio AS SELECT 1 / d AS x FROM shop.d;
"""
K = dg.AssetKey
R = RelationRef


@pytest.fixture
def shop(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    conn.execute(DDL)
    return conn


def run(
    db_url: str,
    conn: psycopg.Connection[Any],
    instance: dg.DagsterInstance,
    keys: list[str],
    thresholds: Mapping[RelationRef, CheckThresholds] | None = None,
    **resource_kw: Any,
) -> dg.ExecuteInProcessResult:
    assets = build_refresh_assets(
        read_catalog(conn, ["shop"]), MvTranslator(), name="refresh", thresholds=thresholds
    )
    defs = dg.Definitions(
        assets=assets, resources={"postgres": PostgresResource(dsn=db_url, **resource_kw)}
    )
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        instance=instance,
        asset_selection=[K(["shop", k]) for k in keys],
        raise_on_error=False,
    )


def checks_of(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str], dg.AssetCheckEvaluation]:
    out = {}
    for ev in result.all_events:
        if ev.event_type_value == "ASSET_CHECK_EVALUATION":
            data = ev.event_specific_data
            assert isinstance(data, dg.AssetCheckEvaluation)
            out[(data.asset_key.path[-1], data.check_name)] = data
    return out


def test_checks_pass_and_method_warns_with_a_fix(
    db_url: str, shop: psycopg.Connection[Any], instance: dg.DagsterInstance
) -> None:
    result = run(db_url, shop, instance, ["mv_sales", "mv_big", "mv_after_big"],
                 {R("shop", "mv_big"): CheckThresholds(allow_empty=True)})  # fmt: skip
    assert result.success
    checks = checks_of(result)
    for name in ("row_count", "refresh_duration", "refresh_method", "success_rate"):
        assert checks[("mv_sales", name)].passed, name
    method = checks[("mv_after_big", "refresh_method")]
    assert not method.passed and method.severity == dg.AssetCheckSeverity.WARN
    assert "it has no unique index" in (method.description or "")
    assert "CREATE UNIQUE INDEX ON shop.mv_after_big (n)" in (method.description or "")
    assert checks[("mv_sales", "success_rate")].metadata["attempts"].value == 1


def test_empty_view_is_an_error_and_blocking_stops_downstream(
    db_url: str, shop: psycopg.Connection[Any], instance: dg.DagsterInstance
) -> None:
    plain = run(db_url, shop, instance, ["mv_big", "mv_after_big"])
    row_count = checks_of(plain)[("mv_big", "row_count")]
    assert not row_count.passed and row_count.severity == dg.AssetCheckSeverity.ERROR
    assert row_count.description == "the view is empty"
    assert plain.success  # not blocking by default: downstream still refreshed
    assert ("mv_after_big", "row_count") in checks_of(plain)

    blocking = run(db_url, shop, instance, ["mv_big", "mv_after_big"],
                   {R("shop", "mv_big"): CheckThresholds(blocking=True)})  # fmt: skip
    assert not blocking.success
    mats = {m.asset_key for m in blocking.asset_materializations_for_node("refresh")}
    assert mats == {K(["shop", "mv_big"])}, "downstream MV not refreshed from bad data"


def test_row_bounds_change_and_duration_thresholds(
    db_url: str, shop: psycopg.Connection[Any], instance: dg.DagsterInstance
) -> None:
    shop.execute("INSERT INTO shop.orders (region, amount) VALUES ('apac', 1), ('latam', 1)")
    t = CheckThresholds(max_rows=3, max_change_pct=50, duration_warn_s=0)
    checks = checks_of(run(db_url, shop, instance, ["mv_sales"], {R("shop", "mv_sales"): t}))
    rc = checks[("mv_sales", "row_count")]
    assert not rc.passed and rc.severity == dg.AssetCheckSeverity.ERROR
    assert rc.description == "4 rows > max_rows 3"
    dur = checks[("mv_sales", "refresh_duration")]
    assert not dur.passed and dur.severity == dg.AssetCheckSeverity.WARN
    shop.execute("INSERT INTO shop.orders (region, amount) VALUES ('mea', 1)")
    t2 = CheckThresholds(max_change_pct=20)
    change = checks_of(run(db_url, shop, instance, ["mv_sales"], {R("shop", "mv_sales"): t2}))
    rc2 = change[("mv_sales", "row_count")]
    assert not rc2.passed and rc2.severity == dg.AssetCheckSeverity.WARN
    assert rc2.metadata["change_pct"].value == 25.0


def test_success_rate_severity_from_history(
    db_url: str, shop: psycopg.Connection[Any], instance: dg.DagsterInstance
) -> None:
    assert run(db_url, shop, instance, ["mv_ratio"]).success
    shop.execute("INSERT INTO shop.d VALUES (0)")
    failed = run(db_url, shop, instance, ["mv_ratio"])
    assert not failed.success
    shop.execute("DELETE FROM shop.d WHERE d = 0")
    # 2 of 3 succeeded: 66.7 % < 80 % → ERROR
    rate = checks_of(run(db_url, shop, instance, ["mv_ratio"]))[("mv_ratio", "success_rate")]
    assert not rate.passed and rate.severity == dg.AssetCheckSeverity.ERROR
    assert rate.metadata["attempts"].value == 3 and rate.metadata["failures"].value == 1
    lenient = CheckThresholds(success_rate_warn=70, success_rate_error=50)
    rate2 = checks_of(run(db_url, shop, instance, ["mv_ratio"], {R("shop", "mv_ratio"): lenient}))
    assert rate2[("mv_ratio", "success_rate")].passed  # 3 of 4 = 75 %


def test_history_rows_for_success_server_error_and_lock_timeout(
    db_url: str, shop: psycopg.Connection[Any], instance: dg.DagsterInstance
) -> None:
    ok = run(db_url, shop, instance, ["mv_sales"])
    shop.execute("INSERT INTO shop.d VALUES (0)")
    bad = run(db_url, shop, instance, ["mv_ratio"])
    with psycopg.connect(db_url, autocommit=True) as other, other.transaction():
        other.execute("SELECT * FROM shop.mv_big")  # a plain refresh of mv_big must wait
        locked = run(
            db_url,
            shop,
            instance,
            ["mv_big"],
            lock_timeout_s=0.1,
            lock_retries=0,
            transient_retries=0,
        )
    rows = history.read_history(shop, "mvo", since=__import__("datetime").timedelta(hours=1))
    by_view = {r["view_name"]: r for r in rows.to_dict("records")}
    assert by_view["mv_sales"]["status"] == "success"
    assert by_view["mv_sales"]["run_id"] == ok.run_id
    assert (
        by_view["mv_sales"]["rows_after"] == 2 and by_view["mv_sales"]["method"] == "concurrently"
    )
    assert by_view["mv_ratio"]["status"] == "failure" and by_view["mv_ratio"]["sqlstate"] == "22012"
    assert by_view["mv_ratio"]["run_id"] == bad.run_id
    assert by_view["mv_big"]["status"] == "failure" and by_view["mv_big"]["sqlstate"] == "55P03"
    assert by_view["mv_big"]["run_id"] == locked.run_id


def test_history_can_be_turned_off(
    db_url: str, shop: psycopg.Connection[Any], instance: dg.DagsterInstance
) -> None:
    assets = build_refresh_assets(
        read_catalog(shop, ["shop"]), MvTranslator(), name="refresh", history_schema=None
    )
    defs = dg.Definitions(assets=assets, resources={"postgres": PostgresResource(dsn=db_url)})
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=[K(["shop", "mv_sales"])]
    )
    assert result.success and ("mv_sales", "success_rate") not in checks_of(result)
    assert shop.execute("SELECT to_regnamespace('mvo')").fetchone() == (None,)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"nope": 1}, "checks.nope: unknown check setting"),
        ({"blocking": "yes"}, "checks.blocking: expected true or false, got 'yes'"),
        ({"min_rows": -1}, "checks.min_rows: expected a number >= 0, got -1"),
        ({"success_rate_error": 99}, "success_rate_error (99) must not be above"),
    ],
)
def test_threshold_validation(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=__import__("re").escape(message)):
        CheckThresholds.from_mapping(values)


def test_descriptions_and_tags_say_how_each_view_is_refreshed(
    shop: psycopg.Connection[Any],
) -> None:
    shop.execute(
        "CREATE MATERIALIZED VIEW shop.mv_new AS SELECT region FROM shop.orders WITH NO DATA;"
        "CREATE UNIQUE INDEX ON shop.mv_new (region)"
    )
    assets = build_refresh_assets(read_catalog(shop, ["shop"]), MvTranslator(), name="refresh")
    specs = {s.key: s for a in assets if isinstance(a, dg.AssetsDefinition) for s in a.specs}
    checks = {c.key: c for a in assets if isinstance(a, dg.AssetsDefinition) for c in a.check_specs}

    def method_check(view: str) -> str:
        key = dg.AssetCheckKey(K(["shop", view]), "refresh_method")
        return checks[key].description or ""

    # a unique index: CONCURRENTLY, and its check says it passes when it runs so
    assert specs[K(["shop", "mv_sales"])].tags["mvo/method"] == "concurrently"
    assert method_check("mv_sales").startswith("Passes when a refresh runs CONCURRENTLY")
    # no unique index: blocking, and its check says it will warn
    big = specs[K(["shop", "mv_big"])]
    assert big.tags["mvo/method"] == "blocking"
    assert "blocks readers" in (big.description or "")
    assert method_check("mv_big").startswith("Warns on each refresh that blocks readers")
    # not populated yet: the first refresh is plain, whatever its indexes
    new = specs[K(["shop", "mv_new"])]
    assert new.tags["mvo/method"] == "initial"
    assert "a plain first `REFRESH`" in (new.description or "")
    assert "then `REFRESH ... CONCURRENTLY`" in (new.description or "")


ALL_CHECKS = {"row_count", "refresh_duration", "refresh_method", "success_rate"}
ODD = 'odd "sch/ema"'
# Names Dagster refuses in op output names (spaces, quotes, /, $, {, non-ASCII), names it
# accepts only after changing . and - to _, 63-byte names (PostgreSQL's longest, in ASCII and
# in three-byte letters), and, in a plain schema, three names whose Dagster-derived check
# outputs would all be plain__a_b_row_count.
ODD_VIEWS = [
    *(
        (ODD, name)
        for name in [
            "with space",
            'dq"uote',
            "sq'uote",
            "v1.2",
            "a/b",
            "d$x",
            "c{x}",
            "da-sh",
            "ventes_é",
            "売上",
            "x" * 63,
            "売" * 21,
        ]
    ),
    ("plain", "a.b"),
    ("plain", "a_b"),
    ("plain", "a-b"),
]


def create_odd_views(conn: psycopg.Connection[Any]) -> None:
    """One MV per odd name over one table, and plain."a-b" over plain."a.b" (lineage between
    odd names, in the same multi-asset)."""
    src = sql.SQL("{}.{}").format(sql.Identifier(ODD), sql.Identifier("src $"))
    conn.execute(sql.SQL("CREATE SCHEMA {}; CREATE SCHEMA plain").format(sql.Identifier(ODD)))
    conn.execute(sql.SQL("CREATE TABLE {} (id int); INSERT INTO {} VALUES (1)").format(src, src))
    for schema, name in ODD_VIEWS:
        source = sql.SQL('plain."a.b"') if name == "a-b" else src
        conn.execute(
            sql.SQL("CREATE MATERIALIZED VIEW {}.{} AS SELECT id FROM {}").format(
                sql.Identifier(schema), sql.Identifier(name), source
            )
        )


@pytest.mark.parametrize("chunk_size", [100, 4])
def test_every_view_gets_its_checks_whatever_its_name(
    db_url: str, conn: psycopg.Connection[Any], instance: dg.DagsterInstance, chunk_size: int
) -> None:
    """All views in one multi-asset (a.b, a_b and a-b side by side), then in several."""
    create_odd_views(conn)
    snapshot = read_catalog(conn, [ODD, "plain"])
    assert sorted(mv.ref for mv in snapshot.matviews) == sorted(R(*v) for v in ODD_VIEWS)
    assets = build_refresh_assets(snapshot, MvTranslator(), name="refresh", chunk_size=chunk_size)
    assert len([a for a in assets if isinstance(a, dg.AssetsDefinition)]) == (
        1 if chunk_size == 100 else 4
    )
    defs = dg.Definitions(assets=assets, resources={"postgres": PostgresResource(dsn=db_url)})
    keys = [K(list(view)) for view in ODD_VIEWS]
    declared = defs.resolve_asset_graph().asset_check_keys
    for key in keys:
        assert {c.name for c in declared if c.asset_key == key} == ALL_CHECKS, key

    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=keys
    )
    assert result.success
    assert {m.asset_key for m in result.get_asset_materialization_events()} == set(keys)
    evaluations: dict[dg.AssetKey, dict[str, dg.AssetCheckEvaluation]] = {}
    for ev in result.get_asset_check_evaluations():
        evaluations.setdefault(ev.asset_key, {})[ev.check_name] = ev
    for key in keys:
        assert set(evaluations.get(key, {})) == ALL_CHECKS, key
        # each view's own figures: one row, one refresh so far
        assert evaluations[key]["row_count"].metadata["rows"].value == 1, key
        assert evaluations[key]["success_rate"].metadata["attempts"].value == 1, key
