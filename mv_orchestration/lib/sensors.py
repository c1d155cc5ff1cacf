"""A sensor that refreshes MVs when their source tables change, and never otherwise.

Each tick runs one fingerprint query (:mod:`mv_orchestration.core.changes`) for every table
upstream of the change-driven MVs, records each changed table's token as an observation of
its source asset (a Dagster data version, so the UI shows which MVs are stale), and requests
one run that refreshes the change-driven MVs whose sources moved since they were last
refreshed. The multi-asset refreshes them in dependency order.

A change is never lost: each view keeps the source tokens it is fresh against (the cursor,
:class:`~mv_orchestration.core.changes.ChangeState`), and they move only when the instance
shows a materialization of the view by a run that is known to have started after those
tokens were read:

* a run the sensor requested (found by its run key) refreshes the view against the tokens
  of the request. If it ends without materializing the view (failed, canceled, or the view
  skipped) the change stays pending and is requested again, at once the first time, then
  after 1, 2, 4, ... sensor intervals (at most 30 min) while it keeps failing;
* a run of any other origin (a schedule, the UI, ``mvo refresh``) that the sensor saw
  queued, not yet started, counts against the tokens of that tick; any run counts against
  the previous tick's tokens if it started after they were read. A run that started
  earlier than every token set the sensor still knows is not credited, and the view is
  refreshed once more.

Coalescing: a view with a queued or in-progress run of any origin (one query per tick for
the instance's active runs, matched by their asset selection) is not requested again. An
unreadable cursor is logged once and rebuilt from the instance (see :func:`_rebuild`).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import dagster as dg

from mv_orchestration.core.catalog import CatalogSnapshot, RelationRef
from mv_orchestration.core.changes import (
    ChangeDetectionError,
    ChangeState,
    Claim,
    Fingerprint,
    ViewState,
    change_sources,
    fingerprints,
    state_from_json,
    state_to_json,
)
from mv_orchestration.core.graph import LineageGraph
from mv_orchestration.lib.resource import PostgresResource
from mv_orchestration.lib.runs import ActiveRuns, short_id
from mv_orchestration.lib.translator import MvTranslator

# Tags Dagster writes on runs and events (dagster._core.storage.tags and
# dagster._core.definitions.data_version, not exported publicly).
DATA_VERSION_TAG = "dagster/data_version"
RUN_KEY_TAG = "dagster/run_key"
SENSOR_NAME_TAG = "dagster/sensor_name"
_WILL_RETRY_TAG = "dagster/will_retry"
_AUTO_RETRY_RUN_ID_TAG = "dagster/auto_retry_run_id"
_MAX_TAG_CHARS = 500
_MAX_LISTED = 5
BACKOFF_CAP_S = 1800.0
# materializations examined per view and tick (newest first)
_MATERIALIZATIONS_PER_VIEW = 50


def observation(key: dg.AssetKey, fp: Fingerprint) -> dg.AssetObservation:
    """The observation that records ``fp`` as the data version of source asset ``key``."""
    return dg.AssetObservation(
        asset_key=key,
        description="change fingerprint from pg_stat_all_tables and relfilenode",
        metadata={
            "n_tup_ins": dg.MetadataValue.int(fp.inserted),
            "n_tup_upd": dg.MetadataValue.int(fp.updated),
            "n_tup_del": dg.MetadataValue.int(fp.deleted),
            "storage": ", ".join(fp.storage),
            "server_started": dg.MetadataValue.timestamp(fp.server_started),
            "stats_reset": fp.stats_reset.isoformat() if fp.stats_reset else "never",
        },
        tags={DATA_VERSION_TAG: dg.DataVersion(fp.token).value},
    )


def backoff_s(failures: int, interval_s: float) -> float:
    """How long a view waits after its ``failures``-th consecutive failed refresh.

    0 after the first (requested again on the next tick), then one sensor interval, doubling
    per failure, at most :data:`BACKOFF_CAP_S`.
    """
    if failures <= 1:
        return 0.0
    return min(max(interval_s, 1.0) * 2.0 ** (failures - 2), BACKOFF_CAP_S)


def _run_key(requested: Mapping[RelationRef, ViewState], tokens: Mapping[RelationRef, str]) -> str:
    # the failure count is part of the key: a retry is a new run, not a duplicate of the last
    text = "\n".join(
        f"{v.schema}\0{v.name}\0{s.failures}" for v, s in sorted(requested.items())
    ) + "".join(f"\n{r.schema}\0{r.name}\0{t}" for r, t in sorted(tokens.items()))
    return "mvo-changes-" + hashlib.sha256(text.encode()).hexdigest()[:24]


def _truncate(text: str) -> str:
    return text if len(text) <= _MAX_TAG_CHARS else text[: _MAX_TAG_CHARS - 1] + "..."


def _listing(names: Iterable[str]) -> str:
    items = sorted(names)
    more = len(items) - _MAX_LISTED
    return ", ".join(items[:_MAX_LISTED]) + (f" and {more} more" if more > 0 else "")


@dataclass
class _Runs:
    """What one tick knows about runs: the active ones and the sensor's own by run key."""

    active: ActiveRuns
    own: dict[str, list[dg.RunRecord]] = field(default_factory=dict)  # run key → runs

    def read_own(self, instance: dg.DagsterInstance, sensor: str, keys: Collection[str]) -> None:
        if not keys:
            return
        records = instance.get_run_records(
            dg.RunsFilter(tags={RUN_KEY_TAG: sorted(keys), SENSOR_NAME_TAG: sensor})
        )
        for record in records:
            self.own.setdefault(record.dagster_run.tags[RUN_KEY_TAG], []).append(record)

    def in_flight(self, claim: Claim) -> bool:
        """Whether a claim's run may still refresh its view."""
        if not claim.own:
            return claim.run in self.active.runs
        for record in self.own.get(claim.run, []):
            run = record.dagster_run
            retrying = (
                run.status == dg.DagsterRunStatus.FAILURE
                and run.tags.get(_WILL_RETRY_TAG) == "true"
                and _AUTO_RETRY_RUN_ID_TAG not in run.tags
            )  # the daemon is about to re-execute it, under the same run key
            if run.run_id in self.active.runs or retrying:
                return True
        return False

    def run_ids(self, claim: Claim) -> set[str]:
        if not claim.own:
            return {claim.run}
        return {r.dagster_run.run_id for r in self.own.get(claim.run, [])}


