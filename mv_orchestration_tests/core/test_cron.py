"""When a cron schedule last and next fires, in its time zone (``core.cron``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from mv_orchestration.core.cron import CronSchedule

AT = datetime(2026, 12, 3, 14, 7, 30, tzinfo=UTC)  # a Thursday


@pytest.mark.parametrize(
    ("cron", "timezone", "previous", "following"),
    [
        ("*/2 * * * *", "UTC", "2026-12-03 14:06", "2026-12-03 14:08"),
        ("0 3 * * *", "UTC", "2026-12-03 03:00", "2026-12-04 03:00"),
        ("0 4 * * 1", "UTC", "2026-11-30 04:00", "2026-12-07 04:00"),
        ("0 4 * * mon", "UTC", "2026-11-30 04:00", "2026-12-07 04:00"),
        ("0 0 * * 7", "UTC", "2026-11-29 00:00", "2026-12-06 00:00"),  # 7 is Sunday too
        ("@daily", "UTC", "2026-12-03 00:00", "2026-12-04 00:00"),
        ("@monthly", "UTC", "2026-12-01 00:00", "2027-01-01 00:00"),
        ("0 0 29 feb *", "UTC", "2024-02-29 00:00", "2028-02-29 00:00"),
        # day of month and day of week both restricted: either fires
        ("0 9 1 * mon", "UTC", "2026-12-01 09:00", "2026-12-07 09:00"),
        # 23:07 in Seoul: outside the 6-22 hours, inside the off-hours cron
        ("*/2 6-22 * * *", "Asia/Seoul", "2026-12-03 22:58", "2026-12-04 06:00"),
        ("*/15 0-5,23 * * *", "Asia/Seoul", "2026-12-03 23:00", "2026-12-03 23:15"),
        ("10-40/15 * * * *", "UTC", "2026-12-03 13:40", "2026-12-03 14:10"),
    ],
)
def test_previous_and_next(cron: str, timezone: str, previous: str, following: str) -> None:
    schedule = CronSchedule(cron, timezone)
    zone = ZoneInfo(timezone)
    assert schedule.previous(AT) == datetime.fromisoformat(previous).replace(tzinfo=zone)
    assert schedule.next(AT) == datetime.fromisoformat(following).replace(tzinfo=zone)


def test_previous_not_before() -> None:
    daily = CronSchedule("0 3 * * *")
    assert daily.previous(AT, not_before=AT - timedelta(hours=1)) is None
    assert daily.previous(AT, not_before=AT - timedelta(hours=12)) == datetime(
        2026, 12, 3, 3, tzinfo=UTC
    )


def test_a_tick_exactly_at_the_time_counts() -> None:
    assert CronSchedule("7 14 * * *").previous(AT.replace(second=0)) == AT.replace(second=0)


@pytest.mark.parametrize("cron", ["* * * *", "61 * * * *", "*/0 * * * *", "0 0 * * funday"])
def test_unreadable_expressions_raise(cron: str) -> None:
    with pytest.raises(ValueError):
        CronSchedule(cron)
