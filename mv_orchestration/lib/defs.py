"""Assemble ``Definitions`` for one or more databases from catalog snapshots."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import dagster as dg

from mv_orchestration.core.catalog import CatalogSnapshot
from mv_orchestration.lib.assets import build_refresh_assets
from mv_orchestration.lib.resource import PostgresResource
from mv_orchestration.lib.translator import MvTranslator, TranslatorSettings, safe_name


@dataclass(frozen=True)
class DatabaseTarget:
    """One database: its alias, its resource and how its assets are named."""

    alias: str
    resource: PostgresResource
    translator: MvTranslator = field(default_factory=MvTranslator)

    @property
    def resource_key(self) -> str:
        return "postgres" if self.alias == "default" else f"postgres_{safe_name(self.alias)}"

    @property
    def pool(self) -> str:
        """Concurrency pool limiting simultaneous refresh steps on this database."""
        return f"mvo_{safe_name(self.alias)}"


def build_definitions(targets: Sequence[tuple[DatabaseTarget, CatalogSnapshot]]) -> dg.Definitions:
    assets: list[dg.AssetsDefinition | dg.AssetSpec] = []
    resources: dict[str, PostgresResource] = {}
    for target, snapshot in targets:
        assets.extend(
            build_refresh_assets(
                snapshot,
                target.translator,
                resource_key=target.resource_key,
                name=f"refresh_{safe_name(target.alias)}",
                pool=target.pool,
            )
        )
        resources[target.resource_key] = target.resource
    return dg.Definitions(assets=assets, resources=resources)


def default_translator(alias: str, *, prefix_with_alias: bool) -> MvTranslator:
    return MvTranslator(
        TranslatorSettings(
            key_prefix=(alias,) if prefix_with_alias else (),
            database_alias=alias,
        )
    )
