"""The catalog cache under concurrent writers, and when it cannot be written at all."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from mv_orchestration.core.catalog import CatalogSnapshot
from mv_orchestration.core.files import write_atomic
from mv_orchestration.lib.snapshot import cache_file, load_snapshot

DDL = """
CREATE SCHEMA shop;
CREATE TABLE shop.orders (id int PRIMARY KEY, amount int);
CREATE MATERIALIZED VIEW shop.mv_total AS SELECT sum(amount) AS total FROM shop.orders;
"""
WORKERS = 4


def _load_many(url: str, cache_dir: str, rounds: int, start: Any) -> None:
    start.wait()
    for _ in range(rounds):
        load_snapshot(url, alias="shop", schemas=["shop"], cache_dir=Path(cache_dir))


def _write_many(path: str, text: str, rounds: int, start: Any) -> None:
    start.wait()
    for _ in range(rounds):
        write_atomic(Path(path), text)


def _run_workers(target: Any, args: tuple[Any, ...]) -> list[int | None]:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(WORKERS)
    procs = [ctx.Process(target=target, args=(*args, start)) for _ in range(WORKERS)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=300)
    return [proc.exitcode for proc in procs]


def test_code_locations_loading_at_once_all_load(
    db_url: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    conn.execute(DDL)
    codes = _run_workers(_load_many, (db_url, str(tmp_path), 25))
    assert codes == [0] * WORKERS  # a worker whose cache write failed would exit 1
    (cache,) = tmp_path.iterdir()  # one cache file, no temporary ones left behind
    assert cache == cache_file(tmp_path, "shop", db_url, ["shop"])
    assert [m.name for m in CatalogSnapshot.from_json(cache.read_text()).matviews] == ["mv_total"]


def test_writers_at_once_leave_a_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.json"
    text = json.dumps({"payload": "x" * 200_000})
    codes = _run_workers(_write_many, (str(path), text, 200))
    assert codes == [0] * WORKERS
    assert [p.name for p in tmp_path.iterdir()] == ["shared.json"]
    assert path.read_text() == text


@pytest.fixture
def read_only_dir() -> Iterator[Path]:
    """A cache directory that may be read but not written."""
    base = Path(tempfile.mkdtemp(prefix="mvo-ro-"))
    cache_dir = base / "catalog"
    cache_dir.mkdir()
    for path in (base, cache_dir):
        os.chmod(path, 0o555)
    try:
        yield cache_dir
    finally:
        os.chmod(base, 0o755)
        shutil.rmtree(base)


def _load_unprivileged(url: str, cache_dir: str, out: Any) -> None:
    """In a child process: load as a user the directory's mode applies to (root may write
    anywhere, so as ``nobody`` when the tests run as root), and report the load's views and
    log lines."""
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(f"{record.levelname} {record.getMessage()}")  # type: ignore[method-assign]
    logging.getLogger("mv_orchestration").addHandler(handler)
    snap = load_snapshot(url, alias="shop", schemas=["shop"], cache_dir=Path(cache_dir))
    out.send(([m.qualname for m in snap.matviews], lines))


def test_read_only_cache_directory_costs_one_warning(
    db_url: str, conn: psycopg.Connection[Any], read_only_dir: Path
) -> None:
    conn.execute(DDL)
    ctx = multiprocessing.get_context("fork")  # setuid needs no new interpreter
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_load_unprivileged, args=(db_url, str(read_only_dir), send))
    proc.start()
    proc.join(timeout=120)
    assert proc.exitcode == 0, "the load failed"
    views, lines = receive.recv()
    assert views == ["shop.mv_total"]  # the load went on
    cache = cache_file(read_only_dir, "shop", db_url, ["shop"])
    assert lines == [
        f"WARNING could not write the catalog cache {cache} (Permission denied); "
        "going on without updating it"
    ]
    assert list(read_only_dir.iterdir()) == []
