"""Read materialized views and their lineage from the PostgreSQL catalog.

Lineage comes from ``pg_rewrite``/``pg_depend`` (what the server itself tracks), never from
parsing SQL. Every materialized view in the selected schemas is described with its direct
upstream relations; plain views on the way are described too (with their own upstreams), so
the asset graph can show table → view → MV. A direct read of a partition is attributed to its
partitioned root, so a partitioned table is one node.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row

from mv_orchestration.core.sql import qualname
from mv_orchestration.errors import CatalogError

RelKind = Literal["table", "partitioned_table", "foreign_table", "view", "matview"]
SNAPSHOT_VERSION = 1

_RELKIND: dict[str, RelKind] = {
    "r": "table",
    "p": "partitioned_table",
    "f": "foreign_table",
    "v": "view",
    "m": "matview",
}
SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")


@dataclass(frozen=True, order=True)
class RelationRef:
    """A reference to a relation by schema and name."""

    schema: str
    name: str

    @property
    def qualname(self) -> str:
        return qualname(self.schema, self.name)


@dataclass(frozen=True)
class Column:
    name: str
    data_type: str
    nullable: bool = True


class _Named:
    """``ref`` and ``qualname`` for the catalog dataclasses that have schema and name."""

    schema: str
    name: str

    @property
    def ref(self) -> RelationRef:
        return RelationRef(self.schema, self.name)

    @property
    def qualname(self) -> str:
        return qualname(self.schema, self.name)


@dataclass(frozen=True)
class Relation(_Named):
    """A table, partitioned table, foreign table or plain view upstream of some MV."""

    schema: str
    name: str
    kind: RelKind
    owner: str
    comment: str | None = None
    columns: tuple[Column, ...] = ()
    # For plain views: the relations the view reads directly (tables, views, MVs).
    upstream: tuple[RelationRef, ...] = ()
    definition: str | None = None


@dataclass(frozen=True)
class UniqueIndex:
    name: str
    columns: tuple[str, ...]
    # False for expression indexes, partial indexes (WHERE), invalid or deferrable ones.
    usable_for_concurrently: bool
    reason: str | None = None


@dataclass(frozen=True)
class MaterializedView(_Named):
    schema: str
    name: str
    owner: str
    definition: str
    columns: tuple[Column, ...]
    upstream: tuple[RelationRef, ...]
    populated: bool
    size_bytes: int
    unique_indexes: tuple[UniqueIndex, ...] = ()
    comment: str | None = None
    tablespace: str | None = None

    @property
    def has_usable_unique_index(self) -> bool:
        return any(ix.usable_for_concurrently for ix in self.unique_indexes)

    @property
    def concurrent_allowed(self) -> bool:
        """``REFRESH ... CONCURRENTLY`` needs a populated MV and a plain-column unique index."""
        return self.populated and self.has_usable_unique_index


@dataclass(frozen=True)
class CatalogSnapshot:
    """Everything the translator needs, as plain data that round-trips through JSON."""

    database: str
    server_version: str
    schemas: tuple[str, ...]
    matviews: tuple[MaterializedView, ...]
    relations: tuple[Relation, ...]
    taken_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    version: int = SNAPSHOT_VERSION

    def matview(self, ref: RelationRef) -> MaterializedView:
        for mv in self.matviews:
            if mv.ref == ref:
                return mv
        raise KeyError(ref)

    def relation(self, ref: RelationRef) -> Relation | None:
        for rel in self.relations:
            if rel.ref == ref:
                return rel
        return None

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(asdict(self), indent=indent, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CatalogSnapshot:
        data = json.loads(text)
        if data.get("version") != SNAPSHOT_VERSION:
            raise CatalogError(
                f"catalog snapshot version {data.get('version')!r} is not {SNAPSHOT_VERSION}"
            )
        return cls(
            database=data["database"],
            server_version=data["server_version"],
            schemas=tuple(data["schemas"]),
            matviews=tuple(_mv_from_dict(m) for m in data["matviews"]),
            relations=tuple(_rel_from_dict(r) for r in data["relations"]),
            taken_at=data["taken_at"],
            version=data["version"],
        )


def _refs(items: Iterable[dict[str, str]]) -> tuple[RelationRef, ...]:
    return tuple(RelationRef(i["schema"], i["name"]) for i in items)


def _cols(items: Iterable[dict[str, Any]]) -> tuple[Column, ...]:
    return tuple(Column(**c) for c in items)


def _mv_from_dict(d: dict[str, Any]) -> MaterializedView:
    return MaterializedView(
        **{
            **d,
            "columns": _cols(d["columns"]),
            "upstream": _refs(d["upstream"]),
            "unique_indexes": tuple(
                UniqueIndex(**{**ix, "columns": tuple(ix["columns"])}) for ix in d["unique_indexes"]
            ),
        }
    )


def _rel_from_dict(d: dict[str, Any]) -> Relation:
    return Relation(**{**d, "columns": _cols(d["columns"]), "upstream": _refs(d["upstream"])})


# --- introspection ----------------------------------------------------------------------------

# Direct dependencies of every view and MV's rewrite rule, with partitions mapped to their
# root. One row per (dependent, referenced) pair.
_DEPS_SQL = """
SELECT DISTINCT
    dn.nspname AS dep_schema, d.relname AS dep_name,
    rn.nspname AS ref_schema, r.relname AS ref_name
