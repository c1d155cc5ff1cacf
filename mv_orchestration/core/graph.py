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

    def refresh_chunks(self, size: int) -> list[list[RelationRef]]:
        """Every MV, in chunks of at most ``size`` (each in dependency order), such that no
        dependency crosses two chunks unless its connected part of the graph alone holds more
        than ``size`` MVs; then that part is cut along the dependency order, so a chunk only
        ever depends on earlier chunks.

        Connected: linked by a dependency between two MVs, directly or through plain views
        (two MVs that only read the same table are independent).
        """
        if size < 1:
            raise ValueError("chunk size must be at least 1")
        position = {ref: i for i, ref in enumerate(self._order)}
        parent: dict[RelationRef, RelationRef] = {}

        def find(node: RelationRef) -> RelationRef:
            root = node
            while parent.get(root, root) != root:
                root = parent[root]
            while node != root:  # path compression
                parent[node], node = root, parent.get(node, node)
            return root

        def derived(ref: RelationRef) -> bool:  # an MV or a view; not a table
            return ref in self.matviews or bool(self.upstream.get(ref))

        for node, ups in self.upstream.items():
            if not derived(node):
                continue
            for up in ups:
                if derived(up):
                    a, b = find(node), find(up)
                    if a != b:
                        parent[max(a, b, key=position.__getitem__)] = min(
                            a, b, key=position.__getitem__
                        )
        parts: dict[RelationRef, list[RelationRef]] = {}
        for ref in self._order:
            if ref in self.matviews:
                parts.setdefault(find(ref), []).append(ref)
        chunks: list[list[RelationRef]] = []
        open_: list[list[RelationRef]] = []  # chunks with room left, oldest first
        for part in parts.values():  # in order of each part's first MV
            if len(part) > size:
                pieces = [part[i : i + size] for i in range(0, len(part), size)]
                chunks.extend(pieces)
                open_.append(pieces[-1])
                continue
            home = next((c for c in open_ if len(c) + len(part) <= size), None)
            if home is None:
                home = []
                chunks.append(home)
                open_.append(home)
            home.extend(part)  # unrelated to the rest of the chunk: any order is one
            if len(home) == size:
                open_.remove(home)
        return chunks
