"""``mvo dev``'s terminal lines for finished runs, and the command it runs."""

from __future__ import annotations

import importlib.util
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from mv_orchestration.devserver import (
    check_port_free,
    dagster_dev_command,
    summary_line,
    trigger_of,
)
from mv_orchestration.errors import ConfigError
from mv_orchestration.lib.launcher import WORKER_TAG

ENDED = datetime(2026, 12, 3, 14, 8, 12, tzinfo=UTC)


def _record(
    status: dg.DagsterRunStatus,
    views: list[str],
    tags: dict[str, str] | None = None,
    took_s: float | None = 2.14,
) -> dg.RunRecord:
    run = dg.DagsterRun(
        job_name="__ASSET_JOB",
        run_id="be51f152-0000-4000-8000-000000000000",
        status=status,
        tags=tags or {},
        asset_selection=frozenset(dg.AssetKey(v.split(".")) for v in views),
    )
    end = ENDED.timestamp()
    return dg.RunRecord(
        storage_id=1,
        dagster_run=run,
        create_timestamp=ENDED,
        update_timestamp=ENDED,
        start_time=end - took_s if took_s is not None else None,
        end_time=end if took_s is not None else None,
    )


def _local(ts: datetime) -> str:
    return datetime.fromtimestamp(ts.timestamp()).strftime("%H:%M:%S")


def test_a_refresh_is_one_line_with_its_views_duration_rows_and_trigger() -> None:
    record = _record(
        dg.DagsterRunStatus.SUCCESS,
        ["school.mv_grade_summary", "school.mv_attendance_daily", "school.mv_fee_collection"],
        {"dagster/schedule_name": "mvo_every_2_min_utc"},
    )
    assert summary_line(record, 1234) == (
        f"{_local(ENDED)} refreshed school.mv_attendance_daily +2 more  2.1 s  1,234 rows"
        "  schedule mvo_every_2_min_utc  run be51f152"
    )


def test_two_short_names_both_shown_and_one_row_singular() -> None:
    record = _record(dg.DagsterRunStatus.SUCCESS, ["a.v2", "a.v1"])
    assert (
        summary_line(record, 1)
        == f"{_local(ENDED)} refreshed a.v1, a.v2  2.1 s  1 row  manual  run be51f152"
    )


def test_a_run_cancelled_before_it_started_and_a_failure() -> None:
    cancelled = _record(dg.DagsterRunStatus.CANCELED, ["a.v"], took_s=None)
    assert summary_line(cancelled, None) == (
        f"{_local(ENDED)} cancelled a.v  not started  manual  run be51f152"
    )
    failed = _record(dg.DagsterRunStatus.FAILURE, ["a.v"], took_s=75.0)
    assert summary_line(failed, None) == (
        f"{_local(ENDED)} FAILED a.v  1 min 15 s  manual  run be51f152"
    )


def test_triggers() -> None:
    assert trigger_of({"dagster/sensor_name": "mvo_source_changes"}) == "sensor mvo_source_changes"
    assert trigger_of({"dagster/parent_run_id": "8875b489-87d4"}) == "retry of 8875b489"
    assert trigger_of({"dagster/backfill": "abc"}) == "backfill"
    assert trigger_of({WORKER_TAG: "h:ns:1:2.0"}) == "mvo refresh"
    assert trigger_of({}) == "manual"


def test_the_command_is_dg_dev_when_the_dg_cli_is_installed() -> None:
    cmd = dagster_dev_command(Path("/p/workspace.yaml"), "127.0.0.1", 3000)
    assert cmd[0] == sys.executable
    assert cmd[-6:] == ["-w", "/p/workspace.yaml", "-h", "127.0.0.1", "-p", "3000"]
    if importlib.util.find_spec("dagster_dg_cli") is not None:  # the dev extra
        assert cmd[1:4] == ["-m", "dagster_dg_cli.cli", "dev"]
    else:
        assert cmd[1:3] == ["-W", "ignore:Function `dev_command` is superseded"]


def test_a_port_in_use_is_refused_before_anything_starts() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"^port {port} on 127.0.0.1 is in use"):
            check_port_free(f"http://127.0.0.1:{port}")
    check_port_free(f"http://127.0.0.1:{port}")  # free again
