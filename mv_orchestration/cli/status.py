"""``mvo status``: the health of each view, from its refresh history."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mv_orchestration.cli.common import (
    nothing_to_manage,
    one_line_errors,
    prepare_instance,
    resolve_database_url,
    scoped_env,
)
from mv_orchestration.cli.output import (
    WIDTH,
    Row,
    human_ago,
    human_duration,
    human_in,
    human_percent,
    render_table,
)
from mv_orchestration.cli.selection import select
from mv_orchestration.errors import ConfigError

if TYPE_CHECKING:
    from datetime import datetime

    import pandas as pd

    from mv_orchestration.core.health import Expectation
    from mv_orchestration.core.history import LagStats, ViewStats


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``1.5h``, ``7d``, ``1d12h`` → seconds (the policy file's grammar)."""
    from mv_orchestration.core.durations import parse_duration as parse

    delta = parse(text)
    if delta is None:
        raise click.BadParameter(f"{text!r}: use numbers with units d, h, m, s (e.g. 24h, 1d12h)")
    if delta.total_seconds() <= 0:
        raise click.BadParameter(f"{text!r}: must be greater than 0")
    return delta.total_seconds()


def _freshness_states(keys: Sequence[Any]) -> dict[Any, str]:
    """Freshness state per asset key as Dagster's freshness daemon last recorded it."""
    import dagster as dg

    try:
        with dg.DagsterInstance.get() as instance:
            records = instance.get_freshness_state_records(list(keys))
    except Exception:  # no instance or no storage reachable: status still works
        return {}
    return {key: rec.freshness_state.value for key, rec in records.items()}


