"""When a cron schedule last fired, in its own time zone, without Dagster.

Five fields (minute, hour, day of month, month, day of week) with ``*``, lists, ranges, steps
(``*/5``, ``6-22/2``), month and day names (``jan``, ``mon-fri``), day of week 0 or 7 for
Sunday, and the macros ``@hourly``, ``@daily``, ``@midnight``, ``@weekly``, ``@monthly``,
``@yearly``, ``@annually``. As in cron, when both day of month and day of week are
restricted, a day matching either fires. ``mvo status`` uses it to tell whether a view's
scheduled refresh is due.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import cached_property
from zoneinfo import ZoneInfo

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# (lowest, highest, names for lowest.., ) per field
_FIELDS: tuple[tuple[int, int, tuple[str, ...]], ...] = (
    (0, 59, ()),
    (0, 23, ()),
    (1, 31, ()),
    (1, 12, _MONTHS),
    (0, 7, _DAYS),
)
_SEARCH_DAYS = 366 * 5  # far enough back for any schedule that fires at all (29 February)


def _value(token: str, low: int, names: tuple[str, ...]) -> int:
    lowered = token.lower()
    if lowered in names:
        return names.index(lowered) + low
    return int(token)


def _field(text: str, low: int, high: int, names: tuple[str, ...]) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        base, _, step_text = item.partition("/")
        step = int(step_text) if step_text else 1
        if base == "*":
            start, end = low, high
        elif "-" in base:
            first, last = base.split("-", 1)
            start, end = _value(first, low, names), _value(last, low, names)
        else:
            start = _value(base, low, names)
            end = high if step_text else start
        if step < 1 or not low <= start <= end <= high:
            raise ValueError(f"cron field {text!r} out of range {low}-{high}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class CronSchedule:
    """A cron expression evaluated in an IANA time zone."""

    cron: str
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        _ = self._parsed  # fail early on what this module cannot read

    @cached_property
    def _fields(self) -> list[str]:
        return MACROS.get(self.cron.strip().lower(), self.cron).split()

    @cached_property
    def _parsed(self) -> tuple[frozenset[int], ...]:
        fields = self._fields
        if len(fields) != 5:
            raise ValueError(f"cron expression {self.cron!r} does not have five fields")
        parsed = tuple(
            _field(f, low, high, names)
            for f, (low, high, names) in zip(fields, _FIELDS, strict=True)
        )
        minute, hour, dom, month, dow = parsed
        return minute, hour, dom, month, frozenset(d % 7 for d in dow)

    @cached_property
    def _restricted(self) -> tuple[bool, bool]:
        return not self._fields[2].startswith("*"), not self._fields[4].startswith("*")

    def _day_matches(self, day: date) -> bool:
        _, _, dom, month, dow = self._parsed
        if day.month not in month:
            return False
        dom_restricted, dow_restricted = self._restricted
        by_dom = day.day in dom
        by_dow = (day.isoweekday() % 7) in dow
        if dom_restricted and dow_restricted:
            return by_dom or by_dow
        return by_dom and by_dow

    def previous(self, at: datetime, not_before: datetime | None = None) -> datetime | None:
        """The latest time at or before ``at`` (timezone-aware) that the schedule fires, or
        None when there is none (after ``not_before``, if given)."""
        zone = ZoneInfo(self.timezone)
        minutes, hours, *_ = self._parsed
        times = sorted(((h, m) for h in hours for m in minutes), reverse=True)
        local = at.astimezone(zone)
        floor = not_before.astimezone(zone).date() if not_before is not None else None
        for back in range(_SEARCH_DAYS):
            day = local.date() - timedelta(days=back)
            if floor is not None and day < floor:
                return None
            if not self._day_matches(day):
                continue
            for h, m in times:
                fired = datetime(day.year, day.month, day.day, h, m, tzinfo=zone)
                if fired <= at and (not_before is None or fired > not_before):
                    return fired
                if not_before is not None and fired <= not_before:
                    return None
        return None

    def next(self, after: datetime) -> datetime | None:
        """The first time after ``after`` (timezone-aware) that the schedule fires."""
        zone = ZoneInfo(self.timezone)
        minutes, hours, *_ = self._parsed
        times = sorted((h, m) for h in hours for m in minutes)
        local = after.astimezone(zone)
        for ahead in range(_SEARCH_DAYS):
            day = local.date() + timedelta(days=ahead)
            if not self._day_matches(day):
                continue
            for h, m in times:
                fired = datetime(day.year, day.month, day.day, h, m, tzinfo=zone)
                if fired > after:
                    return fired
        return None
