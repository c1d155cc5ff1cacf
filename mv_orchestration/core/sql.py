"""Small SQL helpers shared by ``core`` modules."""

from __future__ import annotations

import hashlib
import re

from psycopg import sql

_PLAIN_IDENT = re.compile(r"^[a-z_][a-z0-9_$]*$")


def quote_ident(name: str) -> str:
    """Quote ``name`` only when PostgreSQL would need it (for display, never for execution)."""
    if _PLAIN_IDENT.match(name):
        return name
    return '"' + name.replace('"', '""') + '"'


def qualname(schema: str, name: str) -> str:
    """Human-readable qualified name, e.g. ``school.mv_overview`` or ``"My Schema"."A b"``."""
    return f"{quote_ident(schema)}.{quote_ident(name)}"


def relation(schema: str, name: str) -> sql.Identifier:
    """The only way a relation name reaches a statement."""
    return sql.Identifier(schema, name)


def advisory_key(schema: str, name: str) -> int:
    """A stable signed 64-bit advisory-lock key for one materialized view."""
    digest = hashlib.blake2b(f"mv_orchestration:{schema}.{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)
