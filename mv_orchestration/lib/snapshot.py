"""Read the catalog, and keep the last copy read for when the database is down.

:func:`read_snapshot` reads it once. The last copy lives in a *state file*: the Dagster
component's defs state (``lib.component``) or the stand-alone code location's cache
(:func:`load_snapshot`, ``definitions.py``). Several processes may write one at once: each
writes its own temporary file and renames it into place (``core.files``), and a cache that
cannot be written (read-only directory, full disk) costs a warning, never the load.
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
from mv_orchestration.errors import CatalogError, ConfigError, DatabaseUnreachableError

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


def read_snapshot(
    dsn: str,
    *,
    alias: str,
    schemas: Sequence[str] | None = None,
    exclude_schemas: Sequence[str] = (),
    previous: CatalogSnapshot | None = None,
    connect_timeout_s: int = 5,
    schemas_setting: str = "MVO_SCHEMAS",
) -> CatalogSnapshot:
    """Read the catalog of the database at ``dsn`` now.

    ``previous`` (the last copy) fills in what a relation lock keeps from being read. A
    database that cannot be reached is a :class:`DatabaseUnreachableError` of one line; a
    schema in ``schemas`` that it does not have, a ``ConfigError`` naming ``schemas_setting``.
    No message holds the password of ``dsn``.
    """
    try:
        with psycopg.connect(
            dsn, autocommit=True, connect_timeout=connect_timeout_s, application_name="mvo-catalog"
        ) as conn:
            check_schemas_exist(conn, schemas or (), schemas_setting)
            return read_catalog(conn, schemas, exclude_schemas=exclude_schemas, previous=previous)
    except psycopg.OperationalError as exc:
        lines = str(exc).strip().splitlines()
        reason = redact(lines[0] if lines else type(exc).__name__, secrets_in(dsn))
        raise DatabaseUnreachableError(
            f"cannot read the catalog of database {alias!r}: {reason}", reason
        ) from exc


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
    Errors are those of :func:`read_snapshot` (without a cache to fall back on).
    """
    path = cache_file(cache_dir, alias, dsn, schemas, exclude_schemas) if cache_dir else None
    cached = read_state(path)
    try:
        snapshot = read_snapshot(
            dsn,
            alias=alias,
            schemas=schemas,
            exclude_schemas=exclude_schemas,
            previous=cached,
            connect_timeout_s=connect_timeout_s,
            schemas_setting=schemas_setting,
        )
    except DatabaseUnreachableError as exc:
        if cached is None:
            raise
        log.warning(
            "database %s unreachable (%s); using cached catalog %s", alias, exc.reason, path
        )
        return cached
    if path is not None:
        write_state(path, snapshot, what="catalog cache")
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


def write_state(path: Path, snapshot: CatalogSnapshot, *, what: str = "catalog state") -> bool:
    """Replace ``path`` with ``snapshot`` atomically; a failure is a warning (False), and the
    caller goes on."""
    try:
        write_atomic(path, snapshot.to_json())
    except OSError as exc:
        log.warning(
            "could not write the %s %s (%s); going on without updating it",
            what,
            path,
            exc.strerror or type(exc).__name__,
        )
        return False
    return True


def read_state(path: Path | None, *, what: str = "catalog cache") -> CatalogSnapshot | None:
    """The snapshot in ``path``; None when there is none or it cannot be read (a warning)."""
    if path is None or not path.exists():
        return None
    try:
        return CatalogSnapshot.from_json(path.read_text())
    except (OSError, ValueError, KeyError, TypeError, CatalogError) as exc:
        log.warning("ignoring unreadable %s %s (%s)", what, path, type(exc).__name__)
        return None
