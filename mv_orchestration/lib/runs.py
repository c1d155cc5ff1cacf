"""Which views already have a refresh queued or running, from one query of the instance.

Sensors and schedules use it to coalesce: they never request a run for a view that an
active run (of any origin: a sensor, a schedule, the UI, ``mvo refresh``) already targets.
A run is matched by its asset selection; a run launched for a whole job without one (the
job's launchpad) names no views and is not seen.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import dagster as dg

# Queued or in progress: a view targeted by one of these is busy.
ACTIVE_STATUSES = (
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
)
UNSTARTED_STATUSES = frozenset(ACTIVE_STATUSES[:3])


@dataclass(frozen=True)
class ActiveRuns:
    """The instance's active runs, by id, and the ids of those targeting each asset."""

    runs: Mapping[str, dg.RunRecord]
    by_asset: Mapping[dg.AssetKey, Sequence[str]]

    @classmethod
    def read(cls, instance: dg.DagsterInstance) -> ActiveRuns:
        records = instance.get_run_records(dg.RunsFilter(statuses=list(ACTIVE_STATUSES)))
        by_asset: dict[dg.AssetKey, list[str]] = {}
        for record in records:
            for key in record.dagster_run.asset_selection or ():
                by_asset.setdefault(key, []).append(record.dagster_run.run_id)
        return cls({r.dagster_run.run_id: r for r in records}, by_asset)

    def busy(self, keys: Iterable[dg.AssetKey]) -> dict[dg.AssetKey, Sequence[str]]:
        """The ``keys`` that an active run targets, with the ids of those runs."""
        return {k: self.by_asset[k] for k in keys if k in self.by_asset}

    def unstarted(self, run_id: str) -> bool:
        """Whether the run has not started yet (so it will read the data as of now or later)."""
        record = self.runs[run_id]
        return record.dagster_run.status in UNSTARTED_STATUSES and record.start_time is None


def short_id(run_id: str) -> str:
    """The first 8 characters of a run id, as the UI shows it."""
    return run_id[:8]
