"""Target lag: when to refresh a view so that it is never staler than its user allows.

A view's *target lag* is the age of the oldest change in any of its root sources (tables, read
directly, through plain views or through other MVs) that the view may still be missing. It is
a duration, or :data:`DOWNSTREAM`: the view has no target of its own and is refreshed when a
view that reads it needs it, so its effective target is the smallest among those views
(:func:`effective_targets`).

:class:`LagScheduler` is the decision, pure and clock-free: given, per view, when each root
source first changed after the data the view last saw, the expected refresh durations and the
launch latency, it says which views to refresh now and why. A view with a duration target is
due when waiting until the next tick would miss its deadline::

    latest start = first change + target - (expected refresh time of the view and of every
                   changed MV upstream of it, which refresh first in the same run)
                   - launch latency

It is then refreshed together with that upstream chain, in one run, upstream first, so every
view of the chain sees the same sources. A view with no pending change is never refreshed.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Final, Literal

from mv_orchestration.core.catalog import RelationRef
from mv_orchestration.core.graph import LineageGraph

DOWNSTREAM: Final = "downstream"
TargetLag = timedelta | Literal["downstream"]
DEFAULT_TARGET_LAG: Final = timedelta(hours=1)  # of a view no policy gives a refresh method
MIN_TARGET_LAG: Final = timedelta(minutes=1)  # Dagster's smallest freshness window
# expected refresh time of a view with no successful refresh in its history
DEFAULT_DURATION_S: Final = 5.0
# launch latency (run requested to refresh started) before any run was measured
DEFAULT_LAUNCH_LATENCY_S: Final = 15.0


def format_duration(seconds: float) -> str:
    """``3m12s``, ``5m``, ``1h30m``, ``45s``, ``0.4s``: short, for tick messages."""
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if seconds < 10 and round(seconds, 1) != int(seconds):
        return f"{seconds:.1f}s"
    total = math.floor(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if total >= size:
            parts.append(f"{total // size}{unit}")
            total %= size
    return "".join(parts) or "0s"


def format_target(target: TargetLag) -> str:
    return DOWNSTREAM if target == DOWNSTREAM else format_duration(_seconds(target))


def _seconds(target: TargetLag) -> float:
    assert isinstance(target, timedelta)
    return target.total_seconds()


def effective_targets(
    graph: LineageGraph, declared: Mapping[RelationRef, TargetLag | None]
) -> dict[RelationRef, timedelta]:
    """Each view's effective target: its own duration, or, for :data:`DOWNSTREAM`, the
    smallest duration target among the MVs downstream of it (directly, through plain views or
    other MVs: their refresh includes it). A downstream view that no view with a duration
    depends on has none and is left out, as are views without a target."""
    result: dict[RelationRef, timedelta] = {}
    for ref, target in declared.items():
        if isinstance(target, timedelta):
            result[ref] = target
        elif target == DOWNSTREAM:
            below = [
                t
                for d in graph.downstream_matviews([ref])
                if isinstance(t := declared.get(d), timedelta)
            ]
            if below:
                result[ref] = min(below)
    return result


@dataclass(frozen=True)
class LagPlan:
    """One tick's decision: the views to refresh now (upstream first) and a reason per view."""

    refresh: tuple[RelationRef, ...]
    reasons: Mapping[RelationRef, str]
    # seconds until the soonest waiting view is due (None: nothing is waiting)
    next_due_s: float | None = None
    # views with a pending change and the share of their target already used, for the skip
    used: Mapping[RelationRef, float] = field(default_factory=dict)
    # per view refreshed: when its oldest pending change was first seen (epoch seconds) ...
    since: Mapping[RelationRef, float] = field(default_factory=dict)
    # ... and the target it is refreshed for (the smallest among the due views it serves)
    deadline: Mapping[RelationRef, timedelta] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """``schema.view: <reason>`` per view, in name order."""
        return [f"{ref.qualname}: {why}" for ref, why in sorted(self.reasons.items())]


@dataclass(frozen=True)
class _Chain:
    view: RelationRef
    members: tuple[RelationRef, ...]  # refresh order, ending with the view
    since: float
    cost_s: float


