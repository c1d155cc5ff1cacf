"""One execution of the refresh op: the selected MVs of one database, in dependency order.

:class:`RefreshStep` runs in four named phases:

1. **plan** — the selection in dependency order; on a retry of the step, without the views
   this run has already materialized, so a transient failure redoes only what failed and
   what is downstream of it;
2. **session** — one pooled connection (named ``mvo/<run id>``, see ``lib.resource``), one
   lock-wait monitor, and the history, which never stops a refresh: if it cannot be created
   or written, the reason is one line in the run log and the views refresh without it;
3. **each view** — skipped when an MV upstream of it did not refresh cleanly; else refreshed
   and reported (checks, metadata, preview). Its refresh ends in one of four ways: done; a
   failure (history row, named in the step's failure); already running in another session,
   a *skip* naming the run that holds it (no failure, no history row); or an interruption
   (a terminated run, a signal): the server's statement is cancelled by ``core.refresh``,
   the attempt gets a ``cancelled`` history row and an observation, and the interruption
   goes on to Dagster, which ends the run CANCELED;
4. **outcome** — success, a retry when every failure was transient, or ``dg.Failure``
   naming each failed view with its SQLSTATE and message.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import psycopg
from dagster import AssetExecutionContext
from psycopg_pool import PoolTimeout

from mv_orchestration.core import history
from mv_orchestration.core.catalog import MaterializedView, RelationRef
from mv_orchestration.core.graph import LineageGraph
from mv_orchestration.core.locks import LockWaitMonitor, sibling_connect
from mv_orchestration.core.refresh import Record, RefreshResult, refresh_view
from mv_orchestration.errors import MvoError, RefreshError, RefreshInProgressError
from mv_orchestration.lib.checks import (
    CheckThresholds,
    blocking_failures,
    duration_check,
    method_check,
    row_count_check,
    success_rate_check,
    success_rate_unknown,
    suggest_unique_index,
)
from mv_orchestration.lib.lag_sensor import LAG_TAG, parse_lag_tag
from mv_orchestration.lib.resource import PostgresResource, run_id_of_application
from mv_orchestration.lib.step_report import (
    LagFigures,
    failure_metadata,
    is_transient,
    lag_figures,
    lag_metadata,
    preview_markdown,
    refresh_metadata,
)

StepEvent = dg.MaterializeResult[Any]
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class RefreshPlan:
    """What the op knows about its database, computed once per definitions load."""

    graph: LineageGraph
    mvs: Mapping[RelationRef, MaterializedView]
    specs: Mapping[RelationRef, dg.AssetSpec]
    ref_by_key: Mapping[dg.AssetKey, RelationRef]
    limits: Mapping[RelationRef, CheckThresholds]
    checks: Mapping[RelationRef, list[dg.AssetCheckSpec]]
    resource_key: str
    preview_rows: int
    history_schema: str | None


def interruption_reason(exc: BaseException) -> str:
    """What stopped a refresh, for its ``cancelled`` history row."""
    if isinstance(exc, dg.DagsterExecutionInterruptedError):
        return "run terminated"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (SIGINT)"
    if isinstance(exc, SystemExit):
        return "process exiting"
    return f"interrupted ({type(exc).__name__})"


class RefreshStep:
    """One execution of the refresh op (see the module docstring for its phases)."""

    def __init__(self, plan: RefreshPlan, context: AssetExecutionContext) -> None:
        self.plan = plan
        self.context = context
        self.log = context.log
        self.db: PostgresResource = getattr(context.resources, plan.resource_key)
        self.run_id = context.run.run_id
        self.history_schema = plan.history_schema
        self.record: Record | None = None
        # history version 3 and later: each attempt's row is written before it starts
        self.attempt_rows = False
        self.order: list[RelationRef] = []
        self.failed: dict[RelationRef, BaseException] = {}
        self.blocked: dict[RelationRef, list[str]] = {}
        self.skipped: list[RelationRef] = []
        # views another session was refreshing: view -> who ("run <id>", "pid 12 (...)")
        self.held: dict[RelationRef, str] = {}
        self.done = 0
        # target lag: the views the run was requested for, and data timestamps so far
        self.planned = parse_lag_tag(context.run.tags.get(LAG_TAG))
        self.data_timestamps: dict[RelationRef, datetime] = {}

    # --- 0. the whole step ------------------------------------------------------------------

    def run(self) -> Iterator[StepEvent]:
        try:
            yield from self._run()
        except (Exception, GeneratorExit):
            raise
        except BaseException as exc:
            self._mark_canceling(exc)
            raise

    def _mark_canceling(self, exc: BaseException) -> None:
        """An interrupted step ends its run CANCELED, not FAILURE: Dagster treats an
        interruption as a failure unless the run was asked to stop (CANCELING), which a
        signal or a stopping ``mvo dev`` does not do."""
        with contextlib.suppress(Exception):
            run = self.context.instance.get_run_by_id(self.run_id)
            if run is not None and run.status == dg.DagsterRunStatus.STARTED:
                self.context.instance.report_run_canceling(
                    run, message=f"refresh {interruption_reason(exc)}: the run ends canceled"
                )

    def _run(self) -> Iterator[StepEvent]:
        self.order = self._plan()
        if not self.order:
            return
        try:
            with self._session() as (conn, monitor):
                for i, ref in enumerate(self.order, start=1):
                    self.done = i - 1
                    yield from self._view(conn, monitor, i, ref)
                    if conn.closed or conn.broken:
                        break
                else:
                    self.done = len(self.order)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            # the database went away outside a refresh (connecting, history, checks, preview)
            current = self.order[min(self.done, len(self.order) - 1)]
            self.failed.setdefault(current, exc)
            self.log.error(f"lost the database: {type(exc).__name__}: {exc}")
        self._outcome()

    # --- 1. plan ----------------------------------------------------------------------------

    def _plan(self) -> list[RelationRef]:
        selected = [self.plan.ref_by_key[k] for k in self.context.selected_asset_keys]
        order = self.plan.graph.refresh_order(selected)
        if self.context.retry_number == 0:
            return order
        done = self._materialized_in_this_run()
        left = [r for r in order if self.plan.specs[r].key not in done]
        self.log.info(
            f"retry {self.context.retry_number}: {len(order) - len(left)} view(s) already "
            f"refreshed in this run are not refreshed again; {len(left)} left"
        )
        return left

    def _materialized_in_this_run(self) -> set[dg.AssetKey]:
        keys: set[dg.AssetKey] = set()
        cursor: str | None = None
        while True:
            page = self.context.instance.get_records_for_run(
                self.run_id,
                cursor=cursor,
                of_type=dg.DagsterEventType.ASSET_MATERIALIZATION,
                limit=1000,
            )
            for rec in page.records:
                mat = rec.event_log_entry.asset_materialization
                if mat is not None:
                    keys.add(mat.asset_key)
            if not page.has_more:
                return keys
            cursor = page.cursor

    # --- 2. session -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _session(
        self,
    ) -> Iterator[tuple[psycopg.Connection[Any], LockWaitMonitor | None]]:
        with self.db.connection() as conn, contextlib.ExitStack() as stack:
            # one lock-wait monitor (and at most one extra connection) for the whole step
            monitor = (
                stack.enter_context(
                    LockWaitMonitor(
                        sibling_connect(conn, "mvo lock monitor"), conn.info.backend_pid
                    )
                )
                if self.db.refresh_options.measure_lock_wait
                else None
            )
            self._open_history(conn)
            yield conn, monitor

    def _open_history(self, conn: psycopg.Connection[Any]) -> None:
        """Create or upgrade the history; on failure, one line, and refresh without it."""
        schema = self.history_schema
        if schema is None:
            return
        try:
            history.ensure_history(conn, schema)
        except psycopg.Error as exc:
            if conn.broken:
                raise
            self.log.error(history.unavailable_message(conn, schema, exc))
            if history.current_version(conn, schema) == 0:
                self.history_schema = None
                return
        # each success row commits with its refresh (core/refresh.py)
        self.record = history.success_record(conn, schema, run_id=self.run_id)
        self.attempt_rows = history.current_version(conn, schema) >= 3
        if self.attempt_rows:
            self._sweep_abandoned(conn, schema)

    def _sweep_abandoned(self, conn: psycopg.Connection[Any], schema: str) -> None:
        """Close the rows of attempts whose session died with them (a SIGKILLed worker, a
        lost connection, a crashed server): they were never completed."""
        try:
            swept = history.sweep_abandoned(conn, schema)
        except psycopg.Error as exc:
            if conn.broken:
                raise
            self.log.error(f"{schema}: abandoned attempts not closed: {_one_line(exc)}")
            return
        if swept:
            self.log.warning(
                f"{swept} earlier refresh attempt(s) whose session had ended are recorded as "
                f"cancelled in {schema}.refresh_history"
            )

    def _begin_attempt(
        self, conn: psycopg.Connection[Any], ref: RelationRef, started: datetime
    ) -> int | None:
        """The attempt's ``running`` row, committed before the refresh starts, so that even
        a killed process leaves one; on failure, one line, and rows written afterwards."""
        schema = self.history_schema
        if schema is None or not self.attempt_rows:
            return None
        try:
            return history.begin_attempt(
                conn,
                schema,
                view_schema=ref.schema,
                view_name=ref.name,
                started_at=started,
                run_id=self.run_id,
            )
        except psycopg.Error as exc:
            if conn.broken:
                raise
            self.attempt_rows = False
            self.log.error(
                f"{schema}: attempts are recorded when they end, not before: {_one_line(exc)}"
            )
            return None

    # --- 3. each view -----------------------------------------------------------------------

    def _view(
        self,
        conn: psycopg.Connection[Any],
        monitor: LockWaitMonitor | None,
        i: int,
        ref: RelationRef,
    ) -> Iterator[StepEvent]:
        tag = f"[{i}/{len(self.order)}]"
        if self._skipped_for_upstream(ref, tag):
            return
        self.log.info(f"{tag} refreshing {ref.qualname} ...")
        started = datetime.now(UTC)
        attempt = self._begin_attempt(conn, ref, started)
        record = self.record
        if attempt is not None and self.history_schema is not None:
            record = history.success_record(
                conn, self.history_schema, run_id=self.run_id, attempt_id=attempt
            )
        try:
            result = refresh_view(
                conn,
                ref.schema,
                ref.name,
                self.db.refresh_options,
                on_retry=lambda e, n, d: self.log.warning(f"{e}; retry {n} in {d:.1f}s"),
                lock_monitor=monitor,
                record=record,
            )
        except RefreshInProgressError as exc:
            self._held_elsewhere(conn, ref, exc, tag, attempt)
            return
        except MvoError as exc:
            self._failed(conn, ref, exc, started, tag, attempt)
            return
        except Exception:
            raise
        except BaseException as exc:
            self._cancelled(ref, exc, started, tag, attempt)
            raise
        yield self._report(conn, ref, result, tag, self._lag(conn, ref, result, attempt))

    def _skipped_for_upstream(self, ref: RelationRef, tag: str) -> bool:
        unclean = set(self.failed) | set(self.blocked) | set(self.skipped) | set(self.held)
        bad = self.plan.graph.upstream_matviews([ref]) & unclean
        if not bad:
            return False
        self.skipped.append(ref)
        names = ", ".join(sorted(r.qualname for r in bad))
        held = [self.held[r] for r in bad if r in self.held]
        why = f"is being refreshed by {held[0]}" if held else "did not refresh cleanly"
        self.log.warning(f"{tag} skipped {ref.qualname}: upstream {names} {why}")
        return True

    def _held_elsewhere(
        self,
        conn: psycopg.Connection[Any],
        ref: RelationRef,
        exc: RefreshInProgressError,
        tag: str,
        attempt: int | None,
    ) -> None:
        """Overlap: another session refreshes this view now. A skip, not a failure (and no
        history row: the attempt's ``running`` row goes)."""
        if attempt is not None and self.history_schema is not None:
            with contextlib.suppress(psycopg.Error):
                history.forget_attempt(conn, self.history_schema, attempt)
        run = run_id_of_application(exc.holder_application)
        if run:
            who = f"run {run}"
        elif exc.holder_pid is not None:
            who = f"pid {exc.holder_pid} ({exc.holder_application or 'no application name'})"
        else:
            who = "another session (it has just finished)"
        self.held[ref] = who
        self.log.warning(f"{tag} skipped {ref.qualname}: held by {who}")
        meta: dict[str, Any] = {"mvo/skipped": "already being refreshed", "held_by": who}
        if run:
            meta["held_by_run"] = dg.MetadataValue.dagster_run(run)
        self.context.log_event(
            dg.AssetObservation(asset_key=self.plan.specs[ref].key, metadata=meta)
        )

    def _failed(
        self,
        conn: psycopg.Connection[Any],
        ref: RelationRef,
        exc: MvoError,
        started: datetime,
        tag: str,
        attempt: int | None,
    ) -> None:
        self.failed[ref] = exc
        self.log.error(f"{tag} {exc}")
        schema = self.history_schema
        if schema is None:
            return
        try:
            # a lost connection cannot write its own failure: use a new one
            with self.db.connection() if conn.broken else contextlib.nullcontext(conn) as writer:
                history.record_failure(
                    writer,
                    schema,
                    view_schema=ref.schema,
                    view_name=ref.name,
                    error=exc,
                    started_at=started,
                    finished_at=datetime.now(UTC),
                    run_id=self.run_id,
                    attempt_id=attempt,
                )
        except (psycopg.Error, PoolTimeout) as write_error:
            self.log.error(
                f"{tag} {ref.qualname}: its failure row in {schema} was not written: "
                f"{_one_line(write_error)}"
            )

    def _cancelled(
        self,
        ref: RelationRef,
        exc: BaseException,
        started: datetime,
        tag: str,
        attempt: int | None,
    ) -> None:
        """An interrupted refresh (rolled back by core.refresh): a ``cancelled`` row and an
        observation, written quickly on a new connection, before Dagster ends the run."""
        reason = interruption_reason(exc)
        finished = datetime.now(UTC)
        self.log.warning(f"{tag} cancelled {ref.qualname}: {reason}; it keeps its previous data")
        with contextlib.suppress(Exception):
            self.context.log_event(
                dg.AssetObservation(
                    asset_key=self.plan.specs[ref].key,
                    metadata={
                        "mvo/cancelled": reason,
                        "duration_s": dg.MetadataValue.float(
                            round((finished - started).total_seconds(), 6)
                        ),
                    },
                )
            )
        schema = self.history_schema
        if schema is None:
            return
        try:
            with self.db.quick_connection() as writer:
                history.record_cancelled(
                    writer,
                    schema,
                    view_schema=ref.schema,
                    view_name=ref.name,
                    reason=reason,
                    started_at=started,
                    finished_at=finished,
                    run_id=self.run_id,
                    attempt_id=attempt,
                )
        except Exception as write_error:  # the interruption goes on regardless
            self.log.error(
                f"{tag} {ref.qualname}: its cancelled row in {schema} was not written: "
                f"{_one_line(write_error)}"
            )

    def _lag(
        self,
        conn: psycopg.Connection[Any],
        ref: RelationRef,
        result: RefreshResult,
        attempt: int | None,
    ) -> LagFigures:
        """The refresh's data timestamp and lag (metadata, and its history row)."""
        upstream = self.plan.graph.upstream_matviews([ref])
        stamps = {u: t for u, t in self.data_timestamps.items() if u in upstream}
        figures = lag_figures(ref, result, stamps, self.planned)
        self.data_timestamps[ref] = figures.data_timestamp
        schema = self.history_schema
        if schema is None or result.record_error is not None:
            return figures
        try:
            history.record_lag(
                conn,
                schema,
                view_schema=ref.schema,
                view_name=ref.name,
                run_id=self.run_id,
                attempt_id=attempt,
                data_timestamp=figures.data_timestamp,
                lag_at_completion_s=figures.lag_s,
                target_met=figures.target_met,
            )
        except psycopg.Error as exc:  # an older history (no version 4): figures in metadata
            if conn.broken:
                raise
            self.log.warning(f"{ref.qualname}: lag figures not in {schema}: {_one_line(exc)}")
        return figures

    def _report(
        self,
        conn: psycopg.Connection[Any],
        ref: RelationRef,
        result: RefreshResult,
        tag: str,
        figures: LagFigures,
    ) -> StepEvent:
        if result.record_error is not None:
            # the refresh committed; its history row did not
            self.log.error(
                f"{tag} {ref.qualname}: refreshed, but its history row in "
                f"{self.history_schema} was not written: {result.record_error}"
            )
        check_results = self._checks(conn, ref, result)
        stops = blocking_failures(check_results, self.plan.checks[ref])
        if stops:
            self.blocked[ref] = stops
        meta = {**refresh_metadata(result), **lag_metadata(figures)}
        if self.plan.preview_rows > 0:
            meta["preview"] = dg.MetadataValue.md(
                preview_markdown(conn, ref, self.plan.preview_rows)
            )
        rows = f", {result.rows_after} rows" if result.rows_after is not None else ""
        self.log.info(
            f"{tag} refreshed {ref.qualname} in {result.duration_s:.3f}s ({result.method}{rows})"
            + (f"; blocking check failed: {', '.join(stops)}" if stops else "")
        )
        return dg.MaterializeResult(
            asset_key=self.plan.specs[ref].key, metadata=meta, check_results=check_results
        )

    def _checks(
        self, conn: psycopg.Connection[Any], ref: RelationRef, result: RefreshResult
    ) -> list[dg.AssetCheckResult]:
        key, t = self.plan.specs[ref].key, self.plan.limits[ref]
        if not self.plan.checks[ref]:
            return []
        mv = self.plan.mvs[ref]
        out = [row_count_check(key, result, t), duration_check(key, result, t)]
        suggestion = suggest_unique_index(conn, mv) if result.method == "blocking" else None
        out.append(method_check(key, mv, result, suggestion))
        if self.plan.history_schema is not None:
            stats = self._stats(conn, ref, t)
            out.append(
                success_rate_unknown(key, "the refresh history could not be read (see the run log)")
                if stats is None
                else success_rate_check(key, successes=stats.successes, total=stats.total, t=t)
            )
        return out

    def _stats(
        self, conn: psycopg.Connection[Any], ref: RelationRef, t: CheckThresholds
    ) -> history.ViewStats | None:
        if self.history_schema is None:
            return None
        try:
            (stats,) = history.read_stats(
                conn, self.history_schema, hours=t.success_window_h, views=[(ref.schema, ref.name)]
            )
        except psycopg.Error:
            if conn.broken:
                raise
            return None
        return stats

    # --- 4. outcome -------------------------------------------------------------------------

    def _outcome(self) -> None:
        if not self.failed:
            return
        not_done = [
            r for r in self.order[self.done + 1 :] if r not in self.failed and r not in self.skipped
        ]
        description = "; ".join(_one_line(e) for e in self.failed.values())
        if self.skipped:
            description += f"; skipped downstream: {', '.join(r.qualname for r in self.skipped)}"
        if not_done:
            description += f"; not attempted: {', '.join(r.qualname for r in not_done)}"
        retries = self.db.transient_retries
        retry = self.context.retry_number
        if all(is_transient(e) for e in self.failed.values()) and retry < retries:
            delay = self.db.transient_retry_delay_s * (2**retry)
            self.log.warning(
                f"transient failure, retrying the failed views in {delay:.0f}s "
                f"(retry {retry + 1} of {retries}): {description}"
            )
            raise dg.RetryRequested(max_retries=retries, seconds_to_wait=delay)
        raise dg.Failure(description=description, metadata=self._failure_metadata())

    def _failure_metadata(self) -> dict[str, Any]:
        first = next(iter(self.failed.values()))
        meta = failure_metadata(first) if isinstance(first, RefreshError) else {}
        meta["failed_views"] = dg.MetadataValue.json(
            [
                {
                    "view": ref.qualname,
                    "sqlstate": getattr(exc, "sqlstate", None),
                    "message": exc.message if isinstance(exc, RefreshError) else _one_line(exc),
                }
                for ref, exc in self.failed.items()
            ]
        )
        return meta


def _one_line(exc: BaseException) -> str:
    text = _SPACE.sub(" ", str(exc)).strip()
    return text or type(exc).__name__
