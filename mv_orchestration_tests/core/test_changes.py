"""Change fingerprints against a real PostgreSQL server.

Counters reach other sessions only when the writer flushes its statistics; every write here
is followed by ``flush_stats`` (see conftest) in the writing session, so no test sleeps.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from mv_orchestration.core.catalog import CatalogSnapshot, RelationRef, read_catalog
from mv_orchestration.core.changes import (
    FINGERPRINT_SQL,
    ChangeDetectionError,
    ChangeState,
    Claim,
    Fingerprint,
    ViewState,
    change_sources,
    changed,
    fingerprint_params,
    fingerprints,
    state_from_json,
    state_to_json,
)
from mv_orchestration.demo.embedded import PersistentServer
from mv_orchestration.errors import CatalogError
from mv_orchestration_tests.conftest import flush_stats, flushed

R = RelationRef
ORDERS = R("src", "orders")
ODD = R("Src Schema", 'Odd "Name"')
EVENTS = R("src", "events")
RATES = R("src", "rates")
V_ORDERS = R("src", "v_orders")

ODD_SQL = '"Src Schema"."Odd ""Name"""'  # an identifier that needs quoting

DDL = """
CREATE SCHEMA src;
CREATE TABLE src.orders (id int PRIMARY KEY, amount int NOT NULL);
INSERT INTO src.orders SELECT g, g FROM generate_series(1, 10) g;
CREATE SCHEMA "Src Schema";
CREATE TABLE @ODD@ (x int);
CREATE TABLE src.events (id int, at date NOT NULL) PARTITION BY RANGE (at);
CREATE TABLE src.events_2026 PARTITION OF src.events
    FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE src.events_other PARTITION OF src.events DEFAULT;
CREATE EXTENSION file_fdw;
CREATE SERVER files FOREIGN DATA WRAPPER file_fdw;
CREATE FOREIGN TABLE src.rates (code text, rate numeric)
    SERVER files OPTIONS (filename '/nonexistent/rates.csv', format 'csv');
CREATE VIEW src.v_orders AS SELECT * FROM src.orders WHERE amount > 0;
""".replace("@ODD@", ODD_SQL)


@pytest.fixture
def writer(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    flushed(conn, DDL)
    return conn


@pytest.fixture
def reader(db_url: str, writer: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(db_url, autocommit=True) as c:
        yield c


def fp(reader: psycopg.Connection[Any], ref: RelationRef) -> Fingerprint:
    return fingerprints(reader, [ref])[ref]


def test_kinds_missing_and_counters(
    writer: psycopg.Connection[Any], reader: psycopg.Connection[Any]
) -> None:
    missing = R("src", "dropped")
    got = fingerprints(reader, [ORDERS, ODD, EVENTS, RATES, V_ORDERS, missing])
    # foreign tables and views have no counters; missing tables are simply absent
    assert set(got) == {ORDERS, ODD, EVENTS}
    orders = got[ORDERS]
    assert (orders.inserted, orders.updated, orders.deleted) == (10, 0, 0)
    assert orders.modifications == 10
    assert len(orders.storage) == 1
    assert len(got[EVENTS].storage) == 2  # one per leaf partition
    assert got[ORDERS].token != got[ODD].token
    assert fingerprints(reader, []) == {}


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO src.orders VALUES (100, 1)",
        "UPDATE src.orders SET amount = amount + 1 WHERE id = 1",
        "DELETE FROM src.orders WHERE id = 2",
        "TRUNCATE src.orders",
        "VACUUM FULL src.orders",
        "DROP TABLE src.orders CASCADE; CREATE TABLE src.orders (id int, amount int)",
    ],
)
def test_each_kind_of_write_changes_only_that_token(
    writer: psycopg.Connection[Any], reader: psycopg.Connection[Any], statement: str
) -> None:
    before = fingerprints(reader, [ORDERS, ODD, EVENTS])
    assert fingerprints(reader, [ORDERS, ODD, EVENTS]) == before  # stable without writes
    flushed(writer, statement)
    after = fingerprints(reader, [ORDERS, ODD, EVENTS])
    assert changed({r: f.token for r, f in before.items()}, after) == {ORDERS}


