"""Bad settings and URLs through the real ``mvo`` process: one line on stderr, a non-zero
exit, and the password nowhere; after a real refresh, no file of the instance or the state
directory holds it."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import psycopg
import pytest
from psycopg import sql

from mv_orchestration_tests.conftest import PgServer

ROOT = Path(__file__).resolve().parents[1]
# a password with every character a URL must percent-encode
PASSWORD = f"Pw@{uuid.uuid4().hex[:10]}/:#%?&="
DDL = """
CREATE SCHEMA shop;
CREATE TABLE shop.orders (id serial PRIMARY KEY, region text NOT NULL, amount int NOT NULL);
INSERT INTO shop.orders (region, amount) VALUES ('eu', 10), ('us', 5);
CREATE MATERIALIZED VIEW shop.mv_sales AS
    SELECT region, sum(amount) AS total FROM shop.orders GROUP BY region;
CREATE UNIQUE INDEX ON shop.mv_sales (region);
CREATE SCHEMA empty;
"""
# variables of the developer's shell that would change what is tested
CLEARED = (
    "DATABASE_URL",
    "MVO_DAGSTER_STORAGE_URL",
    "PGPASSWORD",
    "MVO_SCHEMAS",
    "MVO_EXCLUDE_SCHEMAS",
    "MVO_HISTORY_SCHEMA",
    "MVO_POLICIES",
    "MVO_ALERT_URLS",
    "MVO_DATABASE_ALIAS",
)


@dataclass(frozen=True)
class Target:
    """A database and a Dagster storage database reached as a role with ``PASSWORD``."""

    host: str
    port: int
    role: str
    database_url: str
    storage_url: str

    def url(self, password: str = PASSWORD, *, port: int | None = None, db: str = "") -> str:
        return (
            f"postgresql://{self.role}:{quote(password, safe='')}@{self.host}:"
            f"{port or self.port}/{db or urlsplit(self.database_url).path[1:]}"
        )


@pytest.fixture
def target(pg_server: PgServer, db_url: str) -> Iterator[Target]:
    role = f"mvo_secret_{uuid.uuid4().hex[:8]}"
    storage_db = f"dagster_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.admin_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(PASSWORD)
            )
        )
    pg_server.create_database(storage_db)
    parts = urlsplit(db_url)
    assert parts.hostname is not None and parts.port is not None
    base = Target(parts.hostname, parts.port, role, db_url, "")
    with psycopg.connect(base.url(), autocommit=True) as conn:
        conn.execute(DDL)
    try:
        yield Target(parts.hostname, parts.port, role, base.url(), base.url(db=storage_db))
    finally:
        pg_server.drop_database(storage_db)
        for url in (db_url, pg_server.admin_url):
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        with psycopg.connect(pg_server.admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def mvo(args: list[str], env: dict[str, str], **extra: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in CLEARED}
    return subprocess.run(
        [sys.executable, "-m", "mv_orchestration.cli", *args],
        env={**base, "PYTHONPATH": str(ROOT), **env, **extra},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def env(target: Target, tmp_path: Path) -> dict[str, str]:
    return {
        "DATABASE_URL": target.database_url,
        "MVO_DAGSTER_STORAGE_URL": target.storage_url,
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "MVO_STATE_DIR": str(tmp_path / "state"),
    }


def _cases(t: Target, tmp: Path) -> list[tuple[list[str], dict[str, str], str]]:
    """(command, environment changes, what the one line says)."""
    pw = quote(PASSWORD, safe="")
    at = f"{t.host}:{t.port}/db"
    bad_port = f"{t.role}:{pw}@{t.host}:99999/db"
    a_file = tmp / "a-file"
    a_file.write_text("")
    d, s, r = ["discover"], ["status"], ["refresh", "--all"]
    return [
        # malformed and unreachable DATABASE_URL, every shape
        (d, {"DATABASE_URL": f"postgresql//{t.role}:{pw}@{at}"}, "missing '://'"),
        (d, {"DATABASE_URL": f"postgres:/{t.role}:{PASSWORD}@{at}"}, "missing '://'"),
        (d, {"DATABASE_URL": f"mysql://{t.role}:{pw}@{at}"}, "the scheme must be"),
        (d, {"DATABASE_URL": f"postgresql://{t.role}:{PASSWORD}@{at}"}, "'%' that is not"),
        (d, {"DATABASE_URL": f"postgresql://{t.role}:a@{pw}@{at}"}, "more than one '@'"),
        (d, {"DATABASE_URL": f"postgresql://{t.role}:a/{pw}@{at}"}, "port is not a number"),
        (d, {"DATABASE_URL": f"postgresql://{bad_port}"}, "port is not from 1 to 65535"),
        (d, {"DATABASE_URL": f"postgres://{t.role}:x{pw}@{t.host}:abc/db"}, "port is not a"),
        (d, {"DATABASE_URL": f"postgresql://{t.role}:%zz{pw}@{at}"}, "two hex digits"),
        (d, {"DATABASE_URL": f"postgresql://{t.role}@{at}?password={pw}&x=1"}, "query param"),
        (d, {"DATABASE_URL": f"host={t.host} password={PASSWORD} port=x"}, "port is not a"),
        (d, {"DATABASE_URL": f"host={t.host} password='{PASSWORD}"}, "quoted value"),
        (d, {"DATABASE_URL": t.url(port=1)}, "cannot connect to the database"),
        (d, {"DATABASE_URL": f"{t.url()}?host=no.such.host.invalid"}, "failed to resolve"),
        (d, {"DATABASE_URL": t.url("Wrong" + PASSWORD)}, "password authentication failed"),
        (d, {"DATABASE_URL": f"host={t.host} port={t.port} user={t.role} password=x"}, "auth"),
        (d, {"DATABASE_URL": t.url(db="no_such_db")}, "does not exist"),
        (["discover", "--schema", "nope"], {}, "--schema names schema(s) that database"),
        # MVO_DAGSTER_STORAGE_URL
        (r, {"MVO_DAGSTER_STORAGE_URL": f"postgresql//{t.role}:{pw}@{at}"}, "missing '://'"),
        (r, {"MVO_DAGSTER_STORAGE_URL": f"host={t.host} password={PASSWORD}"}, "not a URL"),
        (r, {"MVO_DAGSTER_STORAGE_URL": t.url(port=1)}, "cannot connect to Dagster's storage"),
        (s, {"MVO_DAGSTER_STORAGE_URL": t.url("Wrong" + PASSWORD)}, "password authentication"),
        (r, {"MVO_DAGSTER_STORAGE_URL": f"postgresql://{bad_port}"}, "not from 1 to 65535"),
        (
            r,
            {"MVO_DAGSTER_STORAGE_URL": f"postgresql://{t.role}:{pw}@a:1,b:2/db"},
            "SQLAlchemy",
        ),
        # numbers, schemas, files
        (r, {"MVO_LOCK_TIMEOUT_S": "nan"}, "MVO_LOCK_TIMEOUT_S='nan' is not a finite number"),
        (s, {"MVO_STATEMENT_TIMEOUT_S": "inf"}, "is not a finite number"),
        (r, {"MVO_RETRIES": "99"}, "MVO_RETRIES='99': expected a whole number from 0 to 10"),
        (r, {"MVO_RETRY_DELAY_S": "-1"}, "must be greater than 0"),
        (s, {"MVO_HISTORY_RETENTION_DAYS": "1e400"}, "is not a finite number"),
        (r, {"MVO_HISTORY_SCHEMA": "pg_catalog"}, "is a system schema"),
        (s, {"MVO_HISTORY_SCHEMA": "information_schema"}, "is a system schema"),
        (r, {"MVO_HISTORY_SCHEMA": "shop"}, "holds managed materialized views (shop.mv_sales)"),
        (s, {"MVO_SCHEMAS": "shop,nope"}, "names schema(s) that database"),
        (r, {"MVO_SCHEMAS": "empty"}, "nothing to manage: no materialized views in schema(s)"),
        (s, {"MVO_SCHEMAS": "empty"}, "nothing to manage"),
        (r, {"MVO_EXCLUDE_SCHEMAS": "shop"}, "nothing to manage"),
        (r, {"MVO_AUTOMATION": "maybe"}, "expected on or off"),
        (r, {"MVO_POLICIES": str(tmp / "none.yaml")}, "no such file"),
        (r, {"DAGSTER_HOME": str(a_file)}, "File exists"),
    ]


def test_bad_settings_and_urls_are_one_line_without_the_password(
    target: Target, env: dict[str, str], tmp_path: Path
) -> None:
    cases = _cases(target, tmp_path)
    assert len(cases) >= 20
    secrets = (PASSWORD, quote(PASSWORD, safe=""), "Wrong" + PASSWORD)
    for args, changes, expected in cases:
        result = mvo(args, env, **changes)
        what = f"{' '.join(args)} with {sorted(changes)}: {result.stderr!r}"
        assert result.returncode != 0, what
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), what
        assert expected in lines[0], what
        assert result.stdout == "", what
        assert not any(secret in result.stderr for secret in secrets), what


def _files_holding(root: Path, secrets: tuple[str, ...]) -> list[Path]:
    held = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if any(s.encode() in data for s in secrets):
                held.append(path)
    return held


def test_a_real_refresh_leaves_the_password_nowhere(
    target: Target, env: dict[str, str], tmp_path: Path
) -> None:
    result = mvo(["refresh", "--all"], env)
    assert result.returncode == 0, result.stderr
    assert "succeeded: 1 view(s) refreshed" in result.stdout
    secrets = (PASSWORD, quote(PASSWORD, safe=""))
    assert PASSWORD not in result.stdout + result.stderr
    state, home = Path(env["MVO_STATE_DIR"]), Path(env["DAGSTER_HOME"])
    assert list((state / "catalog").iterdir()) and (home / "dagster.yaml").exists()
    assert _files_holding(tmp_path, secrets) == []
    # nor anything Dagster stored (runs, tags, events with their metadata) or the history
    for url in (target.storage_url, target.database_url):
        with psycopg.connect(url, autocommit=True) as conn:
            assert _rows_holding(conn, PASSWORD) == {}

    # a cache now exists for this database (its key leaves the password out): a command
    # whose connection fails says so in one line instead of loading the cache and retrying
    for args in (["refresh", "--all"], ["status"]):
        failed = mvo(args, env, DATABASE_URL=target.url("Wrong" + PASSWORD))
        assert failed.returncode == 1
        assert failed.stderr.startswith("Error: cannot connect to the database: ")
        assert "password authentication failed" in failed.stderr
        assert len(failed.stderr.splitlines()) == 1 and PASSWORD not in failed.stderr


def _rows_holding(conn: psycopg.Connection[Any], secret: str) -> dict[str, int]:
    tables = conn.execute(
        "SELECT schemaname, tablename FROM pg_tables"
        " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
    ).fetchall()
    held = {}
    for schema, table in tables:
        ident = sql.Identifier(schema, table)
        query = sql.SQL("SELECT count(*) FROM {} t WHERE strpos(t::text, %s) > 0").format(ident)
        row = conn.execute(query, [secret]).fetchone()
        if row and row[0]:
            held[f"{schema}.{table}"] = int(row[0])
    return held
