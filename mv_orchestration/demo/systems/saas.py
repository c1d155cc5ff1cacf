"""Demo system 004: SaaS platform metrics.

Personal and team accounts, memberships, assets and software licences; live traffic adds
signups, teams, members and assets, retires and deletes assets and renews licences. The schema
and the catalog features it exercises are in ``sql/saas.sql``.
"""

from __future__ import annotations

import bisect
import math
import random
import uuid
from collections.abc import Sequence
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
    new_uuid,
    person,
    rowcount,
    scaled,
)

_COMPANY_A = (
    "Acme", "Globex", "Initech", "Umbrella", "Stark", "Wayne", "Hooli", "Vandelay", "Soylent",
    "Tyrell", "Cyberdyne", "Wonka", "Aperture", "Massive", "Nimbus", "Blue Sun",
)  # fmt: skip
_COMPANY_B = (
    "Labs", "Industries", "Systems", "Logistics", "Health", "Media", "Partners", "Studio",
    "Foods", "Energy", "Robotics", "Capital",
)  # fmt: skip
# category -> (weight, typical purchase cost, model names)
_ASSET_CATEGORIES: dict[str, tuple[float, float, tuple[str, ...]]] = {
    "laptop": (35, 1600.0, ("MacBook Pro 14", "ThinkPad X1", "Dell XPS 13")),
    "monitor": (25, 350.0, ("Dell U2723QE", "LG 27UK850", "Samsung S80")),
    "phone": (15, 900.0, ("iPhone 15", "Pixel 8", "Galaxy S24")),
    "server": (4, 7800.0, ("PowerEdge R760", "ProLiant DL380")),
    "network": (6, 650.0, ("Meraki MX68", "UniFi Dream Machine")),
    "furniture": (10, 450.0, ("Standing desk", "Ergonomic chair")),
    "vehicle": (1, 32000.0, ("Transit van", "Model Y")),
}
_ASSET_PICK = Weighted(list(_ASSET_CATEGORIES), [v[0] for v in _ASSET_CATEGORIES.values()])
# (vendor, product, price per seat per year)
_LICENSES = (
    ("Microsoft", "Microsoft 365 Business", 264.0),
    ("Adobe", "Creative Cloud", 660.0),
    ("Atlassian", "Jira Software", 92.0),
    ("Slack", "Slack Pro", 105.0),
    ("JetBrains", "IntelliJ IDEA Ultimate", 599.0),
    ("Zoom", "Zoom Business", 220.0),
    ("GitHub", "GitHub Enterprise", 252.0),
    ("Figma", "Figma Professional", 180.0),
    ("Autodesk", "AutoCAD", 1975.0),
)
_ACCOUNT_COLUMNS = (
    "id", "primary_owner_user_id", "name", "slug", "email", "is_personal_account", "created_at",
    "updated_at",
)  # fmt: skip
_MEMBERSHIP_COLUMNS = ("user_id", "account_id", "account_role", "created_at", "updated_at")
_ASSET_COLUMNS = (
    "id", "account_id", "name", "category", "serial_number", "status", "purchase_date",
    "purchase_cost", "assigned_to", "created_at", "updated_at",
)  # fmt: skip
_LICENSE_COLUMNS = (
    "id", "account_id", "name", "vendor", "license_type", "seats", "cost", "purchase_date",
    "expiry_date", "created_at", "updated_at",
)  # fmt: skip


def _between(rng: random.Random, start: datetime, end: datetime) -> datetime:
    if end <= start:
        return start
    return start + (end - start) * rng.random()


