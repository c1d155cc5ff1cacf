"""Benchmark G: a new reader's wait behind a blocking refresh that waits for its lock.

A plain ``REFRESH MATERIALIZED VIEW`` asks for ACCESS EXCLUSIVE on the MV. While a long reader
transaction (the *holder*, e.g. a report, holding ACCESS SHARE) keeps it waiting, every new
``SELECT`` of the MV queues behind the refresh's request. For a holder that commits 8 s and 25
s after the refresh starts, three refreshes run, one after another in one run:

* **bare**: ``REFRESH MATERIALIZED VIEW`` with ``lock_timeout = 0`` (wait for ever), as a
  plain ``psql`` or cron job would;
* **old defaults**: :func:`~mv_orchestration.core.refresh.refresh_view` as it behaved before
  issue 11: ``lock_timeout`` 10 s, 2 retries after 2 s and 4 s (no jitter), replayed here as
  three ``refresh_view`` calls of one attempt each with those sleeps between them;
* **new defaults**: ``refresh_view(conn, schema, name)`` with the default options (0.5 s
  ``lock_timeout``, 14 retries, capped exponential backoff with jitter).

Readers start one per :data:`READER_EVERY_S` seconds, each at a random moment of its slot
(seeded), from the refresh's start until it has ended, each in its own thread on a connection opened beforehand, and time one ``SELECT
count(*)`` of the MV (wall time, ``perf_counter``). A reader's *wait* is that time; with
nothing in the way the same ``SELECT`` takes a few milliseconds (measured first, for scale).
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from bench.stats import Summary
from mv_orchestration.core.refresh import RefreshOptions, refresh_view
from mv_orchestration.errors import LockTimeoutError, RefreshError

HOLDS_S = (8.0, 25.0)
QUICK_HOLDS_S = (2.0, 5.0)
READER_EVERY_S = 0.4
SEED = 9  # the readers' start times within their slots
ROWS = 10_000
VARIANTS = ("bare", "old", "new")
# the defaults before issue 11: lock_timeout 10 s, lock_retries 2, backoff 2 s doubling
OLD_LOCK_TIMEOUT_S = 10.0
OLD_RETRY_DELAYS_S = (2.0, 4.0)
_DDL = sql.SQL("""
DROP MATERIALIZED VIEW IF EXISTS mv_report;
DROP TABLE IF EXISTS report_src;
CREATE TABLE report_src (id int PRIMARY KEY, v int NOT NULL);
INSERT INTO report_src SELECT g, g % 97 FROM generate_series(1, {rows}) g;
CREATE MATERIALIZED VIEW mv_report AS SELECT id, v FROM report_src;
""").format(rows=sql.Literal(ROWS))
_READ = "SELECT count(*) FROM mv_report"


@dataclass(frozen=True)
class Reader:
    start_s: float  # after the refresh started
    wait_s: float


@dataclass(frozen=True)
class Cell:
    variant: str
    hold_s: float  # the holder commits this long after the refresh started
    readers: tuple[Reader, ...]
    ok: bool
    attempts: int
    ended_s: float  # the refresh ended (committed, or gave up) this long after it started
    error: str | None

    @property
    def waits(self) -> Summary:
        return Summary.of([r.wait_s for r in self.readers])

    def over(self, bound_s: float) -> int:
        return sum(r.wait_s >= bound_s for r in self.readers)


@dataclass(frozen=True)
class ReaderWaitResult:
    cells: tuple[Cell, ...]
    holds_s: tuple[float, ...]
    reader_every_s: float
    rows: int
    alone: Summary  # the same SELECT with nothing waiting
    new: RefreshOptions
    seconds: float  # how long this benchmark took

    def get(self, variant: str, hold_s: float) -> Cell:
        return next(c for c in self.cells if c.variant == variant and c.hold_s == hold_s)


# --- the three refreshes --------------------------------------------------------------------


def _bare(conn: psycopg.Connection[Any]) -> int:
    conn.execute("SET lock_timeout = 0")
    conn.execute("REFRESH MATERIALIZED VIEW mv_report")
    return 1


def _old(conn: psycopg.Connection[Any]) -> int:
    once = RefreshOptions(
        lock_timeout_s=OLD_LOCK_TIMEOUT_S, concurrent_lock_timeout_s=OLD_LOCK_TIMEOUT_S,
        lock_retries=0,
    )  # fmt: skip
    for attempt, delay in enumerate((*OLD_RETRY_DELAYS_S, None), start=1):
        try:
            refresh_view(conn, "public", "mv_report", once)
            return attempt
        except LockTimeoutError as exc:
            if delay is None:
                exc.attempts = attempt
                raise
            time.sleep(delay)
    raise AssertionError("unreachable")


def _new(conn: psycopg.Connection[Any]) -> int:
    return refresh_view(conn, "public", "mv_report").attempts


_REFRESH: dict[str, Callable[[psycopg.Connection[Any]], int]] = {
    "bare": _bare,
    "old": _old,
    "new": _new,
}


# --- one cell: a holder, a refresh, readers -------------------------------------------------


def _read(conn: psycopg.Connection[Any]) -> float:
    t0 = time.perf_counter()
    conn.execute(_READ).fetchone()
    return time.perf_counter() - t0


def _run_cell(
    url: str, variant: str, hold_s: float, readers: Sequence[psycopg.Connection[Any]]
) -> Cell:
    outcome: dict[str, Any] = {}
    found: list[Reader] = []
    lock = threading.Lock()
    with (
        psycopg.connect(url, autocommit=True, application_name="bench holder") as holder,
        psycopg.connect(url, autocommit=True, application_name="bench refresh") as refresher,
    ):
        holder.execute("BEGIN")
        holder.execute(_READ).fetchone()  # ACCESS SHARE, kept until COMMIT
        t0 = time.perf_counter()

        def refresh() -> None:
            try:
                outcome["attempts"] = _REFRESH[variant](refresher)
            except RefreshError as exc:
                outcome["error"] = str(exc)
                outcome["attempts"] = exc.attempts
            except psycopg.Error as exc:
                outcome["error"] = str(exc)
                outcome["attempts"] = 1
            outcome["ended_s"] = time.perf_counter() - t0

        def reader(conn: psycopg.Connection[Any], start_s: float) -> None:
            wait = _read(conn)
            with lock:
                found.append(Reader(start_s, wait))

        def commit() -> None:
            time.sleep(max(0.0, t0 + hold_s - time.perf_counter()))
            holder.execute("COMMIT")

        worker = threading.Thread(target=refresh, name="bench-refresh")
        committer = threading.Thread(target=commit, name="bench-holder")
        worker.start()
        committer.start()
        threads: list[threading.Thread] = []
        rng = random.Random(SEED)
        for k, conn in enumerate(readers):
            # any moment of the slot: the start of an attempt's wait, its middle, its end
            at = (k + rng.random()) * READER_EVERY_S
            time.sleep(max(0.0, t0 + at - time.perf_counter()))
            if not worker.is_alive():
                break
            thread = threading.Thread(target=reader, args=(conn, at), name="bench-reader")
            thread.start()
            threads.append(thread)
        else:
            raise RuntimeError(f"{len(readers)} reader connections were not enough")
        for thread in (worker, committer, *threads):
            thread.join()
    return Cell(
        variant=variant,
        hold_s=hold_s,
        readers=tuple(sorted(found, key=lambda r: r.start_s)),
        ok="error" not in outcome,
        attempts=int(outcome["attempts"]),
        ended_s=float(outcome["ended_s"]),
        error=outcome.get("error"),
    )


def run_reader_wait(
    db_url: str, *, holds_s: Sequence[float], log: Callable[[str], None]
) -> ReaderWaitResult:
    """Run benchmark G in ``db_url`` (an empty database)."""
    began = time.perf_counter()
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(_DDL)
        conn.execute("VACUUM ANALYZE report_src")
    # readers until the refresh ended: at most the holder's time plus the old defaults'
    # last delay and a lock timeout of the new ones, and some slack
    n = math.ceil((max(holds_s) + OLD_RETRY_DELAYS_S[-1] + 4.0) / READER_EVERY_S)
    conns = [
        psycopg.connect(db_url, autocommit=True, application_name=f"bench reader {i}")
        for i in range(n)
    ]
    try:
        for c in conns:
            _read(c)  # warm each session's catalog cache
        alone = Summary.of([_read(conns[0]) for _ in range(50)])
        cells = []
        for hold in holds_s:
            for variant in VARIANTS:
                log(f"  holder {hold:g} s, {variant} ...")
                cell = _run_cell(db_url, variant, hold, conns)
                log(
                    f"    {len(cell.readers)} readers, max wait {cell.waits.max_ms / 1000:.2f} s;"
                    f" refresh {'done' if cell.ok else 'FAILED'} at {cell.ended_s:.1f} s"
                    f" after {cell.attempts} attempt(s)"
                )
                cells.append(cell)
    finally:
        for c in conns:
            c.close()
    return ReaderWaitResult(
        cells=tuple(cells),
        holds_s=tuple(holds_s),
        reader_every_s=READER_EVERY_S,
        rows=ROWS,
        alone=alone,
        new=RefreshOptions(),
        seconds=time.perf_counter() - began,
    )
