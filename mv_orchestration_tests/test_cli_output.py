"""What ``mvo discover`` and ``mvo status`` print: at most 100 columns on the demo and on a
database with long names (a line is wider only when a name alone is), and everything with
``--wide`` / ``--json``."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from mv_orchestration.cli.output import (
    Row,
    human_ago,
    human_bytes,
    human_duration,
    render_table,
)
from mv_orchestration.demo import data
from mv_orchestration_tests.conftest import PgServer
from mv_orchestration_tests.test_cli import ROOT, run

WIDTH = 100
DEMO_POLICIES = str(Path(data.__file__).parent / "policies.yaml")


def _env(pg_server: PgServer, db_url: str, tmp: Path, storage_db: str) -> dict[str, str]:
    return {
        "DATABASE_URL": db_url,
        "DAGSTER_HOME": str(tmp / "dagster_home"),
        "MVO_DAGSTER_STORAGE_URL": pg_server.create_database(storage_db),
        "MVO_STATE_DIR": str(tmp / "state"),
    }


@pytest.fixture
def demo_env(
    pg_server: PgServer, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """A freshly loaded demo database (nothing refreshed yet) and its own Dagster storage."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        data.load_demo(conn, scale=0.01)
    storage_db = f"dagster_{uuid.uuid4().hex[:8]}"
    env = {**_env(pg_server, db_url, tmp_path, storage_db), "MVO_POLICIES": DEMO_POLICIES}
    monkeypatch.chdir(ROOT)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    try:
        yield env
    finally:
        pg_server.drop_database(storage_db)


# 63 characters: PostgreSQL's longest identifier
LONG_SCHEMA = "s" * 20 + "_a_schema_name_as_long_as_postgresql_allows_it"[: 63 - 20]
LONG_NAME = "v" * 20 + "_a_view_name_as_long_as_postgresql_allows_it_too"[: 63 - 20]
MID_NAME = "mv_a_name_that_fits_in_a_line_but_not_in_a_column_of_the_table"


