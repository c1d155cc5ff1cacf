"""What every ``mvo`` command shares: one-line errors without secrets, the database URL,
the embedded server and the Dagster instance. Imports nothing heavy (no Dagster, no pandas)
at module level: ``mvo --help`` loads this module."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from mv_orchestration.errors import ConfigError, MvoError

if TYPE_CHECKING:
    from mv_orchestration.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])

DEMO_DB = "mvo_demo"
STORAGE_DB = "dagster"


# Variables whose values may hold a password; with the URLs resolved in this process (the
# embedded server's), their secrets are taken out of every error message.
_SECRET_VARIABLES = ("DATABASE_URL", "MVO_DAGSTER_STORAGE_URL", "PGPASSWORD")
_resolved_urls: list[str] = []


def _redacted(text: str) -> str:
    from mv_orchestration.core.urls import redact, secrets_in

    values = [os.environ.get(name, "").strip() for name in _SECRET_VARIABLES]
    values = [v for v in (*values, *_resolved_urls) if v]
    secrets: set[str] = set(values)  # a whole string, should a library quote one
    for value in values:
        secrets |= secrets_in(value)
    return redact(text, secrets)


def one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def one_line_errors(fn: F) -> F:
    """Turn expected failures into ``Error: <one line>`` and exit code 1; no password
    (of ``DATABASE_URL``, ``MVO_DAGSTER_STORAGE_URL``, ``PGPASSWORD``) is ever in it."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except click.ClickException:
            raise
        except Exception as exc:
            message = _expected_failure(exc)
            if message is None:
                raise
            raise click.ClickException(message) from None

    return wrapper  # type: ignore[return-value]


def _expected_failure(exc: Exception) -> str | None:
    """The one line of an expected failure, None for a bug. A psycopg or Dagster error needs
    its library imported, so neither is imported here: help and usage errors stay light."""
    if isinstance(exc, MvoError):
        return _redacted(str(exc))
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(exc, psycopg.Error):
        text = _redacted(one_line(exc))
        if exc.sqlstate is None:  # no server answer: connection-level failure
            return f"cannot connect to the database: {text}"
        return f"database error [SQLSTATE {exc.sqlstate}]: {text}"
    if isinstance(exc, OSError):  # a state directory that is a file, a full disk
        where = f": {exc.filename}" if exc.filename else ""
        return _redacted(f"{exc.strerror or exc}{where}")
    dagster = sys.modules.get("dagster")
    if dagster is not None and isinstance(exc, dagster.DagsterError):
        return _redacted(f"Dagster: {one_line(exc)}")
    return None


def echo_err(msg: str) -> None:
    click.echo(msg, err=True)


def state_dir() -> Path:
    return Path(os.environ.get("MVO_STATE_DIR", ".mvo")).resolve()


def embedded() -> Any:
    from mv_orchestration.demo.embedded import PersistentServer

    return PersistentServer(state_dir() / "postgres")


STORAGE_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg2", "postgresql+psycopg")


def _psycopg2_url(url: str) -> str:
    """Dagster's storage speaks psycopg2; SQLAlchemy 2.1 would pick psycopg 3 for postgresql://."""
    head, sep, rest = url.strip().partition("://")
    return f"postgresql+psycopg2://{rest}" if sep and head in STORAGE_SCHEMES else url


def resolve_database_url() -> str:
    """DATABASE_URL, else the embedded demo database when its server is running; checked
    (a malformed URL is named, never quoted) and connected to once, so that a command fails
    at once with one line rather than load a cached catalog and retry its refreshes."""
    import psycopg

    url = _database_url()
    with psycopg.connect(url, connect_timeout=DATABASE_CONNECT_TIMEOUT_S):
        pass
    return url


DATABASE_CONNECT_TIMEOUT_S = 10


