"""Asset factory: every MV of one database is an output of one subsettable multi-asset.

One op per run refreshes the selected MVs in dependency order on one pooled connection, so
"materialize these five" is one run, upstream first, with no per-view process start. What
the op does is :class:`~mv_orchestration.lib.refresh_step.RefreshStep`: when a refresh
fails, the MVs downstream of it in the same run are skipped (not refreshed from stale
inputs), the others still refresh, and the step fails naming every failure.
"""

import re
from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg
from dagster import AssetExecutionContext

from mv_orchestration.core import history
from mv_orchestration.core.catalog import CatalogSnapshot, RelationRef
from mv_orchestration.core.graph import LineageGraph
from mv_orchestration.lib.checks import CheckThresholds, check_specs
from mv_orchestration.lib.refresh_step import RefreshPlan, RefreshStep
from mv_orchestration.lib.translator import MvTranslator, safe_name

PREVIEW_ROWS = 5
CHUNK_VIEWS = 100
_IDENTIFIER = re.compile(r"[A-Za-z0-9_]+")


def _out_from_spec(spec: dg.AssetSpec) -> dg.AssetOut:
    return dg.AssetOut(
        key=spec.key,
        description=spec.description,
        is_required=False,
        metadata=spec.metadata,
        group_name=spec.group_name,
        code_version=spec.code_version,
        automation_condition=spec.automation_condition,
        owners=spec.owners,
        tags=spec.tags,
        kinds=spec.kinds,
        freshness_policy=spec.freshness_policy,
    )


def build_refresh_assets(
    snapshot: CatalogSnapshot,
    translator: MvTranslator,
    *,
    resource_key: str = "postgres",
    name: str = "refresh_materialized_views",
    pool: str | None = None,
    preview_rows: int = PREVIEW_ROWS,
    history_schema: str | None = history.DEFAULT_SCHEMA,
    thresholds: Mapping[RelationRef, CheckThresholds] | None = None,
    chunk_size: int = CHUNK_VIEWS,
) -> list[dg.AssetsDefinition | dg.AssetSpec]:
    """Asset definitions for one database: MVs (materializable) and their sources.

    The MVs are outputs of one multi-asset per chunk of at most ``chunk_size`` MVs
    (:meth:`LineageGraph.refresh_chunks`: connected views stay together). Dagster's cost of
    each reported materialization grows with the number of outputs of its multi-asset, so
    chunks keep a refresh of N views O(N) (docs/benchmarks.md, H).

    ``history_schema=None`` turns off the refresh history (and the success-rate check).
    ``thresholds`` sets each MV's check thresholds (defaults: :class:`CheckThresholds`).
    """
    sources: list[dg.AssetsDefinition | dg.AssetSpec] = [
        translator.get_source_spec(rel) for rel in snapshot.relations
    ]
    if not snapshot.matviews:
        return sources

    specs = {mv.ref: translator.get_mv_spec(mv, snapshot) for mv in snapshot.matviews}
    limits = {ref: (thresholds or {}).get(ref, CheckThresholds()) for ref in specs}
    # Dagster names a check's output after the asset key, with no override, so an MV whose
    # name holds spaces or quotes cannot carry checks (it still refreshes and records history).
    checks = {
        ref: check_specs(
            spec.key,
            limits[ref],
            with_history=history_schema is not None,
            concurrent=snapshot.matview(ref).has_usable_unique_index,
        )
        if _IDENTIFIER.fullmatch(spec.key.to_python_identifier())
        else []
        for ref, spec in specs.items()
    }
    # Output names must match ^[A-Za-z0-9_]+$ while keys may hold any identifier, so outputs
    # are named here; lineage goes through deps/internal_asset_deps (AssetOut has no deps).
    names = {
        ref: f"{safe_name('__'.join(spec.key.path))}_{i}"
        for i, (ref, spec) in enumerate(specs.items())
    }
    graph = LineageGraph(snapshot)
    plan = RefreshPlan(
        graph=graph,
        mvs={mv.ref: mv for mv in snapshot.matviews},
        specs=specs,
        ref_by_key={spec.key: ref for ref, spec in specs.items()},
        limits=limits,
        checks=checks,
        resource_key=resource_key,
        preview_rows=preview_rows,
        history_schema=history_schema,
    )
    chunks = graph.refresh_chunks(chunk_size)
    refreshers = [
        _refresh_multi_asset(
            plan,
            chunk,
            names,
            name=safe_name(name if i == 0 else f"{name}_{i + 1}"),
            pool=pool,
        )
        for i, chunk in enumerate(chunks)
    ]
    return [*sources, *refreshers]


def _refresh_multi_asset(
    plan: RefreshPlan,
    refs: list[RelationRef],
    names: Mapping[RelationRef, str],
    *,
    name: str,
    pool: str | None,
) -> dg.AssetsDefinition:
    """One subsettable multi-asset refreshing ``refs`` (a chunk of the database's MVs)."""
    specs = {ref: plan.specs[ref] for ref in refs}
    outs = {names[ref]: _out_from_spec(spec) for ref, spec in specs.items()}
    internal_deps = {names[ref]: {d.asset_key for d in spec.deps} for ref, spec in specs.items()}
    own_keys = {spec.key for spec in specs.values()}
    external_deps = sorted(
        {d.asset_key for spec in specs.values() for d in spec.deps} - own_keys,
        key=lambda k: tuple(k.path),
    )

    @dg.multi_asset(
        name=name,
        outs=outs,
        # Nothing-typed inputs with our own names: deps= would derive input names from keys,
        # which fails for names with spaces or quotes.
        ins={
            f"source_{i}": dg.AssetIn(key=key, dagster_type=dg.Nothing)
            for i, key in enumerate(external_deps)
        },
        internal_asset_deps=internal_deps,
        check_specs=[c for ref in refs for c in plan.checks[ref]],
        can_subset=True,
        required_resource_keys={plan.resource_key},
        pool=pool,
        op_tags={"kind": "postgres"},
    )
    def refresh_materialized_views(
        context: AssetExecutionContext,
    ) -> Iterator[dg.MaterializeResult[Any]]:
        yield from RefreshStep(plan, context).run()

    return refresh_materialized_views
