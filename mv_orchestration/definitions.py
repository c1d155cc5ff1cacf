"""The ``Definitions`` the workspace loads.

Nothing here runs at import time: Dagster calls :func:`defs` when it loads the code location,
which reads the catalog (or its cached copy when the database is unreachable).
"""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

from mv_orchestration.lib.alerting import Notifier
from mv_orchestration.lib.defs import DatabaseTarget, build_definitions, default_translator
from mv_orchestration.lib.policies import load_policies
from mv_orchestration.lib.resource import PostgresResource
from mv_orchestration.lib.snapshot import load_snapshot
from mv_orchestration.settings import Settings


def build_from_settings(settings: Settings) -> dg.Definitions:
    """Definitions for the database in ``settings`` (see the README's Configuration)."""
    history_schemas = [settings.history_schema] if settings.history_schema else []
    snapshot = load_snapshot(
        settings.database_url,
        alias=settings.alias,
        schemas=settings.schemas,
        exclude_schemas=(*settings.exclude_schemas, *history_schemas),
        cache_dir=settings.state_dir / "catalog",
    )
    resource = PostgresResource(
        dsn=dg.EnvVar("DATABASE_URL"),
        lock_timeout_s=settings.lock_timeout_s,
        statement_timeout_s=settings.statement_timeout_s,
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
        notifier=Notifier(settings.alert_urls) if settings.alert_urls else None,
        ui_base_url=settings.ui_base_url,
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_from_settings(Settings.from_env())
