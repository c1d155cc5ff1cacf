"""Alerts through apprise: freshness state changes and failed refresh runs.

Dagster's freshness daemon evaluates every asset's ``FreshnessPolicy`` and records each change
of state as a ``FRESHNESS_STATE_CHANGE`` event; ``DagsterInstance.get_freshness_state_records``
returns the latest one per asset. The freshness alert sensor compares those states with the
states it last notified about, kept in its own cursor, so each incident alerts once (WARN, FAIL,
recovery), nothing repeats per tick, and a daemon restart loses nothing: the cursor advances only
after a notification was delivered, so a failed delivery is retried on the next tick.

Both sensors survive an unreadable cursor (hand-edited in the UI, truncated, from another
version): the tick logs one warning, rebuilds its state from the instance's event log, writes the
rebuilt cursor back and carries on; it never raises. See :func:`build_freshness_alert_sensor`
and :func:`build_refresh_failure_sensor` for what each rebuild trusts.

Destinations are apprise URLs (``slack://…``, ``msteams://…``, ``mailto://…``,
``pagerduty://…``, ``json://host/path`` …). They hold secrets and are never logged: not by
this module, and not by apprise while a URL is validated (it would quote the URL).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import apprise
import dagster as dg
from dagster._time import get_current_timestamp
from pydantic import BaseModel, ConfigDict, ValidationError

log = logging.getLogger(__name__)

Severity = Literal["info", "success", "warning", "failure"]
Transition = Literal["warn", "fail", "recovered"]

_NOTIFY_TYPE: dict[Severity, Any] = {
    "info": apprise.NotifyType.INFO,
    "success": apprise.NotifyType.SUCCESS,
    "warning": apprise.NotifyType.WARNING,
    "failure": apprise.NotifyType.FAILURE,
}
_CURSOR_VERSION = 1
_STALE = ("WARN", "FAIL")
# A state change stamped this close before a tick may not have been committed when that tick
# read the states (another process, maybe another host's clock): a rebuild treats it as unseen.
_CLOCK_MARGIN_S = 5.0


# --- destinations ---------------------------------------------------------------------------
def split_urls(text: str) -> tuple[str, ...]:
    """The apprise URLs in ``text``, separated by commas and/or whitespace.

    The one parser for ``MVO_ALERT_URLS`` and the variables a policy file's ``alerts`` name.
    """
    return tuple(text.replace(",", " ").split())


_validating: ContextVar[bool] = ContextVar("mvo_validating_apprise_url", default=False)


class _MuteWhileValidating(logging.Filter):
    """Drops apprise's own log records while a URL is being validated: they quote the URL."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _validating.get()


logging.getLogger("apprise").addFilter(_MuteWhileValidating())


def url_problem(url: str) -> str | None:
    """None for a valid apprise URL, else why not: ``not a valid apprise URL (scheme 'x')``.

    The reason names the scheme at most, never the URL, so it can go into errors and logs.
    """
    token = _validating.set(True)
    try:
        ok = bool(apprise.Apprise().add(url))
    finally:
        _validating.reset(token)
    if ok:
        return None
    scheme = url.split("://", 1)[0] if "://" in url else "?"
    return f"not a valid apprise URL (scheme {scheme!r})"


class Notifier:
    """Sends notifications through apprise to global and per-group destinations.

    ``urls`` receive every notification; ``group_urls[group]`` additionally receive those sent
    for that Dagster asset group. Invalid URLs are rejected at construction (the error names
    the destination's position and scheme, never the URL).
    """

    def __init__(
        self, urls: Sequence[str], group_urls: Mapping[str, Sequence[str]] | None = None
    ) -> None:
        self._urls = tuple(dict.fromkeys(urls))
        self._group_urls = {g: tuple(dict.fromkeys(u)) for g, u in (group_urls or {}).items()}
        for where, url_list in [("urls", self._urls), *self._group_urls.items()]:
            for i, url in enumerate(url_list):
                problem = url_problem(url)
                if problem is not None:
                    raise ValueError(f"notification destination #{i + 1} of {where!r} is {problem}")

    @property
    def groups(self) -> frozenset[str]:
        return frozenset(self._group_urls)

    def has_destinations(self, group: str | Iterable[str] | None = None) -> bool:
        return bool(self._destinations(group))

    def _destinations(self, group: str | Iterable[str] | None) -> tuple[str, ...]:
        groups = [group] if isinstance(group, str) else list(group or ())
        urls = list(self._urls)
        for g in groups:
            urls.extend(self._group_urls.get(g, ()))
        return tuple(dict.fromkeys(urls))

    def send(
        self,
        title: str,
        body: str,
        *,
        group: str | Iterable[str] | None = None,
        severity: Severity = "info",
    ) -> bool:
        """Deliver to the global destinations plus those of ``group`` (one or several).

        True when every destination accepted the message; False when any failed or when there
        is no destination at all (so callers that retry keep the alert pending).
        """
        destinations = self._destinations(group)
        if not destinations:
            log.warning("no notification destination configured; alert %r not sent", title)
            return False
        client = apprise.Apprise()
        for url in destinations:
            client.add(url)
        try:
            result = client.notify(body=body, title=title, notify_type=_NOTIFY_TYPE[severity])
        except Exception as exc:  # a plugin bug must not kill the sensor tick
            log.warning("sending alert %r raised %s", title, type(exc).__name__)
            return False
        ok = bool(result)
        if not ok:
            log.warning("alert %r was not delivered to every destination", title)
        return ok


