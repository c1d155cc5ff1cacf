"""``mvo status``: the health of each view, from its refresh history."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from mv_orchestration.cli.common import (
    nothing_to_manage,
    one_line_errors,
    prepare_instance,
    resolve_database_url,
    scoped_env,
)
from mv_orchestration.cli.selection import select
from mv_orchestration.errors import ConfigError


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
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@one_line_errors
def status(views: tuple[str, ...], since: str, groups: tuple[str, ...], as_json: bool) -> None:
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
        shown = table.assign(
            last_success=table["last_success"].map(
                lambda t: "never" if t is None or t != t else str(t)[:19]
            ),
            age=table["age_s"].map(lambda a: "-" if a is None or a != a else f"{a:,.0f}s"),
            success=table["success_rate"].map(lambda r: "-" if r is None or r != r else f"{r}%"),
            avg_s=table["avg_duration_s"].map(lambda d: "-" if d is None or d != d else f"{d:.3f}"),
            max_s=table["max_duration_s"].map(lambda d: "-" if d is None or d != d else f"{d:.3f}"),
        )[
            [
                "view",
                "health",
                "freshness",
                "last_success",
                "age",
                "success",
                "avg_s",
                "max_s",
                "reasons",
            ]
        ]
        click.echo(shown.to_string(index=False))
        counts = table["health"].value_counts()
        click.echo(
            f"\n{len(table)} views over {since}: "
            + ", ".join(f"{counts.get(h, 0)} {h}" for h in ("critical", "warning", "healthy"))
        )
    if critical:
        sys.exit(2)
