"""A parsed policy file and how it resolves: per view, per group of alerts, against a catalog."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg

from mv_orchestration.core.catalog import CatalogSnapshot, RelationRef
from mv_orchestration.errors import ConfigError
from mv_orchestration.lib.alerting import split_urls, url_problem
from mv_orchestration.lib.policies.model import (
    AlertDestination,
    KeyPath,
    ViewPolicy,
    policy_error,
)

_GLOB_CHARS = frozenset("*?[")


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
        if "target_lag" not in values and (values.get("schedules") or values.get("on_change")):
            values["target_lag"] = None  # refreshed as the file says: no default target lag
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
        return policy_error(self.path, where, reason)


FAIL_MULTIPLE = 3  # a freshness policy derived from a target lag fails at 3x the target


def freshness_policy(p: ViewPolicy, target: timedelta | None = None) -> dg.FreshnessPolicy | None:
    """Dagster's time-window freshness policy for a view: its ``freshness``, else one derived
    from its effective target lag ``target`` (WARN past the target, FAIL past
    :data:`FAIL_MULTIPLE` times it), else None."""
    if p.freshness is not None:
        return dg.FreshnessPolicy.time_window(
            fail_window=p.freshness.fail, warn_window=p.freshness.warn
        )
    if target is None:
        return None
    return dg.FreshnessPolicy.time_window(fail_window=target * FAIL_MULTIPLE, warn_window=target)


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
