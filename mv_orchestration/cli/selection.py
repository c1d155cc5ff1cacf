"""Which views a command acts on: names as ``mvo discover`` prints them, groups, downstream.

A view is named ``schema.name`` or, when no other schema has a view of that name, ``name``;
each part as ``mvo discover`` prints it (double-quoted when PostgreSQL needs it, ``""`` for a
quote inside) or as it is, unquoted: ``"we ird"."v1.2"``, ``"we ird".v1.2``, ``we ird.v1.2``
and ``v1.2`` all name the view ``v1.2`` of schema ``we ird``. An unquoted part also matches
its lower-case spelling, as PostgreSQL folds it. A name that fits several views (``a.b.c``
as ``"a.b".c`` and ``a."b.c"``) is an error listing them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

# One reading of a name: the schema's possible spellings (None: any schema) and the view's.
Reading = tuple[frozenset[str] | None, frozenset[str]]


def _chain(text: str) -> list[tuple[str, bool]] | None:
    """``text`` as a PostgreSQL identifier chain: its parts and whether each was quoted; None
    when it is not one (an unclosed quote, a quote inside an unquoted part, an empty part)."""
    parts: list[tuple[str, bool]] = []
    i = 0
    while True:
        if text.startswith('"', i):
            value, i = _quoted(text, i)
            if value is None:
                return None
            parts.append((value, True))
        else:
            end = text.find(".", i)
            end = len(text) if end < 0 else end
            value = text[i:end]
            if not value or '"' in value:
                return None
            parts.append((value, False))
            i = end
        if i == len(text):
            return parts
        if text[i] != ".":
            return None
        i += 1


def _quoted(text: str, start: int) -> tuple[str | None, int]:
    """The content of the quoted identifier at ``start`` and the index after it."""
    out: list[str] = []
    i = start + 1
    while i < len(text):
        if text[i] == '"':
            if text.startswith('""', i):
                out.append('"')
                i += 2
                continue
            return "".join(out), i + 1
        out.append(text[i])
        i += 1
    return None, i


def _spellings(parts: Sequence[tuple[str, bool]]) -> frozenset[str] | None:
    """What a run of parts can name: one quoted part as written, or unquoted parts joined by
    dots (and folded to lower case); None for a run mixing quoted parts with others."""
    if len(parts) == 1 and parts[0][1]:
        return frozenset([parts[0][0]])
    if any(quoted for _, quoted in parts):
        return None
    joined = ".".join(value for value, _ in parts)
    return frozenset([joined, joined.lower()])


def readings(text: str) -> Iterator[Reading]:
    """Every (schema, name) a name given on the command line may mean (module docstring)."""
    yield None, frozenset([text])  # the view's own name, exactly as written
    for i, char in enumerate(text):
        if char == ".":
            yield frozenset([text[:i]]), frozenset([text[i + 1 :]])
    parts = _chain(text)
    if parts is None:
        return
    for split in range(len(parts)):
        schema = _spellings(parts[:split]) if split else None
        name = _spellings(parts[split:])
        if name is not None and (split == 0 or schema is not None):
            yield schema, name


def matching(text: str, views: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The ``(schema, name)`` of ``views`` that ``text`` names, in the order of ``views``."""
    found = list(readings(text))
    return [
        (schema, name)
        for schema, name in views
        if any(name in names and (s is None or schema in s) for s, names in found)
    ]


def select(
    graph: Any,
    mv_keys: Sequence[Any],
    views: Sequence[str],
    groups: Sequence[str],
    all_views: bool,
    downstream: bool,
) -> list[Any]:
    """Asset keys of the MVs named, in the groups given, optionally with their downstream."""
    from mv_orchestration.core.sql import qualname
    from mv_orchestration.errors import UnknownViewError

    if all_views:
        return list(mv_keys)
    chosen: set[Any] = set()
    by_ref = {(k.path[-2], k.path[-1]): k for k in mv_keys}
    for name in views:
        matches = matching(name, list(by_ref))
        if not matches:
            raise UnknownViewError(f"no materialized view named {name!r} (see 'mvo discover')")
        if len(matches) > 1:
            names = ", ".join(qualname(*ref) for ref in matches)
            raise UnknownViewError(f"{name!r} is ambiguous: {names}; use schema.name")
        chosen.add(by_ref[matches[0]])
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
