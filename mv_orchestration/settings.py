"""Settings read from the environment (the only module besides the CLI that reads it).

The variables a policy file's ``alerts: [{env: NAME}]`` entries name are read where the
definitions are built (``definitions.build_from_settings``), from the same environment.
``definitions.component_from_settings`` turns these settings into the Dagster component's
model (``lib.component``), so both ways of running share one set of rules.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from mv_orchestration.core.urls import parse_conninfo
from mv_orchestration.errors import ConfigError
from mv_orchestration.lib.alerting import split_urls, url_problem


def _csv(name: str) -> tuple[str, ...] | None:
    raw = os.environ.get(name, "").strip()
    return tuple(s.strip() for s in raw.split(",") if s.strip()) or None


# PostgreSQL's timeouts are whole milliseconds in a 32-bit integer: about 24.8 days
MAX_TIMEOUT_S = 2_147_483.0
MAX_RETRIES = 10  # the delay doubles per retry: 10 retries of 30 s wait 8.5 h in all
MAX_RETRY_DELAY_S = 86_400.0
MAX_LOCK_RETRIES = 100  # each waits at most 4 s: about 7 minutes in all
MAX_RETENTION_DAYS = 36_500.0
MAX_IDENTIFIER_BYTES = 63  # PostgreSQL cuts longer names short (NAMEDATALEN - 1)


def _float(name: str, default: float, *, maximum: float) -> float:
    """A finite number greater than 0 and at most ``maximum``."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not a number") from exc
    if not math.isfinite(value):
        raise ConfigError(f"{name}={raw!r} is not a finite number")
    if value <= 0:
        raise ConfigError(f"{name}={raw!r} must be greater than 0")
    if value > maximum:
        raise ConfigError(f"{name}={raw!r} must be at most {maximum:.15g}")
    return value


def _count(name: str, default: int, *, maximum: int) -> int:
    """A whole number from 0 to ``maximum``."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    # isascii: str.isdigit() also accepts digits int() refuses, such as '²'; the length
    # keeps int() off a thousands-digit string
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9 or int(raw) > maximum:
        raise ConfigError(f"{name}={raw!r}: expected a whole number from 0 to {maximum}")
    return int(raw)


def _flag(name: str, *, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "on", "true", "yes"):
        return True
    if raw in ("0", "off", "false", "no"):
        return False
    raise ConfigError(f"{name}={raw!r}: expected on or off")


def _policies_path() -> Path | None:
    raw = os.environ.get("MVO_POLICIES", "").strip()
    if not raw:
        return None
    path = Path(raw).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"MVO_POLICIES={raw!r}: no such file")
    return path


def _alert_urls() -> tuple[str, ...]:
    """``MVO_ALERT_URLS``: apprise URLs (slack://…, mailto://…, json://host/path), space- or
    comma-separated. An invalid one is named by position and scheme, never quoted."""
    urls = split_urls(os.environ.get("MVO_ALERT_URLS", ""))
    for i, url in enumerate(urls):
        problem = url_problem(url)
        if problem is not None:
            raise ConfigError(f"MVO_ALERT_URLS: URL #{i + 1} is {problem}")
    return urls


def check_history_schema(raw: str, setting: str) -> str | None:
    """The history schema named ``raw`` by ``setting``: None for ``off``, ``mvo`` when empty.
    A system schema (``pg_catalog``, ``information_schema``, any ``pg_*``) and a name longer
    than PostgreSQL keeps are a ``ConfigError``; one that holds managed MVs is refused where
    the catalog is known (``lib.component``)."""
    raw = raw.strip()
    if raw.lower() in ("off", "none", "false", "0"):
        return None
    if raw == "information_schema" or raw.startswith("pg_"):
        raise ConfigError(
            f"{setting}={raw!r} is a system schema: choose a schema of its own "
            "(default mvo), or off"
        )
    if len(raw.encode()) > MAX_IDENTIFIER_BYTES:
        raise ConfigError(
            f"{setting} is longer than {MAX_IDENTIFIER_BYTES} bytes, PostgreSQL's limit for a name"
        )
    return raw or "mvo"


def _history_schema() -> str | None:
    """``MVO_HISTORY_SCHEMA``: where refresh history lives; ``off`` disables it."""
    return check_history_schema(os.environ.get("MVO_HISTORY_SCHEMA", ""), "MVO_HISTORY_SCHEMA")


def _ui_base_url() -> str | None:
    """``MVO_UI_BASE_URL``: where alerts link to; an http(s) URL with a host."""
    raw = os.environ.get("MVO_UI_BASE_URL", "").strip().rstrip("/")
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            "MVO_UI_BASE_URL is not an http:// or https:// URL with a host "
            "(e.g. http://dagster.internal:3000)"
        )
    return raw


def _database_url() -> str:
    """``DATABASE_URL``, checked as libpq will read it (a malformed one is named, never
    quoted: it may hold a password)."""
    url = os.environ.get("DATABASE_URL", "").strip()
    if not url:
        raise ConfigError(
            "DATABASE_URL is not set: export it (postgresql://user@host:5432/db) "
            "or run 'mvo dev' to use the embedded demo database"
        )
    parse_conninfo(url, "DATABASE_URL")
    return url


@dataclass(frozen=True)
class Settings:
    """What the code location needs; see the README's Configuration table."""

    database_url: str
    alias: str
    schemas: tuple[str, ...] | None
    exclude_schemas: tuple[str, ...]
    state_dir: Path
    lock_timeout_s: float
    lock_retries: int
    statement_timeout_s: float
    retries: int
    retry_delay_s: float
    history_schema: str | None
    history_retention_days: float
    automation_running: bool
    policies_path: Path | None
    alert_urls: tuple[str, ...]
    ui_base_url: str | None

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            database_url=_database_url(),
            alias=os.environ.get("MVO_DATABASE_ALIAS", "").strip() or "default",
            schemas=_csv("MVO_SCHEMAS"),
            exclude_schemas=_csv("MVO_EXCLUDE_SCHEMAS") or (),
            state_dir=Path(os.environ.get("MVO_STATE_DIR", ".mvo")).resolve(),
            lock_timeout_s=_float("MVO_LOCK_TIMEOUT_S", 0.5, maximum=MAX_TIMEOUT_S),
            lock_retries=_count("MVO_LOCK_RETRIES", 14, maximum=MAX_LOCK_RETRIES),
            statement_timeout_s=_float("MVO_STATEMENT_TIMEOUT_S", 1800.0, maximum=MAX_TIMEOUT_S),
            retries=_count("MVO_RETRIES", 2, maximum=MAX_RETRIES),
            retry_delay_s=_float("MVO_RETRY_DELAY_S", 30.0, maximum=MAX_RETRY_DELAY_S),
            history_schema=_history_schema(),
            history_retention_days=_float(
                "MVO_HISTORY_RETENTION_DAYS", 30.0, maximum=MAX_RETENTION_DAYS
            ),
            automation_running=_flag("MVO_AUTOMATION", default=True),
            policies_path=_policies_path(),
            alert_urls=_alert_urls(),
            ui_base_url=_ui_base_url(),
        )
