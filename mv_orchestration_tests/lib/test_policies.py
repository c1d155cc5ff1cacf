"""Pure tests of the policy file: resolution order, every error message, the demo file."""

from __future__ import annotations

import itertools
import logging
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from dagster._utils.schedules import schedule_execution_time_iterator

import mv_orchestration.demo
from mv_orchestration.core.catalog import CatalogSnapshot, RelationRef
from mv_orchestration.errors import ConfigError
from mv_orchestration.lib.defs import default_translator
from mv_orchestration.lib.policies import (
    AlertDestination,
    AlertRoutes,
    Freshness,
    PolicyFile,
    Schedule,
    ViewPolicy,
    format_key_path,
    freshness_policy,
    load_policies,
    parse_duration,
)

SNAPSHOTS = Path(__file__).parent.parent / "snapshots"
DEMO_POLICIES = Path(mv_orchestration.demo.__file__).parent / "policies.yaml"
TRANSLATOR = default_translator("default", prefix_with_alias=False)


@pytest.fixture(scope="module")
def snapshot() -> CatalogSnapshot:
    return CatalogSnapshot.from_json((SNAPSHOTS / "demo_catalog.json").read_text())


def _load(tmp_path: Path, text: str) -> PolicyFile:
    path = tmp_path / "policies.yaml"
    path.write_text(textwrap.dedent(text))
    return load_policies(path)


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    message = str(info.value)
    assert "\n" not in message
    prefix = f"{tmp_path / 'policies.yaml'}: "
    assert message.startswith(prefix)
    return message.removeprefix(prefix)


# --- resolution -------------------------------------------------------------------------------

RESOLUTION = """
defaults:
  schedules: [{cron: "*/5 * * * *", timezone: UTC}]
  freshness: {warn: 15m, fail: 1h}
  owners: [team:data]
  tags: {tier: bronze, domain: shared}
  checks: {duration: {warn: 5s, fail: 30s}, rows: {min: 1}}
groups:
  mes:
    schedules:
      - {cron: "*/2 6-22 * * *", timezone: Asia/Seoul}
      - {cron: "*/15 0-5,23 * * *", timezone: Asia/Seoul}
    tags: {tier: silver}
  marketing_weekly:
    owners: [weekly@example.com]
views:
  "marketing.*_aggregations":
    schedules: [{cron: "0 3 * * *"}]
    checks: {duration: {fail: 60s}}
  marketing.weekly_aggregations:
    schedules: [{cron: "0 4 * * 1", timezone: UTC}]
    group: marketing_weekly
    tags: {tier: gold}
  "marketing.*":
    on_change: true
    freshness: null
    tags: {tier: glob}
"""


def test_defaults_apply_to_every_view(tmp_path: Path) -> None:
    policies = _load(tmp_path, RESOLUTION)
    policy = policies.resolve(RelationRef("school", "mv_grade_summary"), "school")
    assert policy == ViewPolicy(
        schedules=(Schedule("*/5 * * * *", "UTC"),),
        on_change=False,
        freshness=Freshness(warn=timedelta(minutes=15), fail=timedelta(hours=1)),
        owners=("team:data",),
        tags={"tier": "bronze", "domain": "shared"},
        checks={"duration": {"warn": "5s", "fail": "30s"}, "rows": {"min": 1}},
        group=None,
        target_lag=None,  # a schedule and no target_lag: no default target
    )


def test_group_replaces_lists_and_merges_tags(tmp_path: Path) -> None:
    policy = _load(tmp_path, RESOLUTION).resolve(RelationRef("mes", "mv_process_wip_queue"), "mes")
    assert policy.schedules == (
        Schedule("*/2 6-22 * * *", "Asia/Seoul"),
        Schedule("*/15 0-5,23 * * *", "Asia/Seoul"),
    )
    assert policy.tags == {"tier": "silver", "domain": "shared"}
    assert policy.owners == ("team:data",)


