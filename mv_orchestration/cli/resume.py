"""``mvo resume``: resume views the target-lag sensor suspended after repeated failures."""

from __future__ import annotations

import click

from mv_orchestration.cli.refresh import refresh


@click.command(short_help="Resume views suspended after repeated failures.")
@click.argument("views", nargs=-1, required=True)
@click.pass_context
def resume(ctx: click.Context, views: tuple[str, ...]) -> None:
    """Resume views the target-lag sensor suspended after repeated failures.

    Refreshes VIEWS once, as 'mvo refresh' does: when that succeeds, the sensor's next tick
    resumes them and the views downstream of them.
    """
    ctx.invoke(refresh, views=views, groups=(), all_views=False, downstream=False)
    click.echo("resumed: the target-lag sensor takes them up again on its next tick")
