"""Which views a command acts on: names as ``mvo discover`` prints them, groups, downstream."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def select(
    graph: Any,
    mv_keys: Sequence[Any],
    views: Sequence[str],
    groups: Sequence[str],
    all_views: bool,
    downstream: bool,
) -> list[Any]:
    """Asset keys of the MVs named, in the groups given, optionally with their downstream."""
    from mv_orchestration.errors import UnknownViewError

    if all_views:
        return list(mv_keys)
    chosen: set[Any] = set()
    for name in views:
        parts = name.split(".", 1) if "." in name else [name]
        matches = [k for k in mv_keys if list(k.path[-len(parts) :]) == parts]
        if not matches:
            raise UnknownViewError(f"no materialized view named {name!r} (see 'mvo discover')")
        if len(matches) > 1:
            names = ", ".join(".".join(k.path) for k in matches)
            raise UnknownViewError(f"{name!r} is ambiguous: {names}; use schema.name")
        chosen.add(matches[0])
    for group in groups:
        in_group = [k for k in mv_keys if graph.get(k).group_name == group]
        if not in_group:
            known = sorted({graph.get(k).group_name for k in mv_keys})
            raise UnknownViewError(f"no views in group {group!r} (groups: {', '.join(known)})")
        chosen.update(in_group)
    if downstream:
        mv_set = set(mv_keys)
        frontier = list(chosen)
        while frontier:
            for child in graph.get(frontier.pop()).child_keys:
                if child in mv_set and child not in chosen:
                    chosen.add(child)
                    frontier.append(child)
    return sorted(chosen, key=lambda k: tuple(k.path))
