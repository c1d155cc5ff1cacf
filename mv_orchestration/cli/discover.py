"""``mvo discover``: the materialized views of the database, in refresh order."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from mv_orchestration.cli.common import one_line_errors, resolve_database_url
from mv_orchestration.cli.output import WIDTH, Row, human_bytes, render_table

if TYPE_CHECKING:
    from mv_orchestration.core.catalog import MaterializedView


@click.command(short_help="List the materialized views in refresh order.")
@click.option("--json", "as_json", is_flag=True, help="Print the catalog snapshot as JSON.")
@click.option(
    "--wide", is_flag=True, help="One line per view, every column (owner, bytes, unique indexes)."
)
@click.option("--schema", "schemas", multiple=True, help="Only these schemas (repeatable).")
@one_line_errors
def discover(as_json: bool, wide: bool, schemas: tuple[str, ...]) -> None:
    """List materialized views, their refresh method, size and sources, in refresh order.

    The table fits 100 columns (a name is never shortened); --wide and --json show everything.
    """
    import psycopg

    from mv_orchestration.core.catalog import read_catalog
    from mv_orchestration.core.graph import LineageGraph
    from mv_orchestration.lib.snapshot import check_schemas_exist

    url = resolve_database_url()
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        check_schemas_exist(conn, schemas, "--schema")
        snap = read_catalog(conn, list(schemas) or None)
    order = LineageGraph(snap).refresh_order()
    if as_json:
        payload = json.loads(snap.to_json())
        payload["refresh_order"] = [r.qualname for r in order]
        click.echo(json.dumps(payload, indent=2, sort_keys=True))
        return
    if not order:
        click.echo("no materialized views found")
        return
    rows = [_row(snap.matview(ref), i, wide) for i, ref in enumerate(order, start=1)]
    headers = WIDE_HEADERS if wide else HEADERS
    lines = render_table(headers, rows, width=None if wide else WIDTH, list_separator=", ")
    click.echo("\n".join(lines))
    click.echo(
        f"\n{len(order)} materialized views in {snap.database}, in refresh order"
        f" (PostgreSQL {snap.server_version})"
    )


HEADERS = ("VIEW", "METHOD", "SIZE", "SOURCES")
WIDE_HEADERS = (
    "VIEW", "ORDER", "METHOD", "SIZE", "BYTES", "POPULATED", "OWNER", "UNIQUE INDEXES", "SOURCES"
)  # fmt: skip


def _row(mv: MaterializedView, order: int, wide: bool) -> Row:
    from mv_orchestration.core.refresh import choose_method
    from mv_orchestration.core.sql import quote_ident

    method = choose_method(mv.populated, mv.has_usable_unique_index, "auto")
    sources = ", ".join(r.qualname for r in mv.upstream)
    if not wide:
        return Row([mv.qualname, method, human_bytes(mv.size_bytes), sources])
    indexes = "; ".join(
        f"{quote_ident(ix.name)} ({', '.join(quote_ident(c) for c in ix.columns)})"
        + ("" if ix.usable_for_concurrently else f" not usable: {ix.reason or 'unknown'}")
        for ix in mv.unique_indexes
    )
    return Row(
        [
            mv.qualname,
            str(order),
            method,
            human_bytes(mv.size_bytes),
            str(mv.size_bytes),
            "yes" if mv.populated else "no",
            mv.owner,
            indexes or "-",
            sources or "-",
        ]
    )
