"""Asset factory: every MV of one database is an output of one subsettable multi-asset.

One op per run refreshes the selected MVs in dependency order on one pooled connection, so
"materialize these five" is one run, upstream first, with no per-view process start. When a
refresh fails, the MVs downstream of it in the same run are skipped (not refreshed from stale
inputs), the others still refresh, and the step fails naming every failure.
"""

import contextlib
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import pandas as pd
import psycopg
from dagster import AssetExecutionContext
from psycopg import sql
from psycopg_pool import PoolTimeout

from mv_orchestration.core import history
from mv_orchestration.core.catalog import CatalogSnapshot, RelationRef
from mv_orchestration.core.graph import LineageGraph
from mv_orchestration.core.locks import LockWaitMonitor, sibling_connect
from mv_orchestration.core.refresh import RefreshResult, refresh_view
from mv_orchestration.core.sql import relation
from mv_orchestration.errors import MvoError, RefreshError
from mv_orchestration.lib.checks import (
    CheckThresholds,
    blocking_failures,
    check_specs,
    duration_check,
    method_check,
    row_count_check,
    success_rate_check,
    suggest_unique_index,
)
from mv_orchestration.lib.resource import PostgresResource
from mv_orchestration.lib.translator import MvTranslator, safe_name

PREVIEW_ROWS = 5
_IDENTIFIER = re.compile(r"[A-Za-z0-9_]+")


def refresh_metadata(result: RefreshResult) -> dict[str, Any]:
    """Typed materialization metadata, so the UI can plot the numbers."""
    meta: dict[str, Any] = {
        "duration_s": dg.MetadataValue.float(round(result.duration_s, 6)),
        "method": result.method,
        "blocks_readers": result.blocks_readers,
        "size_bytes": dg.MetadataValue.int(result.size_bytes),
        "attempts": dg.MetadataValue.int(result.attempts),
        "server_version": result.server_version,
        "started_at": dg.MetadataValue.timestamp(result.started_at),
    }
    if result.rows_after is not None:
        meta["dagster/row_count"] = dg.MetadataValue.int(result.rows_after)
    if result.rows_before is not None:
        meta["rows_before"] = dg.MetadataValue.int(result.rows_before)
    if result.rows_inserted is not None:
        meta["rows_inserted"] = dg.MetadataValue.int(result.rows_inserted)
    if result.rows_deleted is not None:
        meta["rows_deleted"] = dg.MetadataValue.int(result.rows_deleted)
    if result.lock_wait_s is not None:
        meta["lock_wait_s"] = dg.MetadataValue.float(round(result.lock_wait_s, 6))
    return meta


def preview_markdown(conn: psycopg.Connection[Any], ref: RelationRef, limit: int) -> str:
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL("SELECT * FROM {} LIMIT {}").format(
                relation(ref.schema, ref.name), sql.Literal(limit)
            )
        )
        names = [d.name for d in cur.description or []]
        frame = pd.DataFrame(cur.fetchall(), columns=names)
    if frame.empty:
        return "_(no rows)_"
    return str(frame.to_markdown(index=False))


# SQLSTATEs worth another attempt: connection exceptions (class 08), serialization failures
# and deadlocks, too many connections, a lock timeout that outlasted refresh_view's own
# retries, and server shutdowns/restarts.
TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "53300", "55P03", "57P01", "57P02", "57P03"})


def is_transient(exc: BaseException) -> bool:
    """Whether a failed refresh step may succeed when simply run again."""
    if isinstance(exc, PoolTimeout):
        return True
    code = getattr(exc, "sqlstate", None)
    if code:
        return code.startswith("08") or code in TRANSIENT_SQLSTATES
    # a connection lost mid-statement carries no SQLSTATE (libpq reports it client-side)
    cause = exc if isinstance(exc, psycopg.Error) else exc.__cause__
    return isinstance(cause, psycopg.OperationalError)