FROM pg_rewrite rw
JOIN pg_class d ON d.oid = rw.ev_class AND d.relkind IN ('v', 'm')
JOIN pg_namespace dn ON dn.oid = d.relnamespace
JOIN pg_depend dep ON dep.classid = 'pg_rewrite'::regclass AND dep.objid = rw.oid
    AND dep.refclassid = 'pg_class'::regclass AND dep.refobjid <> rw.ev_class
JOIN pg_class r0 ON r0.oid = dep.refobjid
JOIN pg_class r ON r.oid = CASE WHEN r0.relispartition
                                THEN pg_partition_root(r0.oid) ELSE r0.oid END
JOIN pg_namespace rn ON rn.oid = r.relnamespace
WHERE r.relkind IN ('r', 'p', 'f', 'v', 'm')
  AND dn.nspname NOT IN ('pg_catalog', 'information_schema')
"""

# pg_get_viewdef, pg_get_indexdef and pg_total_relation_size take an ACCESS SHARE lock on
# the relation, so they would wait for as long as another session holds an ACCESS EXCLUSIVE
# lock on it — a plain (blocking) REFRESH of that MV, an ALTER, a DROP, a TRUNCATE of a table
# it reads — and with them the code location load, every run worker and the CLI. Relations
# that another session holds or awaits ACCESS EXCLUSIVE on (the relation, its TOAST table, one
# of its indexes, or for a view or MV a relation its query names) are "busy": the
# queries below skip those functions for them (CASE evaluates lazily). lock_timeout in
# read_catalog covers the race of a lock taken between the two statements.
_BUSY_SQL = """
SELECT coalesce(array_agg(DISTINCT l.relation), '{}') AS busy
FROM pg_locks l
WHERE l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock'
  AND l.pid <> pg_backend_pid()
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""

# pg_get_viewdef also locks every relation the view's query names (it runs
# AcquireRewriteLocks on the stored rule), so a view or MV over a busy relation is busy too.
_IS_BUSY = """(c.oid = ANY(%(busy)s::oid[]) OR c.reltoastrelid = ANY(%(busy)s::oid[])
       OR EXISTS (SELECT 1 FROM pg_index bi
                  WHERE bi.indrelid = c.oid AND bi.indexrelid = ANY(%(busy)s::oid[]))
       OR EXISTS (SELECT 1 FROM pg_rewrite br
                  JOIN pg_depend bd ON bd.classid = 'pg_rewrite'::regclass
                   AND bd.objid = br.oid AND bd.refclassid = 'pg_class'::regclass
                  WHERE br.ev_class = c.oid AND bd.refobjid = ANY(%(busy)s::oid[])))"""

