"""The stand-alone code location: one database, configured by environment variables.

A thin layer over the Dagster component (``lib.component``): :func:`component_from_settings`
turns the :class:`~mv_orchestration.settings.Settings` into the component's model, and the
definitions come from the same build function
(:meth:`~mv_orchestration.lib.component.PostgresMaterializedViews.build_definitions`).

Nothing here runs at import time: Dagster calls :func:`defs` when it loads the code location.
Where the code location is *defined* (a code server, ``dagster dev``; the ``mvo`` commands
through :func:`build_from_settings`), the catalog is read and stored in the state
directory; a database that cannot be reached then shows its last stored catalog. From
:func:`defs` the catalog travels with the definitions as Dagster's reconstruction metadata
(stored with each run), so a run worker, which *reconstructs* them, uses exactly the
catalog the code server had and never reads it again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import dagster as dg

# No public accessor tells a run worker's load from a code server's in Dagster 1.13; the
# StateBackedComponent machinery reads this same context.
from dagster._core.definitions.definitions_load_context import (
    DefinitionsLoadContext,
    DefinitionsLoadType,
)

from mv_orchestration.core.catalog import CatalogSnapshot
from mv_orchestration.lib.component import (
    ENV_SETTING_NAMES,
    HistorySettings,
    PostgresMaterializedViews,
    RefreshSettings,
)
from mv_orchestration.lib.snapshot import cache_file, load_snapshot
from mv_orchestration.settings import Settings

log = logging.getLogger("mv_orchestration")


def component_from_settings(settings: Settings) -> PostgresMaterializedViews:
    """The component's model for the database in ``settings`` (see the README's
    Configuration): the URL is read from ``DATABASE_URL`` where the resource runs."""
    return PostgresMaterializedViews(
        database_url=dg.EnvVar("DATABASE_URL"),
        schemas=list(settings.schemas) if settings.schemas else None,
        exclude_schemas=list(settings.exclude_schemas),
        key_prefix=[] if settings.alias == "default" else [settings.alias],
        policies=str(settings.policies_path) if settings.policies_path else None,
        alerts=list(settings.alert_urls),
        history=(
            HistorySettings(
                schema=settings.history_schema, retention_days=settings.history_retention_days
            )
            if settings.history_schema is not None
            else False
        ),
        refresh=RefreshSettings(
            lock_timeout_s=settings.lock_timeout_s,
            lock_retries=settings.lock_retries,
            statement_timeout_s=settings.statement_timeout_s,
            retries=settings.retries,
            retry_delay_s=settings.retry_delay_s,
        ),
        automation=settings.automation_running,
        ui_base_url=settings.ui_base_url,
    )


def read_catalog(settings: Settings) -> CatalogSnapshot:
    """A fresh read of the catalog, stored for when the database is unreachable (then the
    last stored one, ``lib.snapshot.load_snapshot``)."""
    return load_snapshot(
        settings.database_url,
        alias=settings.alias,
        schemas=settings.schemas,
        exclude_schemas=settings.exclude_schemas,
        cache_dir=settings.state_dir / "catalog",
    )


def catalog_for_this_load(settings: Settings) -> CatalogSnapshot:
    """The catalog Dagster's load of the code location builds from: in a run worker, the one
    the code server passed along, never a new read; elsewhere :func:`read_catalog`. Either
    way it is passed on as the definitions' reconstruction metadata, under a key naming the
    database and schema selection (as the stored file's name does), so a catalog is never
    taken for another database's."""
    stored = cache_file(
        settings.state_dir / "catalog",
        settings.alias,
        settings.database_url,
        settings.schemas,
        settings.exclude_schemas,
    )
    key = f"mv_orchestration/{stored.stem}"
    context = DefinitionsLoadContext.get()
    snapshot: CatalogSnapshot | None = None
    if context.load_type == DefinitionsLoadType.RECONSTRUCTION:
        passed = context.reconstruction_metadata.get(key)
        if isinstance(passed, str):
            snapshot = CatalogSnapshot.from_json(passed)
        else:  # a code server of an older version passed none
            log.warning("no catalog came with this run's definitions: reading it")
    if snapshot is None:
        snapshot = read_catalog(settings)
    context.add_to_pending_reconstruction_metadata(key, snapshot.to_json(indent=None))
    return snapshot


def build_from_settings(
    settings: Settings,
    environ: Mapping[str, str] | None = None,
    *,
    snapshot: CatalogSnapshot | None = None,
) -> dg.Definitions:
    """Definitions for the database in ``settings`` (see the README's Configuration), from
    ``snapshot`` (default: a fresh read of the catalog, as the ``mvo`` commands want).

    ``environ`` (default: the process environment) resolves the policy file's alert
    variables.
    """
    if snapshot is None:
        snapshot = read_catalog(settings)
    return component_from_settings(settings).build_definitions(
        snapshot, environ=environ, names=ENV_SETTING_NAMES, alert_sensor_prefix="mvo"
    )


@dg.definitions
def defs() -> dg.Definitions:
    settings = Settings.from_env()
    return build_from_settings(settings, snapshot=catalog_for_this_load(settings))
