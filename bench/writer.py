"""Benchmark D: writer throughput on ``llm_usage.api_usage`` under each refresh machinery.

One writer inserts single rows of the demo's shape into the partitioned ``api_usage``, one
autocommit INSERT (= one transaction) after another, for a fixed wall time per window, while
one of these runs:

(i)   nothing: no refresh machinery at all;
(ii)  the LLM-usage team's refresh-on-insert trigger: ``AFTER INSERT ... FOR EACH STATEMENT`` on
      ``api_usage`` calling ``trigger_refresh_analytics_views()``, which calls their
      ``refresh_analytics_views()`` (a plain ``REFRESH MATERIALIZED VIEW`` of the four MVs)
      inside the inserting transaction (see :func:`seed_trigger_sql`);
(iii) this project's change sensor at its default interval: a background thread that, every
      ``minimum_interval_seconds`` of :func:`~mv_orchestration.lib.sensors.build_change_sensor`
      (30 s), runs :func:`~mv_orchestration.core.changes.fingerprints` for the MVs' source
      tables and refreshes the MVs downstream of a change with ``refresh_view`` - what the
      sensor tick and the run it requests do, minus Dagster's run launch;
(iv)  the same thread ticking every second (a stress case, 30x the default rate);
(v)   a control: no refresh machinery, but another session runs a CPU-bound query for the
      whole window. On this kind of machine a lone writer's single-row round trips are slowed
      by waking idle CPUs; any busy process nearby speeds them up, which (v) shows apart from
      any refreshing.

Windows rotate through the variants in rounds, so drift (other load, caches) hits each
equally. After each window the rows it inserted are deleted and the table vacuumed (outside
the clock), so every window starts from the same table. The sensor variants keep their cursor
and their tick clock across their windows: the clock runs only while their own window runs, so
over the whole benchmark a sensor ticks as often as it would in that much wall time.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from bench.demo_db import (
    API_USAGE,
    LLM_SCHEMA,
    LlmSystem,
    count_rows,
    insert_statement,
    rows_seen_by_all_time_mv,
    sample_rows,
)
from mv_orchestration.core.catalog import RelationRef
from mv_orchestration.core.changes import changed, fingerprints
from mv_orchestration.core.refresh import refresh_view
from mv_orchestration.core.sql import relation
from mv_orchestration.lib.sensors import build_change_sensor

VARIANTS = ("none", "trigger", "sensor", "sensor_fast", "busy")
# The control's CPU-bound query: far more rows than a window can count, cancelled at its end.
BUSY_SQL = "SELECT count(*) FROM generate_series(1::bigint, 1000000000000::bigint)"
SENSOR_INTERVAL_S = float(
    inspect.signature(build_change_sensor).parameters["minimum_interval_seconds"].default
)
FAST_INTERVAL_S = 1.0
SAMPLE_ROWS = 5000
REFRESH_FUNCTION = "refresh_analytics_views"
TRIGGER_FUNCTION = "trigger_refresh_analytics_views"
# Their two statement-level triggers; the writer only fires the INSERT one.
TRIGGERS = (
    ("auto_refresh_analytics_on_insert", sql.SQL("INSERT")),
    ("auto_refresh_analytics_on_update", sql.SQL("UPDATE")),
)
NOTIFY_CHANNEL = "refresh_analytics"
# refresh_analytics_views() in their setup refreshes the four MVs in this order.
SEED_ORDER = ("mv_daily_metrics", "mv_provider_performance", "mv_model_costs", "mv_model_usage")


@dataclass(frozen=True)
class WriterVariant:
    variant: str
    inserts: int
    seconds: float
    window_rates: tuple[float, ...]  # inserts/s per window, in round order
    ticks: int = 0  # sensor variants: ticks evaluated
    refresh_runs: int = 0  # ticks that found a change and refreshed
    mv_refreshes: int = 0
    refresh_s: float = 0.0  # wall time spent in refresh_view by the sensor thread

    @property
    def rate(self) -> float:
        return self.inserts / self.seconds


@dataclass(frozen=True)
class WriterResult:
    variants: tuple[WriterVariant, ...]
    rounds: int
    window_s: float
    scale: float
    table_rows: int  # api_usage rows at the start of every window
    matviews: tuple[str, ...]
    watched: tuple[str, ...]
    sensor_interval_s: float
    fast_interval_s: float
    trigger_refresh_ms: float  # median duration of one refresh_analytics_views() call
    trigger_sql: str  # their functions and triggers as installed

    def get(self, variant: str) -> WriterVariant:
        return next(v for v in self.variants if v.variant == variant)


def seed_trigger_sql(system: LlmSystem) -> list[sql.Composed]:
    """The LLM-usage team's functions and triggers, translated; the triggers are created per window.

    Their setup shows ``refresh_analytics_views()`` (``SECURITY DEFINER``, plain ``REFRESH`` of
    the four MVs) and the two ``FOR EACH STATEMENT`` triggers, and names
    ``trigger_refresh_analytics_views()`` as their function without showing its body: it
    "sends notification", and "database triggers (automatic)" are listed among the callers of
    ``refresh_analytics_views()``. No listener appears anywhere in it, so the trigger
    function does both, ``pg_notify`` and the refresh, in the inserting transaction - the only
    reading under which their views refresh at all, and the demo DDL's own reading.
    Returns the function statements; :func:`trigger_statements` gives the triggers.
    """
    if sorted(SEED_ORDER) != sorted(mv.name for mv in system.order):
        raise RuntimeError(f"the demo's MVs are not the trigger's: {system.order}")
    refreshes = sql.SQL("\n").join(
        sql.SQL("  REFRESH MATERIALIZED VIEW {};").format(relation(LLM_SCHEMA, name))
        for name in SEED_ORDER
    )
    refresh_fn = relation(LLM_SCHEMA, REFRESH_FUNCTION)
    trigger_fn = relation(LLM_SCHEMA, TRIGGER_FUNCTION)
    return [
        sql.SQL(
            "CREATE FUNCTION {}() RETURNS void LANGUAGE plpgsql SECURITY DEFINER AS $fn$\n"
            "BEGIN\n{}\nEND;\n$fn$"
        ).format(refresh_fn, refreshes),
        sql.SQL(
            "CREATE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS $fn$\n"
            "BEGIN\n  PERFORM pg_notify({}, TG_OP);\n  PERFORM {}();\n  RETURN NULL;\n"
            "END;\n$fn$"
        ).format(trigger_fn, sql.Literal(NOTIFY_CHANNEL), refresh_fn),
    ]


def trigger_statements() -> list[sql.Composed]:
    return [
        sql.SQL(
            "CREATE TRIGGER {}\n  AFTER {} ON {}\n  FOR EACH STATEMENT EXECUTE FUNCTION {}()"
        ).format(
            sql.Identifier(name),
            event,
            relation(LLM_SCHEMA, API_USAGE),
            relation(LLM_SCHEMA, TRIGGER_FUNCTION),
        )
        for name, event in TRIGGERS
    ]


def _create_triggers(conn: psycopg.Connection[Any]) -> None:
    for stmt in trigger_statements():
        conn.execute(stmt)


def _drop_triggers(conn: psycopg.Connection[Any]) -> None:
    for name, _event in TRIGGERS:
        conn.execute(
            sql.SQL("DROP TRIGGER {} ON {}").format(
                sql.Identifier(name), relation(LLM_SCHEMA, API_USAGE)
            )
        )


@dataclass
class _SensorState:
    """A change sensor's cursor, tick clock and counts, kept across its windows."""

    interval_s: float
    previous: dict[RelationRef, str]
    active_s: float = 0.0  # nominal window time this sensor has run so far
    next_tick_s: float = 0.0  # in active time
    ticks: int = 0
    refresh_runs: int = 0
    mv_refreshes: int = 0
    refresh_s: float = 0.0
    errors: list[BaseException] = field(default_factory=list)


