"""The demo database: five dashboard systems, each modelled on a real team's
hand-rolled refresh setup, with data and live traffic.

Each system has a static DDL file in ``sql/`` (schema, tables, plain views, materialized
views, indexes, comments) and a module in ``systems/`` with its bulk loader and its "live
traffic" tick (``systems/common.py`` holds what they share). This module runs them:

* :func:`load_demo` runs the DDL, COPYs realistic data, ANALYZEs and refreshes the MVs.
* :func:`insert_batch` inserts (and sometimes updates or deletes) a few rows, as the app would.
* :func:`run_generator` calls :func:`insert_batch` for every system on a clock.

Where the catalog features the product must handle live (see the SQL files' headers):

* MV on MV: ``school.mv_school_overview`` (on ``mv_attendance_daily`` and ``mv_fee_collection``)
  and ``marketing.weekly_aggregations`` (on ``daily_aggregations``).
* MV through a plain view: ``llm_usage.mv_model_costs`` (``v_successful_calls``) and
  ``mes.mv_process_wip_queue`` (``v_active_wip``).
* MV without a unique index: ``llm_usage.mv_model_usage``.
* Partitioned table: ``llm_usage.api_usage`` (monthly ranges on ``created_at`` + DEFAULT).

Loads are deterministic for a given seed and scale, relative to the load time floored to the
hour (timestamps end "now" so the dashboards' time windows have data).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from mv_orchestration.demo.systems import BY_NAME
from mv_orchestration.demo.systems.common import Loader

# the names of the systems, = their schemas, in load order
SYSTEMS: tuple[str, ...] = tuple(BY_NAME)

_SQL_DIR = Path(__file__).parent / "sql"


def sql_path(system: str) -> Path:
    """Path of the DDL file of ``system`` (one of :data:`SYSTEMS`)."""
    _check_system(system)
    return _SQL_DIR / f"{system}.sql"


def _check_system(system: str) -> None:
    if system not in SYSTEMS:
        raise ValueError(f"unknown demo system {system!r}; expected one of {', '.join(SYSTEMS)}")


def _utcnow() -> datetime:
    """The clock data is generated against (a seam for tests)."""
    return datetime.now(UTC)


def load_demo(
    conn: psycopg.Connection[Any],
    *,
    scale: float = 1.0,
    seed: int = 42,
    systems: Sequence[str] = SYSTEMS,
    progress: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """(Re)create the demo schemas of ``systems`` and fill them; return rows per table.

    ``conn`` must be an autocommit connection. Each system is dropped and recreated from its
    SQL file, loaded with COPY in one transaction, ANALYZEd, and its MVs refreshed in
    dependency order so they are populated. ``scale=1.0`` loads ~670k rows (~15 s).
    """
    if scale <= 0:
        raise ValueError("scale must be positive")
    for system in systems:
        _check_system(system)
    say = progress or (lambda _msg: None)
    now = _utcnow().astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    counts: dict[str, int] = {}
    for system in systems:
        started = time.monotonic()
        # Per-system streams: loading a subset gives the same data for each system.
        rng = random.Random(f"{seed}:{system}")
        ld = Loader(conn, system)
        say(f"{system}: creating schema")
        with conn.transaction():
            conn.execute(sql_path(system).read_bytes())
            say(f"{system}: generating and copying data")
            BY_NAME[system].load(ld, rng, scale, now)
        say(f"{system}: analyzing {len(ld.counts)} tables")
        for key in ld.counts:
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(*key.split(".", 1))))
        mvs = BY_NAME[system].matviews
        say(f"{system}: refreshing {len(mvs)} materialized views")
        for mv in mvs:
            with conn.transaction():
                conn.execute(
                    sql.SQL("REFRESH MATERIALIZED VIEW {}").format(sql.Identifier(system, mv))
                )
        counts.update(ld.counts)
        say(
            f"{system}: {sum(ld.counts.values()):,} rows in {len(ld.counts)} tables "
            f"({time.monotonic() - started:.1f}s)"
        )
    return counts


def insert_batch(
    conn: psycopg.Connection[Any], system: str, rng: random.Random, *, rows: int = 20
) -> int:
    """One tick of live traffic for ``system``; returns the number of rows touched.

    Inserts about ``rows`` new rows into the system's source tables and, like the real app,
    sometimes updates or deletes some (items move to the next process step, fees get paid,
    assets are retired). Runs in one transaction on the autocommit connection ``conn``.
    """
    _check_system(system)
    with conn.transaction():
        # ORDER BY random() in the ticks then follows ``rng`` too.
        conn.execute("SELECT setseed(%s)", [rng.uniform(-1.0, 1.0)])
        return BY_NAME[system].tick(conn, rng, max(1, rows))


def run_generator(
    dsn: str,
    *,
    interval_s: float = 1.0,
    systems: Sequence[str] = SYSTEMS,
    stop: threading.Event | None = None,
    max_ticks: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> int:
    """Produce live traffic: every ``interval_s`` one :func:`insert_batch` per system.

    Runs until ``stop`` is set or ``max_ticks`` ticks are done; returns the rows touched.
    A failing batch is reported through ``progress`` and skipped; a lost connection is
    re-opened on the next tick, so the generator survives database restarts. Only the first
    connection attempt raises (a wrong ``dsn`` fails fast).
    """
    for system in systems:
        _check_system(system)
    stop = stop or threading.Event()
    say = progress or (lambda _msg: None)
    rng = random.Random()
    total = ticks = 0
    conn: psycopg.Connection[Any] | None = _connect(dsn)
    try:
        while not stop.is_set() and (max_ticks is None or ticks < max_ticks):
            if conn is None or conn.closed:
                try:
                    conn = _connect(dsn)
                except psycopg.OperationalError as exc:
                    say(f"generator: cannot connect ({exc}); retrying")
                    conn = None
            if conn is not None:
                touched = 0
                for system in systems:
                    try:
                        touched += insert_batch(conn, system, rng)
                    except psycopg.Error as exc:
                        say(f"generator: {system} batch failed: {exc}")
                        if conn.closed:
                            break
                total += touched
                say(f"generator: tick {ticks + 1}, {touched} rows touched ({total} total)")
            ticks += 1
            if (max_ticks is not None and ticks >= max_ticks) or stop.wait(interval_s):
                break
    finally:
        if conn is not None:
            conn.close()
    return total


def _connect(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True, application_name="mvo-demo-generator")