def test_globs_apply_in_file_order_and_exact_name_last(tmp_path: Path) -> None:
    policies = _load(tmp_path, RESOLUTION)
    daily = policies.resolve(RelationRef("marketing", "daily_aggregations"), "marketing")
    # "marketing.*_aggregations" then "marketing.*" (file order), defaults underneath
    assert daily.schedules == (Schedule("0 3 * * *", "UTC"),)  # timezone defaults to UTC
    assert daily.on_change is True
    assert daily.freshness is None  # null replaces the default window
    assert daily.tags == {"tier": "glob", "domain": "shared"}
    assert daily.checks == {"duration": {"warn": "5s", "fail": "60s"}, "rows": {"min": 1}}
    assert daily.group is None

    weekly = policies.resolve(RelationRef("marketing", "weekly_aggregations"), "marketing")
    # the exact entry comes after both globs, although it is written between them
    assert weekly.schedules == (Schedule("0 4 * * 1", "UTC"),)
    assert weekly.tags == {"tier": "gold", "domain": "shared"}
    assert weekly.on_change is True  # from "marketing.*": the exact entry does not set it
    # moved to another group, whose settings apply instead of the old group's
    assert weekly.group == "marketing_weekly"
    assert weekly.owners == ("weekly@example.com",)
    assert [
        k for k, _ in policies.matching_views(RelationRef("marketing", "weekly_aggregations"))
    ] == [
        "marketing.*_aggregations",
        "marketing.*",
        "marketing.weekly_aggregations",
    ]


def test_glob_does_not_match_other_schemas(tmp_path: Path) -> None:
    policies = _load(tmp_path, RESOLUTION)
    policy = policies.resolve(RelationRef("saas", "daily_aggregations"), "saas")
    assert policy.schedules == (Schedule("*/5 * * * *", "UTC"),)


def test_empty_file_and_empty_sections(tmp_path: Path) -> None:
    assert _load(tmp_path, "").resolve(RelationRef("a", "b"), "a") == ViewPolicy()
    text = "defaults:\ngroups:\nviews:\n  a.b:\n    schedules:\n    tags:\n"
    assert _load(tmp_path, text).resolve(RelationRef("a", "b"), "a") == ViewPolicy()


TARGET_LAG = """
groups:
  llm_usage:
    target_lag: 5m
  mes:
    schedules: [{cron: "*/2 * * * *"}]
  marketing:
    on_change: true
views:
  llm_usage.mv_upstream:
    target_lag: downstream
  llm_usage.mv_off:
    target_lag: off
  mes.mv_both:
    target_lag: 10m
"""


@pytest.mark.parametrize(
    ("view", "expected"),
    [
        ("school.mv_x", timedelta(hours=1)),  # nothing set: the default
        ("llm_usage.mv_x", timedelta(minutes=5)),  # its group
        ("llm_usage.mv_upstream", "downstream"),
        ("llm_usage.mv_off", None),  # off (YAML false) and null mean none
        ("mes.mv_x", None),  # a schedule without target_lag: none, not the default
        ("marketing.mv_x", None),  # on_change without target_lag: none either
        ("mes.mv_both", timedelta(minutes=10)),  # both: the cron still forces refreshes
    ],
)
def test_target_lag_resolution(tmp_path: Path, view: str, expected: object) -> None:
    policies = _load(tmp_path, TARGET_LAG)
    ref = RelationRef(*view.split("."))
    assert policies.resolve(ref, ref.schema).target_lag == expected


def test_target_lag_defaults_to_an_hour_without_a_file_or_key(tmp_path: Path) -> None:
    assert ViewPolicy().target_lag == timedelta(hours=1)
    policy = _load(tmp_path, "defaults: {owners: [team:data]}").resolve(RelationRef("a", "b"), "a")
    assert policy.target_lag == timedelta(hours=1)
    assert (
        _load(tmp_path, "defaults: {target_lag:}").resolve(RelationRef("a", "b"), "a").target_lag
        is None
    )


def test_duplicate_schedules_collapse(tmp_path: Path) -> None:
    policies = _load(
        tmp_path,
        """
        defaults:
          schedules: [{cron: "0  3 * * *"}, {cron: "0 3 * * *", timezone: UTC}]
        """,
    )
    assert policies.resolve(RelationRef("a", "b"), "a").schedules == (Schedule("0 3 * * *"),)