def test_copy_changes_token(
    writer: psycopg.Connection[Any], reader: psycopg.Connection[Any]
) -> None:
    before = fp(reader, ORDERS)
    with writer.cursor() as cur, cur.copy("COPY src.orders (id, amount) FROM STDIN") as copy:
        copy.write_row((500, 5))
        copy.write_row((501, 6))
    flush_stats(writer)
    after = fp(reader, ORDERS)
    assert after.inserted == before.inserted + 2
    assert after.token != before.token


def test_truncate_moves_the_file_not_the_counters(
    writer: psycopg.Connection[Any], reader: psycopg.Connection[Any]
) -> None:
    before = fp(reader, ORDERS)
    flushed(writer, "TRUNCATE src.orders")
    after = fp(reader, ORDERS)
    assert after.modifications == before.modifications
    assert after.storage != before.storage and after.token != before.token


def test_partition_writes_count_on_the_root(
    writer: psycopg.Connection[Any], reader: psycopg.Connection[Any]
) -> None:
    before = fp(reader, EVENTS)
    flushed(writer, "INSERT INTO src.events_2026 VALUES (1, '2026-05-01')")
    mid = fp(reader, EVENTS)
    assert mid.inserted == before.inserted + 1 and mid.token != before.token
    flushed(writer, "TRUNCATE src.events_other")
    after = fp(reader, EVENTS)
    assert after.modifications == mid.modifications and after.token != mid.token
    flushed(writer, "ALTER TABLE src.events DETACH PARTITION src.events_other")
    assert len(fp(reader, EVENTS).storage) == 1


def test_stats_reset_counts_as_change(
    writer: psycopg.Connection[Any], reader: psycopg.Connection[Any]
) -> None:
    before = fingerprints(reader, [ORDERS, ODD])
    flushed(writer, "SELECT pg_stat_reset()")  # on PostgreSQL 14 a reset is sent, not done
    after = fingerprints(reader, [ORDERS, ODD])
    assert after[ORDERS].inserted == 0
    assert after[ORDERS].stats_reset is not None
    assert changed({r: f.token for r, f in before.items()}, after) == {ORDERS, ODD}
    # a reset of one table stamps the database's reset time too: the same counts after a
    # reset and as many new rows still read as a change
    flushed(writer, "INSERT INTO src.orders VALUES (200, 1)")
    one = fp(reader, ORDERS)
    flushed(writer, "SELECT pg_stat_reset_single_table_counters('src.orders'::regclass)")
    flushed(writer, "INSERT INTO src.orders VALUES (201, 1)")
    two = fp(reader, ORDERS)
    assert two.inserted == one.inserted == 1
    assert two.token != one.token


def test_server_restart_and_crash_count_as_change() -> None:
    """A clean restart keeps the counters (PostgreSQL 15+ saves them) and a crash discards
    them; either way every token moves, so counters that come back to an old value after a
    crash are never read as "no change"."""
    # not pytest's tmp_path: its 0700 parents would keep out the server's OS user under root
    root = Path(tempfile.mkdtemp(prefix="mvo-test-restart-"))
    os.chmod(root, 0o755)
    server = PersistentServer(root / "pg")
    url = server.start()
    try:
        with psycopg.connect(url, autocommit=True) as c:
            flushed(c, "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2)")
            before = fp(c, R("public", "t"))
        server.stop()  # clean: counters are written out and read back
        server.start()
        with psycopg.connect(url, autocommit=True) as c:
            restarted = fp(c, R("public", "t"))
        assert restarted.inserted == before.inserted == 2
        assert restarted.server_started > before.server_started
        assert restarted.token != before.token
        server.stop(mode="immediate")  # a crash: counters are lost
        server.start()
        with psycopg.connect(url, autocommit=True) as c:
            crashed = fp(c, R("public", "t"))
            # two new rows bring the counters back to the values before the crash
            flushed(c, "INSERT INTO t VALUES (3), (4)")
            again = fp(c, R("public", "t"))
        assert crashed.inserted == 0
        assert again.inserted == restarted.inserted and again.storage == restarted.storage
        assert len({before.token, restarted.token, crashed.token, again.token}) == 4
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_one_query_per_call(
    writer: psycopg.Connection[Any], reader: psycopg.Connection[Any]
) -> None:
    executed: list[str] = []

    class CountingCursor(psycopg.Cursor[Any]):
        def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
            executed.append(str(query))
            return super().execute(query, *args, **kwargs)

    reader.cursor_factory = CountingCursor
    many = [ORDERS, ODD, EVENTS, RATES, V_ORDERS] + [R("src", f"t{i}") for i in range(50)]
    fingerprints(reader, many)
    assert executed == [FINGERPRINT_SQL]


