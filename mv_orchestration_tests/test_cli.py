"""The ``mvo`` command against a real server and a real Dagster instance (Postgres storage)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
from click.testing import CliRunner

from mv_orchestration.cli import main
from mv_orchestration_tests.conftest import PgServer

ROOT = Path(__file__).resolve().parents[1]

DDL = """
CREATE SCHEMA shop;
CREATE TABLE shop.orders (id serial PRIMARY KEY, region text NOT NULL, amount int NOT NULL);
INSERT INTO shop.orders (region, amount) VALUES ('eu', 10), ('us', 5);
CREATE MATERIALIZED VIEW shop.mv_sales AS
    SELECT region, sum(amount) AS total FROM shop.orders GROUP BY region;
CREATE UNIQUE INDEX ON shop.mv_sales (region);
CREATE MATERIALIZED VIEW shop.mv_grand AS SELECT sum(total) AS total FROM shop.mv_sales;
CREATE SCHEMA other;
CREATE MATERIALIZED VIEW other.mv_grand AS SELECT 1 AS x;
"""


@pytest.fixture
def cli_env(
    pg_server: PgServer,
    db_url: str,
    conn: psycopg.Connection[Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dict[str, str]]:
    conn.execute(DDL)
    storage_db = f"dagster_{uuid.uuid4().hex[:8]}"
    storage_url = pg_server.create_database(storage_db)
    monkeypatch.chdir(ROOT)
    env = {
        "DATABASE_URL": db_url,
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "MVO_DAGSTER_STORAGE_URL": storage_url,
        "MVO_STATE_DIR": str(tmp_path / "state"),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    try:
        yield env
    finally:
        pg_server.drop_database(storage_db)


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_help_lists_commands() -> None:
    result = run("--help")
    assert result.exit_code == 0
    for cmd in ("dev", "discover", "refresh", "db"):
        assert cmd in result.output


# Runs the CLI in a fresh interpreter and reports, as its last stderr line, its exit code
# and which heavy modules it imported.
_PROBE = """
import json, runpy, sys
sys.argv = ["mvo", *sys.argv[1:]]
try:
    runpy.run_module("mv_orchestration.cli", run_name="__main__")
    code = 0
except SystemExit as exc:
    code = exc.code
heavy = [m for m in ("dagster", "pandas") if m in sys.modules]
print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("--help",), 0),
        (("status", "--help"), 0),
        (("refresh", "--help"), 0),
        (("discover", "--help"), 0),
        (("db", "--help"), 0),
        (("dev", "--help"), 0),
        (("refresh",), 2),  # no selection
        (("status", "--since", "forever"), 2),
        (("discover", "--no-such-option"), 2),
        (("no-such-command",), 2),
    ],
)
def test_help_and_usage_errors_import_neither_dagster_nor_pandas(
    args: tuple[str, ...], code: int
) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, *args],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    assert report == {"code": code, "heavy": []}, proc.stderr


def test_discover_table_and_json(cli_env: dict[str, str]) -> None:
    result = run("discover")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines.index(next(ln for ln in lines if "shop.mv_sales" in ln)) < lines.index(
        next(ln for ln in lines if "shop.mv_grand" in ln)
    )
    assert "concurrently" in result.output and "blocking" in result.output
    data = json.loads(run("discover", "--json", "--schema", "shop").output)
    assert data["refresh_order"] == ["shop.mv_sales", "shop.mv_grand"]
    assert {m["name"] for m in data["matviews"]} == {"mv_sales", "mv_grand"}


def test_refresh_through_dagster_lands_in_history(
    cli_env: dict[str, str], conn: psycopg.Connection[Any]
) -> None:
    conn.execute("INSERT INTO shop.orders (region, amount) VALUES ('eu', 100)")
    result = run("refresh", "mv_sales", "--downstream")
    assert result.exit_code == 0, result.output
    assert "[1/2] refreshed shop.mv_sales" in result.output
    assert "[2/2] refreshed shop.mv_grand" in result.output
    assert "succeeded: 2 view(s) refreshed" in result.output
    assert conn.execute("SELECT total FROM shop.mv_grand").fetchone() == (115,)
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs()
        assert len(runs) == 1 and runs[0].tags["mvo/trigger"] == "cli"
        assert instance.get_latest_materialization_event(dg.AssetKey(["shop", "mv_grand"]))


def test_resume_refreshes_the_views(cli_env: dict[str, str], conn: psycopg.Connection[Any]) -> None:
    result = run("resume", "shop.mv_sales")
    assert result.exit_code == 0, result.output
    assert "succeeded: 1 view(s) refreshed" in result.output
    assert "resumed: the target-lag sensor takes them up again on its next tick" in result.output
    assert run("resume").exit_code == 2  # a view is required


