"""Cheap change fingerprints of source tables, from the server's statistics.

One catalog query per call gives, per table, a :class:`Fingerprint` whose :attr:`token`
changes when the table's data may have changed. The cost does not grow with table size: the
query reads ``pg_class``/``pg_namespace``/``pg_database`` and the cumulative statistics
functions behind ``pg_stat_all_tables``, never the tables themselves.

What moves a token:

* ``n_tup_ins + n_tup_upd + n_tup_del`` (``n_tup_hot_upd`` and ``n_tup_newpage_upd`` are
  subsets of ``n_tup_upd``, so they add nothing). ``COPY`` counts as inserts;
* the table's ``oid`` and ``relfilenode``: ``TRUNCATE``, ``VACUUM FULL``, ``CLUSTER`` and table
  rewrites assign a new file without touching the counters; a dropped and re-created table
  has a new oid;
* for a partitioned table, the sum over its leaf partitions and the list of their
  oids/files, so writing to, truncating, attaching or detaching a partition shows on the
  root (a partitioned parent has no counters of its own);
* ``pg_postmaster_start_time()`` and the database's ``stats_reset`` time: a server restart
  (a crash discards the counters) or a statistics reset (``pg_stat_reset()`` and also
  ``pg_stat_reset_single_table_counters()``, which stamps the database's reset time) counts
  as a change of every table, since counters could otherwise come back to an old value.

Limits, by design of the statistics system:

* Counters reach other sessions late: on PostgreSQL 15+ a busy writer flushes them at most
  once a second, an idle one within about 10 s, so a change may show one tick later. On
  PostgreSQL 14 a session sends them to the statistics collector when a transaction ends at
  least 0.5 s after its previous send, or when it disconnects: the last writes of a session
  that then stays idle show only once it runs another statement or disconnects. Tests make
  the writing session publish them at once (``flush_stats`` in the tests' conftest).
* Counters also count rows written by transactions that rolled back (a harmless extra
  refresh), and they live on the primary only: read fingerprints where you refresh.
* Foreign tables and views have no counters and are never fingerprinted; MVs reading foreign
  tables must be refreshed on a schedule.
* With ``stats_fetch_consistency = cache`` (the default) statistics are frozen for the rest of
  a transaction after the first read: call this on an autocommit connection outside a
  transaction block to see fresh values on every call.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from mv_orchestration.core.catalog import CatalogSnapshot, RelationRef
from mv_orchestration.errors import CatalogError, MvoError

CURSOR_VERSION = 2  # 1: {"v": 1, "tables": ...}, per table only (before views were tracked)
_TOKEN_VERSION = "mvo-fp-1"


class ChangeDetectionError(MvoError):
    """Change fingerprints cannot be read or a stored cursor cannot be understood."""


@dataclass(frozen=True)
class Fingerprint:
    """What the server's statistics say about one table (summed over its partitions)."""

    ref: RelationRef
    oid: int
    inserted: int
    updated: int
    deleted: int
    # "oid:relfilenode" of every member with storage (the table, or each leaf partition)
    storage: tuple[str, ...]
    server_started: datetime
    stats_reset: datetime | None

    @property
    def modifications(self) -> int:
        return self.inserted + self.updated + self.deleted

    @property
    def token(self) -> str:
        """A stable digest of every part; usable as a Dagster ``DataVersion``."""
        parts = [
            _TOKEN_VERSION,
            self.oid,
            self.inserted,
            self.updated,
            self.deleted,
            list(self.storage),
            self.server_started.isoformat(),
            self.stats_reset.isoformat() if self.stats_reset else None,
        ]
        text = json.dumps(parts, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:32]


# Every parameter is an array, so the plan is the same for any list of tables. Partitioned
# roots are expanded through pg_inherits, not pg_partition_tree(): that function takes an
# ACCESS SHARE lock on every partition and would make the tick wait behind a TRUNCATE or
# ALTER of one. Only members with storage (plain tables and MVs, not foreign partitions or
# partitioned sub-trees) contribute counters and files. Nothing here locks a relation.
FINGERPRINT_SQL = """
WITH RECURSIVE wanted AS (
    SELECT w.schema_name, w.rel_name, c.oid, c.relkind
    FROM unnest(%(schemas)s::text[], %(names)s::text[]) AS w(schema_name, rel_name)
    JOIN pg_namespace n ON n.nspname = w.schema_name
    JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.rel_name
    WHERE c.relkind IN ('r', 'p', 'm')
), members AS (
    SELECT w.oid AS root, w.oid AS member, w.relkind FROM wanted w
    UNION ALL
    SELECT mb.root, i.inhrelid, pc.relkind
    FROM members mb
    JOIN pg_inherits i ON i.inhparent = mb.member
    JOIN pg_class pc ON pc.oid = i.inhrelid
    WHERE mb.relkind = 'p'
)
SELECT w.schema_name, w.rel_name, w.oid::bigint AS oid,
       coalesce(sum(pg_stat_get_tuples_inserted(m.oid)), 0)::bigint AS inserted,
       coalesce(sum(pg_stat_get_tuples_updated(m.oid)), 0)::bigint AS updated,
       coalesce(sum(pg_stat_get_tuples_deleted(m.oid)), 0)::bigint AS deleted,
       coalesce(array_agg(m.oid::bigint || ':' || m.relfilenode::bigint ORDER BY m.oid)
                FILTER (WHERE m.oid IS NOT NULL), '{}') AS storage,
       pg_postmaster_start_time() AS server_started,
       (SELECT pg_stat_get_db_stat_reset_time(d.oid)
          FROM pg_database d WHERE d.datname = current_database()) AS stats_reset,
       current_setting('track_counts')::bool AS track_counts
FROM wanted w
LEFT JOIN members mb ON mb.root = w.oid
LEFT JOIN pg_class m ON m.oid = mb.member AND m.relkind IN ('r', 'm')
GROUP BY w.schema_name, w.rel_name, w.oid
"""


