"""Assemble ``Definitions`` for one or more databases from catalog snapshots."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import dagster as dg

from mv_orchestration.core import history
from mv_orchestration.core.catalog import CatalogSnapshot
from mv_orchestration.lib.assets import build_refresh_assets
from mv_orchestration.lib.resource import PostgresResource
from mv_orchestration.lib.translator import MvTranslator, TranslatorSettings, safe_name


@dataclass(frozen=True)
class DatabaseTarget:
    """One database: its alias, its resource and how its assets are named."""

    alias: str
    resource: PostgresResource
    translator: MvTranslator = field(default_factory=MvTranslator)
    history_schema: str | None = history.DEFAULT_SCHEMA
    history_retention: timedelta = timedelta(days=30)

    @property
    def resource_key(self) -> str:
        return "postgres" if self.alias == "default" else f"postgres_{safe_name(self.alias)}"

    @property
    def pool(self) -> str:
        """Concurrency pool limiting simultaneous refresh steps on this database."""
        return f"mvo_{safe_name(self.alias)}"


def build_retention_job(target: DatabaseTarget) -> dg.JobDefinition:
    """A job deleting history rows older than the target's retention."""
    assert target.history_schema is not None
    schema, keep, key = target.history_schema, target.history_retention, target.resource_key

    @dg.op(name=f"purge_history_{safe_name(target.alias)}", required_resource_keys={key})
    def purge(context: dg.OpExecutionContext) -> None:
        db: PostgresResource = getattr(context.resources, key)
        with db.connection() as conn:
            history.ensure_history(conn, schema)
            deleted = history.purge_history(conn, schema, older_than=keep)
        context.log.info(f"deleted {deleted} history rows older than {keep.days} days")

    @dg.job(
        name=f"mvo_history_retention_{safe_name(target.alias)}",
        description=f"Delete refresh history older than {keep.days} days from {schema}.",
    )
    def retention() -> None:
        purge()

    return retention


def build_definitions(
    targets: Sequence[tuple[DatabaseTarget, CatalogSnapshot]],
    *,
    automation_running: bool = False,
) -> dg.Definitions:
    assets: list[dg.AssetsDefinition | dg.AssetSpec] = []
    resources: dict[str, PostgresResource] = {}
    jobs: list[dg.JobDefinition] = []
    schedules: list[dg.ScheduleDefinition] = []
    status = (
        dg.DefaultScheduleStatus.RUNNING if automation_running else dg.DefaultScheduleStatus.STOPPED
    )
    for target, snapshot in targets:
        assets.extend(
            build_refresh_assets(
                snapshot,
                target.translator,
                resource_key=target.resource_key,
                name=f"refresh_{safe_name(target.alias)}",
                pool=target.pool,
                history_schema=target.history_schema,
            )
        )
        resources[target.resource_key] = target.resource
        if target.history_schema is not None:
            job = build_retention_job(target)
            jobs.append(job)
            # daily at 02:00 UTC, as seed 004's cleanup job
            schedules.append(
                dg.ScheduleDefinition(
                    job=job, cron_schedule="0 2 * * *", execution_timezone="UTC",
                    default_status=status,
                )
            )  # fmt: skip
    return dg.Definitions(assets=assets, resources=resources, jobs=jobs, schedules=schedules)


def default_translator(alias: str, *, prefix_with_alias: bool) -> MvTranslator:
    return MvTranslator(
        TranslatorSettings(
            key_prefix=(alias,) if prefix_with_alias else (),
            database_alias=alias,
        )
    )
