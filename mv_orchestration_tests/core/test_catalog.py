"""Catalog introspection against a real PostgreSQL server."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from mv_orchestration.core.catalog import (
    CatalogSnapshot,
    RelationRef,
    read_catalog,
)
from mv_orchestration.core.graph import LineageGraph
from mv_orchestration.errors import CatalogError

R = RelationRef

LINEAGE_DDL = """
CREATE SCHEMA app;
CREATE TABLE app.orders (id int PRIMARY KEY, customer_id int, amount numeric, placed date);
CREATE TABLE app.customers (id int PRIMARY KEY, region text);
CREATE TABLE app.events (id bigint, at date NOT NULL, kind text) PARTITION BY RANGE (at);
CREATE TABLE app.events_2026 PARTITION OF app.events
    FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE app.events_other PARTITION OF app.events DEFAULT;
INSERT INTO app.customers VALUES (1, 'eu'), (2, 'us');
INSERT INTO app.orders VALUES (1, 1, 10, '2026-01-02'), (2, 2, 5, '2026-01-03');
INSERT INTO app.events VALUES (1, '2026-03-01', 'click'), (2, '2025-03-01', 'view');
-- view over two tables; view over that view
CREATE VIEW app.v_orders AS
    SELECT o.*, c.region FROM app.orders o JOIN app.customers c ON c.id = o.customer_id;
CREATE VIEW app.v_big_orders AS SELECT * FROM app.v_orders WHERE amount > 1;
-- MV through two levels of views
CREATE MATERIALIZED VIEW app.mv_region_sales AS
    SELECT region, sum(amount) AS total FROM app.v_big_orders GROUP BY region;
