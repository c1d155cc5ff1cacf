"""The ``Definitions`` the workspace loads.

Nothing here runs at import time: Dagster calls :func:`defs` when it loads the code location,
which reads the catalog (or its cached copy when the database is unreachable).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta

import dagster as dg

from mv_orchestration.core.catalog import CatalogSnapshot
from mv_orchestration.errors import ConfigError
from mv_orchestration.lib.alerting import Notifier
from mv_orchestration.lib.defs import DatabaseTarget, build_definitions, default_translator
from mv_orchestration.lib.policies import AlertRoutes, PolicyFile, load_policies
from mv_orchestration.lib.resource import PostgresResource
from mv_orchestration.lib.snapshot import load_snapshot
from mv_orchestration.settings import Settings


def build_notifier(
    settings: Settings, policies: PolicyFile | None, environ: Mapping[str, str]
) -> Notifier | None:
    """Global destinations from ``MVO_ALERT_URLS`` and ``defaults.alerts``, per-group ones
    from ``groups.<g>.alerts``; None when there are none at all.

    ``environ`` holds the variables the policy file's ``{env: NAME}`` entries name; an unset
    or empty one is a ``ConfigError``, so the code location fails to load rather than drop
    alerts.
    """
    routes = policies.alert_routes(environ) if policies is not None else AlertRoutes()
    urls = (*settings.alert_urls, *routes.urls)
    if not urls and not routes.group_urls:
        return None
    return Notifier(urls, routes.group_urls)


def _check_history_schema(settings: Settings, snapshot: CatalogSnapshot) -> None:
    """The history schema must not hold views this code location manages: they would share
    a schema with the tables the history writes and the retention job prunes. (Such views
    used to be left out without a word.)"""
    schema = settings.history_schema
    held = sorted(mv.qualname for mv in snapshot.matviews if mv.schema == schema)
    if schema is None or not held:
        return
    shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
    raise ConfigError(
        f"MVO_HISTORY_SCHEMA={schema!r} holds managed materialized views ({shown}): "
        f"give the history a schema of its own, or leave {schema} out with MVO_EXCLUDE_SCHEMAS"
    )


def build_from_settings(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> dg.Definitions:
    """Definitions for the database in ``settings`` (see the README's Configuration).

    ``environ`` (default: the process environment) resolves the policy file's alert
    variables.
    """
    snapshot = load_snapshot(
        settings.database_url,
        alias=settings.alias,
        schemas=settings.schemas,
        exclude_schemas=settings.exclude_schemas,
        cache_dir=settings.state_dir / "catalog",
    )
    _check_history_schema(settings, snapshot)
    resource = PostgresResource(
        dsn=dg.EnvVar("DATABASE_URL"),
        lock_timeout_s=settings.lock_timeout_s,
        lock_retries=settings.lock_retries,
        statement_timeout_s=settings.statement_timeout_s,
        transient_retries=settings.retries,
        transient_retry_delay_s=settings.retry_delay_s,
    )
    policies = load_policies(settings.policies_path) if settings.policies_path else None
    target = DatabaseTarget(
        alias=settings.alias,
        resource=resource,
        translator=default_translator(
            settings.alias, prefix_with_alias=settings.alias != "default", policies=policies
        ),
        history_schema=settings.history_schema,
        history_retention=timedelta(days=settings.history_retention_days),
    )
    return build_definitions(
        [(target, snapshot)],
        automation_running=settings.automation_running,
        notifier=build_notifier(settings, policies, os.environ if environ is None else environ),
        ui_base_url=settings.ui_base_url,
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_from_settings(Settings.from_env())
