"""Benchmark H, *load*: build the code location's definitions from the environment and
resolve its asset graph, as a code server (and a run worker) does; see bench/scale.py."""

from __future__ import annotations

from mv_orchestration.definitions import build_from_settings
from mv_orchestration.settings import Settings


def main() -> None:
    defs = build_from_settings(Settings.from_env())
    graph = defs.resolve_asset_graph()
    print(f"{len(graph.materializable_asset_keys)} materializable assets")


if __name__ == "__main__":
    main()
