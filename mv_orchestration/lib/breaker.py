"""The target-lag sensor's circuit breaker: views whose refreshes keep failing are suspended,
with everything downstream of them, until one succeeds.

The failure count is the change bookkeeping's (:class:`~mv_orchestration.core.changes.ViewState`
``failures``: requested runs in a row that did not refresh the view). See
:class:`CircuitBreaker`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace

import dagster as dg

from mv_orchestration.core.catalog import RelationRef
from mv_orchestration.core.graph import LineageGraph
from mv_orchestration.lib.alerting import Notifier
from mv_orchestration.lib.sensors import _Tick

SUSPEND_AFTER = 5  # consecutive failed refreshes that suspend a view


@dataclass(frozen=True)
class Suspended:
    """This tick's circuit breaker: views suspended after their own failures (with the
    count), and views below one of those (``upstream_suspended``, with which)."""

    own: Mapping[RelationRef, int]
    below: Mapping[RelationRef, tuple[RelationRef, ...]]

    @property
    def views(self) -> frozenset[RelationRef]:
        return frozenset(self.own) | frozenset(self.below)

    def reason(self, view: RelationRef) -> str:
        if view in self.own:
            return (
                f"suspended after {self.own[view]} consecutive failed refreshes "
                f"(resume: materialize it, or mvo resume {view.qualname})"
            )
        return f"upstream_suspended ({', '.join(u.qualname for u in self.below[view])})"


class CircuitBreaker:
    """After ``after`` consecutive failed refreshes a view is suspended with every view
    downstream of it: the sensor stops refreshing them, says so in its ticks and as an
    observation of each (``mvo/state``), and sends one alert per suspension. A successful
    refresh of the view from any origin (the UI, ``mvo refresh``/``mvo resume``) resumes it
    and its downstream."""

    def __init__(
        self,
        graph: LineageGraph,
        managed: Collection[RelationRef],
        *,
        after: int,
        notifier: Notifier | None,
        groups: Mapping[RelationRef, str],
    ) -> None:
        self.after = after
        self.notifier = notifier
        self.groups = groups
        self.below = {v: graph.downstream_matviews([v]) & set(managed) for v in managed}
        self.above = {v: graph.upstream_matviews([v]) & set(managed) for v in managed}

    def check(self, tick: _Tick, previous_own: frozenset[RelationRef]) -> Suspended:
        """The suspensions of this tick. A view that failed only because a view above it was
        suspended (skipped in each run) is released with it: its failures are reset."""
        failing = {v for v, vs in tick.views.items() if vs.failures >= self.after}
        for view in sorted(failing):
            above = self.above.get(view, set())
            if above & previous_own and not above & failing:
                tick.views[view] = replace(tick.views[view], failures=0, retry_at=0.0)
                failing.discard(view)
        below: dict[RelationRef, set[RelationRef]] = {}
        for view in failing:
            for d in self.below.get(view, ()):
                below.setdefault(d, set()).add(view)
        own = {v: tick.views[v].failures for v in failing if v not in below}
        return Suspended(own, {d: tuple(sorted(u & set(own) or u)) for d, u in below.items()})

    def events(
        self,
        previous: frozenset[RelationRef],
        now: Suspended,
        keys: Mapping[RelationRef, dg.AssetKey],
    ) -> list[dg.AssetObservation]:
        """An observation of each view whose state changed: suspended, resumed."""
        out = []
        for view in sorted(previous | now.views):
            if (view in previous) == (view in now.views):
                continue
            state = (
                "resumed"
                if view not in now.views
                else ("suspended" if view in now.own else "upstream_suspended")
            )
            reason = now.reason(view) if view in now.views else "refreshed successfully"
            out.append(
                dg.AssetObservation(
                    asset_key=keys[view],
                    description=f"target lag: {state}",
                    metadata={"mvo/state": state, "mvo/reason": reason},
                )
            )
        return out

    def alert(
        self,
        context: dg.SensorEvaluationContext,
        previous: frozenset[RelationRef],
        unsent: Sequence[RelationRef],
        now: Suspended,
    ) -> tuple[RelationRef, ...]:
        """Alert each new suspension once (retried on later ticks until delivered); the
        suspensions still to alert."""
        todo = [v for v in dict.fromkeys([*unsent, *(v for v in now.own if v not in previous)])]
        left: list[RelationRef] = []
        for view in todo:
            if view not in now.own:
                continue  # resumed before its alert went out
            if self.notifier is None or not self.notifier.has_destinations(self.groups.get(view)):
                context.log.warning(f"{view.qualname}: {now.reason(view)}")
                continue
            below = sorted(d for d, ups in now.below.items() if view in ups)
            names = ", ".join(d.qualname for d in below) or "none"
            body = (
                f"{view.qualname} failed {now.own[view]} consecutive refreshes and is suspended, "
                f"with the {len(below)} view(s) downstream of it (upstream_suspended: {names}). "
                "The target-lag sensor does not refresh them until the view refreshes "
                f"successfully: fix the cause, then materialize it in the Dagster UI or run "
                f"'mvo resume {view.qualname}'."
            )
            title = f"mv-orchestration: {view.qualname} suspended"
            group = self.groups.get(view)
            if not self.notifier.send(title, body, group=group, severity="failure"):
                left.append(view)
        return tuple(left)


def suspension_summary(suspended: Suspended) -> str:
    """The first words of a tick with suspensions."""
    own = ", ".join(f"{v.qualname} ({n} failures)" for v, n in sorted(suspended.own.items()))
    text = f"suspended: {own}"
    if suspended.below:
        text += f"; upstream_suspended: {len(suspended.below)} view(s)"
    return text
