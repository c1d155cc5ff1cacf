"""mv-orchestration: keep PostgreSQL materialized views fresh, observable and safe to refresh.

Importing the package imports nothing else: every name below is imported on first use, so
``import mv_orchestration`` (or ``mv_orchestration.core``) never imports Dagster, and the
``mvo`` command's help never imports psycopg either.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mv_orchestration.core.catalog import (
        CatalogSnapshot,
        MaterializedView,
        Relation,
        RelationRef,
        read_catalog,
    )
    from mv_orchestration.core.graph import LineageGraph
    from mv_orchestration.core.refresh import RefreshOptions, RefreshResult, refresh_view
    from mv_orchestration.errors import (
        CatalogError,
        ConfigError,
        LockTimeoutError,
        MvoError,
        RefreshError,
        RefreshInProgressError,
        StatementTimeoutError,
    )
    from mv_orchestration.lib.component import PostgresMaterializedViews
    from mv_orchestration.lib.defs import DatabaseTarget, build_definitions
    from mv_orchestration.lib.resource import PostgresResource
    from mv_orchestration.lib.translator import MvTranslator, TranslatorSettings

# name -> module, imported when the name is first used: nothing is imported with the package,
# so `mvo --help` loads neither psycopg nor Dagster (the lib modules import Dagster)
_LAZY = {
    "CatalogSnapshot": "mv_orchestration.core.catalog",
    "MaterializedView": "mv_orchestration.core.catalog",
    "Relation": "mv_orchestration.core.catalog",
    "RelationRef": "mv_orchestration.core.catalog",
    "read_catalog": "mv_orchestration.core.catalog",
    "LineageGraph": "mv_orchestration.core.graph",
    "RefreshOptions": "mv_orchestration.core.refresh",
    "RefreshResult": "mv_orchestration.core.refresh",
    "refresh_view": "mv_orchestration.core.refresh",
    "CatalogError": "mv_orchestration.errors",
    "ConfigError": "mv_orchestration.errors",
    "LockTimeoutError": "mv_orchestration.errors",
    "MvoError": "mv_orchestration.errors",
    "RefreshError": "mv_orchestration.errors",
    "RefreshInProgressError": "mv_orchestration.errors",
    "StatementTimeoutError": "mv_orchestration.errors",
    "DatabaseTarget": "mv_orchestration.lib.defs",
    "build_definitions": "mv_orchestration.lib.defs",
    "PostgresMaterializedViews": "mv_orchestration.lib.component",
    "PostgresResource": "mv_orchestration.lib.resource",
    "MvTranslator": "mv_orchestration.lib.translator",
    "TranslatorSettings": "mv_orchestration.lib.translator",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "CatalogError",
    "CatalogSnapshot",
    "ConfigError",
    "DatabaseTarget",
    "LineageGraph",
    "LockTimeoutError",
    "MaterializedView",
    "MvTranslator",
    "MvoError",
    "PostgresMaterializedViews",
    "PostgresResource",
    "RefreshError",
    "RefreshInProgressError",
    "RefreshOptions",
    "RefreshResult",
    "Relation",
    "RelationRef",
    "StatementTimeoutError",
    "TranslatorSettings",
    "build_definitions",
    "read_catalog",
    "refresh_view",
]