def _asset_row(
    rng: random.Random,
    account_id: uuid.UUID,
    created: datetime,
    now: datetime,
    members: Sequence[uuid.UUID],
) -> Row:
    category = _ASSET_PICK.pick(rng)
    _w, cost, models = _ASSET_CATEGORIES[category]
    r = rng.random()
    status = "active" if r < 0.85 else "in_repair" if r < 0.9 else "retired" if r < 0.98 else "lost"
    updated = created if status == "active" else _between(rng, created, now)
    return (
        new_uuid(rng),
        account_id,
        f"{rng.choice(models)} #{rng.randint(1, 999)}",
        category,
        f"{category[:3].upper()}-{rng.getrandbits(32):08X}",
        status,
        (created - timedelta(days=rng.randint(0, 30))).date(),
        round(cost * rng.uniform(0.7, 1.3), 2),
        rng.choice(members) if members and rng.random() < 0.7 else None,
        created,
        updated,
    )


def _license_row(
    rng: random.Random, account_id: uuid.UUID, created: datetime, now: datetime, max_seats: int
) -> Row:
    vendor, product, price = rng.choice(_LICENSES)
    seats = rng.randint(1, max(1, max_seats))
    purchased = created.date()
    r = rng.random()
    kind = "subscription" if r < 0.8 else "perpetual" if r < 0.93 else "usage"
    expiry: date | None = None
    if kind == "subscription":
        expiry = purchased + timedelta(days=365)
        while expiry < now.date() - timedelta(days=45) and rng.random() < 0.85:
            expiry += timedelta(days=365)  # renewed
    return (
        new_uuid(rng),
        account_id,
        product,
        vendor,
        kind,
        seats,
        round(seats * price * (1.0 if kind != "perpetual" else 2.5), 2),
        purchased,
        expiry,
        created,
        created,
    )


def load(ld: Loader, rng: random.Random, scale: float, now: datetime) -> None:
    signup = TimePicker(now, 730 * 24, daily_growth=1.003)
    user_times = sorted(signup.pick(rng) for _ in range(scaled(4000, scale, 40)))
    users = [(new_uuid(rng), t, *person(rng)) for t in user_times]
    accounts: list[Row] = []
    memberships: list[Row] = []
    for user_id, created, first, last in users:
        account_id = new_uuid(rng)
        email = f"{first.lower()}.{last.lower()}.{user_id.hex[:6]}@example.com"
        accounts.append((account_id, user_id, f"{first} {last}", None, email, True, created,
                         _between(rng, created, now)))  # fmt: skip
        memberships.append((user_id, account_id, "owner", created, created))

    assets: list[Row] = []
    licenses: list[Row] = []
    team_time = TimePicker(now, 730 * 24, daily_growth=1.003)
    for i in range(1, scaled(1000, scale, 10) + 1):
        created = team_time.pick(rng)
        known = bisect.bisect_right(user_times, created)
        owner_id, owner_created, _f, _l = users[rng.randrange(max(1, known))]
        created = max(created, owner_created + timedelta(hours=1))
        account_id = new_uuid(rng)
        name = f"{rng.choice(_COMPANY_A)} {rng.choice(_COMPANY_B)}"
        slug = f"{name.lower().replace(' ', '-')}-{i}"
        accounts.append((account_id, owner_id, name, slug, f"admin@{slug}.example.com", False,
                         created, _between(rng, created, now)))  # fmt: skip
        memberships.append((owner_id, account_id, "owner", created, created))
        members = [owner_id]
        size = min(len(users) - 1, int(rng.expovariate(1 / 9.0)))
        for member_id, member_created, _f, _l in rng.sample(users, size):
            if member_id == owner_id:
                continue
            joined = _between(rng, max(created, member_created), now)
            role = "admin" if rng.random() < 0.15 else "member"
            memberships.append((member_id, account_id, role, joined, joined))
            members.append(member_id)
        for _ in range(int(rng.lognormvariate(math.log(20.0), 0.7))):
            assets.append(_asset_row(rng, account_id, _between(rng, created, now), now, members))
        for _ in range(rng.randint(2, 14)):
            licenses.append(
                _license_row(rng, account_id, _between(rng, created, now), now, len(members) + 2)
            )
    ld.copy("accounts", _ACCOUNT_COLUMNS, accounts)
    ld.copy("accounts_memberships", _MEMBERSHIP_COLUMNS, memberships)
    ld.copy("assets", _ASSET_COLUMNS, assets)
    ld.copy("software_licenses", _LICENSE_COLUMNS, licenses)


