"""Fault-suite fixtures: a view whose refresh takes seconds, a reader queued behind it, and
the probes every fault test asserts with (``pg_stat_activity``, the history, pool slots).

The view ``faults.slow_mv`` has no unique index, so it refreshes blocking (``ACCESS
EXCLUSIVE``): a reader that starts while the refresh runs waits for it. Its query sleeps
``faults.ctl.sleep_s`` seconds (0 when created, so creating it is quick).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest

from mv_orchestration_tests.conftest import PgServer

DEADLINE_S = 30.0
READER_APP = "mvo-test-reader"


def wait_until(condition: Callable[[], Any], what: str, deadline_s: float = DEADLINE_S) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what``."""
    end = time.monotonic() + deadline_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline_s:.0f} s waiting for {what}")
        time.sleep(0.05)


SLOW_VIEW_SQL = """
CREATE SCHEMA faults;
CREATE TABLE faults.ctl (sleep_s float8 NOT NULL);
INSERT INTO faults.ctl VALUES (0);
CREATE TABLE faults.src (id int PRIMARY KEY, v int NOT NULL);
INSERT INTO faults.src SELECT g, g FROM generate_series(1, 100) g;
CREATE MATERIALIZED VIEW faults.slow_mv AS
  SELECT id, v, (SELECT pg_sleep(sleep_s) FROM faults.ctl) IS NULL AS slept FROM faults.src;
"""


def make_slow(conn: psycopg.Connection[Any], seconds: float) -> None:
    """Make every later refresh of ``faults.slow_mv`` take ``seconds``; change its source so a
    finished refresh is visible in its rows."""
    conn.execute("UPDATE faults.ctl SET sleep_s = %s", [seconds])
    conn.execute("UPDATE faults.src SET v = v + 1")


@pytest.fixture
def slow_view(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """``faults.slow_mv`` created and populated (quickly); returns the admin connection."""
    conn.execute(SLOW_VIEW_SQL)
    return conn


def view_sum(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT sum(v) FROM faults.slow_mv").fetchone()
    assert row is not None
    return int(row[0])


def refreshes_running(conn: psycopg.Connection[Any]) -> list[tuple[int, str, str]]:
    """(pid, application_name, state) of every session running or stuck in a REFRESH."""
    rows = conn.execute(
        "SELECT pid, application_name, state FROM pg_stat_activity"
        " WHERE pid <> pg_backend_pid() AND query ILIKE 'REFRESH MATERIALIZED VIEW%%'"
        " AND state <> 'idle'"
    ).fetchall()
    return [(int(p), str(a), str(s)) for p, a, s in rows]


def refresh_active(conn: psycopg.Connection[Any]) -> bool:
    """Whether a REFRESH is running (sleeping in the view's query, or waiting for a lock)."""
    return any(state == "active" for _, _, state in refreshes_running(conn))


@dataclass
class Reader:
    """A ``SELECT`` on the slow view from its own session, started in a thread."""

    url: str
    started: float = 0.0
    finished: float | None = None
    error: BaseException | None = None
    pid: int | None = None
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> Reader:
        ready = threading.Event()

        def read() -> None:
            try:
                with psycopg.connect(self.url, autocommit=True, application_name=READER_APP) as c:
                    self.pid = c.info.backend_pid
                    ready.set()
                    self.started = time.monotonic()
                    c.execute("SELECT count(*) FROM faults.slow_mv").fetchone()
            except BaseException as exc:
                self.error = exc
            finally:
                self.finished = time.monotonic()
                ready.set()

        self._thread = threading.Thread(target=read, daemon=True)
        self._thread.start()
        ready.wait(DEADLINE_S)
        return self

    def waiting(self, observer: psycopg.Connection[Any]) -> bool:
        """Whether the reader is queued behind a lock now."""
        row = observer.execute(
            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", [self.pid]
        ).fetchone()
        return bool(row and row[0])

    def join(self, deadline_s: float, *, may_fail: bool = False) -> float:
        """Wait for the read to finish (or fail, when the server goes away and ``may_fail``);
        the seconds it took."""
        assert self._thread is not None
        self._thread.join(deadline_s)
        assert self.finished is not None, f"the reader still waits after {deadline_s} s"
        if not may_fail:
            assert self.error is None, self.error
        return self.finished - self.started


def history_rows(conn: psycopg.Connection[Any], view: str = "slow_mv") -> list[dict[str, Any]]:
    """The history rows of ``faults.<view>``, oldest first (status, sqlstate, error_message, run_id)."""
    cur = conn.execute(
        "SELECT status, sqlstate, error_message, run_id FROM mvo.refresh_history"
        " WHERE view_schema = 'faults' AND view_name = %s ORDER BY id",
        [view],
    )
    names = [d.name for d in cur.description or []]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def occupied_slots(instance: dg.DagsterInstance, pool: str) -> int:
    """Concurrency slots of ``pool`` held by any run."""
    storage = instance.event_log_storage
    if pool not in storage.get_concurrency_keys():
        return 0
    info = storage.get_concurrency_info(pool)
    return int(info.active_slot_count)


ROOT = Path(__file__).resolve().parents[2]
MVO = str(Path(sys.executable).with_name("mvo"))


@dataclass(frozen=True)
class MvoEnv:
    """Environment for real ``mvo`` processes: a database, a Dagster home and storage."""

    env: dict[str, str]
    home: Path

    def start(self, *args: str, **overrides: str) -> subprocess.Popen[str]:
        """Start ``mvo ARGS`` (output collected; read it with ``communicate``)."""
        return subprocess.Popen(
            [MVO, *args],
            cwd=ROOT,
            env={**os.environ, **self.env, **overrides},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def instance(self) -> dg.DagsterInstance:
        """The Dagster instance the ``mvo`` processes use (close it after use)."""
        return dg.DagsterInstance.from_config(str(self.home))


@pytest.fixture
def mvo_env(
    pg_server: PgServer,
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[MvoEnv]:
    """``mvo`` settings for the test's database, with quick transient retries (1 s)."""
    storage_db = f"dagster_{uuid.uuid4().hex[:8]}"
    storage_url = pg_server.create_database(storage_db)
    home = tmp_path / "dagster_home"
    env = {
        "DATABASE_URL": db_url,
        "DAGSTER_HOME": str(home),
        "MVO_DAGSTER_STORAGE_URL": storage_url.replace("postgresql://", "postgresql+psycopg2://"),
        "MVO_STATE_DIR": str(tmp_path / "state"),
        "MVO_RETRY_DELAY_S": "1",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    try:
        yield MvoEnv(env, home)
    finally:
        pg_server.drop_database(storage_db)
