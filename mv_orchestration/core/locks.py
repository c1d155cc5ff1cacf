"""Measure how long a session waits for locks, from a second session.

PostgreSQL refuses ``LOCK TABLE`` on materialized views, so the wait for ``REFRESH``'s own
lock cannot be timed from inside the refreshing session. :class:`LockWaitMonitor` watches it
from outside instead: while a refresh runs, a background thread samples ``pg_locks`` for the
refreshing backend's ungranted lock and its ``waitstart`` (PostgreSQL 14+).

Precision and cost, by construction:

* a wait's start is exact (``waitstart``, read on the server's clock); its end is known to
  within one sampling interval (the midpoint between the last sample that saw it and the
  first that did not), or is the end of the watch if the refresh stopped while waiting
  (a lock timeout);
* the first sample is taken ``interval_s`` (50 ms) after the watch starts, and only then is
  the monitor's connection opened: a refresh shorter than that costs a thread start and
  nothing on the server, and a wait that starts and ends inside that first interval is not
  seen (reported as 0). Between samples that see no wait, the interval doubles up to
  ``max_interval_s`` (1 s), so a long refresh costs about one cheap query a second; while a
  wait is open it stays at ``interval_s``;
* if the monitor cannot connect or query, the wait is unknown (``None``), never a failure of
  the refresh it watches.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

# The one lock a backend can be waiting for at a time: at most one row.
_WAIT_SQL = """
SELECT waitstart, extract(epoch FROM clock_timestamp() - waitstart)::float8
FROM pg_locks WHERE pid = %s AND NOT granted
LIMIT 1
"""

Connect = Callable[[], psycopg.Connection[Any]]


def sibling_connect(conn: psycopg.Connection[Any], application_name: str) -> Connect:
    """A factory of new autocommit connections to the same server, database and role."""
    conninfo = make_conninfo(
        conn.info.dsn, password=conn.info.password, application_name=application_name
    )
    return lambda: psycopg.connect(conninfo, autocommit=True)


class LockWait:
    """The outcome of one watch: total seconds spent waiting for locks, or None if unknown."""

    def __init__(self) -> None:
        self.seconds: float | None = None


class LockWaitMonitor:
    """Samples ``pg_locks`` for backend ``pid`` from a connection of its own.

    One monitor can watch several refreshes in turn (:meth:`watch`); its connection is
    opened on the first sample and kept until :meth:`close`.
    """

    def __init__(
        self,
        connect: Connect,
        pid: int,
        *,
        interval_s: float = 0.05,
        max_interval_s: float = 1.0,
    ) -> None:
        if interval_s <= 0 or max_interval_s < interval_s:
            raise ValueError("need 0 < interval_s <= max_interval_s")
        self._connect = connect
        self._pid = pid
        self._interval = interval_s
        self._max_interval = max_interval_s
        self._conn: psycopg.Connection[Any] | None = None
        self._broken = False

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> LockWaitMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def watch(self, outcome: LockWait | None = None) -> Iterator[LockWait]:
        """Measure lock waits of the monitored backend while the block runs (into
        ``outcome`` if given, so a caller can read it after the block raised)."""
        outcome = outcome if outcome is not None else LockWait()
        stop = threading.Event()
        thread = threading.Thread(
            target=self._sample, args=(stop, outcome), name="mvo-lock-monitor", daemon=True
        )
        thread.start()
        try:
            yield outcome
        finally:
            stop.set()
            thread.join()

    def _sample(self, stop: threading.Event, outcome: LockWait) -> None:
        total = 0.0
        # the wait in progress: (waitstart as the server reports it, start, last seen), in
        # perf_counter seconds on this client
        current: tuple[datetime | None, float, float] | None = None
        interval = self._interval
        try:
            while not stop.wait(interval):
                row = self._query()
                now = time.perf_counter()
                if row is None:  # not waiting
                    if current is not None:
                        total += (current[2] + now) / 2 - current[1]
                        current = None
                    interval = min(interval * 2, self._max_interval)
                    continue
                waitstart, elapsed = row
                if current is not None and waitstart != current[0] and current[0] is not None:
                    # a new wait began since the last sample: close the earlier one
                    total += (current[2] + now) / 2 - current[1]
                    current = None
                # waitstart can be NULL for a moment after a wait begins: start "now" until
                # the server has stamped it
                begun = now - elapsed if elapsed is not None else now
                if current is None or current[0] is None:
                    current = (waitstart, begun if waitstart is not None else now, now)
                else:
                    current = (current[0], current[1], now)
                interval = self._interval
            if current is not None:
                total += time.perf_counter() - current[1]
        except psycopg.Error:
            self._broken = True
            self.close()
            return
        outcome.seconds = max(0.0, total)

    def _query(self) -> tuple[datetime | None, float | None] | None:
        if self._broken:
            raise psycopg.OperationalError("lock monitor connection failed earlier")
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        row = self._conn.execute(_WAIT_SQL, [self._pid]).fetchone()
        if row is None:
            return None
        return row[0], None if row[1] is None else float(row[1])
