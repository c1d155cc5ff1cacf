"""Settings read from the environment (the only module besides the CLI that reads it).

The variables a policy file's ``alerts: [{env: NAME}]`` entries name are read where the
definitions are built (``definitions.build_from_settings``), from the same environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mv_orchestration.errors import ConfigError
from mv_orchestration.lib.alerting import split_urls, url_problem


def _csv(name: str) -> tuple[str, ...] | None:
    raw = os.environ.get(name, "").strip()
    return tuple(s.strip() for s in raw.split(",") if s.strip()) or None


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not a number") from exc
    if value <= 0:
        raise ConfigError(f"{name}={raw!r} must be greater than 0")
    return value


def _count(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit():
        raise ConfigError(f"{name}={raw!r}: expected a whole number, 0 or more")
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


def _history_schema() -> str | None:
    """``MVO_HISTORY_SCHEMA``: where refresh history lives; ``off`` disables it."""
    raw = os.environ.get("MVO_HISTORY_SCHEMA", "").strip()
    if raw.lower() in ("off", "none", "false", "0"):
        return None
    return raw or "mvo"


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
        url = os.environ.get("DATABASE_URL", "").strip()
        if not url:
            raise ConfigError(
                "DATABASE_URL is not set: export it (postgresql://user@host:5432/db) "
                "or run 'mvo dev' to use the embedded demo database"
            )
        return cls(
            database_url=url,
            alias=os.environ.get("MVO_DATABASE_ALIAS", "").strip() or "default",
            schemas=_csv("MVO_SCHEMAS"),
            exclude_schemas=_csv("MVO_EXCLUDE_SCHEMAS") or (),
            state_dir=Path(os.environ.get("MVO_STATE_DIR", ".mvo")).resolve(),
            lock_timeout_s=_float("MVO_LOCK_TIMEOUT_S", 0.5),
            lock_retries=_count("MVO_LOCK_RETRIES", 14),
            statement_timeout_s=_float("MVO_STATEMENT_TIMEOUT_S", 1800.0),
            retries=_count("MVO_RETRIES", 2),
            retry_delay_s=_float("MVO_RETRY_DELAY_S", 30.0),
            history_schema=_history_schema(),
            history_retention_days=_float("MVO_HISTORY_RETENTION_DAYS", 30.0),
            automation_running=_flag("MVO_AUTOMATION", default=True),
            policies_path=_policies_path(),
            alert_urls=_alert_urls(),
            ui_base_url=os.environ.get("MVO_UI_BASE_URL", "").strip().rstrip("/") or None,
        )
