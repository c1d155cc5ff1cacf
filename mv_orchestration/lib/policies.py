"""Refresh policies of materialized views, from one YAML file.

Format (every section and key is optional)::

    defaults:            # applies to every MV
      schedules: []      # list of {cron: "*/5 * * * *", timezone: "UTC"}; timezone defaults to UTC
      on_change: false   # change-driven refresh by the source-change sensor
      freshness: {warn: 15m, fail: 1h}   # or null; durations like 90s, 15m, 2h, 1d, 1d12h
      owners: []         # e-mails or team:name
      tags: {}           # Dagster asset tags
      checks: {}         # free-form thresholds for asset checks
      alerts: []         # apprise destinations of every alert, besides MVO_ALERT_URLS (below)
    groups:              # keyed by Dagster group name (= schema by default); same keys as defaults
      mes:
        schedules:
          - {cron: "*/2 6-22 * * *", timezone: "Asia/Seoul"}
        alerts:          # alerts of this group's views also go here
          - {env: MVO_ALERTS_MES}           # a variable holding one or more apprise URLs
          - "json://alerts.internal/mvo"    # a literal URL, for destinations without a secret
    views:               # keyed by "schema.name" or a glob like "marketing.*_aggregations"
      marketing.weekly_aggregations:
        schedules: [{cron: "0 4 * * 1", timezone: "UTC"}]
        group: marketing_weekly     # optional: move the view to another Dagster group

One MV's policy is built from defaults, then its group, then every matching ``views`` entry
(globs in file order, the exact name last). Lists and scalars replace; ``tags`` and ``checks``
merge (``checks`` recursively). ``freshness`` is replaced as a whole, so ``warn`` always stays
below ``fail``. A ``group:`` in a matching ``views`` entry moves the view, and the settings of
that group apply instead of the old one's. An empty key (``schedules:``) means empty.

``alerts`` (in ``defaults`` and ``groups`` only) add up instead: an alert about a view goes to
``MVO_ALERT_URLS``, ``defaults.alerts`` and the alerts of the view's group (after any move).
Each entry is a literal apprise URL or ``{env: NAME}``, the name of an environment variable
holding one or more URLs (comma/whitespace separated, like ``MVO_ALERT_URLS``), so secret
webhook URLs stay out of the file. Literal URLs are checked when the file is parsed; the
variables when the definitions load (:meth:`PolicyFile.alert_routes`), where an unset or empty
variable is an error: configured alerts never silently go nowhere.

Every error is a :class:`ConfigError` of one line, ``<file>: <key path>: <reason>``, e.g.
``policies.yaml: views."mes.mv_x".schedules[1].cron: invalid cron expression '*/99 * * * *'``
(list indexes count from 0).
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import dagster as dg
import yaml
from dagster._core.definitions.utils import is_valid_owner
from dagster._utils.schedules import has_out_of_range_cron_interval, is_valid_cron_string
from dagster._utils.tags import is_valid_strict_tag_value, is_valid_tag_key

from mv_orchestration.core.catalog import CatalogSnapshot, RelationRef
from mv_orchestration.errors import ConfigError
from mv_orchestration.lib.alerting import split_urls, url_problem

__all__ = [
    "AlertDestination",
    "AlertRoutes",
    "Freshness",
    "PolicyFile",
    "Schedule",
    "ViewPolicy",
    "freshness_policy",
    "load_policies",
    "parse_duration",
]

_TOP_KEYS = ("defaults", "groups", "views")
_POLICY_KEYS = ("checks", "freshness", "on_change", "owners", "schedules", "tags")
_LAYER_KEYS = (*_POLICY_KEYS, "alerts")  # defaults and groups
_VIEW_KEYS = (*_POLICY_KEYS, "group")
_ALERT_KEYS = ("env",)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SCHEDULE_KEYS = ("cron", "timezone")
_FRESHNESS_KEYS = ("fail", "warn")
_NUMBER = r"(\d+(?:\.\d+)?)"
_DURATION = re.compile(rf"(?:{_NUMBER}d)?(?:{_NUMBER}h)?(?:{_NUMBER}m)?(?:{_NUMBER}s)?")
_GROUP_NAME = re.compile(r"[A-Za-z0-9_]+")
_BARE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_GLOB_CHARS = frozenset("*?[")
# Dagster refuses freshness windows shorter than this.
_MIN_WINDOW = timedelta(minutes=1)

KeyPath = Sequence[str | int]


@dataclass(frozen=True, order=True)
class Schedule:
    """A cron expression evaluated in an IANA time zone."""

    cron: str
    timezone: str = "UTC"


@dataclass(frozen=True)
class Freshness:
    """Warn when the last refresh is older than ``warn``, fail when older than ``fail``."""

    warn: timedelta | None
    fail: timedelta


@dataclass(frozen=True)
class ViewPolicy:
    """The resolved policy of one MV. ``group`` is set only when the file moves the view."""

    schedules: tuple[Schedule, ...] = ()
    on_change: bool = False
    freshness: Freshness | None = None
    owners: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict, hash=False)
    checks: Mapping[str, Any] = field(default_factory=dict, hash=False)
    group: str | None = None


@dataclass(frozen=True)
class AlertDestination:
    """One entry of an ``alerts`` list: a literal apprise URL, or the name of an environment
    variable holding one or more."""

    url: str | None = field(default=None, repr=False)
    env: str | None = None


@dataclass(frozen=True)
class AlertRoutes:
    """Resolved destinations: ``urls`` receive every alert, ``group_urls[g]`` those of group g.

    Made for :class:`~mv_orchestration.lib.alerting.Notifier`; the URLs stay out of ``repr``.
    """

    urls: tuple[str, ...] = field(default=(), repr=False)
    group_urls: Mapping[str, tuple[str, ...]] = field(default_factory=dict, repr=False)


Layer = Mapping[str, Any]  # the keys one section sets, already validated and converted


@dataclass(frozen=True)
class PolicyFile:
    """A parsed policy file: the layers as written, resolved per view by :meth:`resolve`."""

    path: Path
    defaults: Layer = field(default_factory=dict)
    groups: Mapping[str, Layer] = field(default_factory=dict)
    # (key, layer) in file order; keys are "schema.name" or globs
    views: tuple[tuple[str, Layer], ...] = ()

    def matching_views(self, ref: RelationRef) -> list[tuple[str, Layer]]:
        """The ``views`` entries that apply to ``ref``, in the order they are applied."""
        name = f"{ref.schema}.{ref.name}"
        globs = [(k, v) for k, v in self.views if _is_glob(k) and fnmatch.fnmatchcase(name, k)]
        exact = [(k, v) for k, v in self.views if not _is_glob(k) and k == name]
        return [*globs, *exact]

    def group_override(self, ref: RelationRef) -> str | None:
        """The group this file moves ``ref`` to, if any (the last matching ``group:``)."""
        moves = [layer["group"] for _, layer in self.matching_views(ref) if "group" in layer]
        return moves[-1] if moves else None

    def resolve(self, ref: RelationRef, group: str) -> ViewPolicy:
        """The policy of one MV; ``group`` is its Dagster group before this file moves it."""
        matches = self.matching_views(ref)
        override = self.group_override(ref)
        layers = [self.defaults, self.groups.get(override or group, {}), *(v for _, v in matches)]
        values: dict[str, Any] = {}
        for layer in layers:
            for key, value in layer.items():
                if key == "alerts":
                    continue  # routed per group by alert_routes, not part of a view's policy
                if key == "tags":
                    values[key] = {**values.get(key, {}), **value}
                elif key == "checks":
                    values[key] = _deep_merge(values.get(key, {}), value)
                else:
                    values[key] = value
        values["group"] = override
        return ViewPolicy(**values)

    def resolve_all(
        self, snapshot: CatalogSnapshot, group_of: Callable[[RelationRef], str]
    ) -> dict[RelationRef, ViewPolicy]:
        """The policy of every MV in ``snapshot``."""
        return {mv.ref: self.resolve(mv.ref, group_of(mv.ref)) for mv in snapshot.matviews}

    def validate_against(
        self, snapshot: CatalogSnapshot, group_of: Callable[[RelationRef], str]
    ) -> None:
        """Raise for a ``views`` key that matches no MV or a ``groups`` key matching no group.

        ``group_of`` gives an MV's Dagster group before this file moves it (the translator's
        ``get_group_name``). Catches typos that would otherwise silently configure nothing.
        """
        names = sorted(f"{mv.schema}.{mv.name}" for mv in snapshot.matviews)
        for key, _ in self.views:
            matched = (
                any(fnmatch.fnmatchcase(n, key) for n in names) if _is_glob(key) else key in names
            )
            if not matched:
                raise self._error(
                    ["views", key], "matches no materialized view" + _hint(key, names)
                )
        groups = sorted(
            {self.group_override(mv.ref) or group_of(mv.ref) for mv in snapshot.matviews}
        )
        for key in self.groups:
            if key not in groups:
                raise self._error(
                    ["groups", key],
                    f"matches no group of materialized views (groups: {', '.join(groups)})",
                )

    def alert_routes(self, environ: Mapping[str, str]) -> AlertRoutes:
        """The destinations of ``defaults.alerts`` (every alert) and of each group's ``alerts``.

        ``{env: NAME}`` entries are read from ``environ`` (the process environment, when the
        definitions load). An unset or empty variable, or one holding an invalid URL, is a
        :class:`ConfigError` naming the file, the key and the variable, never a URL.
        """
        urls = self._alert_urls(self.defaults, ["defaults"], environ)
        groups = {
            name: self._alert_urls(layer, ["groups", name], environ)
            for name, layer in self.groups.items()
        }
        return AlertRoutes(urls=urls, group_urls={g: u for g, u in groups.items() if u})

    def _alert_urls(
        self, layer: Layer, where: KeyPath, environ: Mapping[str, str]
    ) -> tuple[str, ...]:
        out: list[str] = []
        destination: AlertDestination
        for i, destination in enumerate(layer.get("alerts", ())):
            if destination.env is None:
                assert destination.url is not None
                out.append(destination.url)
                continue
            at = [*where, "alerts", i, "env"]
            raw = environ.get(destination.env)
            if raw is None:
                raise self._error(at, f"environment variable {destination.env} is not set")
            urls = split_urls(raw)
            if not urls:
                raise self._error(at, f"environment variable {destination.env} is empty")
            for n, url in enumerate(urls):
                problem = url_problem(url)
                if problem is not None:
                    raise self._error(at, f"URL #{n + 1} in {destination.env} is {problem}")
            out.extend(urls)
        return tuple(out)

    def _error(self, where: KeyPath, reason: str) -> ConfigError:
        return ConfigError(f"{self.path}: {format_key_path(where)}: {reason}")


def load_policies(path: Path) -> PolicyFile:
    """Read and validate a policy file (see the module docstring for the format)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the file ({exc.strerror or exc})") from exc
    return parse_policies(text, path)