def failure_metadata(exc: RefreshError) -> dict[str, Any]:
    meta: dict[str, Any] = {"view": exc.view, "error": exc.message}
    if exc.sqlstate:
        meta["sqlstate"] = exc.sqlstate
    if exc.method:
        meta["method"] = exc.method
    if exc.lock_wait_s is not None:
        meta["lock_wait_s"] = dg.MetadataValue.float(round(exc.lock_wait_s, 6))
    if exc.blocking_pids:
        meta["blocking_pids"] = ", ".join(map(str, exc.blocking_pids))
        meta["lock_holders"] = dg.MetadataValue.md("\n".join(f"- {h}" for h in exc.lock_holders))
    return meta


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
) -> list[dg.AssetsDefinition | dg.AssetSpec]:
    """Asset definitions for one database: MVs (materializable) and their sources.

    ``history_schema=None`` turns off the refresh history (and the success-rate check).
    ``thresholds`` sets each MV's check thresholds (defaults: :class:`CheckThresholds`).
    """
    sources: list[dg.AssetsDefinition | dg.AssetSpec] = [
        translator.get_source_spec(rel) for rel in snapshot.relations
    ]
    if not snapshot.matviews:
        return sources

    graph = LineageGraph(snapshot)
    mvs = {mv.ref: mv for mv in snapshot.matviews}
    specs = {mv.ref: translator.get_mv_spec(mv, snapshot) for mv in snapshot.matviews}
    ref_by_key = {spec.key: ref for ref, spec in specs.items()}
    limits = {ref: (thresholds or {}).get(ref, CheckThresholds()) for ref in specs}
    # Dagster names a check's output after the asset key, with no override, so an MV whose
    # name holds spaces or quotes cannot carry checks (it still refreshes and records history).
    checks = {
        ref: check_specs(spec.key, limits[ref], with_history=history_schema is not None)
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
    outs = {names[ref]: _out_from_spec(spec) for ref, spec in specs.items()}
    internal_deps = {names[ref]: {d.asset_key for d in spec.deps} for ref, spec in specs.items()}
    own_keys = {spec.key for spec in specs.values()}
    external_deps = sorted(
        {d.asset_key for spec in specs.values() for d in spec.deps} - own_keys,
        key=lambda k: tuple(k.path),
    )

    def run_checks(
        conn: psycopg.Connection[Any], ref: RelationRef, result: RefreshResult
    ) -> list[dg.AssetCheckResult]:
        key, t = specs[ref].key, limits[ref]
        if not checks[ref]:
            return []
        out = [row_count_check(key, result, t), duration_check(key, result, t)]
        suggestion = suggest_unique_index(conn, mvs[ref]) if result.method == "blocking" else None
        out.append(method_check(key, mvs[ref], result, suggestion))
        if history_schema is not None:
            (stats,) = history.read_stats(
                conn, history_schema, hours=t.success_window_h, views=[(ref.schema, ref.name)]
            )
            out.append(success_rate_check(key, successes=stats.successes, total=stats.total, t=t))
        return out

    @dg.multi_asset(
        name=safe_name(name),
        outs=outs,
        # Nothing-typed inputs with our own names: deps= would derive input names from keys,
        # which fails for names with spaces or quotes.
        ins={
            f"source_{i}": dg.AssetIn(key=key, dagster_type=dg.Nothing)
            for i, key in enumerate(external_deps)
        },
        internal_asset_deps=internal_deps,
        check_specs=[c for specs_ in checks.values() for c in specs_],
        can_subset=True,
        required_resource_keys={resource_key},
        pool=pool,
        op_tags={"kind": "postgres"},
    )
    def refresh_materialized_views(
        context: AssetExecutionContext,
    ) -> Iterator[dg.MaterializeResult[Any]]:
        db: PostgresResource = getattr(context.resources, resource_key)
        selected = [ref_by_key[k] for k in context.selected_asset_keys]
        order = graph.refresh_order(selected)
        failed: dict[RelationRef, BaseException] = {}
        blocked: dict[RelationRef, list[str]] = {}
        skipped: list[RelationRef] = []
        total = len(order)
        done = 0
        try:
            with db.connection() as conn, contextlib.ExitStack() as stack:
                # one lock-wait monitor (and at most one extra connection) for the whole step
                monitor = (
                    stack.enter_context(
                        LockWaitMonitor(
                            sibling_connect(conn, "mvo lock monitor"), conn.info.backend_pid
                        )
                    )
                    if db.refresh_options.measure_lock_wait
                    else None
                )
                record = None
                if history_schema is not None:
                    history.ensure_history(conn, history_schema)
                    # each success row commits with its refresh (core/refresh.py)
                    record = history.success_record(conn, history_schema, run_id=context.run.run_id)
                for i, ref in enumerate(order, start=1):
                    done = i - 1
                    bad_upstream = graph.upstream_matviews([ref]) & (
                        set(failed) | set(blocked) | set(skipped)
                    )
                    if bad_upstream:
                        skipped.append(ref)
                        context.log.warning(
                            f"[{i}/{total}] skipped {ref.qualname}: upstream "
                            f"{', '.join(sorted(r.qualname for r in bad_upstream))} did not "
                            "refresh cleanly"
                        )
                        continue
                    context.log.info(f"[{i}/{total}] refreshing {ref.qualname} ...")
                    started = datetime.now(UTC)
                    try:
                        result = refresh_view(
                            conn,
                            ref.schema,
                            ref.name,
                            db.refresh_options,
                            on_retry=lambda e, n, d: context.log.warning(
                                f"{e}; retry {n} in {d:.1f}s"
                            ),
                            lock_monitor=monitor,
                            record=record,
                        )
                    except MvoError as exc:
                        failed[ref] = exc
                        context.log.error(f"[{i}/{total}] {exc}")
                        if history_schema is not None:
                            # a lost connection cannot write its own failure: use a new one
                            with (
                                db.connection() if conn.broken else contextlib.nullcontext(conn)
                            ) as writer:
                                history.record_failure(
                                    writer,
                                    history_schema,
                                    view_schema=ref.schema,
                                    view_name=ref.name,
                                    error=exc,
                                    started_at=started,
                                    finished_at=datetime.now(UTC),
                                    run_id=context.run.run_id,
                                )
                        if conn.broken:
                            break
                        continue
                    if result.record_error is not None:
                        # the refresh committed; its history row did not
                        context.log.error(
                            f"[{i}/{total}] {ref.qualname}: refreshed, but its history row in "
                            f"{history_schema} was not written: {result.record_error}"
                        )
                    check_results = run_checks(conn, ref, result)
                    stops = blocking_failures(check_results, checks[ref])
                    if stops:
                        blocked[ref] = stops
                    meta = refresh_metadata(result)
                    if preview_rows > 0:
                        meta["preview"] = dg.MetadataValue.md(
                            preview_markdown(conn, ref, preview_rows)
                        )
                    rows = f", {result.rows_after} rows" if result.rows_after is not None else ""
                    context.log.info(
                        f"[{i}/{total}] refreshed {ref.qualname} in {result.duration_s:.3f}s "
                        f"({result.method}{rows})"
                        + (f"; blocking check failed: {', '.join(stops)}" if stops else "")
                    )
                    yield dg.MaterializeResult(
                        asset_key=specs[ref].key, metadata=meta, check_results=check_results
                    )
                else:
                    done = total
        except (psycopg.OperationalError, PoolTimeout) as exc:
            # the database went away outside a refresh (connecting, history, checks, preview)
            failed[order[done] if done < total else order[-1]] = exc
            context.log.error(f"lost the database: {type(exc).__name__}: {exc}")
        if not failed:
            return
        not_done = [r for r in order[done + 1 :] if r not in failed and r not in skipped]
        description = (
            "; ".join(str(e) for e in failed.values())
            + (f"; skipped downstream: {', '.join(r.qualname for r in skipped)}" if skipped else "")
            + (f"; not attempted: {', '.join(r.qualname for r in not_done)}" if not_done else "")
        )
        retries = db.transient_retries
        if all(is_transient(e) for e in failed.values()) and context.retry_number < retries:
            delay = db.transient_retry_delay_s * (2**context.retry_number)
            context.log.warning(
                f"transient failure, retrying the step in {delay:.0f}s "
                f"(retry {context.retry_number + 1} of {retries}): {description}"
            )
            raise dg.RetryRequested(max_retries=retries, seconds_to_wait=delay)
        first = next(iter(failed.values()))
        raise dg.Failure(
            description=description,
            metadata=failure_metadata(first) if isinstance(first, RefreshError) else {},
        )

    return [*sources, refresh_materialized_views]
