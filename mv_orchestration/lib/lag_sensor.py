"""The target-lag sensor: each view refreshed only as often as its target lag needs.

Each tick reads the same change fingerprints as the source-change sensor
(:mod:`mv_orchestration.lib.sensors`, whose bookkeeping it shares: a change stays pending until
a refresh that saw it succeeds, busy views are not requested again, failing ones back off),
dates every pending change, and asks :class:`~mv_orchestration.core.lag.LagScheduler` which
views must start now to meet their targets. It requests at most one run per tick: the due
views with every changed MV upstream of them, upstream first. The tick's message names the
budget each changed view has used (``llm_usage.mv_daily_metrics: 3m12s of 5m used, refresh
now``); a tick that sees no change says so and requests nothing.

Dating a change: a token that differs from the one a view is fresh against changed after the
last read that still saw the old token (kept per source in the cursor) and after the view's
fresh tokens were read; :data:`STATS_DELAY_S` is taken off for counters that reach other
sessions late. So the first change is never dated later than it happened, and the deadline
errs early.

Expected durations are the p90 of each view's successful refreshes over the last day
(:func:`~mv_orchestration.core.history.expected_durations`); launch latency is the p90, over
this sensor's last runs, of the time from a run's creation to its start
(:func:`launch_latency_s`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import psycopg

from mv_orchestration.core import history
from mv_orchestration.core.catalog import CatalogSnapshot, RelationRef
from mv_orchestration.core.changes import (
    ChangeState,
    Fingerprint,
    change_sources,
    fingerprints,
    state_to_json,
)
from mv_orchestration.core.graph import LineageGraph
from mv_orchestration.core.lag import (
    DEFAULT_LAUNCH_LATENCY_S,
    LagPlan,
    LagScheduler,
    TargetLag,
    format_duration,
)
from mv_orchestration.lib.alerting import Notifier
from mv_orchestration.lib.breaker import (
    SUSPEND_AFTER,
    CircuitBreaker,
    Suspended,
    suspension_summary,
)
from mv_orchestration.lib.resource import PostgresResource
from mv_orchestration.lib.runs import ActiveRuns, short_id
from mv_orchestration.lib.sensors import (
    DATA_VERSION_TAG,
    SENSOR_NAME_TAG,
    _ChangeSensor,
    _Runs,
    _Tick,
    _truncate,
    observation,
)
from mv_orchestration.lib.translator import MvTranslator

CURSOR_VERSION = 1
STATS_DELAY_S = 1.0  # counters of a busy writer reach other sessions within about a second
DURATIONS_TTL_S = 300.0  # expected durations are read again after this long
IDLE_CHECK_S = 60.0  # idle views are checked for a no_data mark at least this often
LAG_TAG = "mvo/lag"  # on a run: per view, when its oldest pending change was first seen
TRIGGER = "target_lag"
_LATENCY_RUNS = 20  # the sensor's last runs that measure launch latency
_LISTED = 10


def launch_latency_s(instance: dg.DagsterInstance, sensor: str) -> float:
    """p90 of (start - creation) over the last runs the sensor requested that started;
    :data:`~mv_orchestration.core.lag.DEFAULT_LAUNCH_LATENCY_S` before any did."""
    records = instance.get_run_records(
        dg.RunsFilter(tags={SENSOR_NAME_TAG: sensor}), limit=_LATENCY_RUNS
    )
    waits = sorted(
        max(0.0, r.start_time - r.create_timestamp.timestamp())
        for r in records
        if r.start_time is not None
    )
    if not waits:
        return DEFAULT_LAUNCH_LATENCY_S
    return waits[min(len(waits) - 1, math.ceil(0.9 * len(waits)) - 1)]


def lag_tag(plan: LagPlan) -> str:
    """The ``mvo/lag`` tag of a run: ``[[schema, name, first change, target seconds], ...]``
    for each view it refreshes, read by the refresh step for ``lag_at_completion``."""
    rows = [
        [ref.schema, ref.name, round(plan.since[ref], 3), plan.deadline[ref].total_seconds()]
        for ref in plan.refresh
        if ref in plan.since and ref in plan.deadline
    ]
    return json.dumps(rows, separators=(",", ":"))


def parse_lag_tag(text: str | None) -> dict[RelationRef, tuple[float, float]]:
    """Inverse of :func:`lag_tag`: view → (first change, target seconds); {} if unreadable."""
    if not text:
        return {}
    try:
        return {
            RelationRef(str(s), str(n)): (float(at), float(t)) for s, n, at, t in json.loads(text)
        }
    except (ValueError, TypeError):
        return {}


@dataclass(frozen=True)
class _Cursor:
    changes: str | None  # the change-sensor cursor (core.changes)
    # per source, tokens it no longer has → the last read that still saw them (epoch s)
    left: Mapping[RelationRef, Mapping[str, float]]
    suspended: frozenset[RelationRef] = frozenset()  # by the breaker, at the last tick
    own: frozenset[RelationRef] = frozenset()  # those of them suspended for their own failures
    unsent: tuple[RelationRef, ...] = ()  # suspensions whose alert is not delivered yet

    @classmethod
    def parse(cls, text: str | None) -> _Cursor:
        """An unreadable outer cursor passes on as an unreadable change cursor: the change
        logic then logs it once and rebuilds its state from the instance."""
        if not text:
            return cls(None, {})
        try:
            data = json.loads(text)
            if data.get("v") != CURSOR_VERSION:
                raise ValueError("version")
            left = {
                RelationRef(s, n): {str(k): float(v) for k, v in tokens.items()}
                for s, n, tokens in data["left"]
            }
            changes = data["changes"]
            suspended = frozenset(RelationRef(a, b) for a, b in data.get("suspended", []))
            own = frozenset(RelationRef(a, b) for a, b in data.get("own", []))
            unsent = tuple(RelationRef(a, b) for a, b in data.get("unsent", []))
            changes = changes if isinstance(changes, str) else None
            return cls(changes, left, suspended, own, unsent)
        except (ValueError, TypeError, KeyError, AttributeError):
            return cls(text if text else None, {})

    def dump(self) -> str:
        left = [[r.schema, r.name, dict(t)] for r, t in sorted(self.left.items()) if t]
        return json.dumps(
            {
                # suspension first: a cursor cut short in the UI keeps it
                "v": CURSOR_VERSION,
                "suspended": [[r.schema, r.name] for r in sorted(self.suspended)],
                "own": [[r.schema, r.name] for r in sorted(self.own)],
                "unsent": [[r.schema, r.name] for r in self.unsent],
                "changes": self.changes,
                "left": left,
            }
        )


@dataclass(frozen=True)
class _Read:
    """What one tick read: fingerprints, durations, and the views' states."""

    fps: Mapping[RelationRef, Fingerprint]
    durations: Mapping[RelationRef, float]
    at: float  # when the fingerprints were read (epoch s; runs started later see them)
    now: float  # the scheduler's clock
    current: Mapping[RelationRef, str]
    state: ChangeState
    note: str | None
    left: Mapping[RelationRef, Mapping[str, float]]
    runs: _Runs
    tick: _Tick
    eligible: set[RelationRef]


