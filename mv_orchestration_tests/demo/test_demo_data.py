"""The demo database: schemas, catalog features, data volumes, live traffic, determinism."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import psycopg
import pytest
from psycopg import sql

from mv_orchestration.demo import data
from mv_orchestration_tests.conftest import PgServer

SCALE = 0.05

EXPECTED_MVS: dict[str, set[str]] = {
    "school": {
        "mv_attendance_daily",
        "mv_grade_summary",
        "mv_fee_collection",
        "mv_school_overview",
    },
    "llm_usage": {
        "mv_daily_metrics",
        "mv_provider_performance",
        "mv_model_costs",
        "mv_model_usage",
    },
    "mes": {"mv_wip_status_dashboard", "mv_process_wip_queue"},
    "marketing": {
        "daily_aggregations",
        "cohort_aggregations",
        "campaign_aggregations",
        "weekly_aggregations",
    },
    "saas": {"platform_metrics"},
}

# Direct reads of each MV (pg_rewrite/pg_depend), with the upstream's relkind.
LINEAGE_SQL = """
SELECT DISTINCT vn.nspname || '.' || v.relname, rn.nspname || '.' || ref.relname,
       ref.relkind::text
FROM pg_class v
JOIN pg_namespace vn ON vn.oid = v.relnamespace
JOIN pg_rewrite rw ON rw.ev_class = v.oid
JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = rw.oid
                AND d.refclassid = 'pg_class'::regclass
JOIN pg_class ref ON ref.oid = d.refobjid AND ref.oid <> v.oid
JOIN pg_namespace rn ON rn.oid = ref.relnamespace
WHERE v.relkind = 'm' AND vn.nspname = ANY(%s)
"""

# MVs with a unique index usable by REFRESH ... CONCURRENTLY (plain columns, no predicate).
CONCURRENT_SQL = """
SELECT n.nspname || '.' || c.relname
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'm' AND n.nspname = ANY(%s)
  AND EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisunique
              AND i.indexprs IS NULL AND i.indpred IS NULL)
