"""mv-orchestration: keep PostgreSQL materialized views fresh, observable and safe to refresh.

Importing the package (or ``mv_orchestration.core``) does not import Dagster: the names that
need it (the component, the resource, the definitions builder) are imported on first use.
"""

import importlib
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from mv_orchestration.lib.component import PostgresMaterializedViews
    from mv_orchestration.lib.defs import DatabaseTarget, build_definitions
    from mv_orchestration.lib.resource import PostgresResource
    from mv_orchestration.lib.translator import MvTranslator, TranslatorSettings

# name -> module, imported when the name is first used (these import Dagster)
_LAZY = {
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