def _database_url() -> str:
    from mv_orchestration.core.urls import parse_conninfo

    url = os.environ.get("DATABASE_URL", "").strip()
    if url:
        parse_conninfo(url, "DATABASE_URL")
        return url
    server = embedded()
    status = server.status()
    if status.running:
        echo_err(f"DATABASE_URL is not set; using the embedded demo database ({DEMO_DB})")
        from mv_orchestration.demo import data

        # the same policies as `mvo dev` uses for the demo, so groups and checks match the UI
        os.environ.setdefault("MVO_POLICIES", str(Path(data.__file__).parent / "policies.yaml"))
        url = str(server.url(DEMO_DB))
        _resolved_urls.append(url)
        return url
    raise ConfigError(
        "DATABASE_URL is not set and the embedded demo server is not running "
        "(export DATABASE_URL, or run 'mvo dev' / 'mvo db start')"
    )


@contextmanager
def scoped_env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def dagster_home() -> Path:
    home = Path(os.environ.get("DAGSTER_HOME") or state_dir() / "dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def prepare_instance(project_dir: Path) -> dict[str, str]:
    """DAGSTER_HOME with our dagster.yaml, and Dagster's storage on the embedded server
    unless MVO_DAGSTER_STORAGE_URL names one (checked: it parses and accepts a connection)."""
    from mv_orchestration.core.files import write_atomic

    home = dagster_home()
    env: dict[str, str] = {"DAGSTER_HOME": str(home)}
    if not (home / "dagster.yaml").exists() or "DAGSTER_HOME" not in os.environ:
        src = project_dir / "dagster.yaml"
        if not src.exists():
            raise ConfigError(f"{src} not found: run mvo from the project directory")
        # other mvo processes may be loading this instance right now
        write_atomic(home / "dagster.yaml", src.read_text())
    storage = os.environ.get("MVO_DAGSTER_STORAGE_URL", "").strip()
    if storage:
        _check_storage_url(storage)
    else:
        from mv_orchestration.demo.embedded import create_database

        server = embedded()
        server.start()
        create_database(server.url(), STORAGE_DB)
        storage = server.url(STORAGE_DB)
        _resolved_urls.append(storage)
    env["MVO_DAGSTER_STORAGE_URL"] = _psycopg2_url(storage)
    return env


STORAGE_CONNECT_TIMEOUT_S = 5


def _check_storage_url(url: str) -> None:
    """MVO_DAGSTER_STORAGE_URL parses as a URL (the form Dagster's SQLAlchemy storage
    needs) and accepts a connection within STORAGE_CONNECT_TIMEOUT_S; else one line that
    quotes no part of it. The connection uses the parameters SQLAlchemy hands psycopg2."""
    import psycopg
    from sqlalchemy.engine import make_url

    from mv_orchestration.core.urls import EXPECTED_URL, libpq_url, parse_conninfo

    name = "MVO_DAGSTER_STORAGE_URL"
    info = parse_conninfo(url, name, schemes=STORAGE_SCHEMES, url_only=True)
    try:
        parsed = make_url(libpq_url(url, STORAGE_SCHEMES))
        params: dict[str, Any] = parsed.translate_connect_args(username="user", database="dbname")
        params.update({k: v if isinstance(v, str) else v[-1] for k, v in parsed.query.items()})
    except Exception:  # SQLAlchemy's messages quote the URL
        raise ConfigError(
            f"{name} is not a valid PostgreSQL URL: Dagster's storage (SQLAlchemy) cannot "
            f"read it (one host, a numeric port); {EXPECTED_URL}"
        ) from None
    try:
        psycopg.connect(**params, connect_timeout=STORAGE_CONNECT_TIMEOUT_S).close()
    except psycopg.Error as exc:
        raise ConfigError(
            f"{name}: cannot connect to Dagster's storage database: {info.redact(one_line(exc))}"
        ) from None


def nothing_to_manage(settings: Settings) -> ConfigError:
    """The error of ``mvo status``/``mvo refresh`` when the selected schemas hold no MVs."""
    where = (
        f"schema(s) {', '.join(settings.schemas)} (MVO_SCHEMAS)"
        if settings.schemas
        else "any schema of the database"
    )
    if settings.exclude_schemas:
        where += f", leaving out {', '.join(settings.exclude_schemas)} (MVO_EXCLUDE_SCHEMAS)"
    return ConfigError(f"nothing to manage: no materialized views in {where} (see 'mvo discover')")