@dataclass
class _Notes:
    """What a skip says besides the plan: before it (suspensions) and after it."""

    lead: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Decision:
    pending: dict[RelationRef, dict[RelationRef, float]]
    suspended: Suspended
    plan: LagPlan
    selected: list[RelationRef]


class _LagSensor(_ChangeSensor):
    """The tick logic of one target-lag sensor."""

    def __init__(
        self,
        *,
        scheduler: LagScheduler,
        history_schema: str | None,
        foreign: Mapping[RelationRef, frozenset[RelationRef]],
        breaker: CircuitBreaker,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.scheduler = scheduler
        self.history_schema = history_schema
        # views reading foreign tables (no counters), with those tables
        self.foreign = foreign
        self.breaker = breaker
        # process-local caches (the code server keeps the sensor between ticks; a new
        # process only reads again): expected durations, and when idle views were checked
        self._durations_at: tuple[float, dict[RelationRef, float]] | None = None
        self._idle_checked = -math.inf
        targets = [t.total_seconds() for t in scheduler.effective.values()]
        # idle views are marked after half their target: check at least 4 times per target
        self._idle_every_s = min([IDLE_CHECK_S, *(t / 4 for t in targets)])

    def _durations(self, conn: psycopg.Connection[Any], now: float) -> dict[RelationRef, float]:
        """Expected refresh durations, read again every :data:`DURATIONS_TTL_S`: the p90
        over a day moves slowly, and its query reads a day of history."""
        if self.history_schema is None:
            return {}
        if self._durations_at is not None and now - self._durations_at[0] < DURATIONS_TTL_S:
            return self._durations_at[1]
        try:
            found = history.expected_durations(
                conn, self.history_schema, [(r.schema, r.name) for r in self.order]
            )
        except psycopg.Error:
            if conn.broken:
                raise
            found = {}  # no history (yet, or not readable): default durations, for a while
        durations = {RelationRef(s, n): d for (s, n), d in found.items()}
        self._durations_at = (now, durations)
        return durations

    def _since(
        self,
        tick: _Tick,
        view: RelationRef,
        source: RelationRef,
        left: Mapping[RelationRef, Mapping[str, float]],
        at: float,
    ) -> float:
        """When ``source`` first changed after the data ``view`` last saw: at the latest
        read that still saw the token the view is fresh against, or that token's own read."""
        vs = tick.views[view]
        token = vs.fresh.get(source)
        last_seen = left.get(source, {}).get(token, 0.0) if token is not None else 0.0
        known = max(vs.fresh_at, last_seen)
        return (known if known > 0 else at) - STATS_DELAY_S

    # --- the tick, in four phases ---------------------------------------------------------

    def __call__(
        self, context: dg.SensorEvaluationContext, db: PostgresResource
    ) -> dg.SensorResult:
        outer = _Cursor.parse(context.cursor)
        read = self._read(context, db, outer)
        decision = self._decide(context, read, outer)
        events, unsent, notes = self._record(context, db, read, decision, outer)
        return self._result(context, read, decision, events, notes, unsent)

    def _read(
        self, context: dg.SensorEvaluationContext, db: PostgresResource, outer: _Cursor
    ) -> _Read:
        """1. Fingerprints and expected durations (one connection), then what the instance
        says of the views (the change sensor's crediting and coalescing)."""
        with db.connection() as conn:
            fps = fingerprints(conn, sorted(self.source_keys))
            durations = self._durations(conn, time.time())
        at, now = time.time(), self.clock()
        current = {ref: fp.token for ref, fp in fps.items()}
        state, note = self.load(context, current, at, cursor=outer.changes or "")
        runs = _Runs(ActiveRuns.read(context.instance))
        tick = self.resolve(context.instance, state, current, runs, now)
        eligible = set(self.classify(tick, current, runs, at, now))
        left = _moved_on(outer.left, state, current)
        return _Read(fps, durations, at, now, current, state, note, left, runs, tick, eligible)

    def _decide(
        self, context: dg.SensorEvaluationContext, read: _Read, outer: _Cursor
    ) -> _Decision:
        """2. Date the pending changes, apply the circuit breaker, ask the scheduler."""
        tick = read.tick
        pending = {
            v: {
                s: self._since(tick, v, s, read.left, read.at)
                for s in tick.views[v].pending(self._of(v, read.current))
            }
            for v in self.order
        }
        suspended = self.breaker.check(tick, outer.own)
        busy, unavailable = self._busy(tick), self._backing_off(tick, read.now)
        unavailable.update({v: suspended.reason(v) for v in suspended.views})
        self._without_counters(
            tick, read.runs, pending, read.eligible, busy, unavailable, read.at, read.now
        )
        plan = self.scheduler.plan(
            pending=pending,
            durations=read.durations,
            launch_latency_s=launch_latency_s(context.instance, self.name),
            now=read.now,
            margin_s=self.interval_s,
            busy=busy,
            unavailable=unavailable,
        )
        selected = [v for v in plan.refresh if v in read.eligible]
        return _Decision(pending, suspended, plan, selected)

    def _record(
        self,
        context: dg.SensorEvaluationContext,
        db: PostgresResource,
        read: _Read,
        decision: _Decision,
        outer: _Cursor,
    ) -> tuple[
        list[dg.AssetObservation | dg.AssetMaterialization], tuple[RelationRef, ...], _Notes
    ]:
        """3. The tick's events: source data versions, suspensions and resumptions (and
        their alerts), no_data marks of idle views; and what to say of them."""
        events: list[dg.AssetObservation | dg.AssetMaterialization] = [
            observation(self.source_keys[ref], fp)
            for ref, fp in sorted(read.fps.items())
            if read.state.seen.get(ref) != fp.token
        ]
        suspended = decision.suspended
        events.extend(self.breaker.events(outer.suspended, suspended, self.keys))
        unsent = self.breaker.alert(context, outer.suspended, outer.unsent, suspended)
        notes = _Notes(lead=[suspension_summary(suspended)] if suspended.views else [])
        idle = self._idle(context.instance, decision.pending, read.tick, read.now)
        if idle:
            events.extend(self._mark_current(context, db, idle, read.at))
            notes.after.append(f"{len(idle)} idle view(s) marked current (no_data, not refreshed)")
        return events, unsent, notes

    def _result(
        self,
        context: dg.SensorEvaluationContext,
        read: _Read,
        decision: _Decision,
        events: Sequence[dg.AssetObservation | dg.AssetMaterialization],
        notes: _Notes,
        unsent: tuple[RelationRef, ...],
    ) -> dg.SensorResult:
        """4. One run of the due views (claimed in the cursor), or a skip that says why."""
        tick, plan = read.tick, decision.plan
        moved = {ref for ref in read.current if read.state.seen.get(ref) != read.current[ref]}
        for view in decision.suspended.views:  # not backing off: suspended (said first)
            tick.backing_off.pop(view, None)
        parts = self._report(
            context, tick, read.note, moved, first=not context.cursor, now=read.now
        )
        message = _summary(plan)
        requests = []
        if decision.selected:
            for line in plan.lines():
                context.log.info(line)
            tags = {
                "mvo/trigger": TRIGGER,
                "mvo/reason": _truncate(message),
                LAG_TAG: lag_tag(plan),
            }
            requests.append(
                self._request(context, tick, decision.selected, read.current, read.at, tags=tags)
            )
        state = ChangeState(read.current, read.at, tick.views)  # with the request's claims
        cursor = _Cursor(
            changes=state_to_json(state),
            left=_referenced(read.left, state),
            suspended=decision.suspended.views,
            own=frozenset(decision.suspended.own),
            unsent=unsent,
        )
        return dg.SensorResult(
            run_requests=requests,
            skip_reason=None
            if requests
            else "; ".join([*notes.lead, message, *notes.after, *parts]),
            cursor=cursor.dump(),
            asset_events=list(events),
        )

    # --- views whose sources are idle ------------------------------------------------------

    def _idle(
        self,
        instance: dg.DagsterInstance,
        pending: Mapping[RelationRef, Mapping[RelationRef, float]],
        tick: _Tick,
        now: float,
    ) -> dict[RelationRef, str | None]:
        """Views with a target and nothing pending whose last materialization is older than
        half their target, with that materialization's data version (one query, at most
        every quarter of the smallest target or :data:`IDLE_CHECK_S`)."""
        if now - self._idle_checked < self._idle_every_s:
            return {}
        self._idle_checked = now
        targets = self.scheduler.effective
        quiet = [
            v
            for v in self.order
            if v in targets
            and not pending.get(v)
            and v not in tick.busy
            and not tick.views[v].claims
        ]
        if not quiet:
            return {}
        by_key = {self.keys[v]: v for v in quiet}
        out: dict[RelationRef, str | None] = {}
        for record in instance.get_asset_records(list(by_key)):
            last = record.asset_entry.last_materialization
            view = by_key[record.asset_entry.asset_key]
            if last is None or now - last.timestamp < targets[view].total_seconds() / 2:
                continue  # never refreshed (no data to vouch for), or recent enough
            mat = last.asset_materialization
            out[view] = (mat.tags or {}).get(DATA_VERSION_TAG) if mat is not None else None
        return out

    def _mark_current(
        self,
        context: dg.SensorEvaluationContext,
        db: PostgresResource,
        idle: Mapping[RelationRef, str | None],
        at: float,
    ) -> list[dg.AssetMaterialization]:
        """A ``no_data`` refresh of each idle view: a runless materialization (so its
        freshness, measured from its last materialization, stays PASS: it misses nothing),
        with its data timestamp and its last data version (nothing downstream turns stale),
        and a ``no_data`` history row. Nothing is refreshed and no run is launched."""
        stamp = at - STATS_DELAY_S
        marks = [
            dg.AssetMaterialization(
                asset_key=self.keys[view],
                description="no_data: no source changed since the last refresh; not refreshed",
                metadata={
                    "mvo/no_data": True,
                    "data_timestamp": dg.MetadataValue.timestamp(stamp),
                },
                tags={DATA_VERSION_TAG: version} if version else None,
            )
            for view, version in sorted(idle.items())
        ]
        if self.history_schema is not None:
            when = datetime.fromtimestamp(at, UTC)
            try:
                with db.connection() as conn:
                    if history.current_version(conn, self.history_schema) >= 4:
                        history.record_no_data(
                            conn,
                            self.history_schema,
                            [(v.schema, v.name) for v in sorted(idle)],
                            at=when,
                            data_timestamp=datetime.fromtimestamp(stamp, UTC),
                        )
            except psycopg.Error as exc:  # the history is a record: the marks still count
                context.log.warning(f"no_data rows not written to {self.history_schema}: {exc}")
        return marks

    def _backing_off(self, tick: _Tick, now: float) -> dict[RelationRef, str]:
        return {
            v: "backing off after failed refreshes, next try in "
            f"{format_duration(max(0.0, math.ceil(t - now)))}"
            for v, t in tick.backing_off.items()
        }

    def _without_counters(
        self,
        tick: _Tick,
        runs: _Runs,
        pending: dict[RelationRef, dict[RelationRef, float]],
        eligible: set[RelationRef],
        busy: dict[RelationRef, str],
        unavailable: dict[RelationRef, str],
        at: float,
        now: float,
    ) -> None:
        """A foreign table has no counters: it is taken to change right after each refresh
        of a view that reads it, so the view is refreshed once per target lag."""
        for view, tables in self.foreign.items():
            vs = tick.views[view]
            pending[view] = {**pending[view], **dict.fromkeys(tables, vs.fresh_at or at)}
            run_ids = runs.active.by_asset.get(self.keys[view])
            if run_ids:
                busy.setdefault(view, "run " + ", ".join(short_id(r) for r in sorted(run_ids)))
            elif vs.claims:
                busy.setdefault(view, "its run will be retried")
            elif vs.retry_at - self.interval_s / 2 > now:
                unavailable.setdefault(
                    view,
                    "backing off after failed refreshes, next try in "
                    f"{format_duration(max(0.0, math.ceil(vs.retry_at - now)))}",
                )
            else:
                eligible.add(view)

    def _busy(self, tick: _Tick) -> dict[RelationRef, str]:
        busy = {
            v: "run " + ", ".join(short_id(r) for r in sorted(ids)) for v, ids in tick.busy.items()
        }
        busy.update({v: "its run will be retried" for v in tick.waiting})
        return busy


def _moved_on(
    left: Mapping[RelationRef, Mapping[str, float]],
    state: ChangeState,
    current: Mapping[RelationRef, str],
) -> dict[RelationRef, dict[str, float]]:
    """``left`` plus the tokens this tick found replaced: last seen at the previous read."""
    out = {ref: dict(tokens) for ref, tokens in left.items()}
    for ref, token in current.items():
        old = state.seen.get(ref)
        if old is not None and old != token and state.seen_at:
            out.setdefault(ref, {})[old] = state.seen_at
    return out


def _referenced(
    left: Mapping[RelationRef, Mapping[str, float]], state: ChangeState
) -> dict[RelationRef, dict[str, float]]:
    """Only the tokens some view is still fresh against or claimed with: the cursor stays
    small."""
    wanted: dict[RelationRef, set[str]] = {}
    for vs in state.views.values():
        for tokens in (vs.fresh, *(c.tokens for c in vs.claims)):
            for ref, token in tokens.items():
                wanted.setdefault(ref, set()).add(token)
    return {
        ref: {t: at for t, at in tokens.items() if t in wanted.get(ref, ())}
        for ref, tokens in left.items()
        if wanted.get(ref)
    }


def _summary(plan: LagPlan) -> str:
    """The changed views, most of their budget used first, and a count of the others."""
    changed = sorted(plan.used, key=lambda v: (-plan.used[v], v))
    lines = [f"{v.qualname}: {plan.reasons[v]}" for v in changed[:_LISTED]]
    if len(changed) > _LISTED:
        lines.append(f"and {len(changed) - _LISTED} more changed view(s)")
    others = [
        v
        for v in plan.reasons
        if v not in plan.used and plan.reasons[v] == "no change, nothing to do"
    ]
    if others:
        lines.append(f"{len(others)} view(s): no change, nothing to do")
    return "; ".join(lines) or "no view with a target lag"


def build_lag_sensor(
    snapshot: CatalogSnapshot,
    translator: MvTranslator,
    targets: Mapping[RelationRef, TargetLag],
    *,
    resource_key: str = "postgres",
    name: str = "mvo_target_lag",
    minimum_interval_seconds: int = 15,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
    history_schema: str | None = history.DEFAULT_SCHEMA,
    clock: Callable[[], float] = time.time,
    suspend_after: int = SUSPEND_AFTER,
    notifier: Notifier | None = None,
) -> dg.SensorDefinition | None:
    """The sensor that refreshes the views of ``targets`` (declared target lags) in time, or
    None when no view has a duration target. Its target is those views and the MVs upstream
    of them; ``clock`` is the scheduler's now (tests move it forward). A view whose refreshes
    fail ``suspend_after`` times in a row is suspended with its downstream
    (:mod:`mv_orchestration.lib.breaker`); ``notifier`` sends the alert of each suspension."""
    graph = LineageGraph(snapshot)
    scheduler = LagScheduler(graph, targets)
    if not scheduler.managed:
        return None
    managed = sorted(scheduler.managed)
    sources = change_sources(snapshot, managed)
    kinds = {rel.ref: rel.kind for rel in snapshot.relations}
    foreign = {
        view: tables
        for view in managed
        if (
            tables := frozenset(
                r for r in graph.source_tables(view) if kinds.get(r) == "foreign_table"
            )
        )
    }
    order = graph.refresh_order(sources)
    watched = sorted(set().union(*sources.values()))
    mv_keys = {mv: translator.get_asset_key(mv) for mv in order}
    logic = _LagSensor(
        scheduler=scheduler,
        history_schema=history_schema,
        foreign=foreign,
        breaker=CircuitBreaker(
            graph,
            order,
            after=suspend_after,
            notifier=notifier,
            groups={v: translator.get_group_name(v) for v in order},
        ),
        name=name,
        sources=sources,
        order=order,
        keys=mv_keys,
        source_keys={ref: translator.get_asset_key(ref) for ref in watched},
        interval_s=float(minimum_interval_seconds),
        treat_first_as_change=False,
        clock=clock,
    )

    @dg.sensor(
        name=name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        target=dg.AssetSelection.assets(*mv_keys.values()),
        required_resource_keys={resource_key},
        description=(
            f"Keeps {len(scheduler.drivers)} materialized view(s) within their target lag: "
            "refreshes a view (with the changed views upstream of it, first) only when "
            "waiting longer would miss its target, and never when its sources did not "
            "change. Each tick says how much of each changed view's target is used."
        ),
    )
    def _lag_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        return logic(context, getattr(context.resources, resource_key))

    return _lag_sensor
