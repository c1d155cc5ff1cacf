"""What a policy file may say: its sections as pydantic models, the rules of its values, and the
resolved types built from them.

Every model forbids keys it does not declare (``extra="forbid"``); :mod:`.loading` turns
pydantic's errors into the one-line messages of the package docstring. A rule that Dagster
enforces itself (cron strings, owners, tags) is asked of Dagster's public constructors, so a
file that passes here never fails later, when the definitions are built.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import dagster as dg
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictStr,
    model_validator,
)
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic_core import PydanticCustomError

from mv_orchestration.core.durations import parse_duration as parse_duration
from mv_orchestration.core.lag import DEFAULT_TARGET_LAG, DOWNSTREAM, MIN_TARGET_LAG, TargetLag
from mv_orchestration.errors import ConfigError
from mv_orchestration.lib.alerting import split_urls, url_problem

KeyPath = Sequence[str | int]

_CONFIG = ConfigDict(extra="forbid")  # the dataclasses are frozen by their decorator
_MODEL_CONFIG = ConfigDict(extra="forbid", frozen=True)
_BARE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MIN_WINDOW = timedelta(minutes=1)  # Dagster refuses shorter freshness windows
_CRON_STEP = re.compile(r"(?:\*|\d+(?:-(\d+))?)/(\d+)")  # */n, a/n, a-b/n
_CRON_FIELD_MAX = (59, 23, 31, 12, 7)
_GROUP_NAME = re.compile(r"[A-Za-z0-9_]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# --- reporting --------------------------------------------------------------------------------


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


def policy_error(path: object, where: KeyPath, reason: str) -> ConfigError:
    """The one-line error of the policy file ``path``: ``<file>: <key path>: <reason>``."""
    return ConfigError(f"{path}: {format_key_path(where)}: {reason}")


def type_name(value: object) -> str:
    """What a YAML value is, for messages: ``a mapping``, ``an integer``, ``null``…"""
    kinds = ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"))
    for kind, name in (*kinds, (list, "a list"), (dict, "a mapping")):  # bool before int
        if isinstance(value, kind):
            return name
    return "null" if value is None else f"a {type(value).__name__}"


def _invalid(reason: str) -> PydanticCustomError:
    """A validation error whose message is ``reason`` as written."""
    return PydanticCustomError("policy", "{reason}", {"reason": reason})


# --- values -----------------------------------------------------------------------------------


def _fmt_delta(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or "0s"


def _duration(value: object) -> timedelta:
    """A freshness window: a duration string in the file, a timedelta in code."""
    delta = value if isinstance(value, timedelta) else None
    if isinstance(value, str):
        delta = parse_duration(value)
    if delta is None:
        raise _invalid(f"invalid duration {value!r} (use e.g. 90s, 15m, 2h, 1d, 1d12h)")
    if delta < _MIN_WINDOW:
        raise _invalid(f"{value} is below 1m, Dagster's smallest freshness window")
    return delta


def _target_lag(value: object) -> TargetLag | None:
    """``5m``, ``1h`` or ``downstream``; ``null``/``false`` (or ``off``) for none."""
    if value is None or value is False:
        return None
    if isinstance(value, timedelta):
        delta: timedelta | None = value
    elif not isinstance(value, str):
        raise _invalid(f"expected a duration like 5m, or downstream, got {type_name(value)}")
    elif value.strip().lower() == DOWNSTREAM:
        return DOWNSTREAM
    else:
        delta = parse_duration(value)
    if delta is None:
        raise _invalid(f"invalid target lag {value!r} (a duration like 90s, 5m, 1h, or downstream)")
    if delta < MIN_TARGET_LAG:
        raise _invalid(f"{_fmt_delta(delta)} is below 1m, the smallest target lag")
    return delta


def _dagster_takes(build: Callable[[], object]) -> bool:
    """Whether a public Dagster constructor takes a value: Dagster's own rule, not a copy."""
    try:
        build()
    except dg.DagsterInvalidDefinitionError:
        return False
    return True