def parse_policies(text: str, path: Path) -> PolicyFile:
    """Validate the YAML ``text`` of a policy file; ``path`` names it in errors."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f"line {mark.line + 1}: " if mark is not None else ""
        problem = " ".join(str(exc.problem or exc.context or exc).split())
        raise ConfigError(f"{path}: {line}invalid YAML: {problem}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(exc).split())}") from exc
    return _Parser(path).file(data)


def freshness_policy(p: ViewPolicy) -> dg.FreshnessPolicy | None:
    """Dagster's time-window freshness policy for a view, or None when it has none."""
    if p.freshness is None:
        return None
    return dg.FreshnessPolicy.time_window(
        fail_window=p.freshness.fail, warn_window=p.freshness.warn
    )


def parse_duration(text: str) -> timedelta | None:
    """``90s``, ``15m``, ``1.5h``, ``1d`` or a combination like ``1d12h`` (units in the order
    d, h, m, s; case-insensitive); None if malformed. The one duration grammar of the policy
    file and the CLI (``mvo status --since``)."""
    raw = text.strip().lower()
    match = _DURATION.fullmatch(raw)
    if not raw or match is None:
        return None
    days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def format_key_path(where: KeyPath) -> str:
    """``views."mes.mv_x".schedules[1].cron``: bare identifiers, other keys JSON-quoted."""
    out = ""
    for part in where:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = part if _BARE_KEY.fullmatch(part) else json.dumps(part, ensure_ascii=False)
            out += f".{name}" if out else name
    return out or "top level"