def test_cost_does_not_grow_with_table_size(
    writer: psycopg.Connection[Any], reader: psycopg.Connection[Any]
) -> None:
    writer.execute(
        "CREATE TABLE src.small AS SELECT g AS id FROM generate_series(1, 10) g;"
        "CREATE TABLE src.big AS SELECT g AS id FROM generate_series(1, 200000) g;"
        "CREATE INDEX ON src.big (id); ANALYZE src.small, src.big"
    )

    def plan(ref: RelationRef) -> Any:
        row = reader.execute(
            "EXPLAIN (FORMAT JSON, COSTS OFF) " + FINGERPRINT_SQL, fingerprint_params([ref])
        ).fetchone()
        assert row is not None
        return row[0]

    def relations(node: Any) -> set[str]:
        found = {node["Relation Name"]} if "Relation Name" in node else set()
        for child in node.get("Plans", []):
            found |= relations(child)
        return found

    small, big = plan(R("src", "small")), plan(R("src", "big"))
    assert small == big
    assert relations(big[0]["Plan"]) <= {"pg_class", "pg_namespace", "pg_database", "pg_inherits"}
    assert "big" not in json.dumps(big)

    # and the call itself reads no page of the table: no scan is counted for it
    with reader.transaction():
        fingerprints(reader, [R("src", "big")])
        row = reader.execute(
            "SELECT pg_stat_get_xact_numscans('src.big'::regclass),"
            " pg_stat_get_xact_tuples_returned('src.big'::regclass)"
        ).fetchone()
    assert row == (0, 0)


def test_changed_and_cursor_round_trip() -> None:
    a = Fingerprint(ORDERS, 1, 10, 0, 0, ("1:1",), _ts("2026-01-01"), None)
    b = Fingerprint(ODD, 2, 0, 0, 0, ("2:2",), _ts("2026-01-01"), None)
    current = {ORDERS: a, ODD: b}
    assert changed({}, current) == set()  # first observation: a baseline
    assert changed({}, current, treat_first_as_change=True) == {ORDERS, ODD}
    assert changed({ORDERS: a.token, ODD: "old"}, current) == {ODD}
    assert changed({ORDERS: a.token}, current) == {ODD}  # new table
    assert changed({ORDERS: a.token, ODD: b.token, EVENTS: "x"}, current) == set()
    # the token is a pure function of the parts
    assert a.token == Fingerprint(ORDERS, 1, 10, 0, 0, ("1:1",), _ts("2026-01-01"), None).token
    assert a.token != Fingerprint(ORDERS, 1, 10, 0, 0, ("1:1",), _ts("2026-01-02"), None).token


def _state() -> ChangeState:
    view = ViewState(
        fresh={ORDERS: "t1", ODD: "t2"},
        fresh_at=1.5,
        mat=42,
        claims=(Claim("mvo-changes-abc", True, {ORDERS: "t3"}, 2.5), Claim("run-1", False, {}, 3)),
        failures=2,
        retry_at=99.0,
    )
    return ChangeState({ORDERS: "t3", ODD: "t2"}, 3.5, {R("mart", 'mv "x"'): view})


def test_cursor_round_trip_and_pending() -> None:
    state = _state()
    text = state_to_json(state)
    assert state_from_json(text) == state
    data = json.loads(text)
    assert data["v"] == 2 and data["tables"]["Src Schema"]['Odd "Name"'] == "t2"
    [view] = state.views.values()
    assert view.pending({ORDERS: "t3", ODD: "t2"}) == {ORDERS}
    assert view.pending({ORDERS: "t1"}) == set()  # a dropped table is no change
    assert ViewState({}).pending({ORDERS: "t1"}) == {ORDERS}  # nothing known: a change