def _spec_takes(**spec: Any) -> bool:
    return _dagster_takes(lambda: dg.AssetSpec("policy", **spec))


def _step_beyond_range(cron: str) -> bool:
    """A step longer than its range, like ``*/99`` minutes: Dagster accepts it (with a warning)
    and runs it more often than written."""
    for part, top in zip(cron.split(), _CRON_FIELD_MAX, strict=False):
        for item in part.split(","):
            step = _CRON_STEP.fullmatch(item)
            if step is not None and int(step[2]) > int(step[1] or top):
                return True
    return False


def _cron(value: str) -> str:
    """Five cron fields that a Dagster schedule accepts, whitespace collapsed."""
    cron = " ".join(value.split())
    if _step_beyond_range(cron) or not _dagster_takes(
        lambda: dg.ScheduleDefinition(name="policy", cron_schedule=cron, job_name="policy")
    ):
        raise _invalid(f"invalid cron expression {value!r}")
    return cron


def _is_time_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _rule(ok: Callable[[str], object], reason: str) -> AfterValidator:
    """A string that ``ok`` accepts; else ``reason``, with ``{!r}`` for the value."""

    def check(value: str) -> str:
        if not ok(value):
            raise _invalid(reason.format(value))
        return value

    return AfterValidator(check)


def _or_empty(empty: Callable[[], object]) -> BeforeValidator:
    """An empty key (``tags:``) means empty."""
    return BeforeValidator(lambda value: empty() if value is None else value)


def _alerts_per_group(value: object) -> None:
    raise _invalid(
        "alerts are routed per group, not per view: set groups.<group>.alerts "
        "(a view's group: can move it to a group of its own)"
    )


Duration = Annotated[timedelta, PlainValidator(_duration, json_schema_input_type=str)]
TargetLagSetting = Annotated[
    TargetLag | None, PlainValidator(_target_lag, json_schema_input_type=str | None)
]
Cron = Annotated[StrictStr, AfterValidator(_cron)]
TimeZone = Annotated[StrictStr, _rule(_is_time_zone, "unknown time zone {!r}")]
Owner = Annotated[
    StrictStr,
    _rule(lambda o: _spec_takes(owners=[o]), "invalid owner {!r} (an e-mail address or team:name)"),
]
TagKey = Annotated[
    StrictStr,
    _rule(
        lambda k: _spec_takes(tags={k: ""}),
        "invalid tag key (letters, digits, _ - . and an optional namespace/ prefix, "
        "at most 63 characters each)",
    ),
]
TagValue = Annotated[
    StrictStr,
    _rule(
        lambda v: _spec_takes(tags={"tag": v}),
        "invalid tag value {!r} (letters, digits, _ - ., at most 63 characters)",
    ),
]
GroupName = Annotated[
    StrictStr, _rule(_GROUP_NAME.fullmatch, "invalid group name {!r} (letters, digits and _)")
]
EnvName = Annotated[
    StrictStr,
    _rule(
        _ENV_NAME.fullmatch,
        "invalid environment variable name {!r} (letters, digits and _, not starting with a digit)",
    ),
]


# --- resolved types ---------------------------------------------------------------------------


@pydantic_dataclass(frozen=True, order=True, config=_CONFIG)
class Schedule:
    """A cron expression evaluated in an IANA time zone."""

    cron: Cron
    timezone: TimeZone = "UTC"


@pydantic_dataclass(frozen=True, kw_only=True, config=_CONFIG)
class Freshness:
    """Warn when the last refresh is older than ``warn``, fail when older than ``fail``."""

    fail: Duration
    warn: Duration | None = None

    @model_validator(mode="after")
    def _warn_below_fail(self) -> Freshness:
        if self.warn is not None and self.warn >= self.fail:
            raise _invalid(
                f"warn ({_fmt_delta(self.warn)}) must be below fail ({_fmt_delta(self.fail)})"
            )
        return self