_MATVIEWS_SQL = """
SELECT n.nspname AS schema, c.relname AS name, pg_get_userbyid(c.relowner) AS owner,
       CASE WHEN NOT b.busy THEN pg_get_viewdef(c.oid, true) END AS definition,
       c.relispopulated AS populated,
       CASE WHEN b.busy
            -- an estimate from the page counts of the last VACUUM/ANALYZE/index build
            THEN (c.relpages + coalesce((SELECT sum(ic.relpages) FROM pg_index i
                                         JOIN pg_class ic ON ic.oid = i.indexrelid
                                         WHERE i.indrelid = c.oid), 0)
                 )::bigint * current_setting('block_size')::bigint
            ELSE pg_total_relation_size(c.oid) END AS size_bytes,
       obj_description(c.oid, 'pg_class') AS comment,
       t.spcname AS tablespace, b.busy
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_tablespace t ON t.oid = c.reltablespace
CROSS JOIN LATERAL (SELECT @IS_BUSY@ AS busy) b
WHERE c.relkind = 'm' AND (%(all)s OR n.nspname = ANY(%(schemas)s))
  AND n.nspname <> ALL(%(exclude)s)
ORDER BY n.nspname, c.relname
""".replace("@IS_BUSY@", _IS_BUSY)

_RELATIONS_SQL = """
SELECT n.nspname AS schema, c.relname AS name, c.relkind::text AS relkind,
       pg_get_userbyid(c.relowner) AS owner, obj_description(c.oid, 'pg_class') AS comment,
       CASE WHEN c.relkind = 'v' AND NOT b.busy THEN pg_get_viewdef(c.oid, true) END
           AS definition,
       b.busy
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL (SELECT @IS_BUSY@ AS busy) b
WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest(%(schemas)s::text[], %(names)s::text[]))
""".replace("@IS_BUSY@", _IS_BUSY)

_COLUMNS_SQL = """
SELECT n.nspname AS schema, c.relname AS name, a.attname AS column_name,
       format_type(a.atttypid, a.atttypmod) AS data_type, NOT a.attnotnull AS nullable
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE a.attnum > 0 AND NOT a.attisdropped
  AND (n.nspname, c.relname) IN (SELECT * FROM unnest(%(schemas)s::text[], %(names)s::text[]))
ORDER BY n.nspname, c.relname, a.attnum
"""

# A unique index qualifies for REFRESH ... CONCURRENTLY when it is a valid, immediate btree
# index on plain columns without a predicate (the server's is_usable_unique_index()).
_UNIQUE_INDEXES_SQL = """
SELECT n.nspname AS schema, c.relname AS name, ic.relname AS index_name,
       i.indisvalid AS valid, i.indimmediate AS immediate,
       i.indexprs IS NOT NULL AS has_expressions, i.indpred IS NOT NULL AS partial,
       am.amname AS access_method,
       ARRAY(SELECT coalesce(a.attname,
                             CASE WHEN NOT b.busy
                                  THEN pg_get_indexdef(i.indexrelid, k.ord::int, true)
                                  ELSE '(expression)' END)
             FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
             LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
             WHERE k.ord <= i.indnkeyatts
             ORDER BY k.ord) AS columns
FROM pg_index i
JOIN pg_class c ON c.oid = i.indrelid AND c.relkind = 'm'
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_am am ON am.oid = ic.relam
CROSS JOIN LATERAL (SELECT @IS_BUSY@ AS busy) b
WHERE i.indisunique
  AND (n.nspname, c.relname) IN (SELECT * FROM unnest(%(schemas)s::text[], %(names)s::text[]))
ORDER BY n.nspname, c.relname, ic.relname
""".replace("@IS_BUSY@", _IS_BUSY)


