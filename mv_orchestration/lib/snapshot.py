"""Read the catalog when definitions are built, with a cached copy for when the DB is down.

Every run worker loads the code location, so several processes write the cache at once:
each writes its own temporary file and renames it into place (``core.files``), and a
cache that cannot be written (read-only directory, full disk) costs a warning, never the
load.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from mv_orchestration.core.catalog import SYSTEM_SCHEMAS, CatalogSnapshot, read_catalog
from mv_orchestration.core.files import write_atomic
from mv_orchestration.core.urls import redact, secrets_in
from mv_orchestration.errors import CatalogError, ConfigError

log = logging.getLogger("mv_orchestration")


def cache_file(
    cache_dir: Path,
    alias: str,
    dsn: str,
    schemas: Sequence[str] | None = None,
    exclude_schemas: Sequence[str] = (),
) -> Path:
    """The cache of one catalog read: alias, database (host, port, name, role — never the
    password) and schema selection, so another database is never shown a stale catalog."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        params = {"dsn": dsn}
    params.pop("password", None)
    identity = json.dumps(
        [alias, sorted((k, str(v)) for k, v in params.items()), schemas, sorted(exclude_schemas)]
    )
    return cache_dir / f"catalog-{hashlib.sha256(identity.encode()).hexdigest()[:12]}.json"


def load_snapshot(
    dsn: str,
    *,
    alias: str,
    schemas: Sequence[str] | None = None,
    exclude_schemas: Sequence[str] = (),
    cache_dir: Path | None = None,
    connect_timeout_s: int = 5,
    schemas_setting: str = "MVO_SCHEMAS",
) -> CatalogSnapshot:
    """Read the catalog; on success refresh the cache, on a connection failure use the cache.

    The cache lets the code location load (and show the last known graph) while the database
    is unreachable; runs then fail with the connection error instead of the UI going blank.
    A schema in ``schemas`` that the database does not have is a ``ConfigError`` naming
    ``schemas_setting``. No message holds the password of ``dsn``.
    """
    path = cache_file(cache_dir, alias, dsn, schemas, exclude_schemas) if cache_dir else None
    cached = _read_cache(path)
    try:
        with psycopg.connect(
            dsn, autocommit=True, connect_timeout=connect_timeout_s, application_name="mvo-catalog"
        ) as conn:
            check_schemas_exist(conn, schemas or (), schemas_setting)
            # the cached copy also fills in what a relation lock keeps from being read now
            snapshot = read_catalog(conn, schemas, exclude_schemas=exclude_schemas, previous=cached)
    except psycopg.OperationalError as exc:
        lines = str(exc).strip().splitlines()
        reason = redact(lines[0] if lines else type(exc).__name__, secrets_in(dsn))
        if cached is not None:
            log.warning(
                "database %s unreachable (%s); using cached catalog %s", alias, reason, path
            )
            return cached
        raise CatalogError(f"cannot read the catalog of database {alias!r}: {reason}") from exc
    if path is not None:
        _write_cache(path, snapshot)
    return snapshot


def check_schemas_exist(
    conn: psycopg.Connection[Any], schemas: Sequence[str], setting: str
) -> None:
    """``ConfigError`` naming the schemas of ``schemas`` that the database lacks, and the
    (non-system) schemas it has."""
    if not schemas:
        return
    rows = conn.execute(
        "SELECT nspname FROM pg_namespace"
        " WHERE NOT (nspname = ANY(%s) OR nspname LIKE 'pg\\_%%') ORDER BY nspname",
        [list(SYSTEM_SCHEMAS)],
    ).fetchall()
    have = [str(r[0]) for r in rows]
    missing = [s for s in schemas if s not in have and s not in SYSTEM_SCHEMAS]
    if missing:
        db = conn.info.dbname
        raise ConfigError(
            f"{setting} names schema(s) that database {db!r} does not have: "
            f"{', '.join(missing)} (its schemas: {', '.join(have) or 'none'})"
        )


def _write_cache(path: Path, snapshot: CatalogSnapshot) -> None:
    """Replace the cache file atomically; a failure is a warning, and the load goes on."""
    try:
        write_atomic(path, snapshot.to_json())
    except OSError as exc:
        log.warning(
            "could not write the catalog cache %s (%s); going on without updating it",
            path,
            exc.strerror or type(exc).__name__,
        )


def _read_cache(path: Path | None) -> CatalogSnapshot | None:
    if path is None or not path.exists():
        return None
    try:
        return CatalogSnapshot.from_json(path.read_text())
    except (OSError, ValueError, KeyError, TypeError, CatalogError) as exc:
        log.warning("ignoring unreadable catalog cache %s (%s)", path, type(exc).__name__)
        return None
