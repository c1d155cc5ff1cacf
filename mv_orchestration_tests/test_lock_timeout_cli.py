"""``mvo refresh`` behind a long reader: the lock-timeout message, in the CLI output and in
the history row, names the holder; the row counts every attempt (issue 11, item 9)."""

from __future__ import annotations

import re
from typing import Any

import psycopg
import pytest

from mv_orchestration_tests.test_cli import cli_env, run

__all__ = ["cli_env"]  # the fixture, used by name below

REPORT = "SELECT total AS quarterly_report FROM shop.mv_grand"


def test_lock_timeout_names_the_holder_in_cli_and_history(
    cli_env: dict[str, str], conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MVO_LOCK_TIMEOUT_S", "0.2")
    monkeypatch.setenv("MVO_LOCK_RETRIES", "1")
    monkeypatch.setenv("MVO_RETRIES", "0")  # no step retry: one refresh_view call
    with psycopg.connect(
        conn.info.dsn, password=conn.info.password, autocommit=True, application_name="bi_tool"
    ) as holder:
        # shop.mv_grand has no unique index: a plain refresh, behind this reader
        holder.execute("BEGIN")
        holder.execute(REPORT)
        result = run("refresh", "shop.mv_grand")
        pid = holder.info.backend_pid
        user = holder.info.user
    assert result.exit_code == 1, result.output
    expected = re.compile(
        r"refresh of shop\.mv_grand failed \[SQLSTATE 55P03\]: canceling statement due to lock"
        rf" timeout \(attempt 2 of 2\); lock held by pid {pid} \(user {re.escape(user)},"
        r" application 'bi_tool', idle in transaction, holds AccessShareLock, transaction open"
        r" \d+\.\d s\): " + re.escape(REPORT)
    )
    assert expected.search(result.output), result.output
    row = conn.execute(
        "SELECT error_message, attempts FROM mvo.refresh_history WHERE view_name = 'mv_grand'"
    ).fetchone()
    assert row is not None
    assert expected.search(f"refresh of shop.mv_grand failed [SQLSTATE 55P03]: {row[0]}")
    assert row[1] == 2
