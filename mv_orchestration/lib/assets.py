"""Asset factory: every MV of one database is an output of one subsettable multi-asset.

One op per run refreshes the selected MVs in dependency order on one pooled connection, so
"materialize these five" is one run, upstream first, with no per-view process start. What
the op does is :class:`~mv_orchestration.lib.refresh_step.RefreshStep`: when a refresh
fails, the MVs downstream of it in the same run are skipped (not refreshed from stale
inputs), the others still refresh, and the step fails naming every failure.
"""

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
    checks = {
        ref: check_specs(
            spec.key,
            limits[ref],
            with_history=history_schema is not None,
            concurrent=snapshot.matview(ref).has_usable_unique_index,
        )
        for ref, spec in specs.items()
    }
    names = output_names(specs)
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


def output_names(specs: Mapping[RelationRef, dg.AssetSpec]) -> dict[RelationRef, str]:
    """Each MV's op output name: ``^[A-Za-z0-9_]+$`` (Dagster's rule for output names) and
    unique, whatever the view's name (asset keys may hold any character PostgreSQL allows).

    The safe form of the key plus the view's position: two views whose names differ only in
    characters :func:`safe_name` drops (``a.b`` and ``a_b``, ``売上`` and ``販売``) still get
    different names, because the part after the last ``_`` is the position.
    """
    return {
        ref: f"{safe_name('__'.join(spec.key.path))}_{i}"
        for i, (ref, spec) in enumerate(specs.items())
    }


def check_output_name(output_name: str, check_name: str) -> str:
    """The op output of one check of the MV whose output is ``output_name``.

    Unique: output names are unique and end in a digit, and a view's check names are unique,
    start with a letter and hold no ``__``, so the last ``__`` splits the two apart again.
    Dagster's decorators would name it after the asset key instead
    (``AssetCheckSpec.get_python_identifier``), which is not a valid output name for keys with
    spaces, quotes, ``/``, ``$``, ``{`` or non-ASCII letters, and is the same for ``a.b`` and
    ``a_b``.
    """
    return f"{output_name}__{check_name}"


def _refresh_multi_asset(
    plan: RefreshPlan,
    refs: list[RelationRef],
    names: Mapping[RelationRef, str],
    *,
    name: str,
    pool: str | None,
) -> dg.AssetsDefinition:
    """One subsettable multi-asset refreshing ``refs`` (a chunk of the database's MVs).

    Built from an op and ``AssetsDefinition`` rather than ``@multi_asset``, so that every op
    input, output and check output is named here (``@multi_asset`` derives check outputs and
    ``deps`` inputs from asset keys, which fails for many PostgreSQL names).
    """
    specs = [plan.specs[ref] for ref in refs]
    own_keys = {spec.key for spec in specs}
    external_deps = sorted(
        {d.asset_key for spec in specs for d in spec.deps} - own_keys,
        key=lambda k: tuple(k.path),
    )
    # one Nothing-typed input per upstream asset outside this chunk: sources, and MVs of the
    # chunks this op must run after
    keys_by_input_name = {f"source_{i}": key for i, key in enumerate(external_deps)}
    keys_by_output_name = {names[ref]: plan.specs[ref].key for ref in refs}
    checks_by_output_name = {
        check_output_name(names[ref], check.name): check
        for ref in refs
        for check in plan.checks[ref]
    }
    outs = {
        **{out: dg.Out(is_required=False) for out in keys_by_output_name},
        **{out: dg.Out(is_required=False) for out in checks_by_output_name},
    }

    @dg.op(
        name=name,
        ins={input_name: dg.In(dg.Nothing) for input_name in keys_by_input_name},
        out=outs,
        required_resource_keys={plan.resource_key},
        pool=pool,
        tags={"kind": "postgres"},
    )
    def refresh_materialized_views(
        context: AssetExecutionContext,
    ) -> Iterator[dg.MaterializeResult[Any]]:
        yield from RefreshStep(plan, context).run()

    return dg.AssetsDefinition(
        node_def=refresh_materialized_views,
        keys_by_input_name=keys_by_input_name,
        keys_by_output_name=keys_by_output_name,
        check_specs_by_output_name=checks_by_output_name,
        specs=specs,
        can_subset=True,
    )
