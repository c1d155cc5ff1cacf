"""The README's role recipes, run as written, then a real ``mvo refresh --all`` as that role.

The SQL comes from README.md itself (the ```sql block after each ``<!-- role-recipe: NAME -->``
marker), so the README cannot drift from what is tested. Only names are substituted: unique
role names for ``mvo_refresher``/``app_owner`` (roles are shared by the whole server), the
test database for ``DATABASE app``, and a generated password for ``'…'``.

For each recipe that applies to the server's major: with ``CREATE`` on the database the role
creates the history schema and writes history rows; without it the refresh still succeeds
and prints one line naming the history schema and the ``GRANT`` that fixes it; and with the
schema created for the role by an administrator it needs no ``CREATE`` at all.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from mv_orchestration_tests.conftest import PgServer, server_major
from mv_orchestration_tests.test_bad_config import mvo

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"<!-- role-recipe: ([a-z-]+) -->\n```sql\n(.*?)```", re.DOTALL)

# recipe -> the first major it works on
RECIPES = {"owner-member": 14, "pg-maintain": 17, "grant-maintain": 17}
VIEWS = ("mv_daily_sales", "mv_sales_total")  # the names the README's recipes use

# Built as the owner role: a view refreshed CONCURRENTLY (unique index) and, on top of it, one
# never populated (its first refresh is a plain one).
APP_DDL = """
CREATE TABLE app.sales (id serial PRIMARY KEY, day date NOT NULL, amount int NOT NULL);
INSERT INTO app.sales (day, amount) VALUES ('2026-01-01', 10), ('2026-01-02', 5);
CREATE MATERIALIZED VIEW app.mv_daily_sales AS
    SELECT day, sum(amount) AS total FROM app.sales GROUP BY day;
CREATE UNIQUE INDEX ON app.mv_daily_sales (day);
CREATE MATERIALIZED VIEW app.mv_sales_total AS
    SELECT sum(total) AS total FROM app.mv_daily_sales WITH NO DATA;
