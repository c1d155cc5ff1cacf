"""Benchmark H, *Dagster floor*: what Dagster itself costs to report N refreshes.

Multi-assets of the same shape as ``lib/assets.py`` builds for N MVs (the same chunks of
:data:`~mv_orchestration.lib.assets.CHUNK_VIEWS` outputs, the same four check specs per MV,
the same lineage), run in process on the instance in ``DAGSTER_HOME`` (PostgreSQL storage,
as ``mvo refresh`` uses), each output reporting a materialization with metadata like a
refresh's and its four check results, without any SQL. See bench/scale.py.
"""

import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import dagster as dg
from dagster import AssetExecutionContext

from bench.scale import SCHEMA, _mv, chunks_of
from mv_orchestration.lib.assets import CHUNK_VIEWS

CHECKS = ("row_count", "refresh_duration", "refresh_method", "success_rate")


def _key(i: int) -> dg.AssetKey:
    return dg.AssetKey([SCHEMA, _mv(i)])


def _multi_asset(ids: list[int], n_chunk: int) -> dg.AssetsDefinition:
    own = set(ids)
    outs = {f"o{i}": dg.AssetOut(key=_key(i), is_required=False, kinds={"postgres"}) for i in ids}
    deps = {f"o{i}": ({_key(i - 1)} if i % 2 else {dg.AssetKey([SCHEMA, "src"])}) for i in ids}
    external = sorted({k for ks in deps.values() for k in ks} - {_key(i) for i in own},
                      key=lambda k: tuple(k.path))  # fmt: skip
    checks = [dg.AssetCheckSpec(c, asset=_key(i)) for i in ids for c in CHECKS]

    @dg.multi_asset(
        name=f"floor_{n_chunk}",
        outs=outs,
        ins={f"in_{j}": dg.AssetIn(key=k, dagster_type=dg.Nothing) for j, k in enumerate(external)},
        internal_asset_deps=deps,
        check_specs=checks,
        can_subset=True,
    )
    def floor(context: AssetExecutionContext) -> Iterator[dg.MaterializeResult[Any]]:
        for key in sorted(context.selected_asset_keys, key=lambda k: tuple(k.path)):
            context.log.info(f"refreshing {key.to_user_string()} ...")
            context.log.info(f"refreshed {key.to_user_string()} in 0.001s (blocking, 10 rows)")
            yield dg.MaterializeResult(
                asset_key=key,
                metadata={
                    "duration_s": dg.MetadataValue.float(0.001),
                    "method": "blocking",
                    "blocks_readers": True,
                    "size_bytes": dg.MetadataValue.int(8192),
                    "attempts": dg.MetadataValue.int(1),
                    "server_version": "18",
                    "started_at": dg.MetadataValue.timestamp(datetime.now(UTC)),
                    "dagster/row_count": dg.MetadataValue.int(10),
                    "rows_before": dg.MetadataValue.int(10),
                    "lock_wait_s": dg.MetadataValue.float(0.0),
                    "preview": dg.MetadataValue.md("| id |\n|---|\n| 1 |"),
                },
                check_results=[
                    dg.AssetCheckResult(
                        asset_key=key, check_name=c, passed=True, metadata={"value": 1}
                    )
                    for c in CHECKS
                ],
            )

    return floor


def main(n: int) -> None:
    # pairs (a chain of two) stay in one chunk, as LineageGraph.refresh_chunks keeps them
    pairs = [[i, i + 1] for i in range(0, n, 2)]
    chunks = [[i for pair in group for i in pair] for group in chunks_of(pairs, CHUNK_VIEWS // 2)]
    assets: list[Any] = [dg.AssetSpec(dg.AssetKey([SCHEMA, "src"]))]
    assets += [_multi_asset(ids, j) for j, ids in enumerate(chunks)]
    defs = dg.Definitions(assets=assets, executor=dg.in_process_executor)
    job = defs.resolve_implicit_global_asset_job_def()
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(instance=instance)
    assert result.success
    print(f"{len(result.get_asset_materialization_events())} materializations")


if __name__ == "__main__":
    main(int(sys.argv[1]))
