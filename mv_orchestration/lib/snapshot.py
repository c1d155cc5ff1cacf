"""Read the catalog when definitions are built, with a cached copy for when the DB is down."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

from mv_orchestration.core.catalog import CatalogSnapshot, read_catalog
from mv_orchestration.errors import CatalogError

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
) -> CatalogSnapshot:
    """Read the catalog; on success refresh the cache, on a connection failure use the cache.

    The cache lets the code location load (and show the last known graph) while the database
    is unreachable; runs then fail with the connection error instead of the UI going blank.
    """
    path = cache_file(cache_dir, alias, dsn, schemas, exclude_schemas) if cache_dir else None
    cached = _read_cache(path)
    try:
        with psycopg.connect(
            dsn, autocommit=True, connect_timeout=connect_timeout_s, application_name="mvo-catalog"
        ) as conn:
            # the cached copy also fills in what a relation lock keeps from being read now
            snapshot = read_catalog(conn, schemas, exclude_schemas=exclude_schemas, previous=cached)
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if cached is not None:
            log.warning(
                "database %s unreachable (%s); using cached catalog %s", alias, reason, path
            )
            return cached
        raise CatalogError(f"cannot read the catalog of database {alias!r}: {reason}") from exc
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(snapshot.to_json())
        tmp.replace(path)
    return snapshot


def _read_cache(path: Path | None) -> CatalogSnapshot | None:
    if path is None or not path.exists():
        return None
    try:
        return CatalogSnapshot.from_json(path.read_text())
    except (OSError, ValueError, KeyError, TypeError, CatalogError) as exc:
        log.warning("ignoring unreadable catalog cache %s (%s)", path, type(exc).__name__)
        return None
