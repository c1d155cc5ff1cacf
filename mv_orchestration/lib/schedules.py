"""Schedules from refresh policies: one schedule per distinct (cron, time zone).

Each schedule runs an asset job selecting exactly the MVs whose policy lists it. Schedules
that select the same MVs (a production-hours and an off-hours cron, say) share one job. The
MVs of a database are outputs of one subsettable multi-asset, so a tick is one run that
refreshes its selection in dependency order.

Names are stable and derived from the schedule, e.g. ``*/2 6-22 * * *`` in Asia/Seoul is the
schedule ``mvo_every_2_min_6_22_asia_seoul`` running the job
``mvo_every_2_min_6_22_asia_seoul_job``.

A tick coalesces into refreshes already under way: its run selects only the job's views that
no queued or in-progress run (of any origin) targets, and when every view is busy the tick
is skipped with the views and the run ids holding them (:mod:`mv_orchestration.lib.runs`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import (
    UnresolvedAssetJobDefinition,
)

from mv_orchestration.core.cron import MACROS
from mv_orchestration.lib.policies import Schedule, ViewPolicy
from mv_orchestration.lib.runs import ActiveRuns, short_id
from mv_orchestration.lib.translator import safe_name

__all__ = ["build_schedules", "describe_cron", "schedule_name"]

_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_NAMES = {
    "sun": "Sunday",
    "mon": "Monday",
    "tue": "Tuesday",
    "wed": "Wednesday",
    "thu": "Thursday",
    "fri": "Friday",
    "sat": "Saturday",
}
_NUMBER = re.compile(r"\d+")
_HOURS = re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*")
_DOW = re.compile(r"[a-z0-9]+(-[a-z0-9]+)?(,[a-z0-9]+(-[a-z0-9]+)?)*")
_MAX_LISTED = 10


def _day(token: str) -> str | None:
    if _NUMBER.fullmatch(token) and int(token) < len(_DAYS):
        return _DAYS[int(token)]
    return token if token in _DAYS else None


def _days(field: str) -> tuple[str, str] | None:
    """(slug, text) for a day-of-week field like ``1``, ``mon-fri`` or ``1,3,5``."""
    if not _DOW.fullmatch(field):
        return None
    slugs: list[str] = []
    texts: list[str] = []
    for item in field.split(","):
        ends = [_day(t) for t in item.split("-")]
        if any(d is None for d in ends):
            return None
        names = [d for d in ends if d is not None]
        slugs.append("_".join(names))
        texts.append("-".join(n.capitalize() for n in names))
    return "_".join(slugs), ", ".join(texts)


def _within(slug: str, text: str, hour: str, dom: str, dow: str) -> tuple[str, str] | None:
    """Add "hours 6-22" and "Mon-Fri" restrictions to a sub-hourly or hourly description."""
    if dom != "*" or not (hour == "*" or _HOURS.fullmatch(hour)):
        return None
    if hour != "*":
        slug += "_" + re.sub(r"[-,]", "_", hour)
        text += f", hours {hour}"
    if dow != "*":
        days = _days(dow)
        if days is None:
            return None
        slug += f"_{days[0]}"
        text += f", {days[1]}"
    return slug, text


def _describe(cron: str) -> tuple[str, str]:
    """(slug, English) for the common cron shapes; a literal fallback for the rest."""
    fallback = ("cron_" + safe_name(cron.replace("*", "x")).lower(), f"On cron `{cron}`")
    fields = MACROS.get(cron, cron).lower().split()
    if len(fields) != 5:
        return fallback
    minute, hour, dom, month, dow = fields
    if month != "*":
        return fallback
    step = re.fullmatch(r"\*/(\d+)", minute)
    if minute == "*" or step:
        n = step.group(1) if step else "1"
        slug = "every_min" if n == "1" else f"every_{n}_min"
        text = "Every minute" if n == "1" else f"Every {n} minutes"
        return _within(slug, text, hour, dom, dow) or fallback
    if not _NUMBER.fullmatch(minute):
        return fallback
    if not _NUMBER.fullmatch(hour):
        slug, text = f"hourly_{int(minute):02d}", f"Hourly at :{int(minute):02d}"
        return _within(slug, text, hour, dom, dow) or fallback
    hhmm, clock = f"{int(hour):02d}{int(minute):02d}", f"{int(hour):02d}:{int(minute):02d}"
    if dom == "*" and dow == "*":
        return f"daily_{hhmm}", f"Daily at {clock}"
    if dom == "*":
        days = _days(dow)
        if days is None:
            return fallback
        if days[0] in _DAY_NAMES:  # one day: a weekly schedule
            return f"weekly_{days[0]}_{hhmm}", f"{_DAY_NAMES[days[0]]}s at {clock}"
        return f"{days[0]}_{hhmm}", f"{days[1]} at {clock}"
    if dow == "*" and _NUMBER.fullmatch(dom):
        return f"monthly_{int(dom)}_{hhmm}", f"Monthly on day {int(dom)} at {clock}"
    return fallback


def describe_cron(cron: str) -> str:
    """Plain English for common cron shapes (``Every 2 minutes, hours 6-22``)."""
    return _describe(cron)[1]


def schedule_name(schedule: Schedule, job_prefix: str = "mvo") -> str:
    """The Dagster-safe name of a schedule, e.g. ``mvo_every_2_min_6_22_asia_seoul``."""
    return f"{safe_name(job_prefix)}_{_describe(schedule.cron)[0]}_{_tz_slug(schedule.timezone)}"


def _tz_slug(timezone: str) -> str:
    return safe_name(timezone).lower()


def _unique_names(schedules: Iterable[Schedule], job_prefix: str) -> dict[Schedule, str]:
    """Names per schedule; ones that would collide (``@daily`` and ``0 0 * * *``) get a hash."""
    by_name: dict[str, list[Schedule]] = {}
    for s in schedules:
        by_name.setdefault(schedule_name(s, job_prefix), []).append(s)
    names: dict[Schedule, str] = {}
    for name, group in by_name.items():
        for s in group:
            if len(group) == 1:
                names[s] = name
            else:
                digest = hashlib.sha256(f"{s.cron}\0{s.timezone}".encode()).hexdigest()[:6]
                names[s] = f"{name}_{digest}"
    return names


def _job_name(schedules: Sequence[Schedule], names: Mapping[Schedule, str], prefix: str) -> str:
    if len(schedules) == 1:
        return f"{names[schedules[0]]}_job"
    # Shared by several schedules: name it after all of them, the common time zone once.
    parts = [names[s].removeprefix(f"{prefix}_") for s in schedules]
    zones = {_tz_slug(s.timezone) for s in schedules}
    if len(zones) == 1:
        zone = zones.pop()
        parts = [p.removesuffix(f"_{zone}") for p in parts]
        return f"{prefix}_{'_and_'.join(parts)}_{zone}_job"
    return f"{prefix}_{'_and_'.join(parts)}_job"


def _listing(keys: Sequence[dg.AssetKey]) -> str:
    shown = ", ".join(k.to_user_string() for k in keys[:_MAX_LISTED])
    more = len(keys) - _MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def _busy_listing(busy: Mapping[dg.AssetKey, Sequence[str]]) -> str:
    items = [
        f"{k.to_user_string()} (run {', '.join(short_id(r) for r in sorted(ids))})"
        for k, ids in sorted(busy.items(), key=lambda item: tuple(item[0].path))
    ]
    more = len(items) - _MAX_LISTED
    return ", ".join(items[:_MAX_LISTED]) + (f" and {more} more" if more > 0 else "")


def coalescing_tick(
    keys: Sequence[dg.AssetKey],
) -> Callable[[dg.ScheduleEvaluationContext], dg.RunRequest | dg.SkipReason]:
    """A schedule's execution function: a run of the ``keys`` that are not busy, or a skip.

    One query per tick (the instance's active runs). The run always names its selection, so
    other sensors and schedules see it as busy in turn.
    """

    def evaluate(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        busy = ActiveRuns.read(context.instance).busy(keys)
        free = [k for k in keys if k not in busy]
        if not free:
            return dg.SkipReason(
                f"all {len(keys)} view(s) busy, refreshes already queued or running: "
                + _busy_listing(busy)
            )
        if busy:
            context.log.info(
                f"{len(busy)} view(s) left out, already queued or running: {_busy_listing(busy)}"
            )
        return dg.RunRequest(asset_selection=free)

    return evaluate


def build_schedules(
    policies: Mapping[dg.AssetKey, ViewPolicy],
    *,
    job_prefix: str = "mvo",
    default_status: dg.DefaultScheduleStatus = dg.DefaultScheduleStatus.STOPPED,
) -> tuple[list[dg.JobDefinition | UnresolvedAssetJobDefinition], list[dg.ScheduleDefinition]]:
    """One schedule per distinct (cron, time zone) in ``policies``, with its asset job.

    ``policies`` maps each MV's asset key to its resolved policy. A job is built per distinct
    set of MVs, so schedules selecting the same MVs share it. Both lists are sorted by name.
    Each tick leaves out the views that already have a queued or running refresh
    (:func:`coalescing_tick`).
    """
    prefix = safe_name(job_prefix)
    targets: dict[Schedule, set[dg.AssetKey]] = {}
    for key, policy in policies.items():
        for schedule in policy.schedules:
            targets.setdefault(schedule, set()).add(key)
    names = _unique_names(sorted(targets), prefix)

    by_selection: dict[frozenset[dg.AssetKey], list[Schedule]] = {}
    for schedule in sorted(targets, key=names.__getitem__):
        by_selection.setdefault(frozenset(targets[schedule]), []).append(schedule)

    jobs: list[dg.JobDefinition | UnresolvedAssetJobDefinition] = []
    schedules: list[dg.ScheduleDefinition] = []
    for selection, scheds in by_selection.items():
        keys = sorted(selection, key=lambda k: tuple(k.path))
        job = dg.define_asset_job(
            _job_name(scheds, names, prefix),
            selection=dg.AssetSelection.assets(*keys),
            description=(
                f"Refreshes {len(keys)} materialized view(s), upstream ones first: "
                f"{_listing(keys)}. Run by: {', '.join(names[s] for s in scheds)}."
            ),
        )
        jobs.append(job)
        for s in scheds:
            schedules.append(
                dg.ScheduleDefinition(
                    name=names[s],
                    cron_schedule=s.cron,
                    execution_timezone=s.timezone,
                    job=job,
                    execution_fn=coalescing_tick(keys),
                    default_status=default_status,
                    description=(
                        f"{describe_cron(s.cron)} ({s.timezone}; cron `{s.cron}`): refreshes "
                        f"{len(keys)} materialized view(s): {_listing(keys)}."
                    ),
                )
            )
    jobs.sort(key=lambda j: j.name)
    schedules.sort(key=lambda s: s.name)
    return jobs, schedules
