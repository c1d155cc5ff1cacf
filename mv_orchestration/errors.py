"""Error hierarchy.

``core`` must not import dagster, so these are plain exceptions; ``lib`` turns them into
``dagster.Failure`` with their fields as metadata (see ``lib.assets``). See
docs/architecture.md for why this differs from DESIGN.md's "rooted at dagster.Failure".
"""

from __future__ import annotations


class MvoError(Exception):
    """Base class for every error this package raises on purpose."""


class ConfigError(MvoError):
    """Bad configuration: a URL, an environment variable, a policy file."""


class EmbeddedServerError(MvoError):
    """The embedded PostgreSQL server could not be initialised, started or stopped."""


class CatalogError(MvoError):
    """The catalog could not be read, or names a relation that does not exist."""


class DatabaseUnreachableError(CatalogError):
    """The catalog could not be read because the database could not be reached (connection
    refused, timed out, authentication failed): what a cached catalog or the last defs state
    stands in for. ``reason`` is the connection error's first line, without secrets."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


class UnknownViewError(CatalogError):
    """A view name given by the user matches no materialized view."""


class RefreshError(MvoError):
    """A ``REFRESH MATERIALIZED VIEW`` failed on the server.

    Carries the server's SQLSTATE and message, the view, and for lock timeouts the PIDs that
    held the lock, so the Dagster UI and the CLI can show them. ``attempts`` counts every
    attempt of the refresh that ended in this error (lock-timeout retries included).
    """

    def __init__(
        self,
        view: str,
        message: str,
        *,
        sqlstate: str | None = None,
        method: str | None = None,
        duration_s: float | None = None,
        blocking_pids: tuple[int, ...] = (),
        lock_holders: tuple[str, ...] = (),
        attempts: int = 1,
    ) -> None:
        self.view = view
        self.message = message
        self.sqlstate = sqlstate
        self.method = method
        self.duration_s = duration_s
        self.blocking_pids = blocking_pids
        self.lock_holders = lock_holders
        self.attempts = attempts
        # total seconds spent waiting for locks, when measured (see core/locks.py)
        self.lock_wait_s: float | None = None
        code = f" [SQLSTATE {sqlstate}]" if sqlstate else ""
        super().__init__(f"refresh of {view} failed{code}: {message}")


class LockTimeoutError(RefreshError):
    """The refresh gave up waiting for a lock (``lock_timeout``, SQLSTATE 55P03).

    Its message names the attempt ("attempt 15 of 15") and the sessions that held the lock
    (``lock_holders``: pid, user, application, state, lock modes, how long their transaction
    has been open, query).
    """


class StatementTimeoutError(RefreshError):
    """The refresh ran longer than ``statement_timeout`` (SQLSTATE 57014)."""


class RefreshInProgressError(RefreshError):
    """Another session holds this view's refresh advisory lock: not a failure, a skip.

    ``holder_pid`` and ``holder_application`` name that session when it could be read
    (a refresh step's session is named ``mvo/<run id>``, see ``lib.resource``).
    """

    def __init__(
        self,
        view: str,
        message: str,
        *,
        method: str | None = None,
        holder_pid: int | None = None,
        holder_application: str = "",
    ) -> None:
        super().__init__(view, message, method=method)
        self.holder_pid = holder_pid
        self.holder_application = holder_application