@dataclass(frozen=True)
class _Materialization:
    run_id: str
    storage_id: int


def _new_materializations(
    instance: dg.DagsterInstance, views: Mapping[dg.AssetKey, int]
) -> dict[dg.AssetKey, list[_Materialization]]:
    """Materializations newer than each view's storage id: one query, plus one per view
    that has any."""
    if not views:
        return {}
    latest = {
        r.asset_entry.asset_key: r.asset_entry.last_materialization_record
        for r in instance.get_asset_records(list(views))
    }
    result: dict[dg.AssetKey, list[_Materialization]] = {}
    for key, after in views.items():
        record = latest.get(key)
        if record is None or record.storage_id <= after:
            continue
        found = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, after_storage_id=after),
            limit=_MATERIALIZATIONS_PER_VIEW,
        )
        result[key] = [_Materialization(r.run_id, r.storage_id) for r in found.records]
    return result


def _start_times(instance: dg.DagsterInstance, run_ids: Collection[str]) -> dict[str, float]:
    if not run_ids:
        return {}
    records = instance.get_run_records(dg.RunsFilter(run_ids=sorted(run_ids)))
    return {r.dagster_run.run_id: r.start_time for r in records if r.start_time is not None}


def _rebuild(
    instance: dg.DagsterInstance,
    views: Sequence[RelationRef],
    sources: Mapping[RelationRef, frozenset[RelationRef]],
    keys: Mapping[RelationRef, dg.AssetKey],
    source_keys: Mapping[RelationRef, dg.AssetKey],
) -> dict[RelationRef, ViewState]:
    """Each view's state from the instance, for a cursor that is unreadable or lacks it.

    A view is fresh against a source's last observed token (the sensor records every token
    it reads as an observation) when the run of the view's last materialization started
    after that observation; any other source counts as changed, so the view is refreshed.
    """
    wanted = sorted(set().union(*(sources[v] for v in views)))
    observed: dict[RelationRef, tuple[str, float]] = {}
    for ref in wanted:  # one query per source table, only when rebuilding
        for record in instance.fetch_observations(source_keys[ref], limit=1).records:
            obs = record.asset_observation
            token = obs.tags.get(DATA_VERSION_TAG) if obs is not None else None
            if token:
                observed[ref] = (token, record.timestamp)
    latest = {
        r.asset_entry.asset_key: r.asset_entry.last_materialization_record
        for r in instance.get_asset_records([keys[v] for v in views])
    }
    starts = _start_times(instance, {m.run_id for m in latest.values() if m is not None})
    result: dict[RelationRef, ViewState] = {}
    for view in views:
        mat = latest.get(keys[view])
        started = starts.get(mat.run_id, 0.0) if mat is not None else 0.0
        fresh = {
            ref: token
            for ref, (token, at) in observed.items()
            if ref in sources[view] and started > at
        }
        result[view] = ViewState(fresh, started, mat.storage_id if mat is not None else 0)
    return result


