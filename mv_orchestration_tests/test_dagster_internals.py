"""Every Dagster internal the project depends on (docs/architecture.md, *Dagster internals*),
checked against the installed Dagster: a rename, a moved module or a changed shape fails here,
by name, before it fails somewhere deep in a run."""

from __future__ import annotations

import inspect
import signal

import dagster as dg
import pytest

from mv_orchestration.lib import launcher, sensors


def test_definitions_load_context_tells_a_run_worker_from_a_code_server() -> None:
    from dagster._core.definitions.definitions_load_context import (
        DefinitionsLoadContext,
        DefinitionsLoadType,
    )

    assert {t.name for t in DefinitionsLoadType} >= {"INITIALIZATION", "RECONSTRUCTION"}
    for name in ("get", "load_type", "reconstruction_metadata"):
        assert hasattr(DefinitionsLoadContext, name), name
    assert callable(DefinitionsLoadContext.add_to_pending_reconstruction_metadata)


def test_run_health_types_are_what_the_launcher_returns() -> None:
    from dagster._core.launcher import CheckRunHealthResult, RunLauncher, WorkerStatus

    assert {s.name for s in WorkerStatus} >= {"RUNNING", "FAILED", "UNKNOWN", "SUCCESS"}
    result = CheckRunHealthResult(WorkerStatus.FAILED, "gone")
    assert (result.status, result.msg) == (WorkerStatus.FAILED, "gone")
    # the launcher overrides exactly these hooks of Dagster's base class
    for hook in ("check_run_worker_health", "supports_check_run_worker_health", "terminate"):
        assert hasattr(RunLauncher, hook), hook
    assert issubclass(launcher.MvoRunLauncher, dg.DefaultRunLauncher)


def test_grpc_client_asks_a_code_server_for_its_id() -> None:
    from dagster._grpc.client import DagsterGrpcClient

    params = inspect.signature(DagsterGrpcClient).parameters
    assert {"port", "socket", "host", "use_ssl"} <= set(params)
    assert "timeout" in inspect.signature(DagsterGrpcClient.get_server_id).parameters
    # nothing listens on port 1: refused, as the launcher's health check tells it
    assert launcher._server_refuses('{"host": "127.0.0.1", "port": 1}') is True


def test_captured_interrupts_can_be_asked_for() -> None:
    from dagster._utils.interrupts import (
        capture_interrupts,
        check_captured_interrupt,
        pop_captured_interrupt,
    )

    with capture_interrupts():
        assert check_captured_interrupt() is False
        signal.raise_signal(signal.SIGINT)
        assert check_captured_interrupt() is True
        assert pop_captured_interrupt() is True  # leave nothing behind for other tests


def test_the_clock_is_the_one_freeze_time_moves() -> None:
    from dagster._core.test_utils import freeze_time
    from dagster._time import get_current_timestamp

    with freeze_time(1_000_000.0):
        assert get_current_timestamp() == 1_000_000.0


def test_the_asset_job_type_is_what_define_asset_job_returns() -> None:
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition,
    )

    assert isinstance(dg.define_asset_job("j", selection="*"), UnresolvedAssetJobDefinition)


@pytest.mark.parametrize(
    ("ours", "module", "name"),
    [
        (sensors.DATA_VERSION_TAG, "dagster._core.definitions.data_version", "DATA_VERSION_TAG"),
        (sensors.RUN_KEY_TAG, "dagster._core.storage.tags", "RUN_KEY_TAG"),
        (sensors.SENSOR_NAME_TAG, "dagster._core.storage.tags", "SENSOR_NAME_TAG"),
        (sensors._WILL_RETRY_TAG, "dagster._core.storage.tags", "WILL_RETRY_TAG"),
        (sensors._AUTO_RETRY_RUN_ID_TAG, "dagster._core.storage.tags", "AUTO_RETRY_RUN_ID_TAG"),
        (launcher.GRPC_INFO_TAG, "dagster._core.storage.tags", "GRPC_INFO_TAG"),
    ],
    ids=lambda v: v if isinstance(v, str) and v.isupper() else "",
)
def test_the_tags_we_read_are_the_tags_dagster_writes(ours: str, module: str, name: str) -> None:
    import importlib

    assert getattr(importlib.import_module(module), name) == ours