def fingerprint_params(tables: Iterable[RelationRef]) -> dict[str, list[str]]:
    """The parameters of :data:`FINGERPRINT_SQL` for ``tables``."""
    refs = sorted(set(tables))
    return {"schemas": [r.schema for r in refs], "names": [r.name for r in refs]}


def fingerprints(
    conn: psycopg.Connection[Any], tables: Sequence[RelationRef]
) -> dict[RelationRef, Fingerprint]:
    """Fingerprint ``tables`` with one catalog query.

    Tables, partitioned tables and MVs are fingerprinted; foreign tables, views and relations
    that do not exist (dropped) are absent from the result. The caller owns the connection.
    """
    if not tables:
        return {}
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(FINGERPRINT_SQL, fingerprint_params(tables))
        rows = cur.fetchall()
    if rows and not rows[0]["track_counts"]:
        raise ChangeDetectionError(
            "track_counts is off on this server: table statistics are not collected, so "
            "changes cannot be detected (set track_counts = on)"
        )
    result: dict[RelationRef, Fingerprint] = {}
    for row in rows:
        ref = RelationRef(row["schema_name"], row["rel_name"])
        result[ref] = Fingerprint(
            ref=ref,
            oid=int(row["oid"]),
            inserted=int(row["inserted"]),
            updated=int(row["updated"]),
            deleted=int(row["deleted"]),
            storage=tuple(row["storage"]),
            server_started=row["server_started"],
            stats_reset=row["stats_reset"],
        )
    return result


def changed(
    previous: Mapping[RelationRef, str],
    current: Mapping[RelationRef, Fingerprint],
    *,
    treat_first_as_change: bool = False,
) -> set[RelationRef]:
    """Tables whose token differs from ``previous``, or that ``previous`` did not know.

    An empty ``previous`` is a first observation: it records a baseline and reports nothing,
    unless ``treat_first_as_change`` (then every current table counts as changed). Tables
    missing from ``current`` (dropped, or not fingerprintable) are never reported.
    """
    if not previous:
        return set(current) if treat_first_as_change else set()
    return {ref for ref, fp in current.items() if previous.get(ref) != fp.token}


@dataclass(frozen=True)
class Claim:
    """A run expected to refresh a view, and the source tokens it was queued against.

    ``own`` claims are runs the sensor requested, named by their run key (the daemon picks
    the run id); the others are runs of any origin, named by run id, that were seen queued
    (not started) after ``tokens`` were read, so a refresh in them sees at least those.
    """

    run: str
    own: bool
    tokens: Mapping[RelationRef, str]
    at: float  # when ``tokens`` were read (epoch seconds)


@dataclass(frozen=True)
class ViewState:
    """What a change-driven view is known to be fresh against, and what is under way."""

    fresh: Mapping[RelationRef, str]  # source tokens its last credited refresh saw
    fresh_at: float = 0.0  # when those tokens were read
    mat: int = 0  # storage id of the newest materialization already examined
    claims: tuple[Claim, ...] = ()
    failures: int = 0  # consecutive requested runs that did not refresh it
    retry_at: float = 0.0  # no request before this (epoch seconds)

    def pending(self, current: Mapping[RelationRef, str]) -> set[RelationRef]:
        """Sources whose current token differs from the one this view is fresh against."""
        return {ref for ref, token in current.items() if self.fresh.get(ref) != token}


@dataclass(frozen=True)
class ChangeState:
    """A change sensor's cursor: the tokens read last tick and each view's state."""

    seen: Mapping[RelationRef, str]
    seen_at: float
    views: Mapping[RelationRef, ViewState]