def _garbage() -> list[str]:
    good = state_to_json(_state())
    data = json.loads(good)
    broken_view = json.loads(good)
    broken_view["views"][0]["view"] = "mart.mv"
    bad_claim = json.loads(good)
    bad_claim["views"][0]["claims"][0]["own"] = "yes"
    bad_number = json.loads(good)
    bad_number["views"][0]["failures"] = -1
    nan = good.replace('"retry_at":99.0', '"retry_at":NaN')
    return [
        "not json",
        good[: len(good) // 2],  # truncated
        "",  # handled by the sensor as a first tick, but not a state
        "[]",
        "null",
        '{"v": 99, "tables": {}, "views": [], "seen_at": 0}',
        '{"v": 1, "tables": {"src": {"orders": "abc"}}}',  # the old format
        json.dumps({**data, "tables": {"src": {"orders": 5}}}),
        json.dumps({k: v for k, v in data.items() if k != "views"}),
        json.dumps(broken_view),
        json.dumps(bad_claim),
        json.dumps(bad_number),
        nan,
    ]


@pytest.mark.parametrize("text", _garbage())
def test_unreadable_cursor_is_one_error(text: str) -> None:
    with pytest.raises(ChangeDetectionError, match=r"^unreadable change cursor: ") as info:
        state_from_json(text)
    assert "\n" not in str(info.value)


def _ts(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(tzinfo=UTC)


LINEAGE_DDL = """
CREATE SCHEMA mart;
CREATE MATERIALIZED VIEW mart.mv_sales AS SELECT sum(amount) AS total FROM src.v_orders;
CREATE MATERIALIZED VIEW mart.mv_grand AS SELECT total FROM mart.mv_sales;
CREATE MATERIALIZED VIEW mart.mv_events AS SELECT count(*) AS n FROM src.events_2026;
CREATE MATERIALIZED VIEW mart.mv_rates AS SELECT * FROM src.rates WITH NO DATA;
CREATE MATERIALIZED VIEW mart.mv_mixed AS
    SELECT r.code, o.amount FROM src.rates r, src.orders o WITH NO DATA;
CREATE SCHEMA ext;
CREATE MATERIALIZED VIEW ext.mv_outside AS SELECT * FROM @ODD@;
CREATE MATERIALIZED VIEW mart.mv_on_outside AS SELECT count(*) AS n FROM ext.mv_outside;
""".replace("@ODD@", ODD_SQL)


@pytest.fixture
def lineage(writer: psycopg.Connection[Any]) -> CatalogSnapshot:
    writer.execute(LINEAGE_DDL)
    return read_catalog(writer, ["mart"])


def test_change_sources(lineage: CatalogSnapshot) -> None:
    sales, grand = R("mart", "mv_sales"), R("mart", "mv_grand")
    outside = R("ext", "mv_outside")
    every = change_sources(lineage)
    assert every == {
        sales: {ORDERS},  # through the view
        grand: {ORDERS},  # through a change-driven MV
        R("mart", "mv_events"): {EVENTS},  # a partition is attributed to its root
        R("mart", "mv_rates"): frozenset(),  # foreign tables are not fingerprinted
        R("mart", "mv_mixed"): {ORDERS},
        R("mart", "mv_on_outside"): {outside},  # an MV refreshed by someone else
    }
    # an upstream MV that is not change-driven is watched itself: its refresh is the change
    assert change_sources(lineage, [grand]) == {grand: {sales}}
    with pytest.raises(CatalogError, match="not materialized views"):
        change_sources(lineage, [ORDERS])


def test_matviews_can_be_fingerprinted(
    lineage: CatalogSnapshot, writer: psycopg.Connection[Any], reader: psycopg.Connection[Any]
) -> None:
    sales = R("mart", "mv_sales")
    before = fp(reader, sales)
    flushed(writer, "REFRESH MATERIALIZED VIEW mart.mv_sales")  # a plain refresh swaps files
    assert fp(reader, sales).token != before.token


def test_does_not_wait_for_a_locked_partition(
    db_url: str, writer: psycopg.Connection[Any], reader: psycopg.Connection[Any]
) -> None:
    """A TRUNCATE (ACCESS EXCLUSIVE) of one partition in an open transaction must not hold
    up the sensor's tick."""
    before = fp(reader, EVENTS)
    with psycopg.connect(db_url) as holder:
        holder.execute("TRUNCATE src.events_other")
        reader.execute("SET lock_timeout = '1s'")  # a wait fails the test instead of hanging
        during = fp(reader, EVENTS)
        holder.rollback()
    reader.execute("RESET lock_timeout")
    assert during.storage == before.storage  # the truncate is not committed: same files
