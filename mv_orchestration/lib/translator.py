"""One object decides every asset's spec, like ``DagsterDbtTranslator``.

Subclass :class:`MvTranslator` and override a ``get_*`` method to customise keys, groups,
descriptions, metadata, tags or owners.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import dagster as dg

from mv_orchestration.core.catalog import (
    CatalogSnapshot,
    Column,
    MaterializedView,
    Relation,
    RelationRef,
)
from mv_orchestration.core.graph import LineageGraph
from mv_orchestration.core.lag import DOWNSTREAM, effective_targets, format_duration
from mv_orchestration.core.refresh import choose_method
from mv_orchestration.lib.policies import PolicyFile, ViewPolicy, freshness_policy

_GROUP_SAFE = re.compile(r"[^A-Za-z0-9_]+")
_KIND_TAG = {
    "table": "table",
    "partitioned_table": "table",
    "foreign_table": "table",
    "view": "view",
    "matview": "view",
}


def safe_name(text: str) -> str:
    """A Dagster-safe name (``^[A-Za-z0-9_]+$``) derived from any identifier."""
    cleaned = _GROUP_SAFE.sub("_", text).strip("_")
    return cleaned or "_"


def definition_hash(definition: str) -> str:
    """Code version of an MV: changes exactly when its SQL definition changes."""
    normalized = " ".join(definition.split())
    return hashlib.sha256(normalized.encode()).hexdigest()[:16]


def column_schema(columns: Sequence[Column]) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=c.name,
                type=c.data_type,
                constraints=dg.TableColumnConstraints(nullable=c.nullable),
            )
            for c in columns
        ]
    )


@dataclass(frozen=True)
class TranslatorSettings:
    """Plain settings most users need, without subclassing."""

    key_prefix: tuple[str, ...] = ()
    # schema name -> Dagster group; unmapped schemas use a sanitised schema name
    schema_groups: Mapping[str, str] = field(default_factory=dict)
    # "schema.name" -> group, wins over schema_groups
    view_groups: Mapping[str, str] = field(default_factory=dict)
    database_alias: str | None = None


class MvTranslator:
    """Builds ``AssetSpec`` objects from catalog objects.

    With a policy file, each MV's freshness policy, owners, tags and group come from it.
    """

    def __init__(
        self, settings: TranslatorSettings | None = None, policies: PolicyFile | None = None
    ) -> None:
        self.settings = settings or TranslatorSettings()
        self.policies = policies
        self._targets: tuple[CatalogSnapshot, Mapping[RelationRef, timedelta]] | None = None

    def get_policy(self, ref: RelationRef) -> ViewPolicy | None:
        """The MV's resolved policy (defaults → group → views), or None without a file."""
        if self.policies is None:
            return None
        return self.policies.resolve(ref, self.get_base_group_name(ref))

    def get_target_lags(self, snapshot: CatalogSnapshot) -> Mapping[RelationRef, timedelta]:
        """Each MV's effective target lag (``downstream`` resolved; no policy file: every
        view the default), computed once per snapshot."""
        if self._targets is None or self._targets[0] is not snapshot:
            declared = {
                mv.ref: (self.get_policy(mv.ref) or ViewPolicy()).target_lag
                for mv in snapshot.matviews
            }
            self._targets = (snapshot, effective_targets(LineageGraph(snapshot), declared))
        return self._targets[1]

    def get_target_lag_label(self, mv: MaterializedView, snapshot: CatalogSnapshot) -> str | None:
        """``5m``, ``downstream (2m)``, or None: the ``mvo/target_lag`` metadata of a view."""
        effective = self.get_target_lags(snapshot).get(mv.ref)
        if effective is None:
            return None
        text = format_duration(effective.total_seconds())
        declared = (self.get_policy(mv.ref) or ViewPolicy()).target_lag
        return f"{DOWNSTREAM} ({text})" if declared == DOWNSTREAM else text

    def get_freshness_policy(
        self, mv: MaterializedView, snapshot: CatalogSnapshot
    ) -> dg.FreshnessPolicy | None:
        """The policy's ``freshness``, else one that follows the view's target lag."""
        policy = self.get_policy(mv.ref) or ViewPolicy()
        return freshness_policy(policy, self.get_target_lags(snapshot).get(mv.ref))

    # --- keys and groups ----------------------------------------------------------------------
    def get_asset_key(self, ref: RelationRef) -> dg.AssetKey:
        return dg.AssetKey([*self.settings.key_prefix, ref.schema, ref.name])

    def get_base_group_name(self, ref: RelationRef) -> str:
        """The group before a policy file moves the view: settings, else the schema."""
        by_view = self.settings.view_groups.get(f"{ref.schema}.{ref.name}")
        if by_view:
            return safe_name(by_view)
        return safe_name(self.settings.schema_groups.get(ref.schema, ref.schema))

    def get_group_name(self, ref: RelationRef) -> str:
        moved = self.policies.group_override(ref) if self.policies is not None else None
        return safe_name(moved) if moved else self.get_base_group_name(ref)

    # --- materialized views -------------------------------------------------------------------
    def get_mv_description(self, mv: MaterializedView) -> str:
        parts = [mv.comment.strip()] if mv.comment else []
        if mv.has_usable_unique_index:
            method = "`REFRESH ... CONCURRENTLY` (readers are not blocked)"
        else:
            method = "plain `REFRESH` (blocks readers: no unique index on plain columns)"
        if not mv.populated:
            method = (
                "a plain first `REFRESH` (it is not populated yet, which CONCURRENTLY needs), "
                f"then {method}"
            )
        parts.append(f"Materialized view `{mv.qualname}`, refreshed with {method}.")
        parts.append(f"```sql\n{mv.definition.strip()}\n```")
        return "\n\n".join(parts)

    def get_mv_metadata(self, mv: MaterializedView) -> dict[str, object]:
        meta: dict[str, object] = {
            "dagster/column_schema": column_schema(mv.columns),
            "dagster/table_name": f"{self.settings.database_alias or 'postgres'}.{mv.qualname}",
            "postgres/relation": mv.qualname,
            "postgres/owner": mv.owner,
            "postgres/populated": mv.populated,
            "postgres/size_bytes": dg.MetadataValue.int(mv.size_bytes),
            "postgres/concurrent_refresh": mv.has_usable_unique_index,
            "postgres/unique_indexes": ", ".join(
                f"{ix.name}({', '.join(ix.columns)})"
                + ("" if ix.usable_for_concurrently else f" — not usable: {ix.reason}")
                for ix in mv.unique_indexes
            )
            or "none",
        }
        if mv.tablespace:
            meta["postgres/tablespace"] = mv.tablespace
        return meta

    def get_owners(self, owner_role: str) -> list[str]:
        # Dagster owners are e-mails or "team:" names; a role is shown as a team.
        return [f"team:{safe_name(owner_role)}"]

    def get_mv_tags(self, mv: MaterializedView) -> dict[str, str]:
        # the method of the next refresh (an unpopulated view's first one is plain)
        method = choose_method(mv.populated, mv.has_usable_unique_index, "auto")
        return {"mvo/method": method}

    def get_mv_spec(self, mv: MaterializedView, snapshot: CatalogSnapshot) -> dg.AssetSpec:
        policy = self.get_policy(mv.ref)
        tags = self.get_mv_tags(mv)
        owners = self.get_owners(mv.owner)
        if policy is not None:
            tags = {**tags, **policy.tags}
            owners = list(policy.owners) or owners
        metadata = self.get_mv_metadata(mv)
        target = self.get_target_lag_label(mv, snapshot)
        if target is not None:
            metadata = {**metadata, "mvo/target_lag": target}
        return dg.AssetSpec(
            key=self.get_asset_key(mv.ref),
            deps=[self.get_asset_key(ref) for ref in mv.upstream],
            description=self.get_mv_description(mv),
            metadata=metadata,
            group_name=self.get_group_name(mv.ref),
            code_version=definition_hash(mv.definition),
            owners=owners,
            tags=tags,
            kinds={"postgres", "view"},
            skippable=True,
            freshness_policy=self.get_freshness_policy(mv, snapshot),
        )

    # --- upstream tables and views ------------------------------------------------------------
    def get_source_description(self, rel: Relation) -> str:
        label = rel.kind.replace("_", " ")
        parts = [rel.comment.strip()] if rel.comment else []
        parts.append(f"PostgreSQL {label} `{rel.qualname}` (not refreshed by mv-orchestration).")
        if rel.definition:
            parts.append(f"```sql\n{rel.definition.strip()}\n```")
        return "\n\n".join(parts)

    def get_source_spec(self, rel: Relation) -> dg.AssetSpec:
        return dg.AssetSpec(
            key=self.get_asset_key(rel.ref),
            deps=[self.get_asset_key(ref) for ref in rel.upstream],
            description=self.get_source_description(rel),
            metadata={
                "dagster/column_schema": column_schema(rel.columns),
                "postgres/relation": rel.qualname,
                "postgres/kind": rel.kind,
                "postgres/owner": rel.owner,
            },
            group_name=self.get_group_name(rel.ref),
            owners=self.get_owners(rel.owner),
            kinds={"postgres", _KIND_TAG[rel.kind]},
        )