def _tokens_out(tokens: Mapping[RelationRef, str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for ref in sorted(tokens):
        out.setdefault(ref.schema, {})[ref.name] = tokens[ref]
    return out


def _tokens_in(data: Any) -> dict[RelationRef, str]:
    if not isinstance(data, dict):
        raise TypeError(f"token map is {type(data).__name__}, not an object")
    result: dict[RelationRef, str] = {}
    for schema, names in data.items():
        if not isinstance(names, dict):
            raise TypeError(f"tables of schema {schema!r} are not an object")
        for name, token in names.items():
            if not isinstance(token, str):
                raise TypeError(f"token of {schema}.{name} is not a string")
            result[RelationRef(schema, name)] = token
    return result


def _number(data: Mapping[str, Any], key: str, kind: type[int] | type[float]) -> Any:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise TypeError(f"{key} is not a number")
    if not (value == value and abs(value) != float("inf")) or value < 0:
        raise ValueError(f"{key} is out of range")
    return kind(value)


def _claim_in(data: Any) -> Claim:
    if not isinstance(data, dict) or not isinstance(data["run"], str):
        raise TypeError("a claim is not an object with a run")
    if not isinstance(data["own"], bool):
        raise TypeError("a claim's own flag is not a boolean")
    return Claim(data["run"], data["own"], _tokens_in(data["tokens"]), _number(data, "at", float))


def _view_in(data: Any) -> tuple[RelationRef, ViewState]:
    if not isinstance(data, dict):
        raise TypeError("a view entry is not an object")
    ref = data["view"]
    if not (isinstance(ref, list) and len(ref) == 2 and all(isinstance(p, str) for p in ref)):
        raise TypeError("a view is not [schema, name]")
    claims = data["claims"]
    if not isinstance(claims, list):
        raise TypeError("claims are not a list")
    return RelationRef(ref[0], ref[1]), ViewState(
        fresh=_tokens_in(data["fresh"]),
        fresh_at=_number(data, "fresh_at", float),
        mat=_number(data, "mat", int),
        claims=tuple(_claim_in(c) for c in claims),
        failures=_number(data, "failures", int),
        retry_at=_number(data, "retry_at", float),
    )


def state_to_json(state: ChangeState) -> str:
    """The compact JSON cursor of a change sensor (format :data:`CURSOR_VERSION`)."""
    views = [
        {
            "view": [ref.schema, ref.name],
            "fresh": _tokens_out(v.fresh),
            "fresh_at": v.fresh_at,
            "mat": v.mat,
            "claims": [
                {"run": c.run, "own": c.own, "tokens": _tokens_out(c.tokens), "at": c.at}
                for c in v.claims
            ],
            "failures": v.failures,
            "retry_at": v.retry_at,
        }
        for ref, v in sorted(state.views.items())
    ]
    data = {"v": CURSOR_VERSION, "seen_at": state.seen_at, "tables": _tokens_out(state.seen)}
    return json.dumps({**data, "views": views}, separators=(",", ":"))


def state_from_json(text: str) -> ChangeState:
    """Inverse of :func:`state_to_json`; anything else raises :class:`ChangeDetectionError`."""
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise TypeError(f"cursor is {type(data).__name__}, not an object")
        if data.get("v") != CURSOR_VERSION:
            raise ValueError(f"cursor format {data.get('v')!r} is not {CURSOR_VERSION}")
        if not isinstance(data["views"], list):
            raise TypeError("views are not a list")
        views = dict(_view_in(v) for v in data["views"])
        return ChangeState(_tokens_in(data["tables"]), _number(data, "seen_at", float), views)
    except (ValueError, TypeError, KeyError) as exc:  # json.JSONDecodeError is a ValueError
        detail = str(exc) if not isinstance(exc, KeyError) else f"missing key {exc}"
        raise ChangeDetectionError(f"unreadable change cursor: {detail}") from exc


def change_sources(
    snapshot: CatalogSnapshot, views: Iterable[RelationRef] | None = None
) -> dict[RelationRef, frozenset[RelationRef]]:
    """For each change-driven MV (``views``, default all), the relations to fingerprint.

    Walks upstream through plain views and through other change-driven MVs (they refresh in
    the same run, upstream first). It stops at tables and partitioned tables, and at MVs that
    are not change-driven or lie outside the snapshot: those are refreshed by someone else,
    and their own fingerprint moves when they are. Foreign tables are left out (no counters:
    refresh their MVs on a schedule), so an MV reading only foreign tables maps to nothing.
    """
    mvs = {mv.ref for mv in snapshot.matviews}
    driven = set(mvs) if views is None else set(views)
    unknown = driven - mvs
    if unknown:
        names = ", ".join(sorted(r.qualname for r in unknown))
        raise CatalogError(f"not materialized views in this catalog: {names}")
    upstream = {mv.ref: mv.upstream for mv in snapshot.matviews}
    kinds = {rel.ref: rel.kind for rel in snapshot.relations}
    for rel in snapshot.relations:
        upstream.setdefault(rel.ref, rel.upstream)

    result: dict[RelationRef, frozenset[RelationRef]] = {}
    for view in sorted(driven):
        found: set[RelationRef] = set()
        seen: set[RelationRef] = set()
        frontier = list(upstream[view])
        while frontier:
            ref = frontier.pop()
            if ref in seen:
                continue
            seen.add(ref)
            kind = "matview" if ref in mvs else kinds.get(ref)
            if kind == "view" or ref in driven:
                frontier.extend(upstream.get(ref, ()))
            elif kind in ("table", "partitioned_table", "matview"):
                found.add(ref)
        result[view] = frozenset(found)
    return result
