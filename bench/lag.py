"""Benchmark F: refreshes in a quiet hour, and commit-to-visible lag, cron vs change sensor.

An hour is too long for a benchmark, so both questions are answered by a discrete-event
simulation on a virtual clock driven by real components, on the LLM-usage demo:

* real single-row INSERTs into ``llm_usage.api_usage`` at simulated times;
* real :func:`~mv_orchestration.core.changes.fingerprints` calls at each simulated sensor tick
  (one every ``minimum_interval_seconds`` of ``build_change_sensor``, 30 s); before each tick
  the writer session runs ``pg_stat_force_next_flush()``, because the inserts of a simulated
  minute run back to back in real time and the server would otherwise hold their counters
  for up to a second;
* real :func:`~mv_orchestration.core.refresh.refresh_view` calls of the four MVs, upstream
  first, whenever a refresh is due: at each tick of the cron expression (Dagster's own cron
  iterator, as its scheduler uses), or at a sensor tick whose fingerprints changed;
* the virtual clock advances by the measured duration of each fingerprint query and refresh.

A row's lag is the virtual time at which the first refresh that *started* after its commit
finished, minus its commit time. A refresh starts at its tick, or when the previous refresh
ends if that is later. After every refresh the all-time MV is checked to count exactly the
rows committed before the refresh started, so a lag is never assumed, only timed.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from dagster._utils.schedules import cron_string_iterator

from bench.demo_db import (
    API_USAGE,
    LLM_SCHEMA,
    LlmSystem,
    count_rows,
    flush_stats,
    insert_statement,
    rows_seen_by_all_time_mv,
    sample_rows,
)
from bench.stats import Summary
from mv_orchestration.core.changes import changed, fingerprints
from mv_orchestration.core.refresh import refresh_view
from mv_orchestration.lib.sensors import build_change_sensor

HOUR_S = 3600.0
CRON = "*/2 * * * *"  # the demo's school policy; also what the school team's own setup ran
CRON_TZ = "UTC"
SENSOR_INTERVAL_S = float(
    inspect.signature(build_change_sensor).parameters["minimum_interval_seconds"].default
)
INSERT_EVERY_S = 5.0
# Inserts sit between ticks (2.5 s, 7.5 s, ...), never on one, so no tie needs breaking.
INSERT_OFFSET_S = INSERT_EVERY_S / 2


@dataclass(frozen=True)
class QuietHour:
    sensor_ticks: int
    sensor_triggering_ticks: int  # ticks whose fingerprints changed: each would refresh
    fingerprint: Summary  # one fingerprint call, real
    cron_ticks: int
    cron_mv_refreshes: int
    cron_refresh_s: float  # real refresh time the cron spent in the quiet hour
    cron_concurrent: int  # CONCURRENTLY refreshes among them
    cron_concurrent_noop: int  # ... of which inserted and deleted no row
    cron_changed: tuple[str, ...]  # MVs a quiet-hour cron refresh changed (rows in or out)
    uses_now: tuple[str, ...]  # MVs whose definition calls now()


@dataclass(frozen=True)
class SteadyHour:
    policy: str  # "cron" or "sensor"
    inserts: int
    ticks: int  # evaluations in the hour (cron ticks, or sensor ticks)
    refresh_runs: int  # refreshes of the four MVs, one per tick that called for one
    mv_refreshes: int
    refresh_s: float  # their real, measured duration, summed
    run: Summary  # duration of one refresh run (the four MVs)
    lag: Summary  # per row; Summary is in ms, lags are reported in seconds


@dataclass(frozen=True)
class LagResult:
    cron: str
    cron_tz: str
    sensor_interval_s: float
    insert_every_s: float
    scale: float
    table_rows: int
    matviews: tuple[str, ...]
    quiet: QuietHour
    steady: tuple[SteadyHour, ...]

    def get(self, policy: str) -> SteadyHour:
        return next(s for s in self.steady if s.policy == policy)


def cron_ticks(start: datetime, seconds: float) -> list[float]:
    """Offsets (s) of the cron's ticks in ``(start, start + seconds]``."""
    end = start + timedelta(seconds=seconds)
    ticks: list[float] = []
    it: Iterator[datetime] = cron_string_iterator(start.timestamp(), CRON, CRON_TZ)
    for tick in it:
        if tick > end:
            break
        if tick > start:
            ticks.append((tick - start).total_seconds())
    return ticks