@dataclass
class _Tick:
    """What one tick found, for its decision and its message."""

    views: dict[RelationRef, ViewState]
    refreshed: set[RelationRef] = field(default_factory=set)
    failed: dict[RelationRef, int] = field(default_factory=dict)  # view → failures so far
    busy: dict[RelationRef, list[str]] = field(default_factory=dict)  # view → run ids
    waiting: list[RelationRef] = field(default_factory=list)  # a requested run will retry
    backing_off: dict[RelationRef, float] = field(default_factory=dict)  # view → retry at


class _ChangeSensor:
    """The tick logic of one change sensor."""

    def __init__(
        self,
        *,
        name: str,
        sources: Mapping[RelationRef, frozenset[RelationRef]],
        order: Sequence[RelationRef],
        keys: Mapping[RelationRef, dg.AssetKey],
        source_keys: Mapping[RelationRef, dg.AssetKey],
        interval_s: float,
        treat_first_as_change: bool,
        clock: Callable[[], float],
    ) -> None:
        self.name = name
        self.sources = sources
        self.order = order
        self.keys = keys
        self.source_keys = source_keys
        self.interval_s = interval_s
        self.treat_first_as_change = treat_first_as_change
        self.clock = clock

    def _of(self, view: RelationRef, tokens: Mapping[RelationRef, str]) -> dict[RelationRef, str]:
        """``tokens`` restricted to the sources of ``view``."""
        return {s: t for s, t in tokens.items() if s in self.sources[view]}

    # --- the cursor ---------------------------------------------------------------------------

    def load(
        self,
        context: dg.SensorEvaluationContext,
        current: Mapping[RelationRef, str],
        at: float,
        cursor: str | None = None,
    ) -> tuple[ChangeState, str | None]:
        """The state in ``cursor`` (default: the context's), a first tick's baseline, or a
        rebuild (with a note)."""
        cursor = context.cursor if cursor is None else cursor
        if not cursor:
            baseline = {
                v: ViewState({} if self.treat_first_as_change else self._of(v, current), at)
                for v in self.order
            }
            return ChangeState({}, 0.0, baseline), None
        rebuild: Sequence[RelationRef]
        try:
            state = state_from_json(cursor)
            note = None
            rebuild = [v for v in self.order if v not in state.views]
        except ChangeDetectionError as exc:
            # logged once: the rebuilt cursor is written back on this tick
            context.log.warning(f"{exc}; rebuilt it from the instance's event log")
            state, note, rebuild = ChangeState({}, 0.0, {}), f"cursor rebuilt ({exc})", self.order
        views = {v: s for v, s in state.views.items() if v in self.sources}
        if rebuild:
            views.update(
                _rebuild(context.instance, rebuild, self.sources, self.keys, self.source_keys)
            )
        return ChangeState(state.seen, state.seen_at, views), note

    # --- the phases of a tick -----------------------------------------------------------------

    def resolve(
        self,
        instance: dg.DagsterInstance,
        state: ChangeState,
        current: Mapping[RelationRef, str],
        runs: _Runs,
        now: float,
    ) -> _Tick:
        """Credit refreshes found in the instance; count requested runs that ended without."""
        tick = _Tick(dict(state.views))
        watch = {
            v: vs for v, vs in state.views.items() if vs.claims or vs.pending(self._of(v, current))
        }
        own_keys = {c.run for vs in watch.values() for c in vs.claims if c.own}
        runs.read_own(instance, self.name, own_keys)
        mats = _new_materializations(instance, {self.keys[v]: vs.mat for v, vs in watch.items()})
        starts = _start_times(instance, {m.run_id for ms in mats.values() for m in ms})
        for view, vs in watch.items():
            found = mats.get(self.keys[view], [])
            updated = self._resolve_view(view, vs, found, state, starts, runs, now)
            if updated.fresh_at > vs.fresh_at:
                tick.refreshed.add(view)
            if updated.failures > vs.failures:
                tick.failed[view] = updated.failures
            tick.views[view] = updated
        return tick

    def _resolve_view(
        self,
        view: RelationRef,
        vs: ViewState,
        found: Sequence[_Materialization],
        state: ChangeState,
        starts: Mapping[str, float],
        runs: _Runs,
        now: float,
    ) -> ViewState:
        by = {m.run_id for m in found}
        # token sets read before a run that materialized the view started
        credits: list[tuple[float, Mapping[RelationRef, str]]] = []
        claims: list[Claim] = []
        failures = vs.failures
        for claim in vs.claims:
            if runs.run_ids(claim) & by:
                credits.append((claim.at, claim.tokens))
            elif runs.in_flight(claim):
                claims.append(claim)
            elif claim.own:
                failures += 1  # ended (or was never created) without refreshing the view
        if state.seen_at and any(starts.get(r, 0.0) > state.seen_at for r in by):
            credits.append((state.seen_at, self._of(view, state.seen)))
        fresh, fresh_at, retry_at = vs.fresh, vs.fresh_at, vs.retry_at
        newest = max(credits, key=lambda c: c[0], default=None)
        if newest is not None and newest[0] > fresh_at:
            fresh_at, fresh, failures, retry_at = newest[0], dict(newest[1]), 0, 0.0
        elif failures > vs.failures:
            retry_at = now + backoff_s(failures, self.interval_s)
        mat = max([vs.mat, *(m.storage_id for m in found)])
        return ViewState(fresh, fresh_at, mat, tuple(claims), failures, retry_at)

    def classify(
        self, tick: _Tick, current: Mapping[RelationRef, str], runs: _Runs, at: float, now: float
    ) -> list[RelationRef]:
        """Sort pending views into busy, waiting, backing off and requestable (returned)."""
        eligible: list[RelationRef] = []
        slack = self.interval_s / 2  # ticks come at least one interval apart
        for view in self.order:
            vs = tick.views[view]
            if not vs.pending(self._of(view, current)):
                continue
            run_ids = runs.active.by_asset.get(self.keys[view])
            if run_ids:
                tick.busy[view] = list(run_ids)
                tick.views[view] = self._claim_queued(view, vs, run_ids, runs, current, at)
            elif vs.claims:
                tick.waiting.append(view)
            elif vs.retry_at - slack > now:
                tick.backing_off[view] = vs.retry_at
            else:
                eligible.append(view)
        return eligible

    def _claim_queued(
        self,
        view: RelationRef,
        vs: ViewState,
        run_ids: Sequence[str],
        runs: _Runs,
        current: Mapping[RelationRef, str],
        at: float,
    ) -> ViewState:
        """Runs not started yet will see at least ``current``: claim them with it."""
        queued = {r for r in run_ids if runs.active.unstarted(r)}
        if not queued:
            return vs
        kept = [c for c in vs.claims if c.own or c.run not in queued]
        tokens = self._of(view, current)
        claims = [*kept, *(Claim(r, False, tokens, at) for r in sorted(queued))]
        return replace(vs, claims=tuple(claims))

    # --- the tick -----------------------------------------------------------------------------

    def __call__(
        self, context: dg.SensorEvaluationContext, db: PostgresResource
    ) -> dg.SensorResult:
        watched = sorted(self.source_keys)
        with db.connection() as conn:
            fps = fingerprints(conn, watched)
        at, now = time.time(), self.clock()  # ``at``: after the read, so runs started later see it
        current = {ref: fp.token for ref, fp in fps.items()}
        state, note = self.load(context, current, at)
        runs = _Runs(ActiveRuns.read(context.instance))
        tick = self.resolve(context.instance, state, current, runs, now)
        eligible = self.classify(tick, current, runs, at, now)
        events = [
            observation(self.source_keys[ref], fp)
            for ref, fp in sorted(fps.items())
            if state.seen.get(ref) != fp.token
        ]
        moved = {ref for ref in current if state.seen.get(ref) != current[ref]}
        parts = self._report(context, tick, note, moved, first=not context.cursor, now=now)
        requests = []
        if eligible:
            requests.append(self._request(context, tick, eligible, current, at))
            for part in parts[1 if note else 0 : -1]:  # the note is logged; tables are above
                context.log.info(part)
        cursor = state_to_json(ChangeState(current, at, tick.views))
        return dg.SensorResult(
            run_requests=requests,
            skip_reason=None if requests else "; ".join(parts),
            cursor=cursor,
            asset_events=events,
        )

    def _request(
        self,
        context: dg.SensorEvaluationContext,
        tick: _Tick,
        eligible: Sequence[RelationRef],
        current: Mapping[RelationRef, str],
        at: float,
        tags: Mapping[str, str] | None = None,
    ) -> dg.RunRequest:
        """One run of ``eligible``, each claimed against ``current``; ``tags`` replace the
        default ``mvo/trigger: source_change``."""
        changed = {
            s
            for v in eligible
            for s, t in self._of(v, current).items()
            if tick.views[v].fresh.get(s) != t
        }
        tokens = {s: current[s] for v in eligible for s in self._of(v, current)}
        key = _run_key({v: tick.views[v] for v in eligible}, tokens)
        for v in eligible:
            vs = tick.views[v]
            tick.views[v] = replace(
                vs, claims=(*vs.claims, Claim(key, True, self._of(v, current), at))
            )
        changed_names = _listing(ref.qualname for ref in changed)
        retried = [v for v in eligible if tick.views[v].failures]
        context.log.info(
            f"changed: {changed_names}; refreshing {', '.join(v.qualname for v in eligible)}"
            + (f" (again: {_listing(v.qualname for v in retried)})" if retried else "")
        )
        return dg.RunRequest(
            run_key=key,
            asset_selection=[self.keys[v] for v in eligible],
            tags={
                "mvo/trigger": "source_change",
                "mvo/changed_tables": _truncate(", ".join(r.qualname for r in sorted(changed))),
                **(tags or {}),
            },
        )

    def _report(
        self,
        context: dg.SensorEvaluationContext,
        tick: _Tick,
        note: str | None,
        moved: Collection[RelationRef],
        *,
        first: bool,
        now: float,
    ) -> list[str]:
        """The tick's message, one part per finding; failures are also logged as warnings."""
        parts = [note] if note else []
        if tick.failed:
            text = "not refreshed by the run requested for them: " + _listing(
                f"{v.qualname} (failure {n})" for v, n in tick.failed.items()
            )
            context.log.warning(text)
            parts.append(f"{len(tick.failed)} view(s) {text}")
        if tick.refreshed:
            parts.append(f"{len(tick.refreshed)} view(s) refreshed")
        by_run: dict[str, list[RelationRef]] = {}
        for view, ids in tick.busy.items():
            by_run.setdefault(", ".join(short_id(r) for r in sorted(ids)), []).append(view)
        for names, views in sorted(by_run.items()):
            plural = "s" if "," in names else ""
            parts.append(f"{len(views)} view(s) busy in run{plural} {names}")
        if tick.waiting:
            parts.append(f"{len(tick.waiting)} view(s) waiting for the retry of their run")
        if tick.backing_off:
            soonest = min(tick.backing_off.values()) - now
            parts.append(
                f"{len(tick.backing_off)} view(s) backing off after failed refreshes, next try "
                f"in {max(0, math.ceil(soonest))}s: {_listing(v.qualname for v in tick.backing_off)}"
            )
        n = len(self.source_keys)
        if first and not self.treat_first_as_change:
            parts.append(f"baseline recorded for {n} source table(s)")
        elif note:
            parts.append(f"{n} source table(s) read")
        elif moved:
            parts.append(f"changed: {_listing(r.qualname for r in moved)}")
        else:
            parts.append(f"no change in {n} source table(s)")
        return parts