# --- parsing ---------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (PyYAML silently keeps the last)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        try:
            duplicate = key in seen
        except TypeError:  # an unhashable key; construct_mapping reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _is_glob(key: str) -> bool:
    return not _GLOB_CHARS.isdisjoint(key)


def _hint(key: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, names, n=1)
    return f" (did you mean {close[0]}?)" if close and not _is_glob(key) else ""


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        old = merged.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            merged[key] = _deep_merge(old, value)
        else:
            merged[key] = value
    return merged


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _fmt_delta(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or "0s"


class _Parser:
    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, where: KeyPath, reason: str) -> ConfigError:
        return ConfigError(f"{self.path}: {format_key_path(where)}: {reason}")

    # --- shapes -----------------------------------------------------------------------------
    def mapping(self, value: object, where: KeyPath) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(where, f"expected a mapping, got {_type_name(value)}")
        for key in value:
            if not isinstance(key, str):
                raise self.error(
                    where, f"key {key!r} is {_type_name(key)}, not a string (quote it)"
                )
        return value

    def keys(self, value: Mapping[str, Any], where: KeyPath, allowed: Iterable[str]) -> None:
        allowed = sorted(allowed)
        for key in value:
            if key not in allowed:
                raise self.error([*where, key], f"unknown key (allowed: {', '.join(allowed)})")

    def sequence(self, value: object, where: KeyPath) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(where, f"expected a list, got {_type_name(value)}")
        return value

    def string(self, value: object, where: KeyPath) -> str:
        if not isinstance(value, str):
            raise self.error(where, f"expected a string, got {_type_name(value)}")
        return value

    # --- sections ---------------------------------------------------------------------------
    def file(self, data: object) -> PolicyFile:
        if data is not None and not isinstance(data, dict):
            raise self.error([], f"expected a mapping, got {_type_name(data)}")
        top = self.mapping(data, [])
        self.keys(top, [], _TOP_KEYS)
        defaults = self.layer(top.get("defaults"), ["defaults"], _LAYER_KEYS)
        groups = {
            name: self.layer(value, ["groups", name], _LAYER_KEYS)
            for name, value in self.mapping(top.get("groups"), ["groups"]).items()
        }
        views = tuple(
            (name, self.layer(value, ["views", name], _VIEW_KEYS))
            for name, value in self.mapping(top.get("views"), ["views"]).items()
        )
        return PolicyFile(path=self.path, defaults=defaults, groups=groups, views=views)

    def layer(self, value: object, where: KeyPath, allowed: Sequence[str]) -> dict[str, Any]:
        raw = self.mapping(value, where)
        if "alerts" in raw and "alerts" not in allowed:
            raise self.error(
                [*where, "alerts"],
                "alerts are routed per group, not per view: set groups.<group>.alerts "
                "(a view's group: can move it to a group of its own)",
            )
        self.keys(raw, where, allowed)
        out: dict[str, Any] = {}
        for key, item in raw.items():
            at = [*where, key]
            if key == "schedules":
                out[key] = self.schedules(item, at)
            elif key == "on_change":
                if not isinstance(item, bool):
                    raise self.error(at, f"expected true or false, got {_type_name(item)}")
                out[key] = item
            elif key == "freshness":
                out[key] = self.freshness(item, at)
            elif key == "owners":
                out[key] = self.owners(item, at)
            elif key == "tags":
                out[key] = self.tags(item, at)
            elif key == "checks":
                out[key] = self.mapping(item, at)
            elif key == "alerts":
                out[key] = self.alerts(item, at)
            elif key == "group":
                name = self.string(item, at)
                if not _GROUP_NAME.fullmatch(name):
                    raise self.error(at, f"invalid group name {name!r} (letters, digits and _)")
                out[key] = name
        return out

    def schedules(self, value: object, where: KeyPath) -> tuple[Schedule, ...]:
        out: list[Schedule] = []
        for i, item in enumerate(self.sequence(value, where)):
            at = [*where, i]
            if not isinstance(item, dict):
                raise self.error(at, f"expected a mapping, got {_type_name(item)}")
            raw = self.mapping(item, at)
            self.keys(raw, at, _SCHEDULE_KEYS)
            if "cron" not in raw:
                raise self.error(at, "missing key 'cron'")
            cron = " ".join(self.string(raw["cron"], [*at, "cron"]).split())
            if not is_valid_cron_string(cron) or has_out_of_range_cron_interval(cron):
                raise self.error([*at, "cron"], f"invalid cron expression {raw['cron']!r}")
            tz = self.string(raw.get("timezone", "UTC"), [*at, "timezone"])
            try:
                ZoneInfo(tz)
            except (ZoneInfoNotFoundError, ValueError):
                raise self.error([*at, "timezone"], f"unknown time zone {tz!r}") from None
            schedule = Schedule(cron, tz)
            if schedule not in out:
                out.append(schedule)
        return tuple(out)

    def alerts(self, value: object, where: KeyPath) -> tuple[AlertDestination, ...]:
        out: list[AlertDestination] = []
        for i, item in enumerate(self.sequence(value, where)):
            at = [*where, i]
            if isinstance(item, str):
                urls = split_urls(item)
                if len(urls) != 1:
                    got = f"{len(urls)}" if urls else "none"
                    raise self.error(at, f"expected one apprise URL per entry, got {got}")
                problem = url_problem(urls[0])
                if problem is not None:
                    raise self.error(at, problem)
                out.append(AlertDestination(url=urls[0]))
            elif isinstance(item, dict):
                raw = self.mapping(item, at)
                self.keys(raw, at, _ALERT_KEYS)
                if "env" not in raw:
                    raise self.error(at, "missing key 'env'")
                name = self.string(raw["env"], [*at, "env"])
                if not _ENV_NAME.fullmatch(name):
                    raise self.error(
                        [*at, "env"],
                        f"invalid environment variable name {name!r} "
                        "(letters, digits and _, not starting with a digit)",
                    )
                out.append(AlertDestination(env=name))
            else:
                raise self.error(
                    at, f"expected an apprise URL or {{env: NAME}}, got {_type_name(item)}"
                )
        return tuple(out)

    def duration(self, value: object, where: KeyPath) -> timedelta:
        delta = parse_duration(value) if isinstance(value, str) else None
        if delta is None:
            raise self.error(
                where, f"invalid duration {value!r} (use e.g. 90s, 15m, 2h, 1d, 1d12h)"
            )
        if delta < _MIN_WINDOW:
            raise self.error(where, f"{value} is below 1m, Dagster's smallest freshness window")
        return delta

    def freshness(self, value: object, where: KeyPath) -> Freshness | None:
        if value is None:
            return None  # explicitly no freshness policy
        raw = self.mapping(value, where)
        self.keys(raw, where, _FRESHNESS_KEYS)
        if "fail" not in raw:
            raise self.error(where, "missing key 'fail'")
        fail = self.duration(raw["fail"], [*where, "fail"])
        warn = None if raw.get("warn") is None else self.duration(raw["warn"], [*where, "warn"])
        if warn is not None and warn >= fail:
            raise self.error(
                where, f"warn ({_fmt_delta(warn)}) must be below fail ({_fmt_delta(fail)})"
            )
        return Freshness(warn=warn, fail=fail)

    def owners(self, value: object, where: KeyPath) -> tuple[str, ...]:
        out: list[str] = []
        for i, item in enumerate(self.sequence(value, where)):
            owner = self.string(item, [*where, i])
            if not is_valid_owner(owner):
                raise self.error(
                    [*where, i], f"invalid owner {owner!r} (an e-mail address or team:name)"
                )
            out.append(owner)
        return tuple(out)

    def tags(self, value: object, where: KeyPath) -> dict[str, str]:
        raw = self.mapping(value, where)
        for key, item in raw.items():
            if not is_valid_tag_key(key):
                raise self.error(
                    [*where, key],
                    "invalid tag key (letters, digits, _ - . and an optional namespace/ prefix, "
                    "at most 63 characters each)",
                )
            tag = self.string(item, [*where, key])
            if not is_valid_strict_tag_value(tag):
                raise self.error(
                    [*where, key],
                    f"invalid tag value {tag!r} (letters, digits, _ - ., at most 63 characters)",
                )
        return dict(raw)
