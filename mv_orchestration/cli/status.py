"""``mvo status``: the health of each view, from its refresh history."""

from __future__ import annotations

import sys
from collections.abc import Sequence
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
    human_percent,
    render_table,
)
from mv_orchestration.cli.selection import select
from mv_orchestration.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd


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


@click.command()
@click.argument("views", nargs=-1)
@click.option("--since", "since", default="24h", show_default=True, help="Window: 90m, 24h, 7d.")
@click.option("--group", "groups", multiple=True, help="Only views in this group.")
@click.option("--wide", is_flag=True, help="One line per view, every column, exact values.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@one_line_errors
def status(
    views: tuple[str, ...], since: str, groups: tuple[str, ...], wide: bool, as_json: bool
) -> None:
    """Health of every view from the refresh history; exit 2 when any is critical.

    healthy / warning / critical follow seed 004's rules: success rate below 95 % warns,
    below 80 % is critical; average duration above 5 s warns; last success over 10 min ago
    warns. FRESHNESS is the state Dagster's freshness policy last recorded.
    """
    window_s = parse_duration(since)  # a usage error before anything heavy is imported
    from datetime import UTC, datetime

    import psycopg

    from mv_orchestration.core import history
    from mv_orchestration.core.health import health_table
    from mv_orchestration.definitions import build_from_settings
    from mv_orchestration.settings import Settings

    url = resolve_database_url()
    env = prepare_instance(Path.cwd())
    with scoped_env(DATABASE_URL=url, **env):
        settings = Settings.from_env()
        if settings.history_schema is None:
            raise ConfigError("refresh history is off (MVO_HISTORY_SCHEMA=off): no status to show")
        graph = build_from_settings(settings).resolve_asset_graph()
        mv_keys = sorted(graph.materializable_asset_keys, key=lambda k: tuple(k.path))
        if not mv_keys:
            raise nothing_to_manage(settings)
        if views or groups:
            keys = select(graph, mv_keys, views, groups, all_views=False, downstream=False)
        else:
            keys = mv_keys
        refs = [(k.path[-2], k.path[-1]) for k in keys]
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            history.ensure_history(conn, settings.history_schema)
            stats = history.read_stats(
                conn, settings.history_schema, hours=window_s / 3600, views=refs
            )
        fresh = _freshness_states(keys)
    table = health_table(stats, datetime.now(UTC))
    from mv_orchestration.core.sql import qualname

    # health_table's "view" column is qualname(schema, name)
    fresh_by_view = {qualname(k.path[-2], k.path[-1]): fresh.get(k, "UNKNOWN") for k in keys}
    table["freshness"] = [fresh_by_view.get(view, "UNKNOWN") for view in table["view"]]
    critical = int((table["health"] == "critical").sum())
    if as_json:
        click.echo(table.to_json(orient="records", date_format="iso", indent=2))
    elif table.empty:
        click.echo("no materialized views")
    else:
        click.echo("\n".join(_render(table, wide)))
        counts = table["health"].value_counts()
        click.echo(
            f"\n{len(table)} views over {since}: "
            + ", ".join(f"{counts.get(h, 0)} {h}" for h in ("critical", "warning", "healthy"))
        )
    if critical:
        sys.exit(2)


HEADERS = ("VIEW", "HEALTH", "FRESHNESS", "LAST SUCCESS", "SUCCESS", "AVG", "MAX")
WIDE_HEADERS = (
    "VIEW", "HEALTH", "FRESHNESS", "LAST SUCCESS", "AGE S", "SUCCESS", "AVG S", "MAX S",
    "LAST ERROR", "REASONS",
)  # fmt: skip


def _render(table: pd.DataFrame, wide: bool) -> list[str]:
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
                human_percent(r["success_rate"]),
                _exact(r["avg_duration_s"], ".3f"),
                _exact(r["max_duration_s"], ".3f"),
                _one_line(r["last_error"]),
                r["reasons"] or "-",
            ]
            rows.append(Row(cells))
            continue
        cells = [
            r["view"],
            r["health"],
            freshness,
            human_ago(r["age_s"]),
            human_percent(r["success_rate"]),
            human_duration(r["avg_duration_s"]),
            human_duration(r["max_duration_s"]),
        ]
        rows.append(Row(cells, note=r["reasons"]))
    return render_table(WIDE_HEADERS if wide else HEADERS, rows, width=None if wide else WIDTH)


def _missing(value: Any) -> bool:
    return value is None or value != value  # None, NaN, NaT


def _iso(value: Any) -> str:
    return "never" if _missing(value) else value.isoformat(timespec="seconds")


def _exact(value: Any, spec: str) -> str:
    return "-" if _missing(value) else format(value, spec)


def _one_line(value: Any) -> str:
    if _missing(value) or not str(value).strip():
        return "-"
    return str(value).strip().splitlines()[0]