def _sensor_window(
    db_url: str,
    system: LlmSystem,
    state: _SensorState,
    window_s: float,
    started: float,
    stop: threading.Event,
) -> None:
    """Tick on the sensor's own clock until ``stop`` is set; runs in a background thread."""
    try:
        with psycopg.connect(db_url, autocommit=True, application_name="bench-sensor") as conn:
            while not stop.is_set():
                elapsed = time.perf_counter() - started
                if state.next_tick_s >= state.active_s + window_s:
                    return  # the next tick falls after this window: it belongs to a later one
                wait = state.next_tick_s - (state.active_s + elapsed)
                if wait > 0:
                    stop.wait(wait)
                    continue
                current = fingerprints(conn, list(system.watched))
                moved = changed(state.previous, current)
                state.previous = {ref: fp.token for ref, fp in current.items()}
                state.ticks += 1
                state.next_tick_s += state.interval_s
                mvs = system.to_refresh(moved)
                if mvs:
                    t0 = time.perf_counter()
                    for mv in mvs:
                        refresh_view(conn, mv.schema, mv.name)
                    state.refresh_s += time.perf_counter() - t0
                    state.refresh_runs += 1
                    state.mv_refreshes += len(mvs)
    except BaseException as exc:  # reported by the main thread after join
        state.errors.append(exc)


class _BusyQuery:
    """The control: a CPU-bound query in another session for the length of a window."""

    def __init__(self, db_url: str) -> None:
        self.conn = psycopg.connect(db_url, autocommit=True, application_name="bench-busy")
        self.pid = self.conn.info.backend_pid
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, name="bench-busy")
        self.thread.start()

    def _run(self) -> None:
        try:
            self.conn.execute(BUSY_SQL)
        except psycopg.errors.QueryCanceled:
            pass
        except BaseException as exc:  # reported by the main thread after join
            self.errors.append(exc)

    def stop(self, admin: psycopg.Connection[Any]) -> None:
        admin.execute("SELECT pg_cancel_backend(%s)", [self.pid])
        self.thread.join()
        self.conn.close()
        if self.errors:
            raise RuntimeError("the control's query failed") from self.errors[0]


def _write_for(conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]], seconds: float) -> int:
    """Single-row autocommit INSERTs until ``seconds`` have passed; return how many."""
    stmt = insert_statement()
    n = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        conn.execute(stmt, rows[n % len(rows)])
        n += 1
    return n


