"""Dependency order and chunks over a real catalog."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from mv_orchestration.core.catalog import RelationRef, read_catalog
from mv_orchestration.core.graph import LineageGraph

DDL = """
CREATE SCHEMA g;
CREATE TABLE g.t (x int);
CREATE MATERIALIZED VIEW g.a1 AS SELECT x FROM g.t;
CREATE VIEW g.v AS SELECT x FROM g.a1;
CREATE MATERIALIZED VIEW g.a2 AS SELECT x FROM g.v;            -- a1 -> v -> a2
CREATE MATERIALIZED VIEW g.a3 AS SELECT x FROM g.a2;           -- -> a3
CREATE MATERIALIZED VIEW g.b1 AS SELECT x FROM g.t;            -- shares only the table
CREATE MATERIALIZED VIEW g.c0 AS SELECT 1 AS x;                -- reads nothing
CREATE MATERIALIZED VIEW g.c1 AS SELECT x FROM g.c0;           -- c0 -> c1
"""


def _names(chunks: list[list[RelationRef]]) -> list[list[str]]:
    return [[r.name for r in chunk] for chunk in chunks]


@pytest.fixture
def graph(conn: psycopg.Connection[Any]) -> LineageGraph:
    conn.execute(DDL)
    return LineageGraph(read_catalog(conn, ["g"]))


def test_connected_views_share_a_chunk(graph: LineageGraph) -> None:
    [whole] = graph.refresh_chunks(100)
    assert sorted(whole) == sorted(graph.refresh_order())
    for ref in whole:  # in dependency order
        assert all(whole.index(u) < whole.index(ref) for u in graph.upstream_matviews([ref]))
    chunks = _names(graph.refresh_chunks(3))
    # a1-a2-a3 together, c0-c1 together; b1 (linked to nothing) wherever it fits
    assert sorted(map(sorted, chunks)) == [["a1", "a2", "a3"], ["b1", "c0", "c1"]]


def test_a_part_larger_than_a_chunk_is_cut_in_dependency_order(graph: LineageGraph) -> None:
    chunks = graph.refresh_chunks(2)
    names = _names(chunks)
    # the chain a1-a2-a3 is cut after two; b1 fills the last piece's room
    assert names == [["c0", "c1"], ["a1", "a2"], ["a3", "b1"]]
    assert sorted(n for chunk in names for n in chunk) == ["a1", "a2", "a3", "b1", "c0", "c1"]
    position = {r: i for i, chunk in enumerate(chunks) for r in chunk}
    for chunk in chunks:  # a chunk depends only on itself and earlier chunks
        for ref in chunk:
            assert all(position[u] <= position[ref] for u in graph.upstream_matviews([ref]))
    with pytest.raises(ValueError):
        graph.refresh_chunks(0)