# --- messages -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Alert:
    title: str
    body: str
    severity: Severity


def asset_url(ui_base_url: str, key: dg.AssetKey) -> str:
    """Link to an asset in the Dagster UI: ``{base}/assets/<key path joined by />``."""
    return f"{ui_base_url.rstrip('/')}/assets/" + "/".join(quote(p, safe="") for p in key.path)


def run_url(ui_base_url: str, run_id: str) -> str:
    return f"{ui_base_url.rstrip('/')}/runs/{run_id}"


def format_duration(seconds: float) -> str:
    """``45s``, ``12m 05s``, ``3h 04m``, ``2d 03h``."""
    s = max(0, int(seconds))
    days, rem = divmod(s, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, secs = divmod(rem, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def freshness_alert(
    view: str,
    key: dg.AssetKey,
    old_state: str | None,
    new_state: str,
    *,
    last_success: float | None,
    now: float,
    ui_base_url: str | None = None,
    stale_since: float | None = None,
) -> Alert:
    """Message for a freshness state change of one view."""
    old = old_state or "UNKNOWN"
    if new_state == "PASS":
        title = f"[RECOVERED] {view} is fresh again"
        severity: Severity = "success"
    elif new_state == "FAIL":
        title = f"[FAIL] {view} is stale: freshness policy failed"
        severity = "failure"
    else:
        title = f"[{new_state}] {view} is getting stale"
        severity = "warning"
    lines = [f"Materialized view {view}: freshness {old} → {new_state}."]
    if last_success is None:
        lines.append("No successful refresh recorded.")
    else:
        lines.append(
            f"Last successful refresh: {format_duration(now - last_success)} ago "
            f"({_utc(last_success)})."
        )
    if new_state == "PASS" and stale_since is not None:
        lines.append(f"It was stale for {format_duration(now - stale_since)}.")
    if ui_base_url:
        lines.append(f"Asset: {asset_url(ui_base_url, key)}")
    return Alert(title=title, body="\n".join(lines), severity=severity)


@dataclass(frozen=True)
class RefreshFailure:
    """What a failed step reported: the view, SQLSTATE and error from ``dg.Failure`` metadata."""

    view: str | None
    sqlstate: str | None
    error: str | None
    description: str | None
    lock_holders: str | None = None  # on a lock timeout: who held the lock, one "- …" line each


def _meta_text(metadata: Mapping[str, Any], key: str) -> str | None:
    value = metadata.get(key)
    if value is None:
        return None
    raw = getattr(value, "value", value)
    return None if raw is None else str(raw)


def refresh_failures(step_failure_events: Iterable[dg.DagsterEvent]) -> list[RefreshFailure]:
    """Extract view/SQLSTATE/error from step failure events (metadata of ``dg.Failure``)."""
    found: list[RefreshFailure] = []
    for event in step_failure_events:
        data = event.step_failure_data
        user = data.user_failure_data
        metadata: Mapping[str, Any] = user.metadata if user is not None else {}
        description = user.description if user is not None else None
        if description is None and data.error is not None:
            description = data.error.message.strip()
        found.append(
            RefreshFailure(
                view=_meta_text(metadata, "view"),
                sqlstate=_meta_text(metadata, "sqlstate"),
                error=_meta_text(metadata, "error"),
                description=description or event.message,
                lock_holders=_meta_text(metadata, "lock_holders"),
            )
        )
    return found


def run_failure_alert(
    *,
    job_name: str,
    run_id: str,
    failures: Sequence[RefreshFailure],
    run_message: str | None = None,
    ui_base_url: str | None = None,
) -> Alert:
    """Message for a failed run: the view(s), SQLSTATE and error, the run id and a link."""
    views = list(dict.fromkeys(f.view for f in failures if f.view))
    codes = list(dict.fromkeys(f.sqlstate for f in failures if f.sqlstate))
    code = f" (SQLSTATE {', '.join(codes)})" if codes else ""
    if views:
        title = f"[FAILED] refresh of {', '.join(views)} failed{code}"
    else:
        title = f"[FAILED] run of {job_name} failed{code}"
    lines = []
    if views:
        lines.append(f"View(s): {', '.join(views)}")
    if codes:
        lines.append(f"SQLSTATE: {', '.join(codes)}")
    for f in failures:
        if f.error:
            lines.append(f"Error: {f.error}")
        if f.description and f.description != f.error:
            lines.append(f"Details: {f.description}")
        if f.lock_holders:
            lines.append(f"Lock held by:\n{f.lock_holders}")
    if not failures and run_message:
        lines.append(f"Details: {run_message}")
    lines.append(f"Run: {run_id} (job {job_name})")
    if ui_base_url:
        lines.append(f"Run page: {run_url(ui_base_url, run_id)}")
    return Alert(title=title, body="\n".join(lines), severity="failure")


# --- which assets, which groups, which names -------------------------------------------------
@dataclass(frozen=True)
class AlertTargets:
    """Assets to watch for freshness, and every asset's group (for routing) and display name.

    ``group_of`` and ``labels`` cover every asset, not only the watched ones: a failed refresh
    of a view without a freshness policy still alerts its group.
    """

    asset_keys: tuple[dg.AssetKey, ...]
    group_of: Mapping[dg.AssetKey, str]
    labels: Mapping[dg.AssetKey, str]


def alert_targets(specs: Iterable[dg.AssetSpec]) -> AlertTargets:
    """From e.g. ``defs.resolve_all_asset_specs()``: the assets with a freshness policy (to
    watch), and the Dagster group and label of every asset.

    Labels come from the ``postgres/relation`` metadata the translator sets on every MV.
    """
    keys: list[dg.AssetKey] = []
    groups: dict[dg.AssetKey, str] = {}
    labels: dict[dg.AssetKey, str] = {}
    for spec in specs:
        if spec.freshness_policy is not None:
            keys.append(spec.key)
        if spec.group_name:
            groups[spec.key] = spec.group_name
        relation = _meta_text(spec.metadata, "postgres/relation")
        if relation:
            labels[spec.key] = relation
    keys.sort(key=lambda k: tuple(k.path))
    return AlertTargets(asset_keys=tuple(keys), group_of=groups, labels=labels)


def default_label(key: dg.AssetKey) -> str:
    return ".".join(key.path)


# --- cursors ---------------------------------------------------------------------------------
_Model = TypeVar("_Model", bound=BaseModel)


def _parse_cursor(model: type[_Model], text: str) -> _Model | str:
    """``text`` validated as ``model``, or why not in a few words (never the text itself)."""
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        if error["type"] == "json_invalid":
            return "not JSON"
        if error["loc"] == ("version",):
            return f"not version {_CURSOR_VERSION}"
        where = ".".join(str(part) for part in error["loc"]) or "top level"
        return f"wrong shape at {where}: {error['msg']}"


def _salvage(text: str, field: str, number: str) -> str | None:
    """The value of ``"field": <number>`` where it survives in a broken cursor, else None.

    Only a complete value counts (followed by ``,`` or ``}``), so a cursor cut in the middle of
    the number yields nothing rather than a wrong number. Both cursors write the field that a
    rebuild needs right after the version, so a truncated cursor keeps it.
    """
    found = re.search(rf'"{re.escape(field)}"\s*:\s*({number})\s*[,}}]', text)
    return found.group(1) if found else None


# --- freshness sensor -----------------------------------------------------------------------
@dataclass(frozen=True)
class _Notified:
    state: str
    stale_since: float | None  # when the current incident (WARN/FAIL) began


@dataclass(frozen=True)
class _FreshnessCursor:
    seen: dict[str, _Notified]  # asset key string -> the state last notified
    # every state change recorded before this time has been notified (None: not known)
    delivered_through: float | None


class _NotifiedJson(BaseModel):
    model_config = ConfigDict(strict=True)
    state: str
    stale_since: float | None = None


class _FreshnessCursorJson(BaseModel):
    model_config = ConfigDict(strict=True)
    version: Literal[1]
    delivered_through: float | None = None
    assets: dict[str, _NotifiedJson]


def transition(old_state: str | None, new_state: str) -> Transition | None:
    """Which alert (if any) a change of freshness state deserves."""
    if new_state == old_state:
        return None
    if new_state == "WARN":
        return "warn"
    if new_state == "FAIL":
        return "fail"
    if new_state == "PASS" and old_state in _STALE:
        return "recovered"
    return None


def _load_cursor(cursor: str) -> _FreshnessCursor | str:
    """The cursor, or why it is unreadable."""
    parsed = _parse_cursor(_FreshnessCursorJson, cursor)
    if isinstance(parsed, str):
        return parsed
    seen = {k: _Notified(v.state, v.stale_since) for k, v in parsed.assets.items()}
    return _FreshnessCursor(seen, parsed.delivered_through)


def _dump_cursor(cursor: _FreshnessCursor) -> str:
    assets = {
        k: {"state": v.state, "stale_since": v.stale_since} for k, v in sorted(cursor.seen.items())
    }
    # not sort_keys: delivered_through goes before the assets, so a truncated cursor keeps it
    return json.dumps(
        {
            "version": _CURSOR_VERSION,
            "delivered_through": cursor.delivered_through,
            "assets": assets,
        }
    )


def _state_changes_before(
    instance: dg.DagsterInstance, key: dg.AssetKey, before: float, limit: int
) -> list[tuple[str, float]]:
    """The asset's latest ``limit`` freshness state changes recorded before ``before``, newest
    first, as (new state, when)."""
    # get_event_records is deprecated for the event types that have a fetch_* method of their
    # own; freshness state changes have none
    records = instance.get_event_records(
        dg.EventRecordsFilter(
            event_type=dg.DagsterEventType.FRESHNESS_STATE_CHANGE,
            asset_key=key,
            before_timestamp=before,
        ),
        limit=limit,
    )
    changes: list[tuple[str, float]] = []
    for record in records:
        event = record.event_log_entry.dagster_event
        data = event.event_specific_data if event is not None else None
        new_state = getattr(data, "new_state", None)
        when = getattr(data, "state_change_timestamp", None)
        if new_state is not None and isinstance(when, int | float):
            changes.append((str(getattr(new_state, "value", new_state)), float(when)))
    return changes


def _notified_as_of(
    instance: dg.DagsterInstance, key: dg.AssetKey, when: float
) -> _Notified | None:
    """What the sensor had notified about ``key`` if it had delivered everything up to
    ``when``: the state then, and when its incident began (a FAIL's incident began with the
    WARN before it)."""
    changes = _state_changes_before(instance, key, when, limit=2)
    if not changes:
        return None
    state, since = changes[0]
    if state not in _STALE:
        return _Notified(state, None)
    if len(changes) > 1 and changes[1][0] in _STALE:
        since = changes[1][1]
    return _Notified(state, since)


def _rebuild_cursor(
    context: dg.SensorEvaluationContext, keys: Sequence[dg.AssetKey], problem: str
) -> _FreshnessCursor:
    """The notified states as of the last moment everything is known to have been delivered.

    That moment is the cursor's own ``delivered_through`` where it survives (a truncated
    cursor, one of another version), else the start of the sensor's last tick: a state that
    tick saw was alerted then, unless its delivery failed, which only the lost cursor knew.
    """
    salvaged = _salvage(
        context.cursor or "", "delivered_through", r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
    )
    last_tick = context.last_tick_completion_time
    now = get_current_timestamp()
    if salvaged is not None:
        as_of = min(float(salvaged), now if last_tick is None else last_tick)
        source = "the last tick that delivered every alert"
    elif last_tick is not None:
        as_of, source = last_tick, "the last tick"
    else:
        context.log.warning(
            f"unreadable freshness alert cursor ({problem}) and no earlier tick: "
            "starting afresh, every stale view alerts once more"
        )
        return _FreshnessCursor({}, None)
    as_of -= _CLOCK_MARGIN_S
    seen = {
        key.to_string(): notified
        for key in keys
        if (notified := _notified_as_of(context.instance, key, as_of)) is not None
    }
    context.log.warning(
        f"unreadable freshness alert cursor ({problem}); rebuilt from the event log: states "
        f"recorded before {_utc(as_of)} ({source}) count as notified, later changes alert"
    )
    return _FreshnessCursor(seen, as_of)


def _read_cursor(
    context: dg.SensorEvaluationContext, keys: Sequence[dg.AssetKey]
) -> _FreshnessCursor:
    if not context.cursor:
        return _FreshnessCursor({}, None)  # the first tick: every stale view alerts once
    loaded = _load_cursor(context.cursor)
    if isinstance(loaded, str):
        return _rebuild_cursor(context, keys, loaded)
    return loaded


def _last_success(
    instance: dg.DagsterInstance, keys: Sequence[dg.AssetKey]
) -> dict[dg.AssetKey, float]:
    if not keys:
        return {}
    found: dict[dg.AssetKey, float] = {}
    for record in instance.get_asset_records(list(keys)):
        entry = record.asset_entry
        if entry.last_materialization is not None:
            found[entry.asset_key] = entry.last_materialization.timestamp
    return found


def build_freshness_alert_sensor(
    asset_keys: Sequence[dg.AssetKey],
    notifier: Notifier,
    *,
    group_of: Mapping[dg.AssetKey, str] | None = None,
    labels: Mapping[dg.AssetKey, str] | None = None,
    ui_base_url: str | None = None,
    name: str = "mvo_freshness_alerts",
    minimum_interval_seconds: int = 30,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
) -> dg.SensorDefinition:
    """A sensor that alerts once per freshness state change of ``asset_keys``.

    Each tick reads the latest state the freshness daemon recorded per asset and compares it
    with the state last notified (kept in the cursor): →WARN and →FAIL alert, WARN/FAIL→PASS
    alerts a recovery; other changes (to UNKNOWN, NOT_APPLICABLE, first PASS) are recorded
    silently. An asset's cursor entry advances only when its notification was delivered.
    Assets whose alerts would reach no destination (no global one, none for their group) are
    not watched.

    The cursor also holds ``delivered_through``: the start of the last tick that left nothing
    undelivered. An unreadable cursor is rebuilt from the freshness daemon's own record, the
    ``FRESHNESS_STATE_CHANGE`` events of the event log: each asset's state as of
    ``delivered_through`` (if that field survives, e.g. in a truncated cursor) or else as of
    the start of the last tick (``context.last_tick_completion_time``, which Dagster stamps
    before the evaluation reads anything) counts as notified, and the tick alerts every change
    since, with the same messages as ever ("WARN → FAIL", "stale for …"). So a view that was
    stale and alerted before is not alerted again, and a change after the last tick is not
    missed. The one thing a cursor damaged beyond its ``delivered_through`` takes with it: an
    alert whose delivery was still failing when it was damaged (it is logged as undelivered on
    every tick until then). A rebuild logs one warning; the rebuilt cursor is written back on
    the same tick.
    """
    groups = dict(group_of or {})
    keys = [k for k in dict.fromkeys(asset_keys) if notifier.has_destinations(groups.get(k))]
    names = dict(labels or {})

    @dg.sensor(
        name=name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description="Notifies (apprise) when a materialized view goes WARN or FAIL on its "
        "freshness policy, and when it recovers. One alert per state change.",
    )
    def _freshness_alerts(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        # before reading any state: every change recorded before this is seen by this tick
        started = get_current_timestamp()
        cursor = _read_cursor(context, keys)
        wanted = {k.to_string(): k for k in keys}
        # forget assets no longer watched, so the cursor stays small
        seen = {k: v for k, v in cursor.seen.items() if k in wanted}
        records = context.instance.get_freshness_state_records(keys)

        pending: list[tuple[str, dg.AssetKey, str | None, str, float]] = []
        for cursor_key, key in wanted.items():
            record = records.get(key)
            if record is None:
                continue
            new_state = record.freshness_state.value
            changed_at = record.updated_at.timestamp()
            previous = seen.get(cursor_key)
            old_state = previous.state if previous else None
            if transition(old_state, new_state) is None:
                if old_state != new_state:
                    seen[cursor_key] = _Notified(new_state, None)
                continue
            pending.append((cursor_key, key, old_state, new_state, changed_at))

        last = _last_success(context.instance, [p[1] for p in pending])
        # the freshness daemon's clock: the reported age matches its verdict (and tests can
        # move it with dagster's freeze_time)
        now = get_current_timestamp()
        sent = failed = 0
        for cursor_key, key, old_state, new_state, changed_at in pending:
            previous = seen.get(cursor_key)
            since = previous.stale_since if previous and previous.state in _STALE else None
            alert = freshness_alert(
                names.get(key, default_label(key)),
                key,
                old_state,
                new_state,
                last_success=last.get(key),
                now=now,
                ui_base_url=ui_base_url,
                stale_since=since,
            )
            if notifier.send(
                alert.title, alert.body, group=groups.get(key), severity=alert.severity
            ):
                sent += 1
                seen[cursor_key] = _Notified(
                    new_state, (since or changed_at) if new_state in _STALE else None
                )
                context.log.info(f"sent: {alert.title}")
            else:
                failed += 1
                context.log.warning(f"not delivered, will retry next tick: {alert.title}")

        delivered_through = cursor.delivered_through if failed else started
        context.update_cursor(_dump_cursor(_FreshnessCursor(seen, delivered_through)))
        return dg.SkipReason(
            f"{len(keys)} assets watched; {sent} alerts sent"
            + (f", {failed} failed (retried next tick)" if failed else "")
        )

    return _freshness_alerts


# --- run failure sensor ---------------------------------------------------------------------
_FAILURE_CURSOR_VERSION = 1
# Undelivered failure alerts kept for retry; past this many the oldest are dropped (logged).
MAX_PENDING_FAILURE_ALERTS = 200
_FAILURE_FETCH_LIMIT = 100


# An unreadable cursor that kept nothing usable: the failures of this long before the last tick
# are alerted again (duplicates rather than losing one whose delivery was still failing).
FAILURE_REBUILD_LOOKBACK_S = 3600.0


@dataclass(frozen=True)
class _FailureCursor:
    after: int  # storage id of the last RUN_FAILURE event read
    pending: tuple[str, ...]  # run ids whose alert was not delivered yet, oldest first
    # every RUN_FAILURE event up to this storage id has been dealt with (None: not known)
    delivered_through: int | None = None


class _FailureCursorJson(BaseModel):
    model_config = ConfigDict(strict=True)
    version: Literal[1]
    delivered_through: int | None = None
    after: int
    pending: list[str]


def _load_failure_cursor(cursor: str) -> _FailureCursor | str:
    """The cursor, or why it is unreadable."""
    parsed = _parse_cursor(_FailureCursorJson, cursor)
    if isinstance(parsed, str):
        return parsed
    return _FailureCursor(parsed.after, tuple(parsed.pending), parsed.delivered_through)


def _dump_failure_cursor(cursor: _FailureCursor) -> str:
    # not sort_keys: delivered_through goes first, so a truncated cursor keeps it
    return json.dumps(
        {
            "version": _FAILURE_CURSOR_VERSION,
            "delivered_through": cursor.delivered_through,
            "after": cursor.after,
            "pending": cursor.pending,
        }
    )


def _delivered_through(
    state: _FailureCursor, read: Mapping[str, int], pending: Sequence[str], after: int
) -> int | None:
    """The new ``delivered_through``: ``after``, or just before the oldest alert still owed.

    ``read`` maps the run ids read this tick to their event's storage id; an alert still owed
    from an earlier tick lies before the old ``delivered_through`` (so that one stays).
    """
    bounds = [after]
    if any(run_id not in read for run_id in pending):
        if state.delivered_through is None:
            return None
        bounds.append(state.delivered_through)
    bounds.extend(read[run_id] - 1 for run_id in pending if run_id in read)
    return min(bounds)


def _latest_failure_id(instance: dg.DagsterInstance) -> int:
    latest = instance.fetch_run_status_changes(dg.DagsterEventType.RUN_FAILURE, limit=1).records
    return latest[0].storage_id if latest else -1


def _rebuild_failure_cursor(context: dg.SensorEvaluationContext, problem: str) -> _FailureCursor:
    """Where to read failed runs again from: after the cursor's ``delivered_through`` if it
    survives (a truncated cursor, one of another version), else from
    :data:`FAILURE_REBUILD_LOOKBACK_S` before the sensor's last tick."""
    instance = context.instance
    latest = _latest_failure_id(instance)
    salvaged = _salvage(context.cursor or "", "delivered_through", r"-?\d+")
    if salvaged is not None and -1 <= int(salvaged) <= latest:
        after = int(salvaged)
        how = "after the last one known to be alerted"
    else:
        last_tick = context.last_tick_completion_time
        since = (get_current_timestamp() if last_tick is None else last_tick) - (
            FAILURE_REBUILD_LOOKBACK_S
        )
        first = instance.fetch_run_status_changes(
            dg.RunStatusChangeRecordsFilter(
                event_type=dg.DagsterEventType.RUN_FAILURE, after_timestamp=since
            ),
            limit=1,
            ascending=True,
        ).records
        after = first[0].storage_id - 1 if first else latest
        lookback = format_duration(FAILURE_REBUILD_LOOKBACK_S)
        how = f"since {_utc(since)}, {lookback} before the last tick"
    context.log.warning(
        f"unreadable refresh failure alert cursor ({problem}); rebuilt from the event log: "
        f"alerting the failed runs {how} again (some may be alerted twice)"
    )
    return _FailureCursor(after=after, pending=(), delivered_through=after)


def _read_failure_cursor(context: dg.SensorEvaluationContext) -> _FailureCursor | None:
    """The cursor; rebuilt when unreadable; None before the first tick."""
    if not context.cursor:
        return None
    loaded = _load_failure_cursor(context.cursor)
    if isinstance(loaded, str):
        return _rebuild_failure_cursor(context, loaded)
    return loaded


def _is_ours(
    run: dg.DagsterRun,
    context: dg.SensorEvaluationContext,
    asset_keys: frozenset[dg.AssetKey],
    job_names: frozenset[str] | None = None,
) -> bool:
    """Whether ``run`` is this code location's: launched from it (same location and
    repository, as Dagster's run status sensors decide it), or run in process without an
    origin — ``mvo refresh`` does that — on some of its assets. With ``job_names`` (one
    database among several in the code location), a launched run counts only when it
    materializes some of ``asset_keys``, or, selecting no assets, is one of ``job_names``."""
    origin = run.remote_job_origin
    if origin is None:
        return not asset_keys.isdisjoint(run.asset_selection or ())
    location = context.code_location_origin.location_name if context.code_location_origin else None
    here = (
        origin.repository_origin.code_location_origin.location_name == location
        and origin.repository_origin.repository_name == context.repository_name
    )
    if not here or job_names is None:
        return here
    if run.asset_selection:
        return not asset_keys.isdisjoint(run.asset_selection)
    return run.job_name in job_names


def build_refresh_failure_sensor(
    notifier: Notifier,
    *,
    ui_base_url: str | None = None,
    group_of: Mapping[dg.AssetKey, str] | None = None,
    labels: Mapping[dg.AssetKey, str] | None = None,
    name: str = "mvo_refresh_failures",
    minimum_interval_seconds: int = 30,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
    job_names: Iterable[str] | None = None,
) -> dg.SensorDefinition:
    """A sensor that alerts once per failed run of this code location, naming the view(s),
    SQLSTATE and error.

    It reads Dagster's ``RUN_FAILURE`` events after the one it last read (kept in its cursor,
    so a daemon restart loses nothing and a run already alerted is never alerted again). An
    alert that was not delivered stays in the cursor and is retried on every tick until it is
    (at most :data:`MAX_PENDING_FAILURE_ALERTS` are kept). Dagster's own
    ``run_failure_sensor`` cannot do that: it moves its cursor past a run even when its
    function raises. Started for the first time, it watches from the latest failure on.

    The cursor also holds ``delivered_through``: the storage id up to which every failure was
    dealt with (just before the oldest alert still owed). An unreadable cursor is rebuilt from
    the event log's ``RUN_FAILURE`` events, preferring an alert sent twice to one lost: the
    failures after ``delivered_through`` are alerted again where that field survives (e.g. in a
    truncated cursor), else those since :data:`FAILURE_REBUILD_LOOKBACK_S` (an hour) before
    the sensor's last tick (``context.last_tick_completion_time``). A rebuild logs one
    warning; the rebuilt cursor is written back on the same tick. Canceled runs end with
    ``RUN_CANCELED``, not ``RUN_FAILURE``, and never alert.

    Runs of every job launched from this code location count, and runs executed in process
    without an origin (``mvo refresh``) on any of its assets. With ``job_names`` (one database
    of several in one code location, each with its own sensor), only the runs that
    materialize this database's assets, or that run one of ``job_names``. The alert goes to
    the global destinations plus the groups of the failing views (or of the run's assets);
    when that is no destination at all (only other groups have some), nothing is sent.
    """
    groups = dict(group_of or {})
    key_of_view = {label: key for key, label in (labels or {}).items()}
    known_keys = frozenset(groups) | frozenset(key_of_view.values())
    own_jobs = frozenset(job_names) if job_names is not None else None

    def _alert_for(
        instance: dg.DagsterInstance, run: dg.DagsterRun
    ) -> tuple[Alert, list[str]] | None:
        records = instance.get_records_for_run(
            run.run_id, of_type={dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE}
        ).records
        step_failures: list[dg.DagsterEvent] = []
        run_failure: dg.DagsterEvent | None = None
        for record in records:
            event = record.event_log_entry.dagster_event
            if event is None:
                continue
            if event.event_type == dg.DagsterEventType.STEP_FAILURE:
                step_failures.append(event)
            elif event.event_type == dg.DagsterEventType.RUN_FAILURE:
                run_failure = event
        failures = refresh_failures(step_failures)
        alert = run_failure_alert(
            job_name=run.job_name,
            run_id=run.run_id,
            failures=failures,
            run_message=run_failure.message if run_failure is not None else None,
            ui_base_url=ui_base_url,
        )
        failing_keys = [key_of_view[f.view] for f in failures if f.view and f.view in key_of_view]
        keys = failing_keys or list(run.asset_selection or ())
        alert_groups = sorted({groups[k] for k in keys if k in groups})
        if not notifier.has_destinations(alert_groups):
            return None
        return alert, alert_groups

    @dg.sensor(
        name=name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description="Notifies (apprise) when a refresh run fails, naming the view and SQLSTATE. "
        "One alert per failed run; an undelivered one is retried every tick.",
    )
    def _refresh_failures(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        instance = context.instance
        state = _read_failure_cursor(context)
        if state is None:
            latest = _latest_failure_id(instance)
            context.update_cursor(_dump_failure_cursor(_FailureCursor(latest, (), latest)))
            return dg.SkipReason("watching for failed runs from now on")

        records = instance.fetch_run_status_changes(
            dg.RunStatusChangeRecordsFilter(
                event_type=dg.DagsterEventType.RUN_FAILURE, after_storage_id=state.after
            ),
            limit=_FAILURE_FETCH_LIMIT,
            ascending=True,
        ).records
        after = records[-1].storage_id if records else state.after
        read: dict[str, int] = {}
        for r in records:
            read.setdefault(r.event_log_entry.run_id, r.storage_id)
        candidates = list(dict.fromkeys([*state.pending, *read]))
        runs = (
            {
                r.dagster_run.run_id: r.dagster_run
                for r in instance.get_run_records(filters=dg.RunsFilter(run_ids=candidates))
            }
            if candidates
            else {}
        )
        pending: list[str] = []
        sent = 0
        for run_id in candidates:
            run = runs.get(run_id)
            if run is None or not _is_ours(run, context, known_keys, own_jobs):
                continue  # deleted, or another code location's run
            found = _alert_for(instance, run)
            if found is None:
                context.log.info(f"no destination for the groups of failed run {run_id}")
                continue
            alert, alert_groups = found
            if notifier.send(alert.title, alert.body, group=alert_groups, severity=alert.severity):
                sent += 1
                context.log.info(f"sent: {alert.title}")
            else:
                pending.append(run_id)
                context.log.warning(f"not delivered, will retry next tick: {alert.title}")
        if len(pending) > MAX_PENDING_FAILURE_ALERTS:
            dropped = pending[: len(pending) - MAX_PENDING_FAILURE_ALERTS]
            pending = pending[len(dropped) :]
            context.log.error(
                f"dropped {len(dropped)} undelivered failure alerts (oldest first, keeping "
                f"{MAX_PENDING_FAILURE_ALERTS}): runs {', '.join(dropped)}"
            )
        delivered_through = _delivered_through(state, read, pending, after)
        context.update_cursor(
            _dump_failure_cursor(_FailureCursor(after, tuple(pending), delivered_through))
        )
        return dg.SkipReason(
            f"{len(records)} new failed run(s); {sent} alerts sent"
            + (f", {len(pending)} pending (retried next tick)" if pending else "")
        )

    return _refresh_failures