def test_durations() -> None:
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("15m") == timedelta(minutes=15)
    assert parse_duration("2h") == timedelta(hours=2)
    assert parse_duration("1d") == timedelta(days=1)
    assert parse_duration("7d1h") == timedelta(days=7, hours=1)
    assert parse_duration("1.5h") == parse_duration("1H30M") == timedelta(minutes=90)
    for bad in ("", "15", "1 h", "m", "1m1h", "1.h", "-1h"):
        assert parse_duration(bad) is None


def test_key_paths() -> None:
    assert format_key_path(["views", "mes.mv_x", "schedules", 1, "cron"]) == (
        'views."mes.mv_x".schedules[1].cron'
    )
    assert format_key_path(["groups", "mes"]) == "groups.mes"
    assert format_key_path([]) == "top level"


def test_freshness_policy() -> None:
    policy = ViewPolicy(freshness=Freshness(warn=timedelta(minutes=10), fail=timedelta(minutes=30)))
    assert freshness_policy(policy) == dg.FreshnessPolicy.time_window(
        fail_window=timedelta(minutes=30), warn_window=timedelta(minutes=10)
    )
    no_warn = ViewPolicy(freshness=Freshness(warn=None, fail=timedelta(hours=1)))
    assert freshness_policy(no_warn) == dg.FreshnessPolicy.time_window(
        fail_window=timedelta(hours=1)
    )
    assert freshness_policy(ViewPolicy()) is None


def test_freshness_follows_the_target_lag_unless_set() -> None:
    five = timedelta(minutes=5)
    assert freshness_policy(ViewPolicy(), five) == dg.FreshnessPolicy.time_window(
        fail_window=timedelta(minutes=15), warn_window=five
    )
    own = ViewPolicy(freshness=Freshness(fail=timedelta(hours=1)))
    assert freshness_policy(own, five) == dg.FreshnessPolicy.time_window(
        fail_window=timedelta(hours=1)
    )


# --- errors -----------------------------------------------------------------------------------