def _index_from_row(row: dict[str, Any]) -> UniqueIndex:
    reasons = []
    if row["has_expressions"]:
        reasons.append("indexes an expression")
    if row["partial"]:
        reasons.append("is partial (has a WHERE clause)")
    if not row["valid"]:
        reasons.append("is not valid")
    if not row["immediate"]:
        reasons.append("is deferrable")
    if row["access_method"] != "btree":
        reasons.append(f"uses {row['access_method']}, not btree")
    return UniqueIndex(
        name=row["index_name"],
        columns=tuple(row["columns"]),
        usable_for_concurrently=not reasons,
        reason="; ".join(reasons) or None,
    )


def _unzip(refs: Iterable[RelationRef]) -> dict[str, list[str]]:
    refs = sorted(set(refs))
    return {"schemas": [r.schema for r in refs], "names": [r.name for r in refs]}


# How long one catalog statement may wait for a relation lock (only a lock taken in the
# instant between reading pg_locks and the statement can make it wait), and how often the
# whole read is tried again after such a wait.
CATALOG_LOCK_TIMEOUT_MS = 500
CATALOG_LOCK_RETRIES = 3


def read_catalog(
    conn: psycopg.Connection[Any],
    schemas: Sequence[str] | None = None,
    *,
    exclude_schemas: Sequence[str] = (),
    previous: CatalogSnapshot | None = None,
) -> CatalogSnapshot:
    """Describe every materialized view in ``schemas`` (all user schemas when None).

    Runs a handful of catalog queries inside one REPEATABLE READ read-only transaction so the
    result is one consistent picture. The caller owns the connection.

    Never waits for a relation that another session holds (or awaits) an ACCESS EXCLUSIVE
    lock on, such as an MV in the middle of a blocking refresh or a view over a table being
    truncated: for such a relation the definition (and an MV's index expressions and size)
    come from ``previous`` when it describes the same relation; without it the definition is
    empty and the size an estimate from page counts.
    """
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise CatalogError("read_catalog needs a connection that is not inside a transaction")
    for attempt in range(1, CATALOG_LOCK_RETRIES + 1):
        try:
            return _read_catalog_once(conn, schemas, exclude_schemas, previous)
        except psycopg.errors.LockNotAvailable as exc:
            if attempt == CATALOG_LOCK_RETRIES:
                raise CatalogError(
                    f"reading the catalog kept waiting for relation locks "
                    f"({CATALOG_LOCK_RETRIES} tries): {str(exc).strip()}"
                ) from exc
    raise AssertionError("unreachable")


