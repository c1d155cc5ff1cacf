"""The code location as Dagster loads it: environment → Settings → Definitions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest

from mv_orchestration.definitions import build_from_settings
from mv_orchestration.demo import data
from mv_orchestration.errors import ConfigError
from mv_orchestration.settings import Settings


@pytest.fixture
def demo_env(
    db_url: str, conn: psycopg.Connection[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data.load_demo(conn, scale=0.01)
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("MVO_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("MVO_POLICIES", str(Path(data.__file__).parent / "policies.yaml"))
    for name in ("MVO_AUTOMATION", "MVO_HISTORY_SCHEMA", "MVO_ALERT_URLS", "MVO_SCHEMAS"):
        monkeypatch.delenv(name, raising=False)


def test_environment_reaches_the_definitions(
    demo_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    defs = build_from_settings(Settings.from_env())
    schedules = {s.name: s for s in defs.schedules or []}
    assert len(schedules) == 5  # the crons of MES (2) and marketing (2), history retention
    assert all(s.default_status == dg.DefaultScheduleStatus.RUNNING for s in schedules.values())
    sensors = {s.name for s in defs.sensors or []}
    assert sensors == {"mvo_target_lag"}  # no alert URLs: no alert sensors
    assert defs.resolve_sensor_def("mvo_target_lag").default_status == (
        dg.DefaultSensorStatus.RUNNING
    )
    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey(["saas", "platform_metrics"])).freshness_policy is not None

    monkeypatch.setenv("MVO_AUTOMATION", "off")
    monkeypatch.setenv("MVO_HISTORY_SCHEMA", "off")
    monkeypatch.setenv("MVO_ALERT_URLS", "json://127.0.0.1:9/hook")
    quiet = build_from_settings(Settings.from_env())
    assert all(s.default_status == dg.DefaultScheduleStatus.STOPPED for s in quiet.schedules or [])
    assert not any("retention" in s.name for s in quiet.schedules or [])
    assert {"mvo_freshness_alerts", "mvo_refresh_failures"} <= {s.name for s in quiet.sensors or []}
    # MVO_AUTOMATION=off stops the target-lag sensor too
    assert quiet.resolve_sensor_def("mvo_target_lag").default_status == (
        dg.DefaultSensorStatus.STOPPED
    )


def test_retry_settings_reach_the_resource(demo_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    def resource() -> Any:
        resources = build_from_settings(Settings.from_env()).resources
        assert resources is not None
        return resources["postgres"]

    assert (resource().transient_retries, resource().transient_retry_delay_s) == (2, 30.0)
    monkeypatch.setenv("MVO_RETRIES", "0")
    monkeypatch.setenv("MVO_RETRY_DELAY_S", "2.5")
    assert (resource().transient_retries, resource().transient_retry_delay_s) == (0, 2.5)


def test_policy_file_alerts_alone_create_the_alert_sensors(
    demo_env: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    instance: dg.DagsterInstance,
) -> None:
    demo = (Path(data.__file__).parent / "policies.yaml").read_text()
    policies = tmp_path / "policies.yaml"
    policies.write_text(
        demo.replace("  saas:\n", "  saas:\n    alerts: [{env: MVO_TEST_SAAS_ALERTS}]\n", 1)
    )
    monkeypatch.setenv("MVO_POLICIES", str(policies))
    monkeypatch.delenv("MVO_TEST_SAAS_ALERTS", raising=False)
    # configured but unset: the load fails loudly instead of dropping saas's alerts
    with pytest.raises(ConfigError) as info:
        build_from_settings(Settings.from_env())
    assert str(info.value) == (
        f"{policies}: groups.saas.alerts[0].env: environment variable MVO_TEST_SAAS_ALERTS "
        "is not set"
    )
    # set: alert sensors without MVO_ALERT_URLS; only saas's views are watched for freshness
    monkeypatch.setenv("MVO_TEST_SAAS_ALERTS", "json://127.0.0.1:9/saas")
    defs = build_from_settings(Settings.from_env())
    sensors = {s.name: s for s in defs.sensors or []}
    assert {"mvo_freshness_alerts", "mvo_refresh_failures"} <= set(sensors)
    tick = sensors["mvo_freshness_alerts"](dg.build_sensor_context(instance=instance))
    assert isinstance(tick, dg.SkipReason)
    assert tick.skip_message == "1 assets watched; 0 alerts sent"  # saas.platform_metrics


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MVO_AUTOMATION", "maybe", "MVO_AUTOMATION='maybe': expected on or off"),
        ("MVO_LOCK_TIMEOUT_S", "soon", "MVO_LOCK_TIMEOUT_S='soon' is not a number"),
        ("MVO_RETRIES", "-1", "MVO_RETRIES='-1': expected a whole number from 0 to 10"),
        ("MVO_RETRIES", "11", "MVO_RETRIES='11': expected a whole number from 0 to 10"),
        ("MVO_RETRIES", "²", "MVO_RETRIES='²': expected a whole number from 0 to 10"),
        ("MVO_RETRIES", "9" * 5000, f"MVO_RETRIES={'9' * 5000!r}: expected a whole number "
         "from 0 to 10"),
        ("MVO_LOCK_TIMEOUT_S", "nan", "MVO_LOCK_TIMEOUT_S='nan' is not a finite number"),
        ("MVO_STATEMENT_TIMEOUT_S", "inf", "MVO_STATEMENT_TIMEOUT_S='inf' is not a finite number"),
        ("MVO_STATEMENT_TIMEOUT_S", "1e309", "MVO_STATEMENT_TIMEOUT_S='1e309' is not a finite "
         "number"),
        ("MVO_LOCK_TIMEOUT_S", "0", "MVO_LOCK_TIMEOUT_S='0' must be greater than 0"),
        ("MVO_LOCK_TIMEOUT_S", "2147484", "MVO_LOCK_TIMEOUT_S='2147484' must be at most 2147483"),
        ("MVO_RETRY_DELAY_S", "-inf", "MVO_RETRY_DELAY_S='-inf' is not a finite number"),
        ("MVO_RETRY_DELAY_S", "86401", "MVO_RETRY_DELAY_S='86401' must be at most 86400"),
        ("MVO_HISTORY_RETENTION_DAYS", "1e9", "MVO_HISTORY_RETENTION_DAYS='1e9' must be at most "
         "36500"),
        ("MVO_HISTORY_SCHEMA", "pg_catalog", "MVO_HISTORY_SCHEMA='pg_catalog' is a system schema: "
         "choose a schema of its own (default mvo), or off"),
        ("MVO_HISTORY_SCHEMA", "pg_toast", "MVO_HISTORY_SCHEMA='pg_toast' is a system schema: "
         "choose a schema of its own (default mvo), or off"),
        ("MVO_HISTORY_SCHEMA", "pg_mine", "MVO_HISTORY_SCHEMA='pg_mine' is a system schema: "
         "choose a schema of its own (default mvo), or off"),
        ("MVO_HISTORY_SCHEMA", "information_schema", "MVO_HISTORY_SCHEMA='information_schema' "
         "is a system schema: choose a schema of its own (default mvo), or off"),
        ("MVO_HISTORY_SCHEMA", "h" * 64, "MVO_HISTORY_SCHEMA is longer than 63 bytes, "
         "PostgreSQL's limit for a name"),
        ("MVO_UI_BASE_URL", "dagster.internal:3000", "MVO_UI_BASE_URL is not an http:// or "
         "https:// URL with a host (e.g. http://dagster.internal:3000)"),
        ("DATABASE_URL", "postgresql//u:s3cretpw@h/db", "DATABASE_URL is not a valid PostgreSQL "
         "URL: missing '://' after the scheme; expected postgresql://user@host:5432/db"),
        ("MVO_LOCK_RETRIES", "many", "MVO_LOCK_RETRIES='many': expected a whole number from 0 to 100"),
        ("MVO_POLICIES", "/nonexistent.yaml", "MVO_POLICIES='/nonexistent.yaml': no such file"),
        (
            "MVO_ALERT_URLS",
            "json://127.0.0.1:9/a,slack://T000/s3cretB/",
            "MVO_ALERT_URLS: URL #2 is not a valid apprise URL (scheme 'slack')",
        ),
    ],
)  # fmt: skip
def test_bad_settings_are_one_line(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@127.0.0.1:1/x")
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        Settings.from_env()
    assert str(info.value) == message
    assert "s3cret" not in str(info.value)


def test_history_schema_holding_managed_views(
    demo_env: None, conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MVO_HISTORY_SCHEMA", "school")
    with pytest.raises(ConfigError) as info:
        build_from_settings(Settings.from_env())
    assert str(info.value) == (
        "MVO_HISTORY_SCHEMA='school' holds managed materialized views (school.mv_attendance_daily,"
        " school.mv_fee_collection, school.mv_grade_summary and 1 more): give the history a "
        "schema of its own, or leave school out with MVO_EXCLUDE_SCHEMAS"
    )
    # its views left out (and the demo policies, which name the school group): fine
    monkeypatch.setenv("MVO_EXCLUDE_SCHEMAS", "school")
    monkeypatch.delenv("MVO_POLICIES")
    keys = build_from_settings(Settings.from_env()).resolve_asset_graph().materializable_asset_keys
    assert keys and not any(k.path[0] == "school" for k in keys)


def test_schemas_that_do_not_exist(
    demo_env: None, conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MVO_SCHEMAS", "saas,nope,school,gone")
    with pytest.raises(ConfigError) as info:
        build_from_settings(Settings.from_env())
    database = conn.info.dbname
    assert str(info.value) == (
        f"MVO_SCHEMAS names schema(s) that database {database!r} does not have: nope, gone "
        "(its schemas: llm_usage, marketing, mes, public, saas, school)"
    )


def test_missing_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(ConfigError, match="DATABASE_URL is not set"):
        Settings.from_env()