def sensor_ticks(seconds: float) -> list[float]:
    """Offsets (s) of the sensor's ticks in ``(0, seconds]``; its baseline is at 0."""
    n = int(seconds // SENSOR_INTERVAL_S)
    return [SENSOR_INTERVAL_S * (k + 1) for k in range(n)]


class _Simulation:
    """One simulated hour on the real table: a writer session and a refresher session."""

    def __init__(
        self,
        writer: psycopg.Connection[Any],
        refresher: psycopg.Connection[Any],
        system: LlmSystem,
        rows: list[tuple[Any, ...]],
    ) -> None:
        self.writer = writer
        self.refresher = refresher
        self.system = system
        self.rows = rows
        self.stmt = insert_statement()
        self.committed = count_rows(refresher, LLM_SCHEMA, API_USAGE)
        self.inserted = 0
        self.pending: list[float] = []  # commit times of rows no refresh has started after

    def insert_until(self, t: float, insert_times: list[float]) -> None:
        """Run every insert whose simulated commit time is at or before ``t``."""
        while self.inserted < len(insert_times) and insert_times[self.inserted] <= t:
            self.writer.execute(self.stmt, self.rows[self.inserted % len(self.rows)])
            self.pending.append(insert_times[self.inserted])
            self.inserted += 1
            self.committed += 1

    def refresh(self) -> tuple[float, list[float], list[Any]]:
        """Refresh the four MVs now; (measured seconds, commit times it covers, results)."""
        covered, self.pending = self.pending, []
        t0 = time.perf_counter()
        results = [refresh_view(self.refresher, mv.schema, mv.name) for mv in self.system.order]
        elapsed = time.perf_counter() - t0
        seen = rows_seen_by_all_time_mv(self.refresher)
        if seen != self.committed:
            raise RuntimeError(f"MV counts {seen} rows, {self.committed} were committed")
        return elapsed, covered, results


def _steady_hour(
    policy: str,
    db_url: str,
    system: LlmSystem,
    rows: list[tuple[Any, ...]],
    start: datetime,
    log: Callable[[str], None],
) -> SteadyHour:
    insert_times = [
        INSERT_OFFSET_S + INSERT_EVERY_S * i for i in range(int(HOUR_S / INSERT_EVERY_S))
    ]
    ticks = cron_ticks(start, HOUR_S) if policy == "cron" else sensor_ticks(HOUR_S)
    with (
        psycopg.connect(db_url, autocommit=True, application_name="bench-writer") as writer,
        psycopg.connect(db_url, autocommit=True, application_name="bench-refresher") as refresher,
    ):
        sim = _Simulation(writer, refresher, system, rows)
        previous = {r: fp.token for r, fp in fingerprints(refresher, list(system.watched)).items()}
        busy_until = 0.0
        lags: list[float] = []
        runs: list[float] = []
        refresh_runs = mv_refreshes = 0
        for tick in ticks:
            sim.insert_until(tick, insert_times)
            now = tick
            if policy == "sensor":
                flush_stats(writer)
                t0 = time.perf_counter()
                current = fingerprints(refresher, list(system.watched))
                now += time.perf_counter() - t0
                moved = changed(previous, current)
                previous = {r: fp.token for r, fp in current.items()}
                if not system.to_refresh(moved):
                    continue
            begin = max(now, busy_until)
            sim.insert_until(begin, insert_times)  # commits before the refresh starts
            elapsed, covered, _results = sim.refresh()
            busy_until = begin + elapsed
            lags += [busy_until - c for c in covered]
            runs.append(elapsed)
            refresh_runs += 1
            mv_refreshes += len(system.order)
        if sim.pending or sim.inserted != len(insert_times):
            raise RuntimeError(f"{len(sim.pending)} rows were never covered by a refresh")
    hour = SteadyHour(
        policy=policy,
        inserts=len(insert_times),
        ticks=len(ticks),
        refresh_runs=refresh_runs,
        mv_refreshes=mv_refreshes,
        refresh_s=sum(runs),
        run=Summary.of(runs),
        lag=Summary.of(lags),
    )
    log(
        f"  steady hour, {policy}: {hour.refresh_runs} refresh runs, lag median "
        f"{hour.lag.median_ms / 1000:.1f} s, p95 {hour.lag.p95_ms / 1000:.1f} s"
    )
    return hour


def _quiet_hour(
    db_url: str, system: LlmSystem, start: datetime, log: Callable[[str], None]
) -> QuietHour:
    with (
        psycopg.connect(db_url, autocommit=True, application_name="bench-writer") as writer,
        psycopg.connect(db_url, autocommit=True, application_name="bench-refresher") as refresher,
    ):
        flush_stats(writer)
        previous = {r: fp.token for r, fp in fingerprints(refresher, list(system.watched)).items()}
        triggering = 0
        calls: list[float] = []
        s_ticks = sensor_ticks(HOUR_S)
        for _tick in s_ticks:
            flush_stats(writer)  # the writer wrote nothing; flushing shows nothing is pending
            t0 = time.perf_counter()
            current = fingerprints(refresher, list(system.watched))
            calls.append(time.perf_counter() - t0)
            if system.to_refresh(changed(previous, current)):
                triggering += 1
            previous = {r: fp.token for r, fp in current.items()}
        c_ticks = cron_ticks(start, HOUR_S)
        refresh_s = 0.0
        concurrent = noop = 0
        changed_mvs: set[str] = set()
        for _tick in c_ticks:
            for mv in system.order:
                result = refresh_view(refresher, mv.schema, mv.name)
                refresh_s += result.duration_s
                if result.method == "concurrently":
                    concurrent += 1
                    if result.rows_inserted == 0 and result.rows_deleted == 0:
                        noop += 1
                    else:
                        changed_mvs.add(mv.qualname)
    quiet = QuietHour(
        sensor_ticks=len(s_ticks),
        sensor_triggering_ticks=triggering,
        fingerprint=Summary.of(calls),
        cron_ticks=len(c_ticks),
        cron_mv_refreshes=len(c_ticks) * len(system.order),
        cron_refresh_s=refresh_s,
        cron_concurrent=concurrent,
        cron_concurrent_noop=noop,
        cron_changed=tuple(sorted(changed_mvs)),
        uses_now=tuple(sorted(mv.qualname for mv in system.uses_now)),
    )
    log(
        f"  quiet hour: sensor {quiet.sensor_triggering_ticks} of {quiet.sensor_ticks} ticks "
        f"would refresh; cron refreshed {quiet.cron_ticks} times ({quiet.cron_refresh_s:.1f} s)"
    )
    return quiet


def run_lag(db_url: str, *, scale: float, log: Callable[[str], None]) -> LagResult:
    """Run benchmark F against a database holding the llm_usage demo system."""
    # Any hour start gives the same */2 ticks; an aligned one keeps the offsets round.
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    with psycopg.connect(db_url, autocommit=True) as conn:
        system = LlmSystem.read(conn)
        rows = sample_rows(conn, 1000)
        table_rows = count_rows(conn, LLM_SCHEMA, API_USAGE)
        for mv in system.order:  # every MV starts current, as after any earlier refresh
            refresh_view(conn, mv.schema, mv.name)
    quiet = _quiet_hour(db_url, system, start, log)
    steady = tuple(_steady_hour(p, db_url, system, rows, start, log) for p in ("cron", "sensor"))
    return LagResult(
        cron=CRON,
        cron_tz=CRON_TZ,
        sensor_interval_s=SENSOR_INTERVAL_S,
        insert_every_s=INSERT_EVERY_S,
        scale=scale,
        table_rows=table_rows,
        matviews=tuple(mv.qualname for mv in system.order),
        quiet=quiet,
        steady=steady,
    )