"""


def readme_recipes() -> dict[str, str]:
    """Each marked ```sql block of the README, by its marker's name."""
    found = _BLOCK.findall(README.read_text(encoding="utf-8"))
    recipes = dict(found)
    assert len(recipes) == len(found), "a role-recipe marker is used twice in README.md"
    return recipes


def test_readme_has_every_recipe() -> None:
    assert set(readme_recipes()) == {*RECIPES, "history-create", "history-schema"}


@dataclass(frozen=True)
class App:
    """The README's ``app``: a database whose MVs ``owner`` owns, and a role to create."""

    admin: psycopg.Connection[Any]
    dbname: str
    db_url: str
    owner: str
    refresher: str
    password: str = field(repr=False)

    def run_recipe(self, name: str) -> None:
        """Run the README's SQL of recipe ``name`` as the administrator, names substituted."""
        text = readme_recipes()[name]

        def ident(name: str) -> str:
            return sql.Identifier(name).as_string(self.admin)

        text = re.sub(r"\bmvo_refresher\b", ident(self.refresher), text)
        text = re.sub(r"\bapp_owner\b", ident(self.owner), text)
        text = re.sub(r"\bDATABASE app\b", "DATABASE " + ident(self.dbname), text)
        text = text.replace("'…'", sql.Literal(self.password).as_string(self.admin))
        self.admin.execute(text.encode())

    @property
    def refresher_url(self) -> str:
        parts = urlsplit(self.db_url)
        netloc = f"{quote(self.refresher)}:{quote(self.password, safe='')}@{parts.hostname}"
        return urlunsplit(parts._replace(netloc=f"{netloc}:{parts.port}"))


@pytest.fixture
def app(db_url: str, conn: psycopg.Connection[Any]) -> Iterator[App]:
    tag = uuid.uuid4().hex[:8]
    dbname = urlsplit(db_url).path[1:]
    password = secrets.token_urlsafe(16)
    app = App(conn, dbname, db_url, f"app_owner_{tag}", f"mvo_refresher_{tag}", password)
    owner = sql.Identifier(app.owner)
    conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(owner))
    try:
        conn.execute(sql.SQL("CREATE SCHEMA app AUTHORIZATION {}").format(owner))
        conn.execute(sql.SQL("SET ROLE {}").format(owner))
        conn.execute(APP_DDL)
        conn.execute("RESET ROLE")
        yield app
    finally:
        conn.execute("RESET ROLE")
        roles = [app.owner, app.refresher]
        exists = conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", [roles])
        present = sql.SQL(", ").join(sql.Identifier(r) for (r,) in exists.fetchall())
        # privileges on the database itself go with DROP OWNED, run in that database
        conn.execute(sql.SQL("DROP OWNED BY {}").format(present))
        conn.execute(sql.SQL("DROP ROLE {}").format(present))


@pytest.fixture
def storage_url(pg_server: PgServer) -> Iterator[str]:
    name = f"dagster_{uuid.uuid4().hex[:8]}"
    url = pg_server.create_database(name)
    try:
        yield url
    finally:
        pg_server.drop_database(name)


def refresh_all(app: App, storage_url: str, tmp_path: Path) -> str:
    """``mvo refresh --all`` as the recipe's role; its output (stdout and stderr)."""
    proc = mvo(
        ["refresh", "--all"],
        {
            "DATABASE_URL": app.refresher_url,
            "MVO_DAGSTER_STORAGE_URL": storage_url,
            "DAGSTER_HOME": str(tmp_path / "dagster_home"),
            "MVO_STATE_DIR": str(tmp_path / "state"),
        },
    )
    out = proc.stdout + proc.stderr
    assert app.password not in out
    assert proc.returncode == 0, out
    return out


def assert_refreshed(admin: psycopg.Connection[Any]) -> None:
    """Both views show the rows inserted before the refresh; the unpopulated one is populated."""
    populated = admin.execute(
        "SELECT bool_and(relispopulated) FROM pg_class"
        " WHERE relnamespace = 'app'::regnamespace AND relname = ANY(%s)",
        [list(VIEWS)],
    ).fetchone()
    assert populated == (True,)
    days = admin.execute("SELECT count(*) FROM app.mv_daily_sales").fetchone()
    assert days == (3,)
    assert admin.execute("SELECT total FROM app.mv_sales_total").fetchone() == (22,)


def history_rows(admin: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return admin.execute(
        "SELECT view_schema, view_name, status, method FROM mvo.refresh_history ORDER BY id"
    ).fetchall()


def history_lines(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if "history" in ln.lower()]


def _applies(recipe: str, admin: psycopg.Connection[Any]) -> None:
    major = server_major(admin)
    if major < RECIPES[recipe]:
        pytest.skip(f"{recipe} needs PostgreSQL {RECIPES[recipe]}+ (server is {major})")


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_recipe_with_create_on_the_database(
    recipe: str, app: App, storage_url: str, tmp_path: Path
) -> None:
    _applies(recipe, app.admin)
    app.run_recipe(recipe)
    app.run_recipe("history-create")
    app.admin.execute("INSERT INTO app.sales (day, amount) VALUES ('2026-01-03', 7)")
    out = refresh_all(app, storage_url, tmp_path)
    assert "succeeded: 2 view(s) refreshed" in out
    assert history_lines(out) == []
    assert_refreshed(app.admin)
    assert history_rows(app.admin) == [
        ("app", "mv_daily_sales", "success", "concurrently"),
        ("app", "mv_sales_total", "success", "initial"),
    ]
    owner = app.admin.execute(
        "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'mvo'"
    )
    assert owner.fetchone() == (app.refresher,)


def test_create_may_be_revoked_after_the_first_refresh(
    app: App, storage_url: str, tmp_path: Path
) -> None:
    app.run_recipe("owner-member")
    app.run_recipe("history-create")
    refresh_all(app, storage_url, tmp_path)
    assert len(history_rows(app.admin)) == 2
    app.admin.execute(
        sql.SQL("REVOKE CREATE ON DATABASE {} FROM {}").format(
            sql.Identifier(app.dbname), sql.Identifier(app.refresher)
        )
    )
    refresh_all(app, storage_url, tmp_path)
    assert len(history_rows(app.admin)) == 4


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_recipe_without_create_still_refreshes_and_says_how_to_keep_history(
    recipe: str, app: App, storage_url: str, tmp_path: Path
) -> None:
    _applies(recipe, app.admin)
    app.run_recipe(recipe)
    app.admin.execute("INSERT INTO app.sales (day, amount) VALUES ('2026-01-03', 7)")
    out = refresh_all(app, storage_url, tmp_path)
    assert "succeeded: 2 view(s) refreshed" in out
    assert_refreshed(app.admin)
    assert app.admin.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'mvo'").fetchone() is None
    [line] = history_lines(out)
    assert 'schema "mvo"' in line, line
    grant = sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
        sql.Identifier(app.dbname), sql.Identifier(app.refresher)
    )
    assert grant.as_string(app.admin) in line, line


def test_history_schema_created_for_the_role_needs_no_create(
    app: App, storage_url: str, tmp_path: Path
) -> None:
    app.run_recipe("owner-member")
    app.run_recipe("history-schema")
    app.admin.execute("INSERT INTO app.sales (day, amount) VALUES ('2026-01-03', 7)")
    out = refresh_all(app, storage_url, tmp_path)
    assert history_lines(out) == []
    assert_refreshed(app.admin)
    assert [r[2] for r in history_rows(app.admin)] == ["success", "success"]