POLICY_KEYS = "alerts, checks, freshness, on_change, owners, schedules, tags, target_lag"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            """
            views:
              "mes.mv_x":
                schedules:
                  - {cron: "*/2 * * * *"}
                  - {cron: "*/99 * * * *"}
            """,
            "views.\"mes.mv_x\".schedules[1].cron: invalid cron expression '*/99 * * * *'",
            id="cron-step-out-of-range",
        ),
        pytest.param(
            'defaults: {schedules: [{cron: "every 5 minutes"}]}',
            "defaults.schedules[0].cron: invalid cron expression 'every 5 minutes'",
            id="cron-garbage",
        ),
        pytest.param(
            'defaults: {schedules: [{cron: "0 0 * * * *"}]}',
            "defaults.schedules[0].cron: invalid cron expression '0 0 * * * *'",
            id="cron-seconds-field",
        ),
        pytest.param(
            "defaults: {schedules: [{timezone: UTC}]}",
            "defaults.schedules[0]: missing key 'cron'",
            id="cron-missing",
        ),
        pytest.param(
            'groups: {mes: {schedules: [{cron: "0 3 * * *", timezone: Asia/Seol}]}}',
            "groups.mes.schedules[0].timezone: unknown time zone 'Asia/Seol'",
            id="timezone",
        ),
        pytest.param(
            'groups: {mes: {schedules: [{cron: "0 3 * * *", timezone: "../etc"}]}}',
            "groups.mes.schedules[0].timezone: unknown time zone '../etc'",
            id="timezone-path",
        ),
        pytest.param(
            'defaults: {schedules: [{cron: "0 3 * * *", tz: UTC}]}',
            "defaults.schedules[0].tz: unknown key (allowed: cron, timezone)",
            id="schedule-unknown-key",
        ),
        pytest.param(
            'defaults: {schedules: ["0 3 * * *"]}',
            "defaults.schedules[0]: expected a mapping, got a string",
            id="schedule-not-mapping",
        ),
        pytest.param(
            'defaults: {schedules: {cron: "0 3 * * *"}}',
            "defaults.schedules: expected a list, got a mapping",
            id="schedules-not-list",
        ),
        pytest.param(
            "defaults: {freshness: {warn: 15m, fail: 1 hour}}",
            "defaults.freshness.fail: invalid duration '1 hour' (use e.g. 90s, 15m, 2h, 1d, 1d12h)",
            id="duration",
        ),
        pytest.param(
            "defaults: {freshness: {fail: 60}}",
            "defaults.freshness.fail: invalid duration 60 (use e.g. 90s, 15m, 2h, 1d, 1d12h)",
            id="duration-number",
        ),
        pytest.param(
            "defaults: {freshness: {warn: 30s, fail: 5m}}",
            "defaults.freshness.warn: 30s is below 1m, Dagster's smallest freshness window",
            id="duration-too-short",
        ),
        pytest.param(
            "views: {mes.mv_x: {freshness: {warn: 1h, fail: 60m}}}",
            'views."mes.mv_x".freshness: warn (1h) must be below fail (1h)',
            id="warn-not-below-fail",
        ),
        pytest.param(
            "defaults: {freshness: {warn: 2h, fail: 1h}}",
            "defaults.freshness: warn (2h) must be below fail (1h)",
            id="warn-above-fail",
        ),
        pytest.param(
            "defaults: {freshness: {warn: 15m}}",
            "defaults.freshness: missing key 'fail'",
            id="fail-missing",
        ),
        pytest.param(
            "defaults: {freshness: {warn: 15m, fail: 1h, error: 2h}}",
            "defaults.freshness.error: unknown key (allowed: fail, warn)",
            id="freshness-unknown-key",
        ),
        pytest.param(
            "default: {}",
            "default: unknown key (allowed: defaults, groups, views)",
            id="unknown-top-key",
        ),
        pytest.param(
            "defaults: {schedule: []}",
            f"defaults.schedule: unknown key (allowed: {POLICY_KEYS})",
            id="unknown-policy-key",
        ),
        pytest.param(
            "groups: {mes: {group: other}}",
            f"groups.mes.group: unknown key (allowed: {POLICY_KEYS})",
            id="group-only-in-views",
        ),
        pytest.param(
            "defaults: {alerts: {env: SLACK_URL}}",
            "defaults.alerts: expected a list, got a mapping",
            id="alerts-not-list",
        ),
        pytest.param(
            "groups: {mes: {alerts: [5]}}",
            "groups.mes.alerts[0]: expected an apprise URL or {env: NAME}, got an integer",
            id="alerts-entry-type",
        ),
        pytest.param(
            "groups: {mes: {alerts: [{url: SLACK_URL}]}}",
            "groups.mes.alerts[0].url: unknown key (allowed: env)",
            id="alerts-entry-unknown-key",
        ),
        pytest.param(
            "groups: {mes: {alerts: [{}]}}",
            "groups.mes.alerts[0]: missing key 'env'",
            id="alerts-env-missing",
        ),
        pytest.param(
            "groups: {mes: {alerts: [{env: [A, B]}]}}",
            "groups.mes.alerts[0].env: expected a string, got a list",
            id="alerts-env-type",
        ),
        pytest.param(
            'groups: {mes: {alerts: [{env: "$SLACK_URL"}]}}',
            "groups.mes.alerts[0].env: invalid environment variable name '$SLACK_URL' "
            "(letters, digits and _, not starting with a digit)",
            id="alerts-env-name",
        ),
        pytest.param(
            'groups: {mes: {alerts: ["json://h/a", "nosuch://T000/B000/s3cret"]}}',
            "groups.mes.alerts[1]: not a valid apprise URL (scheme 'nosuch')",
            id="alerts-invalid-url",
        ),
        pytest.param(
            'defaults: {alerts: ["json://h/a, json://h/b"]}',
            "defaults.alerts[0]: expected one apprise URL per entry, got 2",
            id="alerts-two-urls-in-one-entry",
        ),
        pytest.param(
            'defaults: {alerts: [" "]}',
            "defaults.alerts[0]: expected one apprise URL per entry, got none",
            id="alerts-empty-url",
        ),
        pytest.param(
            "views: {mes.mv_x: {alerts: [{env: SLACK_URL}]}}",
            'views."mes.mv_x".alerts: alerts are routed per group, not per view: set '
            "groups.<group>.alerts (a view's group: can move it to a group of its own)",
            id="alerts-not-per-view",
        ),
        pytest.param(
            "views: {mes.mv_x: {grup: other}}",
            'views."mes.mv_x".grup: unknown key '
            "(allowed: checks, freshness, group, on_change, owners, schedules, tags, target_lag)",
            id="unknown-view-key",
        ),
        pytest.param("- a\n- b", "top level: expected a mapping, got a list", id="top-list"),
        pytest.param("groups: [mes]", "groups: expected a mapping, got a list", id="groups-list"),
        pytest.param(
            "groups: {mes: 5}", "groups.mes: expected a mapping, got an integer", id="int"
        ),
        pytest.param(
            "views: {mes.mv_x: {tags: [a]}}",
            'views."mes.mv_x".tags: expected a mapping, got a list',
            id="tags-list",
        ),
        pytest.param(
            "defaults: {checks: [duration]}",
            "defaults.checks: expected a mapping, got a list",
            id="checks-list",
        ),
        pytest.param(
            "groups: {2024: {}}",
            "groups: key 2024 is an integer, not a string (quote it)",
            id="key-not-string",
        ),
        pytest.param(
            "defaults: {target_lag: 5}",
            "defaults.target_lag: expected a duration like 5m, or downstream, got an integer",
            id="target-lag-type",
        ),
        pytest.param(
            "groups: {mes: {target_lag: soon}}",
            "groups.mes.target_lag: invalid target lag 'soon' (a duration like 90s, 5m, 1h, "
            "or downstream)",
            id="target-lag-malformed",
        ),
        pytest.param(
            'views: {"mes.mv_x": {target_lag: 30s}}',
            'views."mes.mv_x".target_lag: 30s is below 1m, the smallest target lag',
            id="target-lag-short",
        ),
        pytest.param(
            "defaults: {on_change: sometimes}",
            "defaults.on_change: expected true or false, got a string",
            id="on-change",
        ),
        pytest.param(
            "defaults: {owners: [bob]}",
            "defaults.owners[0]: invalid owner 'bob' (an e-mail address or team:name)",
            id="owner",
        ),
        pytest.param(
            "defaults: {tags: {tier: 1}}",
            "defaults.tags.tier: expected a string, got an integer",
            id="tag-value-type",
        ),
        pytest.param(
            'defaults: {tags: {tier: "gold plated"}}',
            "defaults.tags.tier: invalid tag value 'gold plated' "
            "(letters, digits, _ - ., at most 63 characters)",
            id="tag-value",
        ),
        pytest.param(
            'defaults: {tags: {"a b": x}}',
            'defaults.tags."a b": invalid tag key (letters, digits, _ - . and an optional '
            "namespace/ prefix, at most 63 characters each)",
            id="tag-key",
        ),
        pytest.param(
            'views: {mes.mv_x: {group: "mes-weekly"}}',
            "views.\"mes.mv_x\".group: invalid group name 'mes-weekly' (letters, digits and _)",
            id="group-name",
        ),
        pytest.param(
            "defaults:\n  tags: {a: b\nviews: {}\n",
            "line 3: invalid YAML: expected ',' or '}', but got ':'",
            id="yaml-syntax",
        ),
        pytest.param(
            "views:\n  mes.mv_x: {}\n  mes.mv_x: {on_change: true}\n",
            "line 3: invalid YAML: duplicate key 'mes.mv_x'",
            id="yaml-duplicate-key",
        ),
    ],
)
def test_errors(tmp_path: Path, text: str, expected: str) -> None:
    assert _error(tmp_path, text) == expected