def test_refresh_group_and_failure_exit_code(
    cli_env: dict[str, str], conn: psycopg.Connection[Any]
) -> None:
    assert run("refresh", "--group", "other").exit_code == 0
    conn.execute(
        "CREATE TABLE shop.d (d int); INSERT INTO shop.d VALUES (0);"
        "CREATE MATERIALIZED VIEW shop.mv_bad AS SELECT 1 / d AS x FROM shop.d WITH NO DATA"
    )
    result = run("refresh", "shop.mv_bad")
    assert result.exit_code == 1
    assert "SQLSTATE 22012" in result.output and "division by zero" in result.output
    # the last line alone names each failed view, its SQLSTATE and message
    last = result.output.strip().splitlines()[-1]
    assert "failed: 0 of 1 view(s) refreshed; shop.mv_bad [SQLSTATE 22012]: division by" in last
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("refresh", "nope"), "no materialized view named 'nope' (see 'mvo discover')"),
        (
            ("refresh", "mv_grand"),
            "'mv_grand' is ambiguous: other.mv_grand, shop.mv_grand; use schema.name",
        ),
        (("refresh", "--group", "nogroup"), "no views in group 'nogroup' (groups: other, shop)"),
    ],
)
def test_bad_input_is_one_line(
    cli_env: dict[str, str], args: tuple[str, ...], message: str
) -> None:
    result = run(*args)
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == f"Error: {message}"


def test_refresh_needs_a_selection(cli_env: dict[str, str]) -> None:
    result = run("refresh")
    assert result.exit_code == 2 and "name at least one VIEW" in result.output


def test_unreachable_database_is_one_line(cli_env: dict[str, str]) -> None:
    result = run("discover", env={"DATABASE_URL": "postgresql://u@127.0.0.1:1/db"})
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot connect to the database: ")
    assert len(result.output.strip().splitlines()) == 1


