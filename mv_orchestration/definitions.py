"""The stand-alone code location: one database, configured by environment variables.

A thin layer over the Dagster component (``lib.component``): :func:`component_from_settings`
turns the :class:`~mv_orchestration.settings.Settings` into the component's model, and the
definitions come from the same build function
(:meth:`~mv_orchestration.lib.component.PostgresMaterializedViews.build_definitions`).

Nothing here runs at import time: Dagster calls :func:`defs` when it loads the code location.
Where the code location is *defined* (a code server, ``dagster dev``, the ``mvo`` commands),
the catalog is read and stored in the state directory; a database that cannot be reached
then shows its last stored catalog. The catalog travels with the definitions as Dagster's
reconstruction metadata (stored with each run), so a run worker, which *reconstructs* them,
uses exactly the catalog the code server had and never reads it again.
"""

from __future__ import annotations

from collections.abc import Mapping

import dagster as dg

# No public accessor tells a run worker's load from a code server's in Dagster 1.13; the
# StateBackedComponent machinery reads this same context.
from dagster._core.definitions.definitions_load_context import (
    DefinitionsLoadContext,
    DefinitionsLoadType,
)

from mv_orchestration.core.catalog import CatalogSnapshot
from mv_orchestration.errors import CatalogError
from mv_orchestration.lib.component import (
    ENV_SETTING_NAMES,
    HistorySettings,
    PostgresMaterializedViews,
    RefreshSettings,
)
from mv_orchestration.lib.snapshot import cache_file, load_snapshot, read_state
from mv_orchestration.settings import Settings

# the reconstruction metadata entry holding the catalog the definitions were built from
CATALOG_METADATA_KEY = "mv_orchestration/catalog"


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


def load_catalog(settings: Settings) -> CatalogSnapshot:
    """The catalog to build from: in a run worker, the one the code server passed along
    (else the last stored one), never a new read; elsewhere, a fresh read, stored for when
    the database is unreachable (``lib.snapshot.load_snapshot``). Either way it is passed on
    as the definitions' reconstruction metadata."""
    cache_dir = settings.state_dir / "catalog"
    context = DefinitionsLoadContext.get()
    snapshot: CatalogSnapshot | None = None
    if context.load_type == DefinitionsLoadType.RECONSTRUCTION:
        passed = context.reconstruction_metadata.get(CATALOG_METADATA_KEY)
        if isinstance(passed, str):
            snapshot = CatalogSnapshot.from_json(passed)
        else:
            path = cache_file(
                cache_dir,
                settings.alias,
                settings.database_url,
                settings.schemas,
                settings.exclude_schemas,
            )
            snapshot = read_state(path)
            if snapshot is None:
                raise CatalogError(
                    "this run's definitions came with no catalog and none is stored in "
                    f"{cache_dir}: reload the code location, then launch the run again"
                )
    else:
        snapshot = load_snapshot(
            settings.database_url,
            alias=settings.alias,
            schemas=settings.schemas,
            exclude_schemas=settings.exclude_schemas,
            cache_dir=cache_dir,
        )
    context.add_to_pending_reconstruction_metadata(
        CATALOG_METADATA_KEY, snapshot.to_json(indent=None)
    )
    return snapshot


def build_from_settings(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> dg.Definitions:
    """Definitions for the database in ``settings`` (see the README's Configuration).

    ``environ`` (default: the process environment) resolves the policy file's alert
    variables.
    """
    snapshot = load_catalog(settings)
    return component_from_settings(settings).build_definitions(
        snapshot, environ=environ, names=ENV_SETTING_NAMES, alert_sensor_prefix="mvo"
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_from_settings(Settings.from_env())
