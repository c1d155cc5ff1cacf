"""Dependency order and closures over a :class:`CatalogSnapshot`.

The graph has every relation as a node (tables, views, MVs) so that an MV that reads another
MV *through a plain view* still refreshes after it.
"""

from __future__ import annotations

import graphlib
from collections.abc import Iterable

from mv_orchestration.core.catalog import CatalogSnapshot, RelationRef
from mv_orchestration.errors import CatalogError


class LineageGraph:
    """Upstream/downstream relations of a snapshot."""

    def __init__(self, snapshot: CatalogSnapshot) -> None:
        self.snapshot = snapshot
        self.matviews: frozenset[RelationRef] = frozenset(mv.ref for mv in snapshot.matviews)
        self.upstream: dict[RelationRef, frozenset[RelationRef]] = {}
        for mv in snapshot.matviews:
            self.upstream[mv.ref] = frozenset(mv.upstream)
        for rel in snapshot.relations:
            self.upstream.setdefault(rel.ref, frozenset(rel.upstream))
        downstream: dict[RelationRef, set[RelationRef]] = {}
        for node, ups in self.upstream.items():
            for up in ups:
                downstream.setdefault(up, set()).add(node)
        self.downstream: dict[RelationRef, frozenset[RelationRef]] = {
            k: frozenset(v) for k, v in downstream.items()
        }
        self._order = self._topological()

    def _topological(self) -> list[RelationRef]:
        sorter: graphlib.TopologicalSorter[RelationRef] = graphlib.TopologicalSorter(self.upstream)
        try:
            sorter.prepare()
        except graphlib.CycleError as exc:  # the server forbids this; a stale snapshot might not
            raise CatalogError(f"dependency cycle between relations: {exc.args[1]}") from exc
        order: list[RelationRef] = []
        while sorter.is_active():
            ready = sorted(sorter.get_ready())  # sorted: a stable, reproducible order
            order.extend(ready)
            sorter.done(*ready)
        return order

    def refresh_order(self, views: Iterable[RelationRef] | None = None) -> list[RelationRef]:
        """``views`` (default: every MV) sorted so upstream MVs come first."""
        wanted = self.matviews if views is None else frozenset(views)
        unknown = wanted - self.matviews
        if unknown:
            names = ", ".join(sorted(r.qualname for r in unknown))
            raise CatalogError(f"not materialized views in this catalog: {names}")
        return [ref for ref in self._order if ref in wanted]

    def _closure(
        self, start: Iterable[RelationRef], edges: dict[RelationRef, frozenset[RelationRef]]
    ) -> set[RelationRef]:
        seen: set[RelationRef] = set()
        frontier = list(start)
        while frontier:
            node = frontier.pop()
            for nxt in edges.get(node, ()):
                if nxt not in seen:
                    seen.add(nxt)
                    frontier.append(nxt)
        return seen

    def upstream_closure(self, start: Iterable[RelationRef]) -> set[RelationRef]:
        """Every relation that ``start`` reads, directly or indirectly (excluding ``start``)."""
        return self._closure(start, self.upstream)

    def downstream_closure(self, start: Iterable[RelationRef]) -> set[RelationRef]:
        """Every relation that reads ``start``, directly or indirectly (excluding ``start``)."""
        return self._closure(start, self.downstream)

    def upstream_matviews(self, start: Iterable[RelationRef]) -> set[RelationRef]:
        return self.upstream_closure(start) & self.matviews

    def downstream_matviews(self, start: Iterable[RelationRef]) -> set[RelationRef]:
        return self.downstream_closure(start) & self.matviews

    def source_tables(self, mv: RelationRef) -> set[RelationRef]:
        """The non-view, non-MV relations an MV ultimately reads (tables, foreign tables)."""
        return {
            ref
            for ref in self.upstream_closure([mv])
            if not self.upstream.get(ref) and ref not in self.matviews
        }