def test_no_database_url_and_no_embedded_server(
    cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATABASE_URL")
    result = run("discover")
    assert result.exit_code == 1
    assert "DATABASE_URL is not set and the embedded demo server is not running" in result.output
    status = run("db", "status")
    assert status.exit_code == 1 and status.output.startswith("not running")


def _history_row(
    conn: psycopg.Connection[Any], view: str, status: str, minutes_ago: float, duration_ms: float
) -> None:
    conn.execute(
        "INSERT INTO mvo.refresh_history (view_schema, view_name, started_at, finished_at,"
        " duration_ms, status, attempts, error_message)"
        " VALUES ('shop', %s, now() - %s * interval '1 minute',"
        " now() - %s * interval '1 minute', %s, %s, 1, %s)",
        [view, minutes_ago, minutes_ago, duration_ms, status,
         "boom" if status == "failure" else None],
    )  # fmt: skip


def test_status_health_and_exit_codes(
    cli_env: dict[str, str], conn: psycopg.Connection[Any]
) -> None:
    from mv_orchestration.core import history

    history.ensure_history(conn, "mvo")
    _history_row(conn, "mv_sales", "success", 1, 40)  # healthy
    for i in range(9):  # 9 of 10 succeed, slowly: warning
        _history_row(conn, "mv_grand", "success", 2 + i, 6000)
    _history_row(conn, "mv_grand", "failure", 1, 10)
    result = run("status", "--group", "shop", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["view"]: r for r in json.loads(result.output)}
    assert rows["shop.mv_sales"]["health"] == "healthy"
    assert rows["shop.mv_grand"]["health"] == "warning"
    assert "success rate 90.0% < 95%" in rows["shop.mv_grand"]["reasons"]
    assert rows["shop.mv_grand"]["last_error"] == "boom"

    for _ in range(3):  # 9 of 13 = 69 %: critical
        _history_row(conn, "mv_grand", "failure", 0.5, 10)
    table = run("status", "shop.mv_grand", "shop.mv_sales")
    assert table.exit_code == 2
    lines = table.output.splitlines()
    assert lines[1].split()[:2] == ["shop.mv_grand", "critical"], "worst first"
    assert "2 views over 24h: 1 critical, 0 warning, 1 healthy" in table.output
    # a window that excludes everything: no attempts is a warning, not critical
    assert run("status", "shop.mv_grand", "--since", "10s").exit_code == 0
    bad = run("status", "--since", "forever")
    assert bad.exit_code == 2 and "use numbers with units d, h, m, s" in bad.output
    # the policy file's grammar: combined units work here too
    assert run("status", "shop.mv_grand", "--since", "1d12h").exit_code == 2


def test_status_shows_target_and_achieved_lag(
    cli_env: dict[str, str], conn: psycopg.Connection[Any]
) -> None:
    from mv_orchestration.core import history

    history.ensure_history(conn, "mvo")
    for lag_ms, met in ((20_000, True), (40_000, True), (4_000_000, False)):
        _history_row(conn, "mv_sales", "success", 1, 40)
        conn.execute(
            "UPDATE mvo.refresh_history SET lag_at_completion_ms = %s, target_met = %s"
            " WHERE id = (SELECT max(id) FROM mvo.refresh_history)",
            [lag_ms, met],
        )
    result = run("status", "--group", "shop", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["view"]: r for r in json.loads(result.output)}
    sales = rows["shop.mv_sales"]
    # no policy file: the default target lag
    assert sales["target"] == "1h"
    assert (sales["lag_p50_s"], sales["lag_max_s"]) == (40.0, 4000.0)
    assert sales["within_target_pct"] == pytest.approx(66.67)
    assert rows["shop.mv_grand"]["lag_p50_s"] is None  # no target-lag refresh recorded
    wide = run("status", "shop.mv_sales", "--wide").output.splitlines()
    assert "TARGET" in wide[0] and "LAG P50 S" in wide[0] and "IN TARGET" in wide[0]
    row = wide[1].split()
    assert row[0] == "shop.mv_sales" and "1h" in row and "40.0" in row and "66.7%" in row


def test_db_start_prints_the_url_without_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    from mv_orchestration.demo.embedded import PersistentServer

    # not under pytest's tmp_path: as root, the server runs as an OS user that must reach it
    state = Path(tempfile.mkdtemp(prefix="mvo-db-start-"))
    os.chmod(state, 0o755)
    monkeypatch.setenv("MVO_STATE_DIR", str(state))
    monkeypatch.setenv("MVO_POLICIES", "")  # so the CLI's default for the demo is undone after
    try:
        started = run("db", "start")
        assert started.exit_code == 0, started.output
        full = run("db", "url", "--database", "postgres").stdout.strip()
        password = json.loads((state / "postgres" / "server.json").read_text())["password"]
        assert password in full  # 'mvo db url' is the one command that prints it
        assert password not in started.output
        assert started.stdout.strip() == full.replace(f":{password}@", "@")
        assert started.stderr == "(password left out: 'mvo db url' prints the full URL)\n"
        # an error of a connection to the embedded server does not print it either
        result = run("discover", env={"DATABASE_URL": ""})
        assert result.exit_code == 1 and password not in result.output
        assert 'database "mvo_demo" does not exist' in result.output
    finally:
        PersistentServer(state / "postgres").stop()
        shutil.rmtree(state)


def test_nothing_to_manage(cli_env: dict[str, str], conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE SCHEMA empty")
    for args in (("refresh", "--all"), ("status",)):
        result = run(*args, env={"MVO_SCHEMAS": "empty"})
        assert result.exit_code == 1
        assert result.output == (
            "Error: nothing to manage: no materialized views in schema(s) empty (MVO_SCHEMAS)"
            " (see 'mvo discover')\n"
        )


HOSTILE_DDL = '''
CREATE SCHEMA "we ird";
CREATE TABLE "we ird"."src tab" (id int PRIMARY KEY);
INSERT INTO "we ird"."src tab" VALUES (1);
CREATE MATERIALIZED VIEW "we ird"."v1.2" AS SELECT id FROM "we ird"."src tab";
CREATE SCHEMA "My ""Schema""";
CREATE MATERIALIZED VIEW "My ""Schema"""."Odd ""v""; DROP TABLE x; --" AS
    SELECT id FROM "we ird"."src tab";
'''
V12 = '"we ird"."v1.2"'
ODD = '"My ""Schema"""."Odd ""v""; DROP TABLE x; --"'


def test_refresh_takes_every_form_of_a_hostile_name(
    cli_env: dict[str, str], conn: psycopg.Connection[Any]
) -> None:
    conn.execute(HOSTILE_DDL)
    printed = json.loads(run("discover", "--json").output)["refresh_order"]
    assert {V12, ODD} <= set(printed), "the forms below start from what discover prints"
    assert V12 in run("discover").output
    forms = {
        V12: [V12, '"we ird".v1.2', "we ird.v1.2", "v1.2", '"v1.2"'],
        ODD: [ODD, '"Odd ""v""; DROP TABLE x; --"', 'My "Schema".Odd "v"; DROP TABLE x; --'],
    }
    for view, names in forms.items():
        for name in names:
            conn.execute(
                'INSERT INTO "we ird"."src tab" SELECT max(id) + 1 FROM "we ird"."src tab"'
            )
            result = run("refresh", name)
            assert result.exit_code == 0, (name, result.output)
            assert f"[1/1] refreshed {view}" in result.output, (name, result.output)
    # each refresh saw the row inserted just before it
    assert conn.execute('SELECT count(*) FROM "we ird"."v1.2"').fetchone() == (6,)
    odd = 'SELECT count(*) FROM "My ""Schema"""."Odd ""v""; DROP TABLE x; --"'
    assert conn.execute(odd).fetchone() == (9,)
    bad = run("refresh", '"we ird"."v1.3"')
    assert bad.exit_code == 1
    assert bad.output.strip() == (
        "Error: no materialized view named '\"we ird\".\"v1.3\"' (see 'mvo discover')"
    )


def test_a_name_fitting_several_views_is_ambiguous() -> None:
    from mv_orchestration.cli.selection import matching

    views = [("a.b", "c"), ("a", "b.c"), ("Up", "Case")]
    assert matching("a.b.c", views) == [("a.b", "c"), ("a", "b.c")]
    assert matching('"a.b".c', views) == [("a.b", "c")]
    assert matching('a."b.c"', views) == [("a", "b.c")]
    assert matching("c", views) == [("a.b", "c")]
    # unquoted parts fold to lower case as in PostgreSQL, and match as written
    assert matching("Up.Case", views) == [("Up", "Case")]
    assert matching("up.case", views) == []
    assert matching('"unclosed', views) == []
