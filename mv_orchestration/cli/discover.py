"""``mvo discover``: the materialized views of the database, in refresh order."""

from __future__ import annotations

import json

import click

from mv_orchestration.cli.common import one_line_errors, resolve_database_url


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the catalog snapshot as JSON.")
@click.option("--schema", "schemas", multiple=True, help="Only these schemas (repeatable).")
@one_line_errors
def discover(as_json: bool, schemas: tuple[str, ...]) -> None:
    """List materialized views, their sources and refresh method, in refresh order."""
    import psycopg

    from mv_orchestration.core.catalog import read_catalog
    from mv_orchestration.core.graph import LineageGraph
    from mv_orchestration.core.refresh import choose_method
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
    import pandas as pd

    rows = []
    for i, ref in enumerate(order, start=1):
        mv = snap.matview(ref)
        rows.append(
            {
                "#": i,
                "view": mv.qualname,
                "method": choose_method(mv.populated, mv.has_usable_unique_index, "auto"),
                "size": _human_bytes(mv.size_bytes),
                "sources": ", ".join(r.qualname for r in mv.upstream),
            }
        )
    click.echo(pd.DataFrame(rows).to_string(index=False))
    click.echo(
        f"\n{len(order)} materialized views in {snap.database} (PostgreSQL {snap.server_version})"
    )