"""


@pytest.fixture(scope="module")
def demo(pg_server: PgServer) -> Iterator[tuple[str, dict[str, int]]]:
    """URL of a database holding the whole demo at a small scale, and the load's counts."""
    name = f"mvo_demo_{uuid.uuid4().hex[:8]}"
    url = pg_server.create_database(name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            counts = data.load_demo(conn, scale=SCALE)
        yield url, counts
    finally:
        pg_server.drop_database(name)


@pytest.fixture
def dconn(demo: tuple[str, dict[str, int]]) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(demo[0], autocommit=True) as conn:
        yield conn


def _scalar(conn: psycopg.Connection[Any], query: sql.SQL | sql.Composed) -> Any:
    row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def _relations(conn: psycopg.Connection[Any], schema: str, kinds: str) -> list[str]:
    """Relations of ``schema`` with a relkind in ``kinds`` (no partitions), in oid order."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND strpos(%s, c.relkind::text) > 0 AND NOT c.relispartition "
        "ORDER BY c.oid",
        [schema, kinds],
    ).fetchall()
    return [r[0] for r in rows]


def _fingerprint(conn: psycopg.Connection[Any], schema: str, kinds: str) -> dict[str, str]:
    """Row count and content hash of every relation of the given kinds in ``schema``."""
    out: dict[str, str] = {}
    for name in _relations(conn, schema, kinds):
        row = conn.execute(
            sql.SQL(
                "SELECT count(*), coalesce(md5(string_agg(md5(t::text), '' "
                "ORDER BY md5(t::text))), '') FROM {} t"
            ).format(sql.Identifier(schema, name))
        ).fetchone()
        assert row is not None
        out[name] = f"{row[0]}:{row[1]}"
    return out


def test_sql_paths_exist_and_unknown_system_is_rejected() -> None:
    for system in data.SYSTEMS:
        assert data.sql_path(system).is_file()
    with pytest.raises(ValueError, match="unknown demo system"):
        data.sql_path("nope")


def test_every_expected_mv_exists_is_populated_and_has_rows(
    dconn: psycopg.Connection[Any],
) -> None:
    rows = dconn.execute(
        "SELECT schemaname, matviewname, ispopulated FROM pg_matviews WHERE schemaname = ANY(%s)",
        [list(data.SYSTEMS)],
    ).fetchall()
    found: dict[str, set[str]] = {}
    for schema, name, populated in rows:
        assert populated, f"{schema}.{name} is not populated"
        found.setdefault(schema, set()).add(name)
        n = _scalar(dconn, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name)))
        assert n > 0, f"{schema}.{name} is empty"
    assert found == EXPECTED_MVS


def test_every_mv_has_a_comment(dconn: psycopg.Connection[Any]) -> None:
    missing = dconn.execute(
        "SELECT schemaname || '.' || matviewname FROM pg_matviews "
        "WHERE schemaname = ANY(%s) AND obj_description("
        "(quote_ident(schemaname) || '.' || quote_ident(matviewname))::regclass, 'pg_class') "
        "IS NULL",
        [list(data.SYSTEMS)],
    ).fetchall()
    assert missing == []


def test_load_counts_match_the_tables(
    dconn: psycopg.Connection[Any], demo: tuple[str, dict[str, int]]
) -> None:
    counts = demo[1]
    for key in ("school.attendance", "llm_usage.api_usage", "mes.wip_process_history",
                "marketing.events", "saas.accounts"):  # fmt: skip
        assert counts[key] > 0
    for key, n in counts.items():
        schema, table = key.split(".")
        assert schema in data.SYSTEMS
        actual = _scalar(
            dconn, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
        )
        # the other tests' live traffic only ever adds or removes a few rows
        assert abs(actual - n) <= max(50, n // 10), key


def test_api_usage_is_partitioned_with_a_default_partition(
    dconn: psycopg.Connection[Any],
) -> None:
    assert (
        _scalar(
            dconn,
            sql.SQL(
                "SELECT relkind::text FROM pg_class WHERE oid = 'llm_usage.api_usage'::regclass"
            ),
        )
        == "p"
    )
    parts = dconn.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'llm_usage.api_usage'::regclass"
    ).fetchall()
    assert len(parts) >= 10
    assert any(bound == "DEFAULT" for _name, bound in parts)
    # the generated range (120 days back) lands in monthly partitions, not in the default one
    in_default = _scalar(dconn, sql.SQL("SELECT count(*) FROM llm_usage.api_usage_default"))
    assert in_default == 0


def test_lineage_has_mv_on_mv_and_mv_through_view(dconn: psycopg.Connection[Any]) -> None:
    edges = {
        (mv, upstream): kind
        for mv, upstream, kind in dconn.execute(LINEAGE_SQL, [list(data.SYSTEMS)]).fetchall()
    }
    assert edges[("school.mv_school_overview", "school.mv_attendance_daily")] == "m"
    assert edges[("school.mv_school_overview", "school.mv_fee_collection")] == "m"
    assert edges[("marketing.weekly_aggregations", "marketing.daily_aggregations")] == "m"
    assert edges[("llm_usage.mv_model_costs", "llm_usage.v_successful_calls")] == "v"
    assert edges[("mes.mv_process_wip_queue", "mes.v_active_wip")] == "v"
    assert edges[("llm_usage.mv_daily_metrics", "llm_usage.api_usage")] == "p"


def test_only_mv_model_usage_lacks_a_unique_index(dconn: psycopg.Connection[Any]) -> None:
    usable = {r[0] for r in dconn.execute(CONCURRENT_SQL, [list(data.SYSTEMS)]).fetchall()}
    every = {f"{schema}.{mv}" for schema, mvs in EXPECTED_MVS.items() for mv in mvs}
    assert every - usable == {"llm_usage.mv_model_usage"}
    unique_any = _scalar(
        dconn,
        sql.SQL(
            "SELECT count(*) FROM pg_index WHERE indisunique "
            "AND indrelid = 'llm_usage.mv_model_usage'::regclass"
        ),
    )
    assert unique_any == 0


@pytest.mark.parametrize("system", data.SYSTEMS)
def test_insert_batch_changes_sources_and_refreshed_mvs(
    dconn: psycopg.Connection[Any], system: str
) -> None:
    usable = {r[0] for r in dconn.execute(CONCURRENT_SQL, [[system]]).fetchall()}
    mvs = _relations(dconn, system, "m")  # creation order is a valid refresh order
    tables_before = _fingerprint(dconn, system, "rp")
    mvs_before = _fingerprint(dconn, system, "m")

    touched = data.insert_batch(dconn, system, random.Random(7), rows=15)

    assert touched > 0
    tables_after = _fingerprint(dconn, system, "rp")
    assert tables_after != tables_before
    assert _fingerprint(dconn, system, "m") == mvs_before  # MVs are stale until refreshed
    for mv in mvs:
        concurrently = sql.SQL("CONCURRENTLY ") if f"{system}.{mv}" in usable else sql.SQL("")
        dconn.execute(
            sql.SQL("REFRESH MATERIALIZED VIEW {}{}").format(
                concurrently, sql.Identifier(system, mv)
            )
        )
    assert _fingerprint(dconn, system, "m") != mvs_before


def test_insert_batch_keeps_going_over_many_ticks(dconn: psycopg.Connection[Any]) -> None:
    rng = random.Random(11)
    for _ in range(30):
        for system in data.SYSTEMS:
            assert data.insert_batch(dconn, system, rng, rows=25) > 0


def test_run_generator_touches_rows(demo: tuple[str, dict[str, int]]) -> None:
    messages: list[str] = []
    total = data.run_generator(demo[0], max_ticks=2, interval_s=0, progress=messages.append)
    assert total > 0
    assert sum("tick" in m for m in messages) == 2
    assert not any("failed" in m for m in messages)


def test_run_generator_stops_when_told(demo: tuple[str, dict[str, int]]) -> None:
    stop = threading.Event()
    stop.set()
    assert data.run_generator(demo[0], interval_s=0, stop=stop) == 0


def test_load_is_deterministic_for_a_seed(
    pg_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    fixed: datetime = data._utcnow()
    monkeypatch.setattr(data, "_utcnow", lambda: fixed)
    results: list[tuple[dict[str, int], dict[str, dict[str, str]]]] = []
    for seed in (5, 5, 6):
        name = f"mvo_demo_det_{uuid.uuid4().hex[:8]}"
        url = pg_server.create_database(name)
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                counts = data.load_demo(conn, scale=0.01, seed=seed)
                prints = {s: _fingerprint(conn, s, "rp") for s in data.SYSTEMS}
            results.append((counts, prints))
        finally:
            pg_server.drop_database(name)
    (counts_a, prints_a), (counts_b, prints_b), (_counts_c, prints_c) = results
    assert counts_a == counts_b
    assert prints_a == prints_b
    assert prints_a != prints_c


def test_load_subset_and_progress(pg_server: PgServer) -> None:
    name = f"mvo_demo_sub_{uuid.uuid4().hex[:8]}"
    url = pg_server.create_database(name)
    messages: list[str] = []
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            counts = data.load_demo(conn, scale=0.01, systems=("saas",), progress=messages.append)
            schemas = {
                r[0]
                for r in conn.execute(
                    "SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)",
                    [list(data.SYSTEMS)],
                ).fetchall()
            }
        assert schemas == {"saas"}
        assert set(counts) == {
            "saas.accounts",
            "saas.accounts_memberships",
            "saas.assets",
            "saas.software_licenses",
        }
        assert messages and all(m.startswith("saas:") for m in messages)
        with psycopg.connect(url, autocommit=True) as conn:
            assert not data.demo_loaded(conn)  # four systems missing
            data.load_demo(conn, scale=0.01)
            assert data.demo_loaded(conn)
            conn.execute("DROP MATERIALIZED VIEW marketing.weekly_aggregations")
            assert not data.demo_loaded(conn)
        with pytest.raises(ValueError):
            data.load_demo(conn, systems=("nope",))
    finally:
        pg_server.drop_database(name)
