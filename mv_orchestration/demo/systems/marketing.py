"""Demo system 003: marketing and product analytics.

Campaigns, users who sign up through channels, and the events of their sessions; live traffic
adds signups and sessions and reports ad spend. The schema and the catalog features it exercises
are in ``sql/marketing.sql``.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg

from mv_orchestration.demo.systems.common import (
    Loader,
    Row,
    System,
    TimePicker,
    Weighted,
    insert_rows,
    rowcount,
    scaled,
)

_CHANNELS = Weighted(
    ["organic", "paid_search", "social", "email", "referral", "display", "affiliate"],
    [30, 20, 18, 10, 10, 7, 5],
)
_PAID_CHANNELS = ("paid_search", "social", "email", "display", "affiliate")
_UTM_SOURCES = {
    "paid_search": ("google", "cpc"),
    "social": ("meta", "paid_social"),
    "email": ("newsletter", "email"),
    "display": ("gdn", "display"),
    "affiliate": ("partners", "affiliate"),
}
_CAMPAIGN_THEMES = (
    "Spring Launch", "Summer Sale", "Back to Work", "Black Friday", "New Year", "Webinar",
    "Free Trial", "Retargeting", "Brand", "Competitor", "Feature Drop", "Referral Boost",
)  # fmt: skip
_COUNTRIES = Weighted(["US", "GB", "DE", "FR", "IN", "BR", "CA", "AU", "JP", "NL"],
                       [35, 10, 9, 6, 12, 7, 6, 5, 5, 5])  # fmt: skip
_DEVICES = Weighted(["desktop", "mobile", "tablet"], [50, 43, 7])
_PAGES = Weighted(["/", "/pricing", "/features", "/blog", "/docs", "/app", "/checkout"],
                   [20, 12, 10, 15, 8, 30, 5])  # fmt: skip
_EVENT_COLUMNS = (
    "user_id", "session_id", "campaign_id", "event_type", "page", "revenue", "occurred_at",
)  # fmt: skip


@dataclass(frozen=True)
class _Campaign:
    campaign_id: int
    channel: str
    start: date
    end: date | None


def _session(
    rng: random.Random,
    user_id: int,
    session_id: int,
    start: datetime,
    engaged: float,
    *,
    email: bool = False,
) -> list[Row]:
    """Events of one visit: page views, clicks, maybe a cart and a purchase."""
    t = start
    events: list[Row] = []

    def add(kind: str, page: str | None, revenue: float = 0.0) -> None:
        nonlocal t
        events.append((user_id, session_id, None, kind, page, revenue, t))
        t += timedelta(seconds=rng.randint(5, 150))

    if email and rng.random() < 0.5:
        add("email_open", None)
    for _ in range(rng.randint(1, 4)):
        add("page_view", _PAGES.pick(rng))
        if rng.random() < 0.35:
            add("click", None)
    if rng.random() < 0.1 + 0.12 * engaged:
        add("add_to_cart", "/checkout")
        if rng.random() < 0.55:
            add("purchase", "/checkout", round(rng.lognormvariate(math.log(80.0), 0.6), 2))
    return events


def load(ld: Loader, rng: random.Random, scale: float, now: datetime) -> None:
    today = now.date()
    campaigns: list[_Campaign] = []
    campaign_rows: list[Row] = []
    for cid in range(1, scaled(40, scale, 5) + 1):
        channel = _PAID_CHANNELS[(cid - 1) % len(_PAID_CHANNELS)]
        start = today - timedelta(days=rng.randint(0, 150))
        end = None if rng.random() < 0.2 else start + timedelta(days=rng.randint(21, 120))
        status = "ended" if end is not None and end < today else "active"
        if status == "active" and rng.random() < 0.1:
            status = "paused"
        budget = max(500.0, round(rng.randint(2, 16) * 1000.0 * scale, -2))
        elapsed = ((min(end, today) if end else today) - start).days
        span = ((end - start).days if end else 120) or 1
        spend = round(min(budget, budget * min(1.0, elapsed / span) * rng.uniform(0.8, 1.05)), 2)
        theme = rng.choice(_CAMPAIGN_THEMES)
        source, medium = _UTM_SOURCES[channel]
        campaigns.append(_Campaign(cid, channel, start, end))
        campaign_rows.append(
            (
                cid,
                f"{theme} {start:%Y-%m} #{cid}",
                channel,
                source,
                medium,
                f"{theme.lower().replace(' ', '_')}_{cid}",
                budget,
                spend,
                start,
                end,
                status,
                datetime(start.year, start.month, start.day, 9, tzinfo=UTC) - timedelta(days=3),
            )
        )
    ld.copy(
        "campaigns",
        (
            "campaign_id", "name", "channel", "utm_source", "utm_medium", "utm_campaign",
            "budget", "spend", "start_date", "end_date", "status", "created_at",
        ),
        campaign_rows,
    )  # fmt: skip

    signup_time = TimePicker(now, 120 * 24, daily_growth=1.01)
    signups = sorted(signup_time.pick(rng) for _ in range(scaled(20_000, scale, 60)))
    users: list[list[Any]] = []
    for uid, signed_up in enumerate(signups, 1):
        channel = _CHANNELS.pick(rng)
        day = signed_up.date()
        running = [
            c.campaign_id
            for c in campaigns
            if c.channel == channel and c.start <= day and (c.end is None or c.end >= day)
        ]
        campaign_id = rng.choice(running) if running and rng.random() < 0.85 else None
        plan = "free" if rng.random() < 0.8 else "pro" if rng.random() < 0.8 else "team"
        users.append(
            [
                uid,
                f"user{uid}@example.com",
                signed_up,
                _COUNTRIES.pick(rng),
                _DEVICES.pick(rng),
                channel,
                campaign_id,
                plan,
                signed_up,  # last_seen_at, updated while events are generated
            ]
        )

    sessions = itertools.count(1)

    def events() -> Iterator[Row]:
        for user in users:
            uid, signed_up, channel, campaign_id = user[0], user[2], user[5], user[6]
            engaged = rng.random()
            t = signed_up - timedelta(seconds=rng.randint(30, 900))
            sid = next(sessions)
            for _ in range(rng.randint(1, 3)):  # landing pages before signing up
                yield (uid, sid, campaign_id, "page_view", _PAGES.pick(rng), 0.0, t)
                t += timedelta(seconds=rng.randint(5, 120))
            yield (uid, sid, campaign_id, "signup", "/signup", 0.0, signed_up)
            last = signed_up
            t = signed_up
            while rng.random() < 0.45 + 0.4 * engaged:
                t += timedelta(days=rng.expovariate(1.0 / (2.0 + 12.0 * (1.0 - engaged))))
                if t >= now:
                    break
                visit = _session(rng, uid, next(sessions), t, engaged, email=channel == "email")
                visit = [e for e in visit if e[6] < now]
                yield from visit
                if visit:
                    last = visit[-1][6]
            user[8] = last

    ld.copy("events", _EVENT_COLUMNS, events())
    ld.copy(
        "users",
        (
            "user_id", "email", "signup_at", "country", "device", "acquisition_channel",
            "campaign_id", "plan", "last_seen_at",
        ),
        (tuple(u) for u in users),
    )  # fmt: skip
    ld.sync_identity("campaigns", "campaign_id")
    ld.sync_identity("users", "user_id")


def tick(conn: psycopg.Connection[Any], rng: random.Random, rows: int) -> int:
    touched = 0
    now = datetime.now(UTC)
    top = conn.execute("SELECT max(user_id) FROM marketing.users").fetchone()
    max_uid = int(top[0]) if top and top[0] else 0
    events: list[Row] = []
    active: list[int] = []
    if rng.random() < 0.3 or max_uid == 0:  # a signup
        channel = _CHANNELS.pick(rng)
        campaign = conn.execute(
            "SELECT campaign_id FROM marketing.campaigns WHERE channel = %s "
            "AND status = 'active' ORDER BY random() LIMIT 1",
            [channel],
        ).fetchone()
        campaign_id = campaign[0] if campaign else None
        new = conn.execute(
            "INSERT INTO marketing.users (email, signup_at, country, device, "
            "acquisition_channel, campaign_id, last_seen_at) "
            "VALUES (%s, now(), %s, %s, %s, %s, now()) RETURNING user_id",
            [
                f"u{rng.getrandbits(48):012x}@example.com",
                _COUNTRIES.pick(rng),
                _DEVICES.pick(rng),
                channel,
                campaign_id,
            ],
        ).fetchone()
        if new is not None:
            touched += 1
            sid = (1 << 50) + rng.getrandbits(48)
            events.append((new[0], sid, campaign_id, "page_view", "/", 0.0, now))
            events.append((new[0], sid, campaign_id, "signup", "/signup", 0.0, now))
    while max_uid and len(events) < rows:
        # recent signups are the most active
        uid = max(1, max_uid - int(rng.expovariate(1.0 / max(1.0, max_uid * 0.2))))
        visit = _session(rng, uid, (1 << 50) + rng.getrandbits(48), now, rng.random())
        events.extend((*e[:6], now - timedelta(seconds=rng.uniform(0, 2))) for e in visit)
        active.append(uid)
    touched += insert_rows(conn, "marketing", "events", _EVENT_COLUMNS, events)
    if active:
        touched += rowcount(
            conn,
            "UPDATE marketing.users SET last_seen_at = now() WHERE user_id = ANY(%s)",
            (active,),
        )
    if rng.random() < 0.1:  # the ad platforms report spend
        touched += rowcount(
            conn,
            "UPDATE marketing.campaigns SET spend = least(budget, spend + %s) WHERE campaign_id = "
            "(SELECT campaign_id FROM marketing.campaigns WHERE status = 'active' "
            "ORDER BY random() LIMIT 1)",
            (round(rng.uniform(20, 400), 2),),
        )
    return touched


SYSTEM = System(
    name="marketing",
    matviews=(
        "daily_aggregations",
        "cohort_aggregations",
        "campaign_aggregations",
        "weekly_aggregations",
    ),
    load=load,
    tick=tick,
)
