"""The refresh engine against a real PostgreSQL server."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import psycopg
import pytest

from mv_orchestration.core.refresh import (
    RefreshOptions,
    choose_method,
    refresh_view,
    retry_delay,
)
from mv_orchestration.errors import (
    LockTimeoutError,
    RefreshError,
    RefreshInProgressError,
    StatementTimeoutError,
    UnknownViewError,
)

FAST = RefreshOptions(lock_timeout_s=0.2, lock_retries=0)


@pytest.fixture
def sales(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    conn.execute(
        """
        CREATE TABLE sales (id serial PRIMARY KEY, region text NOT NULL, amount int NOT NULL);
        INSERT INTO sales (region, amount) VALUES ('eu', 10), ('eu', 5), ('us', 7);
        CREATE MATERIALIZED VIEW mv_by_region AS
            SELECT region, sum(amount) AS total FROM sales GROUP BY region;
        CREATE UNIQUE INDEX ON mv_by_region (region);
        CREATE MATERIALIZED VIEW mv_no_index AS SELECT region, amount FROM sales;
        CREATE MATERIALIZED VIEW mv_unpopulated AS SELECT region FROM sales GROUP BY region
            WITH NO DATA;
        CREATE UNIQUE INDEX ON mv_unpopulated (region);
        """
    )
    return conn


@pytest.mark.parametrize(
    ("populated", "unique", "pref", "expected"),
    [
        (False, True, "auto", "initial"),
        (True, True, "auto", "concurrently"),
        (True, False, "auto", "blocking"),
        (True, True, "blocking", "blocking"),
    ],
)
def test_choose_method(populated: bool, unique: bool, pref: Any, expected: str) -> None:
    assert choose_method(populated, unique, pref) == expected


def test_concurrent_refresh_measures_rows_and_size(sales: psycopg.Connection[Any]) -> None:
    sales.execute("INSERT INTO sales (region, amount) VALUES ('apac', 1)")
    result = refresh_view(sales, "public", "mv_by_region")
    assert result.method == "concurrently" and not result.blocks_readers
    assert (result.rows_before, result.rows_after) == (2, 3)
    assert (result.rows_inserted, result.rows_deleted) == (1, 0)
    sales.execute("UPDATE sales SET amount = amount + 1 WHERE region = 'eu'")
    changed = refresh_view(sales, "public", "mv_by_region")
    # the eu row's total changed: the diff deletes the old row and inserts the new one
    assert (changed.rows_inserted, changed.rows_deleted) == (1, 1)
    assert result.size_bytes > 0
    assert result.duration_s > 0
    assert result.server_version.split(".")[0].isdigit()
    assert sales.execute("SELECT total FROM mv_by_region WHERE region = 'apac'").fetchone() == (1,)


def test_plain_refresh_without_unique_index(sales: psycopg.Connection[Any]) -> None:
    result = refresh_view(sales, "public", "mv_no_index")
    assert result.method == "blocking" and result.blocks_readers
    assert result.rows_after == 3
    assert result.rows_inserted is None and result.rows_deleted is None


def test_unpopulated_gets_initial_refresh_then_concurrent(sales: psycopg.Connection[Any]) -> None:
    first = refresh_view(sales, "public", "mv_unpopulated")
    assert first.method == "initial" and first.rows_before is None and first.rows_after == 2
    assert refresh_view(sales, "public", "mv_unpopulated").method == "concurrently"


def test_forced_blocking_and_no_count(sales: psycopg.Connection[Any]) -> None:
    result = refresh_view(
        sales, "public", "mv_by_region", RefreshOptions(method="blocking", count_rows=False)
    )
    assert result.method == "blocking" and result.rows_after is None


def test_division_by_zero_surfaces_sqlstate(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        """
        CREATE TABLE t (a int, b int);
        INSERT INTO t VALUES (1, 1);
        CREATE MATERIALIZED VIEW mv_ratio AS SELECT a / b AS r FROM t;
        INSERT INTO t VALUES (1, 0);
        """
    )
    with pytest.raises(RefreshError) as info:
        refresh_view(conn, "public", "mv_ratio")
    assert info.value.sqlstate == "22012"
    assert info.value.message == "division by zero"
    assert "SQLSTATE 22012" in str(info.value) and "mv_ratio" in str(info.value)
    # nothing lost: the old contents are still there
    assert conn.execute("SELECT r FROM mv_ratio").fetchall() == [(1,)]


def test_duplicate_rows_under_unique_index(sales: psycopg.Connection[Any]) -> None:
    sales.execute(
        """
        CREATE MATERIALIZED VIEW mv_regions AS SELECT region FROM sales;
        DELETE FROM sales WHERE amount = 5;
        REFRESH MATERIALIZED VIEW mv_regions;
        CREATE UNIQUE INDEX ON mv_regions (region);
        INSERT INTO sales (region, amount) VALUES ('us', 1);
        """
    )
    with pytest.raises(RefreshError) as info:
        refresh_view(sales, "public", "mv_regions")
    # CONCURRENTLY diffs whole rows first: duplicates are a cardinality violation
    assert info.value.sqlstate == "21000"
    assert info.value.method == "concurrently"
    assert "duplicate rows" in info.value.message
    with pytest.raises(RefreshError) as info:
        refresh_view(sales, "public", "mv_regions", RefreshOptions(method="blocking"))
    # a plain refresh rebuilds the unique index and trips over the duplicate key
    assert info.value.sqlstate == "23505"
    assert "could not create unique index" in info.value.message
    assert "(region)=(us)" in info.value.message
    assert sales.execute("SELECT count(*) FROM mv_regions").fetchone() == (2,)


def test_lock_timeout_reports_holder_and_retries(sales: psycopg.Connection[Any]) -> None:
    retries: list[tuple[int, float]] = []
    with psycopg.connect(sales.info.dsn, password=sales.info.password, autocommit=True) as other:
        other.execute("SET application_name = 'long_report'")
        with other.transaction():
            # A long report reading the MV holds ACCESS SHARE; a plain refresh needs
            # ACCESS EXCLUSIVE and must give up rather than queue every later reader.
            other.execute("SELECT count(*) FROM mv_by_region")
            with pytest.raises(LockTimeoutError) as info:
                refresh_view(
                    sales,
                    "public",
                    "mv_by_region",
                    RefreshOptions(
                        lock_timeout_s=0.1, lock_retries=2, retry_backoff_s=0.01, method="blocking"
                    ),
                    on_retry=lambda e, n, d: retries.append((n, d)),
                    rng=random.Random(7),
                )
            err = info.value
            assert err.sqlstate == "55P03"
            assert err.blocking_pids == (other.info.backend_pid,)
            assert any("long_report" in h for h in err.lock_holders)
            assert "lock timeout" in err.message
            assert err.attempts == 3 and "(attempt 3 of 3)" in err.message
    # the delays are retry_delay's, drawn from the generator given
    rng = random.Random(7)
    assert retries == [(n, retry_delay(n, 0.01, 4.0, rng)) for n in (1, 2)]
    # the lock is gone: the same refresh now succeeds
    assert refresh_view(sales, "public", "mv_by_region", FAST).rows_after == 2


def test_statement_timeout(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE MATERIALIZED VIEW mv_slow AS SELECT 1 AS x FROM pg_sleep(5) WITH NO DATA")
    with pytest.raises(StatementTimeoutError) as info:
        refresh_view(conn, "public", "mv_slow", RefreshOptions(statement_timeout_s=0.2))
    assert info.value.sqlstate == "57014"


def test_overlapping_refresh_is_refused(sales: psycopg.Connection[Any]) -> None:
    from mv_orchestration.core.sql import advisory_key

    with psycopg.connect(sales.info.dsn, password=sales.info.password, autocommit=True) as other:
        with other.transaction():
            other.execute(
                "SELECT pg_advisory_xact_lock(%s)", [advisory_key("public", "mv_by_region")]
            )
            with pytest.raises(RefreshInProgressError, match="another refresh"):
                refresh_view(sales, "public", "mv_by_region", FAST)
        # released at commit: the next refresh goes through
        assert refresh_view(sales, "public", "mv_by_region", FAST).method == "concurrently"


def test_unknown_view(sales: psycopg.Connection[Any]) -> None:
    with pytest.raises(UnknownViewError, match="nope"):
        refresh_view(sales, "public", "nope")


def test_awkward_names_refresh(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        '''
        CREATE SCHEMA "My ""Schema""";
        CREATE TABLE "My ""Schema"""."Src Table" ("Id" int PRIMARY KEY);
        INSERT INTO "My ""Schema"""."Src Table" VALUES (1), (2);
        CREATE MATERIALIZED VIEW "My ""Schema"""."Odd; DROP TABLE x; --" AS
            SELECT "Id" FROM "My ""Schema"""."Src Table";
        CREATE UNIQUE INDEX ON "My ""Schema"""."Odd; DROP TABLE x; --" ("Id");
        '''
    )
    result = refresh_view(conn, 'My "Schema"', "Odd; DROP TABLE x; --")
    assert result.method == "concurrently" and result.rows_after == 2


def test_refresh_does_not_block_readers_when_concurrent(sales: psycopg.Connection[Any]) -> None:
    """A reader holding ACCESS SHARE does not stop a CONCURRENTLY refresh."""
    with (
        psycopg.connect(sales.info.dsn, password=sales.info.password, autocommit=True) as other,
        other.transaction(),
    ):
        other.execute("SELECT count(*) FROM mv_by_region")
        result = refresh_view(sales, "public", "mv_by_region", FAST)
        assert result.method == "concurrently"


# --- a record sent with the COMMIT ------------------------------------------------------------


def _totals(db_url: str) -> list[tuple[Any, ...]]:
    """mv_by_region as another session sees it: only what was committed."""
    with psycopg.connect(db_url, autocommit=True) as other:
        return other.execute("SELECT region, total FROM mv_by_region ORDER BY region").fetchall()


def test_record_commits_with_the_refresh(db_url: str, sales: psycopg.Connection[Any]) -> None:
    sales.execute("CREATE TABLE log (view text, rows bigint, duration_ms float8)")
    sales.execute("INSERT INTO sales (region, amount) VALUES ('apac', 1)")
    seen: list[Any] = []

    def record(result: Any) -> tuple[bytes, dict[str, Any]]:
        seen.append(result)
        return (
            b"INSERT INTO log VALUES (%(view)s, %(rows)s, %(ms)s)",
            {"view": result.qualname, "rows": result.rows_after, "ms": result.duration_s * 1e3},
        )

    result = refresh_view(sales, "public", "mv_by_region", record=record)
    assert result.record_error is None
    # the record saw the result but for the counters, which its own statement reads
    assert seen == [replace(result, rows_inserted=None, rows_deleted=None)]
    assert (result.rows_inserted, result.rows_deleted) == (1, 0)
    # the record holds the result's own figures, and both are committed
    with psycopg.connect(db_url, autocommit=True) as other:
        assert other.execute("SELECT * FROM log").fetchall() == [
            ("public.mv_by_region", 3, result.duration_s * 1e3)
        ]
    assert _totals(db_url) == [("apac", 1), ("eu", 15), ("us", 7)]
    assert sales.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_no_record_when_the_refresh_fails(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        """
        CREATE TABLE log (n int);
        CREATE TABLE t (a int, b int);
        INSERT INTO t VALUES (1, 1);
        CREATE MATERIALIZED VIEW mv_ratio AS SELECT a / b AS r FROM t;
        INSERT INTO t VALUES (1, 0);
        """
    )
    with pytest.raises(RefreshError) as info:
        refresh_view(
            conn, "public", "mv_ratio", record=lambda r: (b"INSERT INTO log VALUES (1)", {})
        )
    assert info.value.sqlstate == "22012"
    assert conn.execute("SELECT count(*) FROM log").fetchone() == (0,)


@pytest.mark.parametrize(
    ("statement", "sqlstate"),
    [
        (b"INSERT INTO no_such_log VALUES (%(n)s)", "42P01"),  # undefined table
        (b"INSERT INTO log VALUES (%(n)s)", "23514"),  # check violation
        (b"INSERT INTO log VALUES (1 / (%(n)s + 1))", "22012"),  # division by zero
    ],
)
def test_failing_record_keeps_the_refresh(
    db_url: str, sales: psycopg.Connection[Any], statement: bytes, sqlstate: str
) -> None:
    """The record runs under a savepoint: its failure is reported, the refresh commits."""
    sales.execute("CREATE TABLE log (n int CHECK (n >= 0))")
    sales.execute("INSERT INTO sales (region, amount) VALUES ('apac', 1)")
    result = refresh_view(sales, "public", "mv_by_region", record=lambda r: (statement, {"n": -1}))
    assert result.record_error is not None and f"SQLSTATE {sqlstate}" in result.record_error
    assert result.rows_after == 3
    assert _totals(db_url) == [("apac", 1), ("eu", 15), ("us", 7)]
    # the connection is idle and usable, and nothing of the record remains
    assert sales.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert sales.execute("SELECT count(*) FROM log").fetchone() == (0,)
    again = refresh_view(sales, "public", "mv_by_region")
    assert again.record_error is None and again.rows_inserted == 0


def test_failed_commit_fails_the_refresh(db_url: str, sales: psycopg.Connection[Any]) -> None:
    """A record that makes the COMMIT itself fail (a deferred foreign key) undoes both."""
    sales.execute(
        """
        CREATE TABLE parent (id int PRIMARY KEY);
        CREATE TABLE child (id int REFERENCES parent DEFERRABLE INITIALLY DEFERRED);
        """
    )
    before = _totals(db_url)
    sales.execute("INSERT INTO sales (region, amount) VALUES ('apac', 1)")
    with pytest.raises(RefreshError) as info:
        refresh_view(
            sales,
            "public",
            "mv_by_region",
            record=lambda r: (b"INSERT INTO child VALUES (%(id)s)", {"id": 42}),
        )
    assert info.value.sqlstate == "23503" and info.value.method == "concurrently"
    assert _totals(db_url) == before  # the refresh was rolled back with its record
    assert sales.execute("SELECT count(*) FROM child").fetchone() == (0,)
    assert sales.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