class LagScheduler:
    """Decides each tick which views to refresh for their target lag (see the module doc).

    ``targets`` are the declared targets; views without one are not scheduled, but an MV
    upstream of a scheduled view is refreshed in its chain when it has a pending change.
    """

    def __init__(
        self,
        graph: LineageGraph,
        targets: Mapping[RelationRef, TargetLag],
        *,
        default_duration_s: float = DEFAULT_DURATION_S,
    ) -> None:
        self.graph = graph
        self.targets = dict(targets)
        self.effective = effective_targets(graph, targets)
        self.default_duration_s = default_duration_s
        self.drivers = sorted(r for r, t in self.targets.items() if isinstance(t, timedelta))
        self.upstream = {v: graph.upstream_matviews([v]) for v in self.drivers}
        # every view this scheduler may refresh: drivers and the MVs upstream of them
        self.managed: frozenset[RelationRef] = frozenset(
            set(self.drivers).union(*self.upstream.values()) if self.drivers else ()
        )
        self._order = {r: i for i, r in enumerate(graph.refresh_order(self.managed))}

    # --- the decision ---------------------------------------------------------------------------

    def plan(
        self,
        *,
        pending: Mapping[RelationRef, Mapping[RelationRef, float]],
        durations: Mapping[RelationRef, float],
        launch_latency_s: float,
        now: float,
        margin_s: float = 0.0,
        busy: Mapping[RelationRef, str] | None = None,
        unavailable: Mapping[RelationRef, str] | None = None,
    ) -> LagPlan:
        """Which views to refresh at ``now`` (epoch seconds).

        ``pending``: per view, each root source with a change the view has not seen, and when
        that change was first seen (epoch seconds; a view absent or empty has none).
        ``durations``: expected refresh seconds per view (:data:`DEFAULT_DURATION_S` when
        unknown). ``margin_s``: the time to the next decision (a sensor interval), so that a
        view is started on the last tick that can still meet its target. ``busy``: views with
        a refresh queued or under way, with what holds them; ``unavailable``: views that must
        not be requested now, with why (backing off after failures).
        """
        busy, unavailable = busy or {}, unavailable or {}
        reasons: dict[RelationRef, str] = {}
        used: dict[RelationRef, float] = {}
        due: list[_Chain] = []
        waits: list[float] = []
        for view in self.drivers:
            target = _seconds(self.targets[view])
            chain = self._chain(view, pending, durations, launch_latency_s)
            if chain is None:
                reasons[view] = "no change, nothing to do"
                continue
            spent = now - chain.since
            used[view] = spent / target
            budget = f"{format_duration(spent)} of {format_duration(target)} used"
            held = [busy[m] for m in chain.members if m in busy]
            blocked = [f"{m.qualname} {unavailable[m]}" for m in chain.members if m in unavailable]
            if view in unavailable:  # its own reason first
                blocked.insert(0, unavailable[view])
            start_in = chain.since + target - chain.cost_s - now
            if held:
                reasons[view] = f"{budget}, refresh under way ({held[0]})"
            elif blocked:
                reasons[view] = f"{budget}, not requested: {blocked[0]}"
            elif start_in <= margin_s:
                due.append(chain)
                late = f", {format_duration(-start_in)} late" if start_in < 0 else ""
                reasons[view] = f"{budget}, refresh now{late}" + _expected(chain, launch_latency_s)
            else:
                waits.append(start_in - margin_s)
                reasons[view] = f"{budget}, refresh in {format_duration(start_in)}" + _expected(
                    chain, launch_latency_s
                )
        refresh = self._merge(due)
        self._explain_passengers(refresh, due, pending, reasons)
        deadline: dict[RelationRef, timedelta] = {}
        for chain in due:
            own = self.targets[chain.view]
            assert isinstance(own, timedelta)
            for member in chain.members:
                deadline[member] = min(deadline.get(member, own), own)
        return LagPlan(
            refresh=refresh,
            reasons=reasons,
            next_due_s=min(waits) if waits and not refresh else None,
            used=used,
            since={m: min(pending[m].values()) for m in refresh if pending.get(m)},
            deadline=deadline,
        )

    def _chain(
        self,
        view: RelationRef,
        pending: Mapping[RelationRef, Mapping[RelationRef, float]],
        durations: Mapping[RelationRef, float],
        latency_s: float,
    ) -> _Chain | None:
        """The view and its changed upstream MVs, or None when nothing it reads changed."""
        members = [m for m in (*self.upstream[view], view) if pending.get(m)]
        if not members:
            return None
        if view not in members:
            members.append(view)  # an upstream MV changed: the view must follow it
        members.sort(key=self._order.__getitem__)
        since = min(t for m in members for t in pending.get(m, {}).values())
        cost = sum(durations.get(m, self.default_duration_s) for m in members) + latency_s
        return _Chain(view, tuple(members), since, cost)

    def _merge(self, due: Collection[_Chain]) -> tuple[RelationRef, ...]:
        wanted = {m for chain in due for m in chain.members}
        return tuple(sorted(wanted, key=self._order.__getitem__))

    def _explain_passengers(
        self,
        refresh: Collection[RelationRef],
        due: Collection[_Chain],
        pending: Mapping[RelationRef, Mapping[RelationRef, float]],
        reasons: dict[RelationRef, str],
    ) -> None:
        """Reasons of the views refreshed because a view downstream of them is due, and of
        the ``downstream`` views that are not."""
        drivers_of: dict[RelationRef, list[RelationRef]] = {}
        for chain in due:
            for member in chain.members[:-1]:
                drivers_of.setdefault(member, []).append(chain.view)
        for member, drivers in sorted(drivers_of.items()):
            names = ", ".join(d.qualname for d in sorted(drivers))
            note = f"refreshed now, upstream of {names}"
            reasons[member] = f"{reasons[member]}; {note}" if member in reasons else note
        for ref, target in sorted(self.targets.items()):
            if target != DOWNSTREAM or ref in refresh:
                continue
            effective = self.effective.get(ref)
            if effective is None:
                reasons[ref] = "downstream, but no view that reads it has a target lag"
            elif pending.get(ref):
                reasons[ref] = (
                    f"changed; refreshed with the views that read it "
                    f"(target {format_duration(effective.total_seconds())})"
                )
            else:
                reasons[ref] = "no change, nothing to do"


def _expected(chain: _Chain, latency_s: float) -> str:
    views = len(chain.members)
    what = "1 view" if views == 1 else f"{views} views, upstream first"
    return (
        f" (expected {format_duration(chain.cost_s - latency_s)} for {what}"
        f" + {format_duration(latency_s)} launch)"
    )
