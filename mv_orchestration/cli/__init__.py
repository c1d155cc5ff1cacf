"""``mvo``: run the demo, inspect the catalog, refresh views through Dagster, manage the
embedded server. Errors print as one line and exit non-zero.

One module per command; each imports Dagster, pandas and ``mv_orchestration.lib`` inside
its body only, so ``mvo --help``, ``mvo <command> --help`` and usage errors answer without
loading them.
"""

from __future__ import annotations

import logging

import click

from mv_orchestration.cli.db import db
from mv_orchestration.cli.dev import dev
from mv_orchestration.cli.discover import discover
from mv_orchestration.cli.refresh import refresh
from mv_orchestration.cli.resume import resume
from mv_orchestration.cli.status import status

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mv-orchestration")
def main() -> None:
    """mv-orchestration: keep PostgreSQL materialized views fresh with Dagster.

    Reads DATABASE_URL; without it, commands use the embedded demo server (see 'mvo dev').
    """
    logging.basicConfig(level=logging.WARNING, format="%(message)s")


for _command in (dev, discover, refresh, resume, status, db):
    main.add_command(_command)