def _read_catalog_once(
    conn: psycopg.Connection[Any],
    schemas: Sequence[str] | None,
    exclude_schemas: Sequence[str],
    previous: CatalogSnapshot | None,
) -> CatalogSnapshot:
    exclude = [*SYSTEM_SCHEMAS, *exclude_schemas]
    with (
        conn.transaction(),
        conn.cursor(row_factory=dict_row) as cur,
    ):
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cur.execute("SELECT set_config('lock_timeout', %s, true)", [f"{CATALOG_LOCK_TIMEOUT_MS}ms"])
        cur.execute("SELECT current_database() AS db, current_setting('server_version') AS v")
        head = cur.fetchone()
        assert head is not None
        busy_row = cur.execute(_BUSY_SQL).fetchone()
        busy: list[int] = list(busy_row["busy"]) if busy_row else []
        cur.execute(
            _MATVIEWS_SQL,
            {
                "all": schemas is None,
                "schemas": list(schemas or []),
                "exclude": exclude,
                "busy": busy,
            },
        )
        mv_rows = cur.fetchall()

        cur.execute(_DEPS_SQL)
        deps: dict[RelationRef, set[RelationRef]] = {}
        for row in cur.fetchall():
            dep = RelationRef(row["dep_schema"], row["dep_name"])
            deps.setdefault(dep, set()).add(RelationRef(row["ref_schema"], row["ref_name"]))

        # Walk upstream from the MVs through plain views; the walk stops at tables, foreign
        # tables and MVs (an MV outside the selected schemas is still an upstream node).
        mv_refs = [RelationRef(r["schema"], r["name"]) for r in mv_rows]
        needed: set[RelationRef] = set()
        frontier = [ref for mv in mv_refs for ref in deps.get(mv, ())]
        while frontier:
            ref = frontier.pop()
            if ref in needed:
                continue
            needed.add(ref)
            frontier.extend(deps.get(ref, ()))  # only views and MVs have entries
        needed -= set(mv_refs)

        cur.execute(_RELATIONS_SQL, {**_unzip(needed), "busy": busy})
        rel_rows = cur.fetchall()
        cur.execute(_COLUMNS_SQL, _unzip([*mv_refs, *needed]))
        columns: dict[RelationRef, list[Column]] = {}
        for row in cur.fetchall():
            columns.setdefault(RelationRef(row["schema"], row["name"]), []).append(
                Column(row["column_name"], row["data_type"], row["nullable"])
            )
        cur.execute(_UNIQUE_INDEXES_SQL, {**_unzip(mv_refs), "busy": busy})
        indexes: dict[RelationRef, list[UniqueIndex]] = {}
        for row in cur.fetchall():
            indexes.setdefault(RelationRef(row["schema"], row["name"]), []).append(
                _index_from_row(row)
            )

    earlier_mvs = {mv.ref: mv for mv in previous.matviews} if previous else {}

    def mv_from_row(r: dict[str, Any], ref: RelationRef) -> MaterializedView:
        mv = MaterializedView(
            schema=r["schema"],
            name=r["name"],
            owner=r["owner"],
            definition=r["definition"] or "",
            columns=tuple(columns.get(ref, ())),
            upstream=tuple(sorted(deps.get(ref, ()))),
            populated=bool(r["populated"]),
            size_bytes=int(r["size_bytes"]),
            unique_indexes=tuple(indexes.get(ref, ())),
            comment=r["comment"],
            tablespace=r["tablespace"],
        )
        earlier = earlier_mvs.get(ref) if r["busy"] else None
        if earlier is None:
            return mv
        # what a lock kept us from reading: the SQL, index expressions and exact size (the
        # index list and flags are live)
        earlier_columns = {ix.name: ix.columns for ix in earlier.unique_indexes}
        return replace(
            mv,
            definition=earlier.definition,
            size_bytes=earlier.size_bytes,
            unique_indexes=tuple(
                replace(ix, columns=earlier_columns.get(ix.name, ix.columns))
                for ix in mv.unique_indexes
            ),
        )

    def view_definition(r: dict[str, Any]) -> str | None:
        if not r["busy"] or r["relkind"] != "v":
            return r["definition"]  # type: ignore[no-any-return]
        earlier = previous.relation(RelationRef(r["schema"], r["name"])) if previous else None
        return earlier.definition if earlier is not None else None

    matviews = tuple(mv_from_row(r, ref) for r, ref in zip(mv_rows, mv_refs, strict=True))
    relations = tuple(
        sorted(
            (
                Relation(
                    schema=r["schema"],
                    name=r["name"],
                    kind=_RELKIND[r["relkind"]],
                    owner=r["owner"],
                    comment=r["comment"],
                    columns=tuple(columns.get(RelationRef(r["schema"], r["name"]), ())),
                    upstream=tuple(sorted(deps.get(RelationRef(r["schema"], r["name"]), ()))),
                    definition=view_definition(r),
                )
                for r in rel_rows
            ),
            key=lambda rel: (rel.schema, rel.name),
        )
    )
    return CatalogSnapshot(
        database=head["db"],
        server_version=head["v"],
        schemas=tuple(schemas)
        if schemas is not None
        else tuple(sorted({m.schema for m in matviews})),
        matviews=matviews,
        relations=relations,
    )