# --- alert destinations -----------------------------------------------------------------------

ALERTS = """
defaults:
  alerts: ["json://alerts.internal/all", {env: MVO_T_ONCALL}]
groups:
  mes:
    alerts: [{env: MVO_T_MES}, "json://alerts.internal/mes"]
    freshness: {warn: 20m, fail: 1h}
  school:
    alerts: []
  saas:
    freshness: {warn: 10m, fail: 30m}
"""


def test_alerts_parse_into_destinations_and_stay_out_of_view_policies(tmp_path: Path) -> None:
    policies = _load(tmp_path, ALERTS)
    assert policies.defaults["alerts"] == (
        AlertDestination(url="json://alerts.internal/all"),
        AlertDestination(env="MVO_T_ONCALL"),
    )
    assert policies.groups["mes"]["alerts"] == (
        AlertDestination(env="MVO_T_MES"),
        AlertDestination(url="json://alerts.internal/mes"),
    )
    # a view's policy has no alerts: they are routed by group, not resolved per view
    policy = policies.resolve(RelationRef("mes", "mv_wip_status_dashboard"), "mes")
    assert policy == ViewPolicy(
        freshness=Freshness(warn=timedelta(minutes=20), fail=timedelta(hours=1))
    )
    assert "json://" not in repr(policies.defaults["alerts"])


