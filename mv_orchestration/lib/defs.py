"""Assemble ``Definitions`` for one or more databases from catalog snapshots."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import (
    UnresolvedAssetJobDefinition,
)

from mv_orchestration.core import history
from mv_orchestration.core.catalog import CatalogSnapshot, RelationRef
from mv_orchestration.lib.alerting import (
    Notifier,
    alert_targets,
    build_freshness_alert_sensor,
    build_refresh_failure_sensor,
)
from mv_orchestration.lib.assets import build_refresh_assets
from mv_orchestration.lib.checks import CheckThresholds
from mv_orchestration.lib.lag_sensor import build_lag_sensor
from mv_orchestration.lib.policies import PolicyFile, ViewPolicy
from mv_orchestration.lib.resource import PostgresResource
from mv_orchestration.lib.schedules import build_schedules
from mv_orchestration.lib.sensors import build_change_sensor
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
    notifier: Notifier | None = None,
    ui_base_url: str | None = None,
    alert_sensor_prefix: str = "mvo",
    own_runs_only: bool = False,
) -> dg.Definitions:
    """Assets, checks, schedules and sensors for every target.

    With a policy file on a target's translator: its schedules, its change-driven sensor, its
    freshness policies and check thresholds. Every target gets a target-lag sensor for the
    views with a target lag (without a policy file, every view: ``1h``). With a ``notifier``: freshness and failure alerts,
    routed by each view's Dagster group (``Notifier(group_urls=...)``, keyed like the policy
    file's ``groups``); views whose alerts would reach no destination are not watched.
    ``automation_running`` starts schedules and sensors by default (Dagster's default is off).

    The alert sensors are named ``<alert_sensor_prefix>_refresh_failures`` and
    ``<alert_sensor_prefix>_freshness_alerts``. ``own_runs_only``: these definitions are one
    part of a code location that holds others (a component instance among several): the
    failure sensor then alerts only on runs of these targets' assets and jobs.
    """
    assets: list[dg.AssetsDefinition | dg.AssetSpec] = []
    resources: dict[str, PostgresResource] = {}
    jobs: list[dg.JobDefinition | UnresolvedAssetJobDefinition] = []
    schedules: list[dg.ScheduleDefinition] = []
    sensors: list[dg.SensorDefinition] = []
    status = (
        dg.DefaultScheduleStatus.RUNNING if automation_running else dg.DefaultScheduleStatus.STOPPED
    )
    sensor_status = (
        dg.DefaultSensorStatus.RUNNING if automation_running else dg.DefaultSensorStatus.STOPPED
    )
    for target, snapshot in targets:
        tr = target.translator
        policies: dict[RelationRef, ViewPolicy] = {}
        thresholds: dict[RelationRef, CheckThresholds] = {}
        if tr.policies is not None:
            tr.policies.validate_against(snapshot, tr.get_base_group_name)
            for mv in snapshot.matviews:
                policy = tr.get_policy(mv.ref)
                assert policy is not None
                policies[mv.ref] = policy
                thresholds[mv.ref] = CheckThresholds.from_mapping(
                    policy.checks, where=f"{tr.policies.path.name}: checks of {mv.qualname}"
                )
        assets.extend(
            build_refresh_assets(
                snapshot,
                tr,
                resource_key=target.resource_key,
                name=f"refresh_{safe_name(target.alias)}",
                pool=target.pool,
                history_schema=target.history_schema,
                thresholds=thresholds,
            )
        )
        resources[target.resource_key] = target.resource
        prefix = "mvo" if target.alias == "default" else f"mvo_{safe_name(target.alias)}"
        if policies:
            policy_jobs, policy_schedules = build_schedules(
                {tr.get_asset_key(ref): p for ref, p in policies.items()},
                job_prefix=prefix,
                default_status=status,
            )
            jobs.extend(policy_jobs)
            schedules.extend(policy_schedules)
            on_change = [ref for ref, p in policies.items() if p.on_change]
            if on_change:
                sensors.append(
                    build_change_sensor(
                        snapshot,
                        tr,
                        resource_key=target.resource_key,
                        name=f"{prefix}_source_changes",
                        views=on_change,
                        default_status=sensor_status,
                    )
                )
        lag_sensor = build_lag_sensor(
            snapshot,
            tr,
            {
                mv.ref: t
                for mv in snapshot.matviews
                if (t := policies.get(mv.ref, ViewPolicy()).target_lag) is not None
            },
            resource_key=target.resource_key,
            name=f"{prefix}_target_lag",
            default_status=sensor_status,
            history_schema=target.history_schema,
            notifier=notifier,
        )
        if lag_sensor is not None:
            sensors.append(lag_sensor)
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
    defs = dg.Definitions(
        assets=assets,
        resources=resources,
        jobs=jobs,
        schedules=schedules,
        sensors=sensors,
        # The run worker is the step's process: terminating or killing it ends the refresh
        # (no orphaned step process keeps a REFRESH running), and no second process loads
        # the definitions. A run's steps (one per database) then run one after another.
        executor=dg.in_process_executor,
    )
    if notifier is None:
        return defs
    targets_ = alert_targets(defs.resolve_all_asset_specs())
    alert_sensors = [
        build_refresh_failure_sensor(
            notifier,
            ui_base_url=ui_base_url,
            group_of=targets_.group_of,
            labels=targets_.labels,
            name=f"{alert_sensor_prefix}_refresh_failures",
            default_status=sensor_status,
            job_names=[job.name for job in jobs] if own_runs_only else None,
        )
    ]
    watched = [
        k for k in targets_.asset_keys if notifier.has_destinations(targets_.group_of.get(k))
    ]
    if watched:
        alert_sensors.append(
            build_freshness_alert_sensor(
                watched,
                notifier,
                group_of=targets_.group_of,
                labels=targets_.labels,
                ui_base_url=ui_base_url,
                name=f"{alert_sensor_prefix}_freshness_alerts",
                default_status=sensor_status,
            )
        )
    return dg.Definitions.merge(defs, dg.Definitions(sensors=alert_sensors))


def default_translator(
    alias: str, *, prefix_with_alias: bool, policies: PolicyFile | None = None
) -> MvTranslator:
    return MvTranslator(
        TranslatorSettings(
            key_prefix=(alias,) if prefix_with_alias else (),
            database_alias=alias,
        ),
        policies=policies,
    )