@dataclass(frozen=True)
class AlertDestination:
    """One entry of an ``alerts`` list: a literal apprise URL, or the name of an environment
    variable holding one or more."""

    url: str | None = field(default=None, repr=False)
    env: str | None = None


@dataclass(frozen=True)
class ViewPolicy:
    """The resolved policy of one MV. ``group`` is set only when the file moves the view.

    ``target_lag`` defaults to :data:`~mv_orchestration.core.lag.DEFAULT_TARGET_LAG` (a view no
    policy covers); a policy file gives none to a view it gives ``schedules`` or ``on_change``
    without a ``target_lag``.
    """

    schedules: tuple[Schedule, ...] = ()
    on_change: bool = False
    target_lag: TargetLag | None = DEFAULT_TARGET_LAG
    freshness: Freshness | None = None
    owners: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict, hash=False)
    checks: Mapping[str, Any] = field(default_factory=dict, hash=False)
    group: str | None = None


# --- sections ---------------------------------------------------------------------------------


class _AlertEnv(BaseModel):
    model_config = _MODEL_CONFIG

    env: EnvName


def _alert_entry(value: object) -> AlertDestination:
    if isinstance(value, dict):
        return AlertDestination(env=_AlertEnv.model_validate(value).env)
    if not isinstance(value, str):
        raise _invalid(f"expected an apprise URL or {{env: NAME}}, got {type_name(value)}")
    urls = split_urls(value)
    if len(urls) != 1:
        raise _invalid(f"expected one apprise URL per entry, got {len(urls) or 'none'}")
    problem = url_problem(urls[0])
    if problem is not None:
        raise _invalid(problem)
    return AlertDestination(url=urls[0])


AlertEntry = Annotated[
    AlertDestination, PlainValidator(_alert_entry, json_schema_input_type=str | _AlertEnv)
]


class _Section(BaseModel):
    """A mapping of the file; an empty one (``defaults:``) sets nothing."""

    model_config = _MODEL_CONFIG

    @model_validator(mode="before")
    @classmethod
    def _empty(cls, data: object) -> object:
        return {} if data is None else data

    def layer(self) -> dict[str, Any]:
        """The keys the file sets, with lists as tuples: a layer of :meth:`PolicyFile.resolve`."""
        out: dict[str, Any] = {}
        for key in self.model_fields_set:
            value = getattr(self, key)
            out[key] = tuple(value) if isinstance(value, list) else value
        return out


class _PolicySection(_Section):
    """The keys of a view's policy, in ``defaults``, a group or a ``views`` entry."""

    schedules: Annotated[
        list[Schedule], _or_empty(list), AfterValidator(lambda s: list(dict.fromkeys(s)))
    ] = []  # each once, in file order
    on_change: StrictBool = False
    target_lag: TargetLagSetting = None
    freshness: Freshness | None = None
    owners: Annotated[list[Owner], _or_empty(list)] = []
    tags: Annotated[dict[TagKey, TagValue], _or_empty(dict)] = {}
    checks: Annotated[dict[StrictStr, Any], _or_empty(dict)] = {}


class GroupSection(_PolicySection):
    """``defaults`` or one group: a policy, and where its alerts go."""

    alerts: Annotated[list[AlertEntry], _or_empty(list)] = []


class ViewSection(_PolicySection):
    """One ``views`` entry: a policy, and optionally the group the view moves to."""

    group: GroupName = ""
    # not a key of views (excluded from the keys an error lists): it only explains the error
    alerts: Annotated[None, BeforeValidator(_alerts_per_group)] = Field(None, exclude=True)


class PolicyDocument(_Section):
    """The whole file."""

    defaults: GroupSection = GroupSection()
    groups: Annotated[dict[StrictStr, GroupSection], _or_empty(dict)] = {}
    views: Annotated[dict[StrictStr, ViewSection], _or_empty(dict)] = {}