def test_alert_routes_read_the_environment(tmp_path: Path) -> None:
    policies = _load(tmp_path, ALERTS)
    environ = {
        "MVO_T_ONCALL": "json://oncall.internal/a",
        # several URLs, comma and/or whitespace separated, like MVO_ALERT_URLS
        "MVO_T_MES": " json://mes.internal/a,json://mes.internal/b\n  json://mes.internal/c ",
        "UNRELATED": "not a url",
    }
    routes = policies.alert_routes(environ)
    assert routes.urls == ("json://alerts.internal/all", "json://oncall.internal/a")
    assert dict(routes.group_urls) == {
        "mes": (
            "json://mes.internal/a",
            "json://mes.internal/b",
            "json://mes.internal/c",
            "json://alerts.internal/mes",
        )
    }  # school's empty list and saas's missing key route nothing
    assert "json://" not in repr(routes)
    assert _load(tmp_path, "groups: {mes: {on_change: true}}").alert_routes({}) == AlertRoutes()


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        pytest.param(
            {"MVO_T_ONCALL": "json://oncall.internal/a"},
            "groups.mes.alerts[0].env: environment variable MVO_T_MES is not set",
            id="unset",
        ),
        pytest.param(
            {"MVO_T_ONCALL": "json://oncall.internal/a", "MVO_T_MES": " , "},
            "groups.mes.alerts[0].env: environment variable MVO_T_MES is empty",
            id="empty",
        ),
        pytest.param(
            {"MVO_T_MES": "json://mes.internal/a"},
            "defaults.alerts[1].env: environment variable MVO_T_ONCALL is not set",
            id="unset-in-defaults",
        ),
        pytest.param(
            {
                "MVO_T_ONCALL": "json://oncall.internal/a",
                "MVO_T_MES": "json://mes.internal/a slack://T000/s3cretB/",
            },
            "groups.mes.alerts[0].env: URL #2 in MVO_T_MES is not a valid apprise URL "
            "(scheme 'slack')",
            id="invalid-url",
        ),
    ],
)
def test_alert_routes_errors_name_the_variable_never_the_url(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, environ: dict[str, str], expected: str
) -> None:
    policies = _load(tmp_path, ALERTS)
    with caplog.at_level(logging.DEBUG), pytest.raises(ConfigError) as info:
        policies.alert_routes(environ)
    assert str(info.value) == f"{tmp_path / 'policies.yaml'}: {expected}"
    assert "s3cret" not in caplog.text  # apprise quotes a URL it cannot load; muted


def test_alerts_of_a_group_matching_nothing_are_an_error(
    tmp_path: Path, snapshot: CatalogSnapshot
) -> None:
    policies = _load(tmp_path, "groups: {mes_oncall: {alerts: [json://alerts.internal/x]}}")
    with pytest.raises(ConfigError, match=r"groups\.mes_oncall: matches no group"):
        policies.validate_against(snapshot, TRANSLATOR.get_group_name)


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as info:
        load_policies(path)
    assert str(info.value) == f"{path}: cannot read the file (No such file or directory)"


