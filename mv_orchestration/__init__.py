"""mv-orchestration: keep PostgreSQL materialized views fresh, observable and safe to refresh."""

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
from mv_orchestration.lib.defs import DatabaseTarget, build_definitions
from mv_orchestration.lib.resource import PostgresResource
from mv_orchestration.lib.translator import MvTranslator, TranslatorSettings

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