def build_change_sensor(
    snapshot: CatalogSnapshot,
    translator: MvTranslator,
    *,
    resource_key: str = "postgres",
    name: str = "mvo_source_changes",
    minimum_interval_seconds: int = 30,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
    views: Collection[RelationRef] | None = None,
    treat_first_as_change: bool = False,
    description: str | None = None,
    clock: Callable[[], float] = time.time,
) -> dg.SensorDefinition:
    """Refresh the change-driven MVs (``views``, default every MV) when their sources change.

    The first tick only records a baseline unless ``treat_first_as_change``. Its target is
    the change-driven MVs, so each run request is turned into a run of the asset job that
    holds them; the database comes from resource ``resource_key``. ``clock`` times the
    backoff of views whose refreshes keep failing (tests move it).
    """
    sources = change_sources(snapshot, views)
    order = LineageGraph(snapshot).refresh_order(sources)
    watched = sorted(set().union(*sources.values()))
    mv_keys = {mv: translator.get_asset_key(mv) for mv in order}
    logic = _ChangeSensor(
        name=name,
        sources=sources,
        order=order,
        keys=mv_keys,
        source_keys={ref: translator.get_asset_key(ref) for ref in watched},
        interval_s=float(minimum_interval_seconds),
        treat_first_as_change=treat_first_as_change,
        clock=clock,
    )

    @dg.sensor(
        name=name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        target=dg.AssetSelection.assets(*mv_keys.values()),
        required_resource_keys={resource_key},
        description=description
        or (
            f"Refreshes {len(order)} materialized view(s) when one of their "
            f"{len(watched)} source table(s) changes (one statistics query per tick); a "
            "change stays pending until a refresh of the view succeeds."
        ),
    )
    def _change_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        if not watched:
            return dg.SensorResult(
                skip_reason="no fingerprintable source tables (foreign tables only?)"
            )
        return logic(context, getattr(context.resources, resource_key))

    return _change_sensor
