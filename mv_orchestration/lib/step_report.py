"""What a refresh step reports: materialization and failure metadata, the preview, and
which failures are worth retrying."""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import dagster as dg
import pandas as pd
import psycopg
from psycopg import sql
from psycopg_pool import PoolTimeout

from mv_orchestration.core.catalog import RelationRef
from mv_orchestration.core.refresh import RefreshResult
from mv_orchestration.core.sql import relation
from mv_orchestration.errors import RefreshError


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


@dataclass(frozen=True)
class LagFigures:
    """What one refresh achieved against its target lag.

    ``data_timestamp``: every change of every root source committed before it is in the view.
    ``lag_s``: for a refresh the target-lag sensor requested, the age of the oldest change the
    view was missing when the refresh ended; ``target_s`` the target it was requested for.
    """

    data_timestamp: datetime
    lag_s: float | None = None
    target_s: float | None = None

    @property
    def target_met(self) -> bool | None:
        if self.lag_s is None or self.target_s is None:
            return None
        return self.lag_s <= self.target_s


def lag_figures(
    ref: RelationRef,
    result: RefreshResult,
    upstream: Mapping[RelationRef, datetime],
    planned: Mapping[RelationRef, tuple[float, float]],
) -> LagFigures:
    """``ref``'s figures: its data timestamp is the refresh's start (the refresh sees every
    commit before it) or, if earlier, the data timestamp of an MV upstream of it refreshed
    before it in the same run (``upstream``); ``planned`` is the run's ``mvo/lag`` tag."""
    stamp = min([result.started_at, *upstream.values()])
    if ref not in planned:
        return LagFigures(stamp)
    since, target = planned[ref]
    return LagFigures(stamp, max(0.0, result.finished_at.timestamp() - since), target)


def lag_metadata(figures: LagFigures) -> dict[str, Any]:
    """``data_timestamp`` and, for target-lag runs, ``lag_at_completion_s``,
    ``target_lag_s`` and ``target_met``."""
    meta: dict[str, Any] = {
        "data_timestamp": dg.MetadataValue.timestamp(figures.data_timestamp),
    }
    if figures.lag_s is not None:
        meta["lag_at_completion_s"] = dg.MetadataValue.float(round(figures.lag_s, 3))
    if figures.target_s is not None:
        meta["target_lag_s"] = dg.MetadataValue.float(figures.target_s)
    if figures.target_met is not None:
        meta["target_met"] = dg.MetadataValue.bool(figures.target_met)
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
