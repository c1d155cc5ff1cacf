"""A sensor that refreshes MVs when their source tables change, and never otherwise.

Each tick runs one fingerprint query (:mod:`mv_orchestration.core.changes`) for every table
upstream of the change-driven MVs, compares the tokens with the sensor's cursor, records each
changed table's token as an observation of its source asset (a Dagster data version, so the
UI shows which MVs are stale), and requests one run that refreshes exactly the change-driven
MVs that read a changed table. The multi-asset refreshes them in dependency order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection

import dagster as dg

from mv_orchestration.core.catalog import CatalogSnapshot, RelationRef
from mv_orchestration.core.changes import (
    Fingerprint,
    change_sources,
    changed,
    fingerprints,
    tokens_from_json,
    tokens_to_json,
)
from mv_orchestration.core.graph import LineageGraph
from mv_orchestration.lib.resource import PostgresResource
from mv_orchestration.lib.translator import MvTranslator

# The tag Dagster's own observable source assets write their DataVersion to
# (dagster._core.definitions.data_version.DATA_VERSION_TAG, not exported publicly).
DATA_VERSION_TAG = "dagster/data_version"
_MAX_TAG_CHARS = 500


def observation(key: dg.AssetKey, fp: Fingerprint) -> dg.AssetObservation:
    """The observation that records ``fp`` as the data version of source asset ``key``."""
    return dg.AssetObservation(
        asset_key=key,
        description="change fingerprint from pg_stat_all_tables and relfilenode",
        metadata={
            "n_tup_ins": dg.MetadataValue.int(fp.inserted),
            "n_tup_upd": dg.MetadataValue.int(fp.updated),
            "n_tup_del": dg.MetadataValue.int(fp.deleted),
            "storage": ", ".join(fp.storage),
            "server_started": dg.MetadataValue.timestamp(fp.server_started),
            "stats_reset": fp.stats_reset.isoformat() if fp.stats_reset else "never",
        },
        tags={DATA_VERSION_TAG: dg.DataVersion(fp.token).value},
    )


def _run_key(changed_tokens: dict[RelationRef, str]) -> str:
    text = "\n".join(f"{r.schema}\0{r.name}\0{t}" for r, t in sorted(changed_tokens.items()))
    return "mvo-changes-" + hashlib.sha256(text.encode()).hexdigest()[:24]


def _truncate(text: str) -> str:
    return text if len(text) <= _MAX_TAG_CHARS else text[: _MAX_TAG_CHARS - 1] + "..."


def build_change_sensor(
    snapshot: CatalogSnapshot,
    translator: MvTranslator,
    *,
    resource_key: str = "postgres",
    name: str = "mvo_source_changes",
    minimum_interval_seconds: int = 30,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
    views: Collection[RelationRef] | None = None,
    treat_first_as_change: bool = False,
    description: str | None = None,
) -> dg.SensorDefinition:
    """Refresh the change-driven MVs (``views``, default every MV) when their sources change.

    The first tick only records a baseline unless ``treat_first_as_change``. Its target is
    the change-driven MVs, so each run request is turned into a run of the asset job that
    holds them; the database comes from resource ``resource_key``.
    """
    sources = change_sources(snapshot, views)
    order = LineageGraph(snapshot).refresh_order(sources)
    watched = sorted(set().union(*sources.values()))
    mv_keys = {mv: translator.get_asset_key(mv) for mv in order}
    source_keys = {ref: translator.get_asset_key(ref) for ref in watched}
    target = dg.AssetSelection.assets(*mv_keys.values())

    @dg.sensor(
        name=name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        target=target,
        required_resource_keys={resource_key},
        description=description
        or (
            f"Refreshes {len(order)} materialized view(s) when one of their "
            f"{len(watched)} source table(s) changes (one statistics query per tick)."
        ),
    )
    def _change_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        if not watched:
            return dg.SensorResult(
                skip_reason="no fingerprintable source tables (foreign tables only?)"
            )
        previous = tokens_from_json(context.cursor)
        db: PostgresResource = getattr(context.resources, resource_key)
        with db.connection() as conn:
            current = fingerprints(conn, watched)
        cursor = tokens_to_json(current)
        events = [
            observation(source_keys[ref], fp)
            for ref, fp in sorted(current.items())
            if previous.get(ref) != fp.token
        ]
        moved = changed(previous, current, treat_first_as_change=treat_first_as_change)
        selected = [mv for mv in order if sources[mv] & moved]
        if not selected:
            reason = (
                f"baseline recorded for {len(current)} source table(s)"
                if not previous and not treat_first_as_change
                else f"no change in {len(current)} source table(s)"
            )
            return dg.SensorResult(skip_reason=reason, cursor=cursor, asset_events=events)
        changed_names = ", ".join(ref.qualname for ref in sorted(moved))
        context.log.info(
            f"changed: {changed_names}; refreshing " + ", ".join(mv.qualname for mv in selected)
        )
        request = dg.RunRequest(
            run_key=_run_key({ref: current[ref].token for ref in moved}),
            asset_selection=[mv_keys[mv] for mv in selected],
            tags={"mvo/trigger": "source_change", "mvo/changed_tables": _truncate(changed_names)},
        )
        return dg.SensorResult(run_requests=[request], cursor=cursor, asset_events=events)

    return _change_sensor