CREATE UNIQUE INDEX ON app.mv_region_sales (region);
-- MV on MV
CREATE MATERIALIZED VIEW app.mv_total AS SELECT sum(total) AS total FROM app.mv_region_sales;
-- MV on a view over an MV: must still refresh after mv_region_sales
CREATE VIEW app.v_regions AS SELECT region FROM app.mv_region_sales;
CREATE MATERIALIZED VIEW app.mv_region_count AS SELECT count(*) AS n FROM app.v_regions;
-- MV reading the partitioned parent, and MV reading one partition directly
CREATE MATERIALIZED VIEW app.mv_events AS SELECT kind, count(*) AS n FROM app.events GROUP BY kind;
CREATE MATERIALIZED VIEW app.mv_events_2026 AS SELECT count(*) AS n FROM app.events_2026;
-- unpopulated MV
CREATE MATERIALIZED VIEW app.mv_later AS SELECT id FROM app.orders WITH NO DATA;
CREATE UNIQUE INDEX ON app.mv_later (id);
COMMENT ON MATERIALIZED VIEW app.mv_total IS 'Grand total for the sales dashboard';
"""


@pytest.fixture
def lineage(conn: psycopg.Connection[Any]) -> CatalogSnapshot:
    conn.execute(LINEAGE_DDL)
    return read_catalog(conn, ["app"])


def test_upstream_is_direct_and_walks_through_views(lineage: CatalogSnapshot) -> None:
    mv = lineage.matview(R("app", "mv_region_sales"))
    assert mv.upstream == (R("app", "v_big_orders"),)
    v_big = lineage.relation(R("app", "v_big_orders"))
    assert v_big is not None and v_big.kind == "view"
    assert v_big.upstream == (R("app", "v_orders"),)
    v_orders = lineage.relation(R("app", "v_orders"))
    assert v_orders is not None
    assert v_orders.upstream == (R("app", "customers"), R("app", "orders"))
    orders = lineage.relation(R("app", "orders"))
    assert orders is not None and orders.kind == "table" and orders.upstream == ()


def test_mv_on_mv_and_mv_through_view_over_mv(lineage: CatalogSnapshot) -> None:
    assert lineage.matview(R("app", "mv_total")).upstream == (R("app", "mv_region_sales"),)
    assert lineage.matview(R("app", "mv_region_count")).upstream == (R("app", "v_regions"),)
    graph = LineageGraph(lineage)
    order = graph.refresh_order()
    assert order.index(R("app", "mv_region_sales")) < order.index(R("app", "mv_total"))
    assert order.index(R("app", "mv_region_sales")) < order.index(R("app", "mv_region_count"))
    assert graph.downstream_matviews([R("app", "orders")]) == {
        R("app", "mv_region_sales"),
        R("app", "mv_total"),
        R("app", "mv_region_count"),
        R("app", "mv_later"),
    }
    assert graph.upstream_matviews([R("app", "mv_region_count")]) == {R("app", "mv_region_sales")}
    assert graph.source_tables(R("app", "mv_total")) == {R("app", "orders"), R("app", "customers")}


def test_partitions_are_attributed_to_their_root(lineage: CatalogSnapshot) -> None:
    assert lineage.matview(R("app", "mv_events")).upstream == (R("app", "events"),)
    assert lineage.matview(R("app", "mv_events_2026")).upstream == (R("app", "events"),)
    events = lineage.relation(R("app", "events"))
    assert events is not None and events.kind == "partitioned_table"
    assert lineage.relation(R("app", "events_2026")) is None


def test_unpopulated_and_method_eligibility(lineage: CatalogSnapshot) -> None:
    later = lineage.matview(R("app", "mv_later"))
    assert not later.populated
    assert later.has_usable_unique_index and not later.concurrent_allowed
    sales = lineage.matview(R("app", "mv_region_sales"))
    assert sales.populated and sales.concurrent_allowed
    assert sales.unique_indexes[0].columns == ("region",)
    assert not lineage.matview(R("app", "mv_total")).concurrent_allowed


def test_metadata_columns_owner_comment_definition_size(lineage: CatalogSnapshot) -> None:
    total = lineage.matview(R("app", "mv_total"))
    assert total.comment == "Grand total for the sales dashboard"
    assert total.owner == "postgres" or total.owner  # the test role owns it
    assert "mv_region_sales" in total.definition
    assert [(c.name, c.data_type) for c in total.columns] == [("total", "numeric")]
    assert total.size_bytes > 0
    orders = lineage.relation(R("app", "orders"))
    assert orders is not None
    assert [c.name for c in orders.columns] == ["id", "customer_id", "amount", "placed"]
    assert orders.columns[0].nullable is False


def test_json_round_trip(lineage: CatalogSnapshot) -> None:
    again = CatalogSnapshot.from_json(lineage.to_json())
    assert again == lineage
    with pytest.raises(CatalogError, match="version"):
        CatalogSnapshot.from_json(lineage.to_json().replace('"version": 1', '"version": 99'))


def test_schema_selection_and_exclusion(conn: psycopg.Connection[Any]) -> None:
    conn.execute(LINEAGE_DDL)
    conn.execute("CREATE SCHEMA other; CREATE MATERIALIZED VIEW other.mv AS SELECT 1 AS x")
    everything = read_catalog(conn)
    assert {mv.schema for mv in everything.matviews} == {"app", "other"}
    assert {mv.schema for mv in read_catalog(conn, exclude_schemas=["app"]).matviews} == {"other"}
    assert [mv.name for mv in read_catalog(conn, ["other"]).matviews] == ["mv"]
    assert read_catalog(conn, ["nope"]).matviews == ()


def test_unique_index_kinds(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        """
        CREATE TABLE t (a int, b text);
        INSERT INTO t VALUES (1, 'x'), (2, 'y');
        CREATE MATERIALIZED VIEW mv_expr AS SELECT a, b FROM t;
        CREATE UNIQUE INDEX mv_expr_lower ON mv_expr (lower(b));
        CREATE MATERIALIZED VIEW mv_partial AS SELECT a, b FROM t;
        CREATE UNIQUE INDEX mv_partial_a ON mv_partial (a) WHERE a > 0;
        CREATE MATERIALIZED VIEW mv_plain AS SELECT a, b FROM t;
        CREATE UNIQUE INDEX mv_plain_ab ON mv_plain (a, b);
        CREATE MATERIALIZED VIEW mv_none AS SELECT a, b FROM t;
        CREATE INDEX mv_none_a ON mv_none (a);
        """
    )
    snap = read_catalog(conn, ["public"])
    by_name = {mv.name: mv for mv in snap.matviews}
    expr = by_name["mv_expr"].unique_indexes[0]
    assert not expr.usable_for_concurrently and expr.reason == "indexes an expression"
    partial = by_name["mv_partial"].unique_indexes[0]
    assert not partial.usable_for_concurrently
    assert partial.reason == "is partial (has a WHERE clause)"
    assert by_name["mv_plain"].unique_indexes[0].columns == ("a", "b")
    assert by_name["mv_plain"].concurrent_allowed
    assert by_name["mv_none"].unique_indexes == ()
    assert not any(by_name[n].concurrent_allowed for n in ("mv_expr", "mv_partial", "mv_none"))


def test_awkward_identifiers(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        '''
        CREATE SCHEMA "Sales ""EU""";
        CREATE TABLE "Sales ""EU"""."Order Lines" ("Line Id" int PRIMARY KEY, "Qty" int);
        INSERT INTO "Sales ""EU"""."Order Lines" VALUES (1, 3), (2, 4);
        CREATE VIEW "Sales ""EU"""."View With Space" AS SELECT * FROM "Sales ""EU"""."Order Lines";
        CREATE MATERIALIZED VIEW "Sales ""EU"""."MV ""Quoted"" Name" AS
            SELECT "Line Id", "Qty" FROM "Sales ""EU"""."View With Space";
        CREATE UNIQUE INDEX ON "Sales ""EU"""."MV ""Quoted"" Name" ("Line Id");
        '''
    )
    snap = read_catalog(conn, ['Sales "EU"'])
    (mv,) = snap.matviews
    assert (mv.schema, mv.name) == ('Sales "EU"', 'MV "Quoted" Name')
    assert mv.qualname == '"Sales ""EU"""."MV ""Quoted"" Name"'
    assert mv.upstream == (R('Sales "EU"', "View With Space"),)
    assert [c.name for c in mv.columns] == ["Line Id", "Qty"]
    assert mv.concurrent_allowed


def test_foreign_table_source(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        """
        CREATE EXTENSION file_fdw;
        CREATE SERVER files FOREIGN DATA WRAPPER file_fdw;
        CREATE FOREIGN TABLE rates (currency text, rate numeric)
            SERVER files OPTIONS (filename '/nonexistent/rates.csv', format 'csv');
        CREATE MATERIALIZED VIEW mv_rates AS SELECT currency, max(rate) AS rate
            FROM rates GROUP BY currency WITH NO DATA;
        """
    )
    snap = read_catalog(conn, ["public"])
    assert snap.matview(R("public", "mv_rates")).upstream == (R("public", "rates"),)
    rates = snap.relation(R("public", "rates"))
    assert rates is not None and rates.kind == "foreign_table"


def test_refuses_connection_inside_transaction(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction(), pytest.raises(CatalogError, match="inside a transaction"):
        read_catalog(conn)


def test_refresh_order_rejects_unknown(lineage: CatalogSnapshot) -> None:
    with pytest.raises(CatalogError, match=r"app\.orders"):
        LineageGraph(lineage).refresh_order([R("app", "orders")])


def test_does_not_wait_for_an_mv_locked_by_a_blocking_refresh(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    """A plain REFRESH holds ACCESS EXCLUSIVE on the MV (and its indexes) until it commits;
    reading the catalog meanwhile must neither wait nor lose what it knew about the MV."""
    conn.execute(LINEAGE_DDL)
    conn.execute("CREATE UNIQUE INDEX mv_total_expr ON app.mv_total ((total * 2))")
    before = read_catalog(conn, ["app"])
    locked = R("app", "mv_total")
    with psycopg.connect(db_url) as holder:  # a transaction left open, as a long refresh is
        holder.execute("REFRESH MATERIALIZED VIEW app.mv_total")
        holder.execute("ALTER VIEW app.v_regions RENAME TO v_regions_tmp")
        holder.execute("ALTER VIEW app.v_regions_tmp RENAME TO v_regions")
        # without the lock-free path a catalog function would wait here; this bound makes
        # such a wait fail the test instead of hanging it
        conn.execute("SET statement_timeout = '20s'")
        with_previous = read_catalog(conn, ["app"], previous=before)
        without = read_catalog(conn, ["app"])
        holder.rollback()
    conn.execute("RESET statement_timeout")

    assert with_previous.matview(locked) == before.matview(locked)
    assert with_previous.relation(R("app", "v_regions")) == before.relation(R("app", "v_regions"))
    # the others are read live as usual
    assert [m for m in with_previous.matviews if m.ref != locked] == [
        m for m in before.matviews if m.ref != locked
    ]
    # without an earlier snapshot: everything but the SQL, the expression and the exact size
    bare = without.matview(locked)
    assert bare.definition == "" and bare.upstream == before.matview(locked).upstream
    assert [ix.columns for ix in bare.unique_indexes] == [("(expression)",)]
    assert bare.size_bytes >= 0
    assert without.relation(R("app", "v_regions")).definition is None
    # once the lock is gone, everything is live again
    assert (
        read_catalog(conn, ["app"]).matview(locked).definition == before.matview(locked).definition
    )