@pytest.fixture
def long_names_env(
    pg_server: PgServer,
    db_url: str,
    conn: psycopg.Connection[Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dict[str, str]]:
    """MVs whose qualified names are 127 characters (wider than a line), 67 (a line's, not a
    column's) and short, each reading eight sources whose names are 96 characters."""
    long_schema = sql.Identifier(LONG_SCHEMA)
    conn.execute(sql.SQL("CREATE SCHEMA {}; CREATE SCHEMA mid").format(long_schema))
    sources = [f"source_table_with_a_long_name_{i:02d}" for i in range(8)]
    for s in sources:
        conn.execute(
            sql.SQL("CREATE TABLE {} (id int PRIMARY KEY)").format(sql.Identifier(LONG_SCHEMA, s))
        )
    union = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT id FROM {}").format(sql.Identifier(LONG_SCHEMA, s)) for s in sources
    )
    for schema, name in ((LONG_SCHEMA, LONG_NAME), ("mid", MID_NAME), ("public", "mv_short")):
        conn.execute(
            sql.SQL("CREATE MATERIALIZED VIEW {} AS {}").format(sql.Identifier(schema, name), union)
        )
    storage_db = f"dagster_{uuid.uuid4().hex[:8]}"
    env = _env(pg_server, db_url, tmp_path, storage_db)
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("MVO_POLICIES", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    try:
        yield env
    finally:
        pg_server.drop_database(storage_db)


def assert_fits(output: str, names: list[str]) -> None:
    """Every line is at most WIDTH columns, or is one name longer than WIDTH on its own."""
    for line in output.splitlines():
        if len(line) > WIDTH:
            assert line.strip() in names and len(line.strip()) > WIDTH, line


def all_names(output_json: str) -> list[str]:
    snap = json.loads(output_json)
    from mv_orchestration.core.sql import qualname

    return [qualname(m["schema"], m["name"]) for m in snap["matviews"]] + [
        qualname(r["schema"], r["name"]) for r in snap["relations"]
    ]


def test_discover_and_status_fit_100_columns_on_the_demo(demo_env: dict[str, str]) -> None:
    discover = run("discover")
    assert discover.exit_code == 0, discover.output
    names = all_names(run("discover", "--json").output)
    assert_fits(discover.output, names)
    assert "school.mv_school_overview" in discover.output
    assert discover.output.splitlines()[0].split() == ["VIEW", "METHOD", "SIZE", "SOURCES"]
    status = run("status")
    assert status.exit_code == 0, status.output
    assert_fits(status.output, names)
    wide = run("discover", "--wide")
    assert wide.exit_code == 0 and "UNIQUE INDEXES" in wide.output


def test_discover_and_status_fit_100_columns_with_long_names(
    long_names_env: dict[str, str],
) -> None:
    discover = run("discover")
    assert discover.exit_code == 0, discover.output
    names = all_names(run("discover", "--json").output)
    long_qualname = f"{LONG_SCHEMA}.{LONG_NAME}"
    assert len(long_qualname) > WIDTH and long_qualname in names
    assert_fits(discover.output, names)
    lines = discover.output.splitlines()
    assert long_qualname in lines, "a name too long for a line stands alone, never shortened"
    assert f"mid.{MID_NAME}" in lines
    for source in range(8):
        assert f"source_table_with_a_long_name_{source:02d}" in discover.output
    status = run("status")
    assert status.exit_code == 0, status.output
    assert_fits(status.output, names)
    assert long_qualname in status.output.splitlines()
    # --wide: one line per view, each with every source
    wide = run("discover", "--wide").output.splitlines()
    row = next(line for line in wide if line.startswith(long_qualname))
    assert row.count("source_table_with_a_long_name_") == 8


def test_human_units() -> None:
    assert human_bytes(12 * 1024 * 1024) == "12 MB"
    assert human_bytes(2150) == "2.1 kB"
    assert human_bytes(512) == "512 B"
    assert human_duration(2.13) == "2.1 s"
    assert human_duration(0.04) == "40 ms"
    assert human_duration(300) == "5 min"
    assert human_ago(300) == "5 min ago"
    assert human_ago(None) == "never"


def test_render_table_wraps_lists_and_notes_and_never_shortens_names() -> None:
    long = "x" * 120
    rows = [
        Row(["a.b", "blocking", ", ".join(f"src.table_{i}" for i in range(20))]),
        Row([long, "initial", "c.d"], note="; ".join(f"reason {i}" for i in range(30))),
    ]
    lines = render_table(["VIEW", "METHOD", "SOURCES"], rows, list_separator=", ")
    assert_fits("\n".join(lines), [long])
    assert long in lines
    text = "\n".join(lines)
    for i in range(20):
        assert f"src.table_{i}" in text
    for i in range(30):
        assert f"reason {i}" in text
    wide = render_table(["VIEW", "METHOD", "SOURCES"], rows, width=None)
    assert len(wide) == 3


def _health(result: Any) -> dict[str, dict[str, Any]]:
    assert result.exit_code == 0, result.output
    return {row["view"]: row for row in json.loads(result.output)}


def test_status_on_a_fresh_demo_reports_every_view_healthy(demo_env: dict[str, str]) -> None:
    # nothing refreshed yet: nothing is due
    before = _health(run("status", "--json"))
    assert len(before) == 15
    assert {v: r["health"] for v, r in before.items()} == dict.fromkeys(before, "healthy")
    # what the first minutes of `mvo dev` do: the frequent schedules and the change sensor
    # refresh their views; the daily and weekly marketing views are not due until 03:00 UTC
    # (Mondays 04:00 for the weekly one)
    groups = ("school", "llm_usage", "mes", "saas")
    refreshed = run("refresh", *(a for g in groups for a in ("--group", g)))
    assert refreshed.exit_code == 0, refreshed.output
    after = _health(run("status", "--json"))
    assert {v: (r["health"], r["reasons"]) for v, r in after.items()} == dict.fromkeys(
        after, ("healthy", "")
    )
    weekly = after["marketing.weekly_aggregations"]
    assert weekly["last_success"] is None and weekly["next_due"] is not None
    assert weekly["expected"] == "cron 0 4 * * 1 (UTC); fresh within 7 d 1 h (fails after 8 d)"
    assert after["school.mv_school_overview"]["last_success"] is not None
    table = run("status")
    assert table.exit_code == 0
    assert "15 views over 24h: 0 critical, 0 warning, 15 healthy" in table.output
    assert "no refresh attempts" not in table.output
    assert_fits(table.output, list(after))
    wide = run("status", "--wide").output.splitlines()
    assert wide[0].split()[:3] == ["VIEW", "HEALTH", "FRESHNESS"] and "EXPECTED" in wide[0]
    row = next(line for line in wide if line.startswith("marketing.weekly_aggregations"))
    assert "cron 0 4 * * 1 (UTC)" in row and "T04:00:00+00:00" in row  # its next Monday