@click.command(short_help="Health of each view; exit 2 when any is critical.")
@click.argument("views", nargs=-1)
@click.option("--since", "since", default="24h", show_default=True, help="Window: 90m, 24h, 7d.")
@click.option("--group", "groups", multiple=True, help="Only views in this group.")
@click.option("--wide", is_flag=True, help="One line per view, every column, exact values.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@one_line_errors
def status(
    views: tuple[str, ...], since: str, groups: tuple[str, ...], wide: bool, as_json: bool
) -> None:
    """Health of each view, judged against its own schedule and freshness target; exit 2
    when any view is critical.

    \b
    From the refreshes in the window (--since):
      - failures and no success: critical;
      - success rate below 80 %: critical; below 95 %: warning;
      - average refresh longer than 5 s: warning.
    From the view's policy, counted from the first refresh the history records:
      - a scheduled refresh more than 5 min overdue (no success since): warning;
      - last success older than its freshness warn window: warning; older than
        its fail window: critical.

    A view not yet due is healthy, refreshed or not; a view without schedules or freshness
    target is judged on its refreshes only. FRESHNESS is the state Dagster's freshness
    policy last recorded; NEXT DUE the view's next scheduled refresh.
    """
    window_s = parse_duration(since)  # a usage error before anything heavy is imported
    from datetime import UTC, datetime

    from mv_orchestration.core.health import health_table

    seen = _read(views, groups, window_s)
    now = datetime.now(UTC)
    table = health_table(
        seen.stats,
        now,
        expectations=seen.expectations,
        last_successes=seen.last_successes,
        history_since=seen.history_since,
    )
    freshness = [seen.freshness.get(view, "UNKNOWN") for view in table["view"]]
    table.insert(list(table.columns).index("health") + 1, "freshness", freshness)
    _add_lag_columns(table, seen.targets, seen.lags)
    critical = int((table["health"] == "critical").sum())
    if as_json:
        click.echo(table.to_json(orient="records", date_format="iso", indent=2))
    elif table.empty:
        click.echo("no materialized views")
    else:
        click.echo("\n".join(_render(table, now, wide)))
        click.echo(_summary(table, since, seen.history_since, now))
    if critical:
        sys.exit(2)


@dataclass(frozen=True)
class _Seen:
    """What ``mvo status`` reads: the history and the views' policies, keyed by view."""

    stats: list[ViewStats]
    expectations: dict[tuple[str, str], Expectation]
    last_successes: dict[tuple[str, str], datetime]
    history_since: datetime | None
    freshness: dict[str, str]  # by qualname
    targets: dict[str, str]  # by qualname: the view's target lag (its mvo/target_lag metadata)
    lags: dict[str, LagStats]  # by qualname: the lag its target-lag refreshes achieved


def _read(views: Sequence[str], groups: Sequence[str], window_s: float) -> _Seen:
    import psycopg

    from mv_orchestration.core import history
    from mv_orchestration.core.sql import qualname
    from mv_orchestration.definitions import build_from_settings
    from mv_orchestration.settings import Settings

    url = resolve_database_url()
    env = prepare_instance(Path.cwd())
    with scoped_env(DATABASE_URL=url, **env):
        settings = Settings.from_env()
        schema = settings.history_schema
        if schema is None:
            raise ConfigError("refresh history is off (MVO_HISTORY_SCHEMA=off): no status to show")
        defs = build_from_settings(settings)
        graph = defs.resolve_asset_graph()
        mv_keys = sorted(graph.materializable_asset_keys, key=lambda k: tuple(k.path))
        if not mv_keys:
            raise nothing_to_manage(settings)
        keys = select(graph, mv_keys, views, groups, False, False) if views or groups else mv_keys
        refs = [(k.path[-2], k.path[-1]) for k in keys]
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            history.ensure_history(conn, schema)
            stats = history.read_stats(conn, schema, hours=window_s / 3600, views=refs)
            last = history.read_last_successes(conn, schema, refs)
            since = history.history_since(conn, schema)
            lags = history.read_lag_stats(conn, schema, refs, hours=window_s / 3600)
        fresh = _freshness_states(keys)
    names = {(k.path[-2], k.path[-1]): qualname(k.path[-2], k.path[-1]) for k in keys}
    targets = {
        names[ref]: str(getattr(target, "value", target))
        for ref, k in zip(refs, keys, strict=True)
        if (target := graph.get(k).metadata.get("mvo/target_lag")) is not None
    }
    return _Seen(
        stats=stats,
        expectations=_expectations(defs, graph, keys),
        last_successes=last,
        history_since=since,
        freshness={qualname(k.path[-2], k.path[-1]): fresh.get(k, "UNKNOWN") for k in keys},
        targets=targets,
        lags={names[ref]: stats for ref, stats in lags.items() if ref in names},
    )


def _add_lag_columns(
    table: pd.DataFrame, targets: dict[str, str], lags: dict[str, LagStats]
) -> None:
    """``target`` (the view's target lag), ``lag_p50_s``/``lag_max_s`` (what its target-lag
    refreshes achieved in the window) and ``within_target_pct`` (the share that met it)."""
    views = list(table["view"])
    table["target"] = [targets.get(v) for v in views]
    for column, field in (("lag_p50_s", "lag_p50_ms"), ("lag_max_s", "lag_max_ms")):
        values = [getattr(lags.get(v), field, None) for v in views]
        table[column] = [None if x is None else x / 1000 for x in values]
        table[column] = table[column].astype("float64")
    table["within_target_pct"] = [getattr(lags.get(v), "within_target_pct", None) for v in views]
    table["within_target_pct"] = table["within_target_pct"].astype("float64")


def _expectations(defs: Any, graph: Any, keys: Sequence[Any]) -> dict[tuple[str, str], Expectation]:
    """Each view's schedules (those of the definitions' schedules whose job selects it) and
    freshness windows (its asset's freshness policy), as :class:`Expectation`."""
    import dagster as dg

    from mv_orchestration.core.cron import CronSchedule
    from mv_orchestration.core.health import Expectation

    schedules: dict[Any, list[CronSchedule]] = {}
    for schedule in defs.schedules or ():
        try:  # the views a schedule's asset job selects (mvo's schedules all have one)
            targets = schedule.job.selection.resolve(graph)
        except (AttributeError, dg.DagsterError):  # no asset job: nothing to judge by it
            continue
        crons = schedule.cron_schedule
        for cron in [crons] if isinstance(crons, str) else crons:
            try:
                parsed = CronSchedule(cron, schedule.execution_timezone or "UTC")
            except ValueError:  # a shape this reader does not know: not judged by it
                continue
            for key in targets:
                schedules.setdefault(key, []).append(parsed)
    wanted = set(keys)
    policies = {
        s.key: s.freshness_policy for s in defs.resolve_all_asset_specs() if s.key in wanted
    }
    out: dict[tuple[str, str], Expectation] = {}
    for key in keys:
        policy = policies.get(key)
        warn = getattr(policy, "warn_window", None)
        fail = getattr(policy, "fail_window", None)
        out[(key.path[-2], key.path[-1])] = Expectation(
            schedules=tuple(dict.fromkeys(schedules.get(key, []))),
            fresh_warn_s=warn.to_timedelta().total_seconds() if warn is not None else None,
            fresh_fail_s=fail.to_timedelta().total_seconds() if fail is not None else None,
        )
    return out


def _summary(table: pd.DataFrame, since: str, began: datetime | None, now: datetime) -> str:
    counts = table["health"].value_counts()
    health = ", ".join(f"{counts.get(h, 0)} {h}" for h in ("critical", "warning", "healthy"))
    text = f"\n{len(table)} views over {since}: {health}"
    if began is None:
        return text + "\nno refresh recorded yet: no scheduled refresh is overdue"
    return (
        text
        + f"\nrefresh history since {began:%Y-%m-%d %H:%M} UTC ({human_ago(_secs(began, now))})"
    )


def _secs(then: datetime, now: datetime) -> float:
    return max(0.0, (now - then).total_seconds())


HEADERS = ("VIEW", "HEALTH", "FRESHNESS", "LAST SUCCESS", "NEXT DUE", "SUCCESS", "AVG")
WIDE_HEADERS = (
    "VIEW", "HEALTH", "FRESHNESS", "LAST SUCCESS", "AGE S", "NEXT DUE", "SUCCESS", "AVG S",
    "MAX S", "TARGET", "LAG P50 S", "LAG MAX S", "IN TARGET", "EXPECTED", "LAST ERROR",
    "REASONS",
)  # fmt: skip


def _render(table: pd.DataFrame, now: datetime, wide: bool) -> list[str]:
    """The health table: to 100 columns, the reasons below each row; or ``--wide``."""
    rows: list[Row] = []
    for r in table.to_dict("records"):
        freshness = str(r["freshness"]).lower().replace("_", " ")
        if wide:
            cells = [
                r["view"],
                r["health"],
                freshness,
                _iso(r["last_success"]),
                _exact(r["age_s"], ".0f"),
                _iso(r["next_due"], missing="-"),
                human_percent(r["success_rate"]),
                _exact(r["avg_duration_s"], ".3f"),
                _exact(r["max_duration_s"], ".3f"),
                _text(r["target"]),
                _exact(r["lag_p50_s"], ".1f"),
                _exact(r["lag_max_s"], ".1f"),
                human_percent(r["within_target_pct"]),
                _text(r["expected"]),
                _one_line(r["last_error"]),
                _text(r["reasons"]),
            ]
            rows.append(Row(cells))
            continue
        cells = [
            r["view"],
            r["health"],
            freshness,
            human_ago(r["age_s"]),
            "-" if _missing(r["next_due"]) else human_in(_secs(now, r["next_due"])),
            human_percent(r["success_rate"]),
            human_duration(r["avg_duration_s"]),
        ]
        rows.append(Row(cells, note=r["reasons"]))
    return render_table(WIDE_HEADERS if wide else HEADERS, rows, width=None if wide else WIDTH)


def _missing(value: Any) -> bool:
    return value is None or value != value  # None, NaN, NaT


def _text(value: Any) -> str:
    """A text column's cell: ``-`` when empty or missing (pandas gives NaN for a column
    no row has a value in)."""
    return "-" if _missing(value) or value == "" else str(value)


def _iso(value: Any, missing: str = "never") -> str:
    return missing if _missing(value) else value.isoformat(timespec="seconds")


def _exact(value: Any, spec: str) -> str:
    return "-" if _missing(value) else format(value, spec)


def _one_line(value: Any) -> str:
    if _missing(value) or not str(value).strip():
        return "-"
    return str(value).strip().splitlines()[0]