def tick(conn: psycopg.Connection[Any], rng: random.Random, rows: int) -> int:
    touched = 0
    now = datetime.now(UTC)
    accounts: list[Row] = []
    memberships: list[Row] = []
    if rng.random() < 0.4:  # a user signs up and gets a personal account
        first, last = person(rng)
        user_id, account_id = new_uuid(rng), new_uuid(rng)
        email = f"{first.lower()}.{last.lower()}.{user_id.hex[:6]}@example.com"
        accounts.append((account_id, user_id, f"{first} {last}", None, email, True, now, now))
        memberships.append((user_id, account_id, "owner", now, now))
    if rng.random() < 0.08:  # a user creates a team
        owner = conn.execute(
            "SELECT user_id FROM saas.accounts_memberships ORDER BY random() LIMIT 1"
        ).fetchone()
        if owner is not None:
            account_id = new_uuid(rng)
            name = f"{rng.choice(_COMPANY_A)} {rng.choice(_COMPANY_B)}"
            slug = f"{name.lower().replace(' ', '-')}-{account_id.hex[:8]}"
            accounts.append((account_id, owner[0], name, slug, f"admin@{slug}.example.com",
                             False, now, now))  # fmt: skip
            memberships.append((owner[0], account_id, "owner", now, now))
    touched += insert_rows(conn, "saas", "accounts", _ACCOUNT_COLUMNS, accounts)
    touched += insert_rows(conn, "saas", "accounts_memberships", _MEMBERSHIP_COLUMNS, memberships)

    teams = conn.execute(
        "SELECT id FROM saas.accounts WHERE NOT is_personal_account ORDER BY random() LIMIT %s",
        [max(1, rows // 2)],
    ).fetchall()
    if teams:
        invited = conn.execute(
            "SELECT user_id FROM saas.accounts_memberships ORDER BY random() LIMIT %s",
            [rng.randint(0, 2)],
        ).fetchall()
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO saas.accounts_memberships (user_id, account_id, account_role) "
                "VALUES (%s, %s, 'member') ON CONFLICT DO NOTHING",
                [(u[0], rng.choice(teams)[0]) for u in invited],
            )
            touched += max(cur.rowcount, 0)
        assets = [
            _asset_row(rng, rng.choice(teams)[0], now, now, ())
            for _ in range(max(1, rows - len(accounts) - len(memberships) - len(invited)))
        ]
        touched += insert_rows(conn, "saas", "assets", _ASSET_COLUMNS, assets)
        if rng.random() < 0.15:
            licence = _license_row(rng, rng.choice(teams)[0], now, now, 20)
            touched += insert_rows(conn, "saas", "software_licenses", _LICENSE_COLUMNS, [licence])
    if rng.random() < 0.3:
        touched += rowcount(
            conn,
            "UPDATE saas.assets SET status = 'retired', updated_at = now() WHERE id = "
            "(SELECT id FROM saas.assets WHERE status IN ('active', 'in_repair') "
            "ORDER BY random() LIMIT 1)",
        )
    if rng.random() < 0.1:
        touched += rowcount(
            conn,
            "DELETE FROM saas.assets WHERE id = "
            "(SELECT id FROM saas.assets WHERE status = 'retired' ORDER BY random() LIMIT 1)",
        )
    if rng.random() < 0.1:  # renew the licence closest to expiry
        touched += rowcount(
            conn,
            "UPDATE saas.software_licenses SET expiry_date = expiry_date + 365, "
            "updated_at = now() WHERE id = (SELECT id FROM saas.software_licenses "
            "WHERE expiry_date >= current_date ORDER BY expiry_date, id LIMIT 1)",
        )
    return touched


SYSTEM = System(
    name="saas",
    matviews=("platform_metrics",),
    load=load,
    tick=tick,
)
