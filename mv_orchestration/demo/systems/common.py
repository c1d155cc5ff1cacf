"""What the demo systems share: the contract of a system, random helpers, COPY and INSERT.

A system module (``school``, ``llm_usage``, ``mes``, ``marketing``, ``saas``) defines one
:class:`System`: its materialized views in refresh order, a bulk loader run by
:func:`mv_orchestration.demo.data.load_demo` and a live-traffic tick run by
:func:`mv_orchestration.demo.data.insert_batch`. Both draw every random value from the ``rng``
they are given, so a seed gives the same data.
"""

from __future__ import annotations

import bisect
import itertools
import random
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, LiteralString, TypeVar

import psycopg
from psycopg import sql

Row = tuple[Any, ...]
T = TypeVar("T")


@dataclass(frozen=True)
class System:
    """One demo system: a schema created from ``sql/<name>.sql``, filled and kept busy."""

    name: str
    # materialized views in a valid refresh order (an MV after the MVs it reads)
    matviews: tuple[str, ...]
    # fills the freshly created schema through the loader; ``now`` is the load time (an hour)
    load: Callable[[Loader, random.Random, float, datetime], None]
    # one tick of live traffic in an open transaction; returns the rows touched
    tick: Callable[[psycopg.Connection[Any], random.Random, int], int]


# --- random helpers -------------------------------------------------------------------------------


class Weighted(Generic[T]):
    """Weighted choice by bisection on cumulative weights (much cheaper than rng.choices)."""

    def __init__(self, items: Sequence[T], weights: Sequence[float]) -> None:
        if not items or len(items) != len(weights):
            raise ValueError("items and weights must be non-empty and of equal length")
        self.items = list(items)
        self._cum = list(itertools.accumulate(weights))
        self._total = self._cum[-1]

    def pick(self, rng: random.Random) -> T:
        i = bisect.bisect_right(self._cum, rng.random() * self._total)
        return self.items[min(i, len(self.items) - 1)]


# Relative activity per UTC hour: quiet nights, busy working hours.
_DIURNAL = (
    0.25, 0.2, 0.18, 0.18, 0.2, 0.3, 0.5, 0.8, 1.1, 1.3, 1.4, 1.4,
    1.3, 1.35, 1.4, 1.35, 1.25, 1.1, 0.95, 0.85, 0.75, 0.6, 0.45, 0.35,
)  # fmt: skip


class TimePicker:
    """Random instants in the ``hours`` before ``end``, weighted by growth, hour and weekday."""

    def __init__(
        self,
        end: datetime,
        hours: int,
        *,
        daily_growth: float = 1.0,
        weekend: float = 0.7,
        diurnal: Sequence[float] = _DIURNAL,
    ) -> None:
        slots = [end - timedelta(hours=h + 1) for h in range(hours)]
        weights = [
            daily_growth ** (-(h / 24.0)) * diurnal[s.hour] * (weekend if s.weekday() >= 5 else 1.0)
            for h, s in enumerate(slots)
        ]
        self._slots = Weighted(slots, weights)

    def pick(self, rng: random.Random) -> datetime:
        return self._slots.pick(rng) + timedelta(seconds=rng.random() * 3600.0)


def new_uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def scaled(base: int, scale: float, minimum: int) -> int:
    return max(minimum, round(base * scale))


_FIRST_NAMES = (
    "Emma", "Liam", "Olivia", "Noah", "Ava", "Elijah", "Sophia", "Lucas", "Mia", "Mateo",
    "Isabella", "Levi", "Amelia", "Ethan", "Harper", "James", "Evelyn", "Aiden", "Aria", "Leo",
    "Chloe", "Omar", "Yuki", "Priya", "Kwame", "Ines", "Sven", "Lena", "Tariq", "Mei",
)  # fmt: skip
_LAST_NAMES = (
    "Smith", "Garcia", "Kim", "Nguyen", "Müller", "Rossi", "Okafor", "Silva", "Patel", "Cohen",
    "Jones", "Brown", "Martin", "Novak", "Tanaka", "Ali", "Dubois", "Larsen", "Costa", "Walker",
    "Hughes", "Ivanova", "Santos", "Weber", "Khan", "Moreau", "Berg", "Lopez", "Young", "Park",
)  # fmt: skip


def person(rng: random.Random) -> tuple[str, str]:
    return rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)


# --- loading --------------------------------------------------------------------------------------


@dataclass
class Loader:
    """COPYs rows into one schema's tables and counts them."""

    conn: psycopg.Connection[Any]
    schema: str
    counts: dict[str, int] = field(default_factory=dict)

    def copy(self, table: str, columns: Sequence[str], rows: Iterable[Row]) -> int:
        stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(self.schema, table), sql.SQL(", ").join(map(sql.Identifier, columns))
        )
        n = 0
        with self.conn.cursor() as cur, cur.copy(stmt) as cp:
            for row in rows:
                cp.write_row(row)
                n += 1
        key = f"{self.schema}.{table}"
        self.counts[key] = self.counts.get(key, 0) + n
        return n

    def sync_identity(self, table: str, column: str) -> None:
        """Move an identity/serial sequence past explicitly loaded ids."""
        rel = sql.Identifier(self.schema, table)
        self.conn.execute(
            sql.SQL(
                "SELECT setval(pg_get_serial_sequence(%s, %s), "
                "(SELECT coalesce(max({}), 0) + 1 FROM {}), false)"
            ).format(sql.Identifier(column), rel),
            [rel.as_string(self.conn), column],
        )


# --- live traffic ---------------------------------------------------------------------------------


def insert_rows(
    conn: psycopg.Connection[Any], schema: str, table: str, columns: Sequence[str], rows: list[Row]
) -> int:
    if not rows:
        return 0
    stmt = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        sql.Identifier(schema, table),
        sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL(", ").join(sql.Placeholder() * len(columns)),
    )
    with conn.cursor() as cur:
        cur.executemany(stmt, rows)
        return max(cur.rowcount, 0)


def rowcount(
    conn: psycopg.Connection[Any], query: LiteralString, params: Sequence[Any] = ()
) -> int:
    with conn.cursor() as cur:
        cur.execute(query, params)
        return max(cur.rowcount, 0)