# --- validation against a catalog -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "views: {mes.mv_nothing_like_it: {on_change: true}}",
            'views."mes.mv_nothing_like_it": matches no materialized view',
            id="exact",
        ),
        pytest.param(
            "views: {mes.mv_wip_status: {on_change: true}}",
            'views."mes.mv_wip_status": matches no materialized view '
            "(did you mean mes.mv_wip_status_dashboard?)",
            id="exact-with-hint",
        ),
        pytest.param(
            'views: {"mes.*_x": {on_change: true}}',
            'views."mes.*_x": matches no materialized view',
            id="glob",
        ),
        pytest.param(
            "groups: {sales: {on_change: true}}",
            "groups.sales: matches no group of materialized views "
            "(groups: llm_usage, marketing, mes, saas, school)",
            id="group",
        ),
    ],
)
def test_validate_against_rejects_names_matching_nothing(
    tmp_path: Path, snapshot: CatalogSnapshot, text: str, expected: str
) -> None:
    policies = _load(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        policies.validate_against(snapshot, TRANSLATOR.get_group_name)
    assert str(info.value) == f"{tmp_path / 'policies.yaml'}: {expected}"


def test_validate_against_knows_moved_groups(tmp_path: Path, snapshot: CatalogSnapshot) -> None:
    text = """
    groups: {marketing: {on_change: true}, marketing_weekly: {on_change: false}}
    views:
      "marketing.*_aggregations": {freshness: {fail: 1d}}
      marketing.weekly_aggregations: {group: marketing_weekly}
    """
    _load(tmp_path, text).validate_against(snapshot, TRANSLATOR.get_group_name)
    # once every marketing view moves away, "groups.marketing" configures nothing
    text = """
    groups: {marketing: {on_change: true}}
    views: {"marketing.*": {group: elsewhere}}
    """
    with pytest.raises(ConfigError, match=r"groups\.marketing: matches no group"):
        _load(tmp_path, text).validate_against(snapshot, TRANSLATOR.get_group_name)


# --- the demo policies ------------------------------------------------------------------------


def _demo() -> dict[RelationRef, ViewPolicy]:
    snapshot = CatalogSnapshot.from_json((SNAPSHOTS / "demo_catalog.json").read_text())
    policies = load_policies(DEMO_POLICIES)
    policies.validate_against(snapshot, TRANSLATOR.get_group_name)
    return policies.resolve_all(snapshot, TRANSLATOR.get_group_name)


def test_demo_policies_express_the_seeds() -> None:
    demo = _demo()
    by_schema: dict[str, set[ViewPolicy]] = {}
    for ref, policy in demo.items():
        if ref != RelationRef("marketing", "weekly_aggregations"):
            by_schema.setdefault(ref.schema, set()).add(policy)
    assert all(len(p) == 1 for p in by_schema.values())  # one policy per system
    school, llm, mes, marketing, saas = (
        by_schema[s].pop() for s in ("school", "llm_usage", "mes", "marketing", "saas")
    )
    # freshness asked for: target lags (their freshness follows them)
    assert school.schedules == () and school.target_lag == timedelta(minutes=2)
    assert school.freshness is None
    assert llm.schedules == () and llm.target_lag == timedelta(minutes=1)
    assert llm.freshness is None
    assert mes.schedules == (
        Schedule("*/2 6-22 * * *", "Asia/Seoul"),
        Schedule("*/15 0-5,23 * * *", "Asia/Seoul"),
    )
    assert marketing.schedules == (Schedule("0 3 * * *", "UTC"),)
    weekly = demo[RelationRef("marketing", "weekly_aggregations")]
    assert weekly.schedules == (Schedule("0 4 * * 1", "UTC"),)
    assert saas.schedules == () and saas.target_lag == timedelta(minutes=5)
    assert saas.freshness is not None and saas.freshness.warn == timedelta(minutes=10)
    # a clock asked for: crons, and no target lag
    assert all(p.target_lag is None for p in (mes, marketing, weekly))
    assert not any(p.on_change for p in demo.values())
    assert all(p.group is None for p in demo.values())


def test_demo_freshness_windows_exceed_the_schedule_gaps() -> None:
    """A view that refreshes on time never warns: warn > the longest gap between ticks."""
    start = datetime(2026, 3, 23, tzinfo=UTC).timestamp()  # two weeks, incl. a DST change
    for ref, policy in _demo().items():
        if not policy.schedules:
            continue
        assert policy.freshness is not None and policy.freshness.warn is not None, ref
        ticks: set[float] = set()
        for s in policy.schedules:
            for tick in schedule_execution_time_iterator(start, s.cron, s.timezone):
                if tick.timestamp() > start + 14 * 86400:
                    break
                ticks.add(tick.timestamp())
        ordered = sorted(ticks)
        gap = max(b - a for a, b in itertools.pairwise(ordered))
        assert timedelta(seconds=gap) < policy.freshness.warn, (ref, gap)
