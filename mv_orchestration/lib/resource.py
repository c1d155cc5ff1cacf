"""The database resource: a psycopg 3 connection pool, opened per run and closed after it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
import psycopg
from psycopg_pool import ConnectionPool
from pydantic import Field, PrivateAttr

from mv_orchestration.core.refresh import MethodPreference, RefreshOptions


class PostgresResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """Connection to one PostgreSQL database holding materialized views.

    ``dsn`` should come from the environment: ``PostgresResource(dsn=dg.EnvVar("DATABASE_URL"))``.
    Its value is never logged nor recorded as metadata.
    """

    dsn: str = Field(description="libpq connection string or URL; pass dg.EnvVar(...)")
    application_name: str = Field(default="mv_orchestration")
    pool_max_size: int = Field(default=4, ge=1)
    connect_timeout_s: int = Field(default=10, ge=1)
    lock_timeout_s: float = Field(
        default=0.5,
        gt=0,
        description="lock wait of a plain or first refresh, which every new reader of the MV "
        "waits behind",
    )
    concurrent_lock_timeout_s: float = Field(
        default=10.0, gt=0, description="lock wait of a CONCURRENTLY refresh (readers do not wait)"
    )
    statement_timeout_s: float = Field(default=1800.0, gt=0)
    lock_retries: int = Field(default=14, ge=0, description="attempts after a lock timeout")
    retry_backoff_s: float = Field(
        default=0.5, ge=0, description="ceiling of the first lock retry's delay; doubles"
    )
    retry_backoff_max_s: float = Field(
        default=4.0,
        ge=0,
        description="cap of the lock retry delay's ceiling (jitter: its upper half)",
    )
    method: MethodPreference = Field(
        default="auto", description="'auto' uses CONCURRENTLY when allowed; 'blocking' never does"
    )
    count_rows: bool = Field(default=True, description="count rows before/after each refresh")
    transient_retries: int = Field(
        default=2,
        ge=0,
        description="retries of a refresh step that failed only for transient reasons "
        "(connection lost, server restart, deadlock, lock timeout, too many connections)",
    )
    transient_retry_delay_s: float = Field(
        default=30.0, ge=0, description="wait before the first such retry; doubles each time"
    )

    _pool: ConnectionPool | None = PrivateAttr(default=None)
    # set per run: sessions are named mvo/<run id>, so an overlapping refresh names its run
    _session_name: str | None = PrivateAttr(default=None)

    @property
    def refresh_options(self) -> RefreshOptions:
        return RefreshOptions(
            lock_timeout_s=self.lock_timeout_s,
            concurrent_lock_timeout_s=self.concurrent_lock_timeout_s,
            statement_timeout_s=self.statement_timeout_s,
            lock_retries=self.lock_retries,
            retry_backoff_s=self.retry_backoff_s,
            retry_backoff_max_s=self.retry_backoff_max_s,
            method=self.method,
            count_rows=self.count_rows,
        )

    def _connect_kwargs(self) -> dict[str, Any]:
        return {
            "autocommit": True,
            "application_name": self._session_name or self.application_name,
            "connect_timeout": self.connect_timeout_s,
        }

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        run = context.run
        if run is not None:
            self._session_name = application_name_for_run(run.run_id)
        self._pool = ConnectionPool(
            self.dsn,
            min_size=1,
            max_size=self.pool_max_size,
            kwargs=self._connect_kwargs(),
            open=False,
            name="mv_orchestration",
        )
        # Not waiting here: a database that is down surfaces as PoolTimeout inside the step,
        # where it counts as a transient failure and the step is retried.
        self._pool.open(wait=False)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled autocommit connection, returned to the pool on exit.

        Outside a run (no pool was set up) a direct connection is opened and closed.
        """
        if self._pool is not None:
            with self._pool.connection(timeout=float(self.connect_timeout_s)) as conn:
                yield conn
            return
        with psycopg.connect(self.dsn, **self._connect_kwargs()) as conn:
            yield conn

    @contextmanager
    def quick_connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A new connection that gives up after 2 s: for the last writes of an interrupted
        step, which must not hold up its end."""
        kwargs = {**self._connect_kwargs(), "connect_timeout": QUICK_CONNECT_TIMEOUT_S}
        with psycopg.connect(self.dsn, **kwargs) as conn:
            yield conn


QUICK_CONNECT_TIMEOUT_S = 2
_RUN_PREFIX = "mvo/"


def application_name_for_run(run_id: str) -> str:
    """The ``application_name`` of a run's sessions (PostgreSQL keeps 63 bytes; a run id is
    36 characters)."""
    return f"{_RUN_PREFIX}{run_id}"


def run_id_of_application(application_name: str) -> str | None:
    """The run id in a session's ``application_name``, if it is one of a run's sessions."""
    if application_name.startswith(_RUN_PREFIX) and len(application_name) > len(_RUN_PREFIX):
        return application_name[len(_RUN_PREFIX) :]
    return None