def _max_id(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        sql.SQL("SELECT coalesce(max(id), 0) FROM {}").format(relation(LLM_SCHEMA, API_USAGE))
    ).fetchone()
    return int(row[0]) if row else 0


def run_writer(
    db_url: str,
    *,
    rounds: int,
    window_s: float,
    scale: float,
    log: Callable[[str], None],
) -> WriterResult:
    """Run benchmark D against a database holding the llm_usage demo system."""
    api_usage = relation(LLM_SCHEMA, API_USAGE)
    with (
        psycopg.connect(db_url, autocommit=True, application_name="bench-admin") as admin,
        psycopg.connect(db_url, autocommit=True, application_name="bench-writer") as writer,
    ):
        system = LlmSystem.read(admin)
        rows = sample_rows(admin, SAMPLE_ROWS)
        setup = seed_trigger_sql(system)
        for stmt in setup:
            admin.execute(stmt)
        samples = []
        for _ in range(3):  # one call of the function the trigger runs, for the report
            t0 = time.perf_counter()
            admin.execute(sql.SQL("SELECT {}()").format(relation(LLM_SCHEMA, REFRESH_FUNCTION)))
            samples.append(time.perf_counter() - t0)
        trigger_refresh_ms = sorted(samples)[1] * 1000.0
        admin.execute(sql.SQL("VACUUM {}").format(api_usage))
        table_rows = count_rows(admin, LLM_SCHEMA, API_USAGE)

        baseline = {ref: fp.token for ref, fp in fingerprints(admin, list(system.watched)).items()}
        sensors = {
            "sensor": _SensorState(SENSOR_INTERVAL_S, dict(baseline)),
            "sensor_fast": _SensorState(FAST_INTERVAL_S, dict(baseline)),
        }
        counts: dict[str, list[tuple[int, float]]] = {v: [] for v in VARIANTS}
        for r in range(rounds):
            order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
            for variant in order:
                first_new_id = _max_id(admin) + 1
                if variant == "trigger":
                    _create_triggers(admin)
                thread: threading.Thread | None = None
                stop = threading.Event()
                state = sensors.get(variant)
                busy = _BusyQuery(db_url) if variant == "busy" else None
                started = time.perf_counter()
                if state is not None:
                    thread = threading.Thread(
                        target=_sensor_window,
                        args=(db_url, system, state, window_s, started, stop),
                        name=f"bench-{variant}",
                    )
                    thread.start()
                n = _write_for(writer, rows, window_s)
                elapsed = time.perf_counter() - started
                stop.set()
                if busy is not None:
                    busy.stop(admin)
                if thread is not None and state is not None:
                    thread.join()
                    if state.errors:
                        raise RuntimeError(f"{variant} thread failed") from state.errors[0]
                    state.active_s += window_s
                if variant == "trigger":
                    _drop_triggers(admin)
                    # Every insert refreshed the MVs, so the all-time MV saw the last row.
                    seen = rows_seen_by_all_time_mv(admin)
                    total = count_rows(admin, LLM_SCHEMA, API_USAGE)
                    if seen != total:
                        raise RuntimeError(f"trigger did not refresh: MV saw {seen} of {total}")
                counts[variant].append((n, elapsed))
                log(f"  round {r + 1}/{rounds} {variant}: {n / elapsed:,.1f} inserts/s")
                # Back to the same table for the next window (outside the clock).
                admin.execute(
                    sql.SQL("DELETE FROM {} WHERE id >= %s").format(api_usage), [first_new_id]
                )
                admin.execute(sql.SQL("VACUUM {}").format(api_usage))
        _drop_functions(admin)

    variants: list[WriterVariant] = []
    for variant in VARIANTS:
        windows = counts[variant]
        state = sensors.get(variant)
        variants.append(
            WriterVariant(
                variant=variant,
                inserts=sum(n for n, _ in windows),
                seconds=sum(s for _, s in windows),
                window_rates=tuple(n / s for n, s in windows),
                ticks=state.ticks if state else 0,
                refresh_runs=state.refresh_runs if state else 0,
                mv_refreshes=state.mv_refreshes if state else 0,
                refresh_s=state.refresh_s if state else 0.0,
            )
        )
    return WriterResult(
        variants=tuple(variants),
        rounds=rounds,
        window_s=window_s,
        scale=scale,
        table_rows=table_rows,
        matviews=tuple(mv.qualname for mv in system.order),
        watched=tuple(ref.qualname for ref in system.watched),
        sensor_interval_s=SENSOR_INTERVAL_S,
        fast_interval_s=FAST_INTERVAL_S,
        trigger_refresh_ms=trigger_refresh_ms,
        trigger_sql=";\n\n".join(s.as_string() for s in [*setup, *trigger_statements()]) + ";",
    )


def _drop_functions(conn: psycopg.Connection[Any]) -> None:
    for fn in (TRIGGER_FUNCTION, REFRESH_FUNCTION):
        conn.execute(sql.SQL("DROP FUNCTION {}()").format(relation(LLM_SCHEMA, fn)))
