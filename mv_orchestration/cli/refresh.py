"""``mvo refresh``: refresh views through Dagster, recorded in the instance's run history."""

from __future__ import annotations

import logging
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


class _ProgressHandler(logging.Handler):
    """Prints the asset's own progress lines; Dagster's step/run events are left out."""

    def emit(self, record: logging.LogRecord) -> None:
        meta = getattr(record, "dagster_meta", None) or {}
        if meta.get("dagster_event") is not None:
            return
        click.echo(
            meta.get("orig_message") or record.getMessage(), err=record.levelno >= logging.WARNING
        )


@click.command(short_help="Refresh views through Dagster.")
@click.argument("views", nargs=-1)
@click.option("--group", "groups", multiple=True, help="Refresh every view in this group.")
@click.option("--all", "all_views", is_flag=True, help="Refresh every materialized view.")
@click.option("--downstream", is_flag=True, help="Also refresh views downstream of those named.")
@one_line_errors
def refresh(
    views: tuple[str, ...], groups: tuple[str, ...], all_views: bool, downstream: bool
) -> None:
    """Refresh views through Dagster (recorded in the instance's run history).

    VIEWS are 'schema.name', or 'name' when no other schema has a view of that name,
    each as 'mvo discover' prints it or unquoted, e.g.:

    \b
      "we ird"."v1.2"   "we ird".v1.2   we ird.v1.2   v1.2
    """
    if not (views or groups or all_views):
        raise click.UsageError("name at least one VIEW, or use --group G or --all")
    import dagster as dg

    from mv_orchestration.definitions import build_from_settings
    from mv_orchestration.interrupt import execute_interruptibly
    from mv_orchestration.settings import Settings

    url = resolve_database_url()
    env = prepare_instance(Path.cwd())
    with scoped_env(DATABASE_URL=url, **env):
        defs = build_from_settings(Settings.from_env())
        graph = defs.resolve_asset_graph()
        mv_keys = sorted(graph.materializable_asset_keys, key=lambda k: tuple(k.path))
        selected = select(graph, mv_keys, views, groups, all_views, downstream)
        if not selected:
            raise nothing_to_manage(Settings.from_env())
        job = defs.resolve_implicit_global_asset_job_def()

        @dg.logger
        def mvo_progress(init_context: dg.InitLoggerContext) -> logging.Logger:
            log = logging.Logger("mvo.progress", level=logging.INFO)
            log.addHandler(_ProgressHandler())
            return log

        job = job.with_logger_defs({"mvo": mvo_progress})
        click.echo(f"refreshing {len(selected)} view(s) through Dagster ...", err=True)
        with dg.DagsterInstance.get() as instance:
            # SIGINT/SIGTERM cancel the run (and exit) in any state: mv_orchestration/interrupt.py
            result = execute_interruptibly(
                job,
                instance=instance,
                asset_selection=selected,
                raise_on_error=False,
                run_config={"loggers": {"mvo": {}}},
                tags={"mvo/trigger": "cli"},
            )
    done = len(result.get_asset_materialization_events())
    if not result.success:
        failures = _failed_views(result.get_step_failure_events())
        raise click.ClickException(
            f"run {result.run_id} failed: {done} of {len(selected)} view(s) refreshed"
            + (f"; {failures}" if failures else "")
        )
    click.echo(f"run {result.run_id} succeeded: {done} view(s) refreshed")


def _failed_views(events: Sequence[Any]) -> str:
    """Each failed view with its SQLSTATE and message, from the steps' failure metadata
    (``failed_views``, see lib/refresh_step.py); else the steps' own error messages."""
    parts: list[str] = []
    for event in events:
        data = event.step_failure_data
        meta = data.user_failure_data.metadata if data.user_failure_data else {}
        views = meta.get("failed_views")
        if views is not None:
            for v in views.value:
                code = f" [SQLSTATE {v['sqlstate']}]" if v.get("sqlstate") else ""
                parts.append(f"{v['view']}{code}: {v['message']}")
        elif data.error is not None:
            parts.append(data.error.message.strip().splitlines()[0])
    return "; ".join(parts)
