"""The demo database: five dashboard systems from ``seeds/``, with data and live traffic.

Each system has a static DDL file in ``sql/`` (schema, tables, plain views, materialized
views, indexes, comments) and here a bulk loader plus a "live traffic" tick:

* :func:`load_demo` runs the DDL, COPYs realistic data, ANALYZEs and refreshes the MVs.
* :func:`insert_batch` inserts (and sometimes updates or deletes) a few rows, as the app would.
* :func:`run_generator` calls :func:`insert_batch` for every system on a clock.

Where the catalog features the product must handle live (see the SQL files' headers):

* MV on MV: ``school.mv_school_overview`` (on ``mv_attendance_daily`` and ``mv_fee_collection``)
  and ``marketing.weekly_aggregations`` (on ``daily_aggregations``).
* MV through a plain view: ``llm_usage.mv_model_costs`` (``v_successful_calls``) and
  ``mes.mv_process_wip_queue`` (``v_active_wip``).
* MV without a unique index: ``llm_usage.mv_model_usage``.
* Partitioned table: ``llm_usage.api_usage`` (monthly ranges on ``created_at`` + DEFAULT).

Loads are deterministic for a given seed and scale, relative to the load time floored to the
hour (timestamps end "now" so the dashboards' time windows have data).
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Generic, LiteralString, TypeVar

import psycopg
from psycopg import sql

SYSTEMS: tuple[str, ...] = ("school", "llm_usage", "mes", "marketing", "saas")

# Materialized views per schema in a valid refresh order (an MV after the MVs it reads).
_MATVIEWS: dict[str, tuple[str, ...]] = {
    "school": (
        "mv_attendance_daily",
        "mv_grade_summary",
        "mv_fee_collection",
        "mv_school_overview",
    ),
    "llm_usage": (
        "mv_daily_metrics",
        "mv_provider_performance",
        "mv_model_costs",
        "mv_model_usage",
    ),
    "mes": ("mv_wip_status_dashboard", "mv_process_wip_queue"),
    "marketing": (
        "daily_aggregations",
        "cohort_aggregations",
        "campaign_aggregations",
        "weekly_aggregations",
    ),
    "saas": ("platform_metrics",),
}

Row = tuple[Any, ...]
T = TypeVar("T")

_SQL_DIR = Path(__file__).parent / "sql"


def sql_path(system: str) -> Path:
    """Path of the DDL file of ``system`` (one of :data:`SYSTEMS`)."""
    _check_system(system)
    return _SQL_DIR / f"{system}.sql"


def _check_system(system: str) -> None:
    if system not in SYSTEMS:
        raise ValueError(f"unknown demo system {system!r}; expected one of {', '.join(SYSTEMS)}")


def _utcnow() -> datetime:
    """The clock data is generated against (a seam for tests)."""
    return datetime.now(UTC)


# ---------------------------------------------------------------------------------------------
# Random helpers
# ---------------------------------------------------------------------------------------------


class _Weighted(Generic[T]):
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


class _TimePicker:
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
        self._slots = _Weighted(slots, weights)

    def pick(self, rng: random.Random) -> datetime:
        return self._slots.pick(rng) + timedelta(seconds=rng.random() * 3600.0)


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def _n(base: int, scale: float, minimum: int) -> int:
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


def _person(rng: random.Random) -> tuple[str, str]:
    return rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


@dataclass
class _Loader:
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


def load_demo(
    conn: psycopg.Connection[Any],
    *,
    scale: float = 1.0,
    seed: int = 42,
    systems: Sequence[str] = SYSTEMS,
    progress: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """(Re)create the demo schemas of ``systems`` and fill them; return rows per table.

    ``conn`` must be an autocommit connection. Each system is dropped and recreated from its
    SQL file, loaded with COPY in one transaction, ANALYZEd, and its MVs refreshed in
    dependency order so they are populated. ``scale=1.0`` loads ~670k rows (~15 s).
    """
    if scale <= 0:
        raise ValueError("scale must be positive")
    for system in systems:
        _check_system(system)
    say = progress or (lambda _msg: None)
    now = _utcnow().astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    counts: dict[str, int] = {}
    for system in systems:
        started = time.monotonic()
        # Per-system streams: loading a subset gives the same data for each system.
        rng = random.Random(f"{seed}:{system}")
        ld = _Loader(conn, system)
        say(f"{system}: creating schema")
        with conn.transaction():
            conn.execute(sql_path(system).read_bytes())
            say(f"{system}: generating and copying data")
            _LOADERS[system](ld, rng, scale, now)
        say(f"{system}: analyzing {len(ld.counts)} tables")
        for key in ld.counts:
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(*key.split(".", 1))))
        mvs = _MATVIEWS[system]
        say(f"{system}: refreshing {len(mvs)} materialized views")
        for mv in mvs:
            with conn.transaction():
                conn.execute(
                    sql.SQL("REFRESH MATERIALIZED VIEW {}").format(sql.Identifier(system, mv))
                )
        counts.update(ld.counts)
        say(
            f"{system}: {sum(ld.counts.values()):,} rows in {len(ld.counts)} tables "
            f"({time.monotonic() - started:.1f}s)"
        )
    return counts


# --- school (seed 000) -----------------------------------------------------------------------

_SCHOOLS = (
    ("Northfield Primary", "Springfield", date(1998, 9, 1), 420.0),
    ("Riverside Academy", "Riverside", date(2004, 9, 1), 515.0),
    ("Lakeview Community School", "Lakeview", date(1987, 9, 1), 380.0),
    ("Hillcrest International", "Hillcrest", date(2012, 9, 1), 690.0),
)
_SUBJECTS = (
    ("MATH", "Mathematics"),
    ("ENG", "English"),
    ("SCI", "Science"),
    ("HIST", "History"),
    ("ART", "Art"),
    ("PE", "Physical Education"),
)
_GRADE_LEVELS = range(1, 7)
_SECTIONS = ("A", "B")
# (term, assessment, days before the load, max score)
_ASSESSMENTS = (("T1", "midterm", 130, 100.0), ("T1", "final", 85, 100.0), ("T2", "quiz", 20, 20.0))
_EXTRA_FEES = (("transport", 0.4, 65.0), ("meals", 0.5, 90.0))


def _academic_year(today: date) -> str:
    y = today.year if today.month >= 8 else today.year - 1
    return f"{y}/{(y + 1) % 100:02d}"


def _attendance_status(rng: random.Random, p_absent: float) -> str:
    r = rng.random()
    if r < p_absent:
        return "excused" if rng.random() < 0.3 else "absent"
    if r < p_absent + 0.04:
        return "late"
    return "present"


@dataclass(frozen=True)
class _Student:
    student_id: int
    school_id: int
    class_id: int
    enrolled_on: date
    left_on: date | None
    ability: float
    p_absent: float


def _load_school(ld: _Loader, rng: random.Random, scale: float, now: datetime) -> None:
    today = now.date()
    year = _academic_year(today)
    ld.copy(
        "schools",
        ("school_id", "name", "city", "opened_on", "created_at"),
        [
            (i, name, city, opened, now - timedelta(days=1200))
            for i, (name, city, opened, _fee) in enumerate(_SCHOOLS, 1)
        ],
    )
    ld.copy(
        "subjects", ("subject_id", "code", "name"), [(i, *s) for i, s in enumerate(_SUBJECTS, 1)]
    )

    teachers: list[Row] = []
    subject_teacher: dict[tuple[int, int], int] = {}
    school_teachers: dict[int, list[int]] = {}
    per_school = _n(25, scale, len(_SUBJECTS) + 2)
    for school_id in range(1, len(_SCHOOLS) + 1):
        for k in range(per_school):
            tid = len(teachers) + 1
            subject_id = k % len(_SUBJECTS) + 1
            first, last = _person(rng)
            teachers.append(
                (
                    tid,
                    school_id,
                    f"{first} {last}",
                    f"t{tid}.{last.lower()}@school{school_id}.example.org",
                    subject_id,
                    today - timedelta(days=rng.randint(200, 5000)),
                    rng.random() > 0.04,
                )
            )
            subject_teacher.setdefault((school_id, subject_id), tid)
            school_teachers.setdefault(school_id, []).append(tid)
    ld.copy(
        "teachers",
        ("teacher_id", "school_id", "full_name", "email", "subject_id", "hired_on", "is_active"),
        teachers,
    )

    classes: list[Row] = []
    school_classes: dict[int, list[int]] = {}
    homeroom: dict[int, int] = {}
    for school_id in range(1, len(_SCHOOLS) + 1):
        for level in _GRADE_LEVELS:
            for section in _SECTIONS:
                cid = len(classes) + 1
                tid = school_teachers[school_id][(cid - 1) % per_school]
                classes.append((cid, school_id, year, level, section, tid))
                school_classes.setdefault(school_id, []).append(cid)
                homeroom[cid] = tid
    ld.copy(
        "classes",
        ("class_id", "school_id", "academic_year", "grade_level", "section", "homeroom_teacher_id"),
        classes,
    )

    students: list[_Student] = []
    student_rows: list[Row] = []
    school_pick = _Weighted(range(1, len(_SCHOOLS) + 1), [1.2, 1.0, 0.8, 0.6])
    for sid in range(1, _n(2000, scale, 24) + 1):
        school_id = school_pick.pick(rng)
        class_id = rng.choice(school_classes[school_id])
        recent = rng.random() < 0.08
        enrolled = today - timedelta(days=rng.randint(1, 75) if recent else rng.randint(80, 1800))
        r = rng.random()
        status = "active" if r < 0.95 else "transferred" if r < 0.98 else "suspended"
        left_on = None if status == "active" else today - timedelta(days=rng.randint(1, 60))
        student = _Student(
            sid,
            school_id,
            class_id,
            enrolled,
            left_on,
            rng.gauss(0.0, 1.0),
            min(0.35, rng.expovariate(1 / 0.045)),
        )
        students.append(student)
        first, last = _person(rng)
        level = classes[class_id - 1][3]
        student_rows.append(
            (
                sid,
                school_id,
                class_id,
                f"ADM-{enrolled.year}-{sid:05d}",
                first,
                last,
                rng.choice("FFMMX" if rng.random() < 0.02 else "FM"),
                date(today.year - 5 - level, rng.randint(1, 12), rng.randint(1, 28)),
                enrolled,
                status,
                datetime(enrolled.year, enrolled.month, enrolled.day, 9, tzinfo=UTC),
            )
        )
    ld.copy(
        "students",
        (
            "student_id", "school_id", "class_id", "admission_no", "first_name", "last_name",
            "gender", "date_of_birth", "enrolled_on", "status", "created_at",
        ),
        student_rows,
    )  # fmt: skip

    school_days = [
        d
        for d in (today - timedelta(days=k) for k in range(70, 0, -1))  # up to yesterday
        if d.weekday() < 5
    ]

    def attendance() -> Iterator[Row]:
        for day in school_days:
            start = datetime(day.year, day.month, day.day, 8, tzinfo=UTC)
            for s in students:
                if s.enrolled_on > day or (s.left_on is not None and s.left_on <= day):
                    continue
                yield (
                    s.student_id,
                    s.school_id,
                    s.class_id,
                    day,
                    _attendance_status(rng, s.p_absent),
                    homeroom[s.class_id],
                    start + timedelta(seconds=rng.randint(0, 2400)),
                )

    ld.copy(
        "attendance",
        (
            "student_id", "school_id", "class_id", "attendance_date", "status", "marked_by",
            "marked_at",
        ),
        attendance(),
    )  # fmt: skip

    def grades() -> Iterator[Row]:
        for s in students:
            for subject_id in range(1, len(_SUBJECTS) + 1):
                bias = rng.gauss(0.0, 0.06)
                for term, kind, days_ago, max_score in _ASSESSMENTS:
                    graded = today - timedelta(days=days_ago + rng.randint(-3, 3))
                    if graded < s.enrolled_on or (s.left_on is not None and graded >= s.left_on):
                        continue
                    pct = 0.72 + 0.11 * s.ability + bias + rng.gauss(0.0, 0.08)
                    score = round(max_score * min(1.0, max(0.05, pct)), 2)
                    yield (
                        s.student_id,
                        s.school_id,
                        s.class_id,
                        subject_id,
                        term,
                        kind,
                        score,
                        max_score,
                        subject_teacher[(s.school_id, subject_id)],
                        datetime(graded.year, graded.month, graded.day, 15, tzinfo=UTC)
                        + timedelta(seconds=rng.randint(0, 14400)),
                    )

    ld.copy(
        "grades",
        (
            "student_id", "school_id", "class_id", "subject_id", "term", "assessment", "score",
            "max_score", "graded_by", "graded_at",
        ),
        grades(),
    )  # fmt: skip

    months: list[date] = []
    m = date(today.year, today.month, 1)
    for _ in range(6):
        months.append(m)
        m = (m - timedelta(days=1)).replace(day=1)
    months.reverse()

    def fees() -> Iterator[Row]:
        for s in students:
            tuition = _SCHOOLS[s.school_id - 1][3]
            extras = [(kind, amount) for kind, p, amount in _EXTRA_FEES if rng.random() < p]
            payer = rng.random()  # some families always pay late
            for i, month in enumerate(months):
                if month < s.enrolled_on.replace(day=1) or (
                    s.left_on is not None and month > s.left_on
                ):
                    continue
                items = [("tuition", tuition), *extras]
                if i in (0, 3):
                    items.append(("exam", 35.0))
                due = month + timedelta(days=9)
                for kind, amount in items:
                    yield _fee_row(
                        rng, s.student_id, s.school_id, kind, month, amount, due, today, payer
                    )

    ld.copy(
        "fees",
        (
            "student_id", "school_id", "fee_type", "period_month", "amount", "amount_paid",
            "due_date", "status", "paid_at", "created_at",
        ),
        fees(),
    )  # fmt: skip
    for table, column in (
        ("schools", "school_id"),
        ("subjects", "subject_id"),
        ("teachers", "teacher_id"),
        ("classes", "class_id"),
        ("students", "student_id"),
    ):
        ld.sync_identity(table, column)


def _fee_row(
    rng: random.Random,
    student_id: int,
    school_id: int,
    kind: str,
    month: date,
    amount: float,
    due: date,
    today: date,
    payer: float,
) -> Row:
    created = datetime(month.year, month.month, month.day, 6, tzinfo=UTC) - timedelta(days=5)
    r = rng.random()
    paid_at: datetime | None = None
    paid = 0.0
    if due < today:
        late = payer > 0.85
        if r < (0.78 if late else 0.95):
            status = "paid"
        elif r < 0.97:
            status = "partial"
        elif r < 0.975:
            status = "waived"
        else:
            status = "pending"
    else:
        status = "paid" if r < 0.45 else "pending"
    if status in ("paid", "partial"):
        offset = rng.randint(-12, 25 if payer > 0.85 else 3)
        paid_day = min(today - timedelta(days=1), due + timedelta(days=offset))
        paid_day = max(paid_day, created.date())
        paid_at = datetime(paid_day.year, paid_day.month, paid_day.day, 10, tzinfo=UTC)
        paid_at += timedelta(seconds=rng.randint(0, 30000))
        paid = amount if status == "paid" else round(amount * rng.uniform(0.3, 0.8), 2)
    return (student_id, school_id, kind, month, amount, paid, due, status, paid_at, created)


# --- llm_usage (seed 001) --------------------------------------------------------------------


@dataclass(frozen=True)
class _Model:
    provider: str
    model: str
    input_per_1k: float
    output_per_1k: float
    context_window: int
    embedding: bool
    base_latency_ms: float
    tokens_per_s: float
    weight: float


_MODELS = (
    _Model("openai", "gpt-4o", 0.0025, 0.01, 128000, False, 450, 90, 18),
    _Model("openai", "gpt-4o-mini", 0.00015, 0.0006, 128000, False, 300, 140, 30),
    _Model("openai", "o3-mini", 0.0011, 0.0044, 200000, False, 1800, 120, 6),
    _Model("openai", "text-embedding-3-small", 0.00002, 0.0, 8191, True, 90, 1, 60),
    _Model("anthropic", "claude-sonnet-4", 0.003, 0.015, 200000, False, 600, 70, 16),
    _Model("anthropic", "claude-3-5-haiku", 0.0008, 0.004, 200000, False, 350, 120, 10),
    _Model("google", "gemini-2.0-flash", 0.0001, 0.0004, 1000000, False, 280, 180, 12),
    _Model("google", "gemini-1.5-pro", 0.00125, 0.005, 2000000, False, 700, 65, 4),
    _Model("mistral", "mistral-large", 0.002, 0.006, 128000, False, 500, 75, 3),
    _Model("mistral", "mistral-small", 0.0002, 0.0006, 32000, False, 250, 150, 4),
    _Model("cohere", "command-r-plus", 0.0025, 0.01, 128000, False, 650, 60, 2),
    _Model("cohere", "embed-english-v3", 0.0001, 0.0, 512, True, 110, 1, 15),
)
_CHAT_MODELS = _Weighted(
    [m for m in _MODELS if not m.embedding], [m.weight for m in _MODELS if not m.embedding]
)
_EMBED_MODELS = _Weighted(
    [m for m in _MODELS if m.embedding], [m.weight for m in _MODELS if m.embedding]
)
# service -> (weight, median input tokens, median output tokens)
_SERVICES: dict[str, tuple[float, float, float]] = {
    "chat": (35, 800, 350),
    "content": (20, 600, 900),
    "code": (12, 2000, 600),
    "summarization": (10, 3000, 250),
    "translation": (5, 500, 550),
    "embedding": (18, 300, 0),
}
_SERVICE_PICK = _Weighted(list(_SERVICES), [v[0] for v in _SERVICES.values()])
# provider -> (p error, p timeout, p rate limited)
_FAILURE_RATES = {
    "openai": (0.018, 0.006, 0.012),
    "anthropic": (0.012, 0.008, 0.02),
    "google": (0.03, 0.01, 0.015),
    "mistral": (0.025, 0.012, 0.005),
    "cohere": (0.035, 0.015, 0.008),
}
_ERROR_CODES = ("server_error", "invalid_request", "context_length_exceeded", "content_filter")
_API_USAGE_COLUMNS = (
    "user_id", "service_type", "provider", "model", "status", "error_code", "input_tokens",
    "output_tokens", "total_tokens", "input_cost", "output_cost", "total_cost", "latency_ms",
    "created_at",
)  # fmt: skip


def _api_call(rng: random.Random, user_id: str, created_at: datetime) -> Row:
    service = _SERVICE_PICK.pick(rng)
    _w, med_in, med_out = _SERVICES[service]
    m = (_EMBED_MODELS if service == "embedding" else _CHAT_MODELS).pick(rng)
    p_err, p_timeout, p_rate = _FAILURE_RATES[m.provider]
    r = rng.random()
    in_tok = max(1, int(rng.lognormvariate(math.log(med_in), 0.8)))
    out_tok = 0
    error_code: str | None = None
    if r < p_rate:
        status, error_code, in_tok = "rate_limited", "rate_limit_exceeded", 0
        latency = rng.uniform(15, 120)
    elif r < p_rate + p_timeout:
        status, error_code = "timeout", "timeout"
        latency = 30000 + rng.uniform(0, 2000)
    elif r < p_rate + p_timeout + p_err:
        status, error_code = "error", rng.choice(_ERROR_CODES)
        latency = rng.uniform(80, 1500)
    else:
        status = "success"
        if not m.embedding:
            out_tok = max(1, int(rng.lognormvariate(math.log(med_out), 0.7)))
        latency = (m.base_latency_ms + 1000.0 * out_tok / m.tokens_per_s) * rng.lognormvariate(
            0.0, 0.25
        )
    billable = status == "success"
    in_cost = round(in_tok / 1000 * m.input_per_1k, 6) if billable else 0.0
    out_cost = round(out_tok / 1000 * m.output_per_1k, 6)
    return (
        user_id,
        service,
        m.provider,
        m.model,
        status,
        error_code,
        in_tok,
        out_tok,
        in_tok + out_tok,
        in_cost,
        out_cost,
        round(in_cost + out_cost, 6),
        int(latency),
        created_at,
    )


def _llm_user(i: int) -> str:
    return f"user-{i:05d}"


def _load_llm_usage(ld: _Loader, rng: random.Random, scale: float, now: datetime) -> None:
    ld.copy(
        "model_pricing",
        (
            "provider", "model", "input_per_1k_usd", "output_per_1k_usd", "context_window",
            "is_embedding",
        ),
        [
            (m.provider, m.model, m.input_per_1k, m.output_per_1k, m.context_window, m.embedding)
            for m in _MODELS
        ],
    )  # fmt: skip
    n_users = _n(400, scale, 10)
    users = _Weighted(
        [_llm_user(i) for i in range(1, n_users + 1)],
        [1.0 / (i**0.8) for i in range(1, n_users + 1)],
    )
    when = _TimePicker(now, 120 * 24, daily_growth=1.012)

    def calls() -> Iterator[Row]:
        for _ in range(_n(200_000, scale, 200)):
            yield _api_call(rng, users.pick(rng), when.pick(rng))

    ld.copy("api_usage", _API_USAGE_COLUMNS, calls())


# --- mes (seed 002) --------------------------------------------------------------------------

_PROCESSES = (
    ("LASER_MARKING", "Laser marking", 45),
    ("SENSOR_INSPECTION", "Sensor inspection", 120),
    ("FIRMWARE_UPLOAD", "Firmware upload", 180),
    ("ROBOT_ASSEMBLY", "Robot assembly", 300),
    ("PERFORMANCE_TEST", "Performance test", 240),
    ("LABEL_PRINTING", "Label printing", 30),
    ("PACKAGING_INSPECTION", "Packaging and visual inspection", 90),
    ("FINAL_QC", "Final quality control", 150),
)
_PRODUCTS = _Weighted(["NH-100", "NH-200", "NH-200P", "NH-X1"], [5, 3, 2, 1])
_DEFECTS = ("SCRATCH", "MISALIGNED", "FW_CRC", "SENSOR_DRIFT", "LOW_TORQUE", "LABEL_SMEAR")
_MEAN_QUEUE_S = 8 * 3600.0
_MEAN_HOLD_S = 30 * 3600.0
_HISTORY_COLUMNS = (
    "wip_id", "process_id", "operator_id", "equipment_code", "result", "defect_code",
    "started_at", "completed_at", "cycle_time_s",
)  # fmt: skip


def _operation(
    rng: random.Random, wip_id: int, step: int, started: datetime, *, p_fail: float = 0.035
) -> tuple[Row, datetime, bool]:
    """One pass of an item through process ``step``: the history row, its end, passed?"""
    std = _PROCESSES[step - 1][2]
    cycle = max(5, int(rng.gauss(std, std * 0.2)))
    ended = started + timedelta(seconds=cycle)
    passed = rng.random() >= p_fail
    row = (
        wip_id,
        step,
        f"OP-{rng.randint(1, 40):03d}",
        f"EQ-{_PROCESSES[step - 1][0][:3]}-{rng.randint(1, 3):02d}",
        "PASS" if passed else "FAIL",
        None if passed else rng.choice(_DEFECTS),
        started,
        ended,
        cycle,
    )
    return row, ended, passed


def _load_mes(ld: _Loader, rng: random.Random, scale: float, now: datetime) -> None:
    ld.copy(
        "processes",
        ("process_id", "process_code", "process_name", "sequence_no", "standard_cycle_s"),
        [(i, code, name, i, std) for i, (code, name, std) in enumerate(_PROCESSES, 1)],
    )
    last_step = len(_PROCESSES)
    # Production runs in two shifts: lots are released during working hours.
    shifts = [0.05] * 6 + [1.0] * 16 + [0.05] * 2
    lot_time = _TimePicker(now, 30 * 24, weekend=0.3, diurnal=shifts)
    lots: list[Row] = []
    items: list[Row] = []
    history: list[Row] = []
    for lot_id, created in enumerate(
        sorted(lot_time.pick(rng) for _ in range(_n(300, scale, 6))), 1
    ):
        quantity = rng.randint(10, 30)
        states: list[str] = []
        last_end = created
        for _ in range(quantity):
            wip_id = len(items) + 1
            t = created + timedelta(seconds=rng.uniform(0, 7200))
            step, status, reworks = 1, "COMPLETED", 0
            updated, completed_at = t, None
            while True:
                start = t + timedelta(seconds=rng.expovariate(1.0 / _MEAN_QUEUE_S))
                if start >= now:
                    status, updated = "QUEUED", t
                    break
                row, end, passed = _operation(rng, wip_id, step, start)
                if end >= now:
                    status, updated = "IN_PROCESS", start
                    break
                history.append(row)
                t = updated = end
                if passed:
                    if step == last_step:
                        completed_at = end
                        break
                    step += 1
                    continue
                r = rng.random()
                if r < 0.75:
                    reworks += 1  # back into the same queue
                elif r < 0.92:  # held for engineering, then reworked
                    released = end + timedelta(seconds=rng.expovariate(1.0 / _MEAN_HOLD_S))
                    if released >= now:
                        status = "ON_HOLD"
                        break
                    reworks += 1
                    t = released
                else:
                    status = "SCRAPPED"
                    break
            last_end = max(last_end, updated)
            states.append(status)
            items.append(
                (
                    wip_id,
                    f"SN{created:%y%m%d}{wip_id:07d}",
                    lot_id,
                    step,
                    status,
                    reworks,
                    created,
                    updated,
                    completed_at,
                )
            )
        done = all(s in ("COMPLETED", "SCRAPPED") for s in states)
        lot_status = "COMPLETED" if done else "IN_PROGRESS"
        lots.append(
            (
                lot_id,
                f"LOT-{created:%y%m%d}-{lot_id:04d}",
                _PRODUCTS.pick(rng),
                quantity,
                rng.choice((1, 2, 3, 3, 3, 4, 5)),
                lot_status,
                created,
                created + timedelta(days=rng.randint(3, 10)),
                last_end if done else None,
            )
        )
    ld.copy(
        "lots",
        (
            "lot_id", "lot_number", "product_model", "target_quantity", "priority", "status",
            "created_at", "due_at", "closed_at",
        ),
        lots,
    )  # fmt: skip
    ld.copy(
        "wip_items",
        (
            "wip_id", "serial_number", "lot_id", "current_process_id", "status", "rework_count",
            "created_at", "updated_at", "completed_at",
        ),
        items,
    )  # fmt: skip
    history.sort(key=lambda r: r[7])  # the log is written in completion order
    ld.copy("wip_process_history", _HISTORY_COLUMNS, history)
    for table, column in (("processes", "process_id"), ("lots", "lot_id"), ("wip_items", "wip_id")):
        ld.sync_identity(table, column)


# --- marketing (seed 003) --------------------------------------------------------------------

_CHANNELS = _Weighted(
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
_COUNTRIES = _Weighted(["US", "GB", "DE", "FR", "IN", "BR", "CA", "AU", "JP", "NL"],
                       [35, 10, 9, 6, 12, 7, 6, 5, 5, 5])  # fmt: skip
_DEVICES = _Weighted(["desktop", "mobile", "tablet"], [50, 43, 7])
_PAGES = _Weighted(["/", "/pricing", "/features", "/blog", "/docs", "/app", "/checkout"],
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


def _load_marketing(ld: _Loader, rng: random.Random, scale: float, now: datetime) -> None:
    today = now.date()
    campaigns: list[_Campaign] = []
    campaign_rows: list[Row] = []
    for cid in range(1, _n(40, scale, 5) + 1):
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

    signup_time = _TimePicker(now, 120 * 24, daily_growth=1.01)
    signups = sorted(signup_time.pick(rng) for _ in range(_n(20_000, scale, 60)))
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


# --- saas (seed 004) -------------------------------------------------------------------------

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
_ASSET_PICK = _Weighted(list(_ASSET_CATEGORIES), [v[0] for v in _ASSET_CATEGORIES.values()])
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
        _uuid(rng),
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
        _uuid(rng),
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


def _load_saas(ld: _Loader, rng: random.Random, scale: float, now: datetime) -> None:
    signup = _TimePicker(now, 730 * 24, daily_growth=1.003)
    user_times = sorted(signup.pick(rng) for _ in range(_n(4000, scale, 40)))
    users = [(_uuid(rng), t, *_person(rng)) for t in user_times]
    accounts: list[Row] = []
    memberships: list[Row] = []
    for user_id, created, first, last in users:
        account_id = _uuid(rng)
        email = f"{first.lower()}.{last.lower()}.{user_id.hex[:6]}@example.com"
        accounts.append((account_id, user_id, f"{first} {last}", None, email, True, created,
                         _between(rng, created, now)))  # fmt: skip
        memberships.append((user_id, account_id, "owner", created, created))

    assets: list[Row] = []
    licenses: list[Row] = []
    team_time = _TimePicker(now, 730 * 24, daily_growth=1.003)
    for i in range(1, _n(1000, scale, 10) + 1):
        created = team_time.pick(rng)
        known = bisect.bisect_right(user_times, created)
        owner_id, owner_created, _f, _l = users[rng.randrange(max(1, known))]
        created = max(created, owner_created + timedelta(hours=1))
        account_id = _uuid(rng)
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


_LOADERS: dict[str, Callable[[_Loader, random.Random, float, datetime], None]] = {
    "school": _load_school,
    "llm_usage": _load_llm_usage,
    "mes": _load_mes,
    "marketing": _load_marketing,
    "saas": _load_saas,
}


# ---------------------------------------------------------------------------------------------
# Live traffic
# ---------------------------------------------------------------------------------------------


def _insert(
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


def _rowcount(
    conn: psycopg.Connection[Any], query: LiteralString, params: Sequence[Any] = ()
) -> int:
    with conn.cursor() as cur:
        cur.execute(query, params)
        return max(cur.rowcount, 0)


def insert_batch(
    conn: psycopg.Connection[Any], system: str, rng: random.Random, *, rows: int = 20
) -> int:
    """One tick of live traffic for ``system``; returns the number of rows touched.

    Inserts about ``rows`` new rows into the system's source tables and, like the real app,
    sometimes updates or deletes some (items move to the next process step, fees get paid,
    assets are retired). Runs in one transaction on the autocommit connection ``conn``.
    """
    _check_system(system)
    with conn.transaction():
        # ORDER BY random() in the ticks then follows ``rng`` too.
        conn.execute("SELECT setseed(%s)", [rng.uniform(-1.0, 1.0)])
        return _TICKS[system](conn, rng, max(1, rows))


def _tick_school(conn: psycopg.Connection[Any], rng: random.Random, rows: int) -> int:
    touched = 0
    unmarked = conn.execute(
        "SELECT s.student_id, s.school_id, s.class_id, c.homeroom_teacher_id "
        "FROM school.students s JOIN school.classes c ON c.class_id = s.class_id "
        "WHERE s.status = 'active' AND NOT EXISTS ("
        "  SELECT 1 FROM school.attendance a "
        "  WHERE a.student_id = s.student_id AND a.attendance_date = current_date) "
        "ORDER BY s.class_id, s.student_id LIMIT %s",
        [rows],
    ).fetchall()
    if unmarked:  # teachers take today's register, class by class
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO school.attendance "
                "(student_id, school_id, class_id, attendance_date, status, marked_by) "
                "VALUES (%s, %s, %s, current_date, %s, %s) "
                "ON CONFLICT (student_id, attendance_date) DO NOTHING",
                [(s, sc, c, _attendance_status(rng, 0.05), t) for s, sc, c, t in unmarked],
            )
            touched += max(cur.rowcount, 0)
    else:  # register complete: quiz marks come in instead
        graded = conn.execute(
            "SELECT s.student_id, s.school_id, s.class_id, t.subject_id, t.teacher_id "
            "FROM school.students s "
            "JOIN LATERAL (SELECT subject_id, teacher_id FROM school.teachers "
            "              WHERE school_id = s.school_id ORDER BY random() LIMIT 1) t ON true "
            "WHERE s.status = 'active' ORDER BY random() LIMIT %s",
            [rows],
        ).fetchall()
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO school.grades (student_id, school_id, class_id, subject_id, term, "
                "assessment, score, max_score, graded_by) "
                "VALUES (%s, %s, %s, %s, 'T2', 'quiz', %s, 20, %s)",
                [(s, sc, c, subj, round(rng.uniform(6, 20), 2), t) for s, sc, c, subj, t in graded],
            )
            touched += max(cur.rowcount, 0)
    touched += _rowcount(
        conn,
        "UPDATE school.fees SET amount_paid = amount, status = 'paid', paid_at = now() "
        "WHERE fee_id IN (SELECT fee_id FROM school.fees WHERE status IN ('pending', 'partial') "
        "ORDER BY due_date, fee_id LIMIT %s)",
        (rng.randint(1, 3),),
    )
    if rng.random() < 0.1:  # a new enrolment, billed for the current month
        first, last = _person(rng)
        new = conn.execute(
            "INSERT INTO school.students (school_id, class_id, admission_no, first_name, "
            "last_name, gender, date_of_birth, enrolled_on) "
            "SELECT c.school_id, c.class_id, %s, %s, %s, %s, "
            "       current_date - (5 + c.grade_level) * 365, current_date "
            "FROM school.classes c ORDER BY random() LIMIT 1 "
            "RETURNING student_id, school_id",
            [f"ADM-L{rng.getrandbits(48):012X}", first, last, rng.choice("FM")],
        ).fetchone()
        if new is not None:
            touched += 1 + _rowcount(
                conn,
                "INSERT INTO school.fees (student_id, school_id, fee_type, period_month, amount, "
                "due_date) VALUES (%s, %s, 'tuition', date_trunc('month', current_date)::date, "
                "%s, current_date + 14)",
                (new[0], new[1], _SCHOOLS[(new[1] - 1) % len(_SCHOOLS)][3]),
            )
    if rng.random() < 0.03:
        touched += _rowcount(
            conn,
            "UPDATE school.students SET status = 'transferred' WHERE student_id = "
            "(SELECT student_id FROM school.students WHERE status = 'active' "
            "ORDER BY random() LIMIT 1)",
        )
    return touched


def _tick_llm_usage(conn: psycopg.Connection[Any], rng: random.Random, rows: int) -> int:
    top = conn.execute("SELECT max(user_id) FROM llm_usage.api_usage").fetchone()
    n_users = int(top[0].rsplit("-", 1)[1]) if top and top[0] else 10
    now = datetime.now(UTC)
    calls = []
    for _ in range(rows):
        uid = n_users + 1 if rng.random() < 0.01 else min(n_users, int(rng.paretovariate(0.6)))
        calls.append(_api_call(rng, _llm_user(uid), now - timedelta(seconds=rng.uniform(0, 2))))
    return _insert(conn, "llm_usage", "api_usage", _API_USAGE_COLUMNS, calls)


def _tick_mes(conn: psycopg.Connection[Any], rng: random.Random, rows: int) -> int:
    touched = 0
    last_step = conn.execute("SELECT max(sequence_no) FROM mes.processes").fetchone()
    n_steps = int(last_step[0]) if last_step and last_step[0] else len(_PROCESSES)
    moving = conn.execute(
        "SELECT wip_id, current_process_id, status, updated_at FROM mes.wip_items "
        "WHERE status IN ('QUEUED', 'IN_PROCESS') ORDER BY updated_at, wip_id LIMIT %s "
        "FOR UPDATE SKIP LOCKED",
        [rows],
    ).fetchall()
    now = datetime.now(UTC)
    history: list[Row] = []
    updates: list[Row] = []  # (process, status, rework increment, completed?, wip_id)
    for wip_id, step, status, updated in moving:
        if status == "QUEUED":
            updates.append((step, "IN_PROCESS", 0, False, wip_id))
            continue
        started = min(updated, now - timedelta(seconds=_PROCESSES[(step - 1) % len(_PROCESSES)][2]))
        row, _end, passed = _operation(rng, wip_id, step, started)
        history.append((*row[:7], now, max(1, int((now - started).total_seconds()))))
        if passed and step >= n_steps:
            updates.append((step, "COMPLETED", 0, True, wip_id))
        elif passed:
            updates.append((step + 1, "QUEUED", 0, False, wip_id))
        elif rng.random() < 0.8:
            updates.append((step, "QUEUED", 1, False, wip_id))
        else:
            updates.append((step, "ON_HOLD", 1, False, wip_id))
    touched += _insert(conn, "mes", "wip_process_history", _HISTORY_COLUMNS, history)
    with conn.cursor() as cur:
        cur.executemany(
            "UPDATE mes.wip_items SET current_process_id = %s, status = %s, "
            "rework_count = rework_count + %s, updated_at = now(), "
            "completed_at = CASE WHEN %s THEN now() END WHERE wip_id = %s",
            updates,
        )
        touched += max(cur.rowcount, 0)
    if rng.random() < 0.1:  # an engineer releases the oldest hold
        touched += _rowcount(
            conn,
            "UPDATE mes.wip_items SET status = 'QUEUED', updated_at = now() WHERE wip_id = "
            "(SELECT wip_id FROM mes.wip_items WHERE status = 'ON_HOLD' ORDER BY updated_at "
            "LIMIT 1 FOR UPDATE SKIP LOCKED)",
        )
    active = conn.execute(
        "SELECT count(*) FROM mes.wip_items WHERE status IN ('QUEUED', 'IN_PROCESS')"
    ).fetchone()
    if rng.random() < 0.08 or (active is not None and active[0] < 4 * rows):
        touched += _release_lot(conn, rng)
    touched += _rowcount(
        conn,
        "UPDATE mes.lots l SET status = 'COMPLETED', closed_at = now() "
        "WHERE l.status IN ('CREATED', 'IN_PROGRESS') AND l.lot_id IN "
        "(SELECT lot_id FROM mes.wip_items WHERE wip_id = ANY(%s)) AND NOT EXISTS "
        "(SELECT 1 FROM mes.wip_items w WHERE w.lot_id = l.lot_id "
        " AND w.status NOT IN ('COMPLETED', 'SCRAPPED'))",
        ([u[4] for u in updates],),
    )
    touched += _rowcount(
        conn,
        "UPDATE mes.lots SET status = 'IN_PROGRESS' WHERE status = 'CREATED' AND lot_id IN "
        "(SELECT lot_id FROM mes.wip_items WHERE wip_id = ANY(%s))",
        ([u[4] for u in updates],),
    )
    return touched


def _release_lot(conn: psycopg.Connection[Any], rng: random.Random) -> int:
    """Release a new production lot with its items queued at the first process step."""
    quantity = rng.randint(10, 30)
    lot = conn.execute(
        "INSERT INTO mes.lots (lot_number, product_model, target_quantity, priority, due_at) "
        "VALUES (%s, %s, %s, %s, now() + make_interval(days => %s)) RETURNING lot_id",
        [
            f"LOT-L{rng.getrandbits(40):010X}",
            _PRODUCTS.pick(rng),
            quantity,
            rng.choice((1, 2, 3, 3, 3, 4, 5)),
            rng.randint(3, 10),
        ],
    ).fetchone()
    if lot is None:
        return 0
    first = conn.execute("SELECT min(process_id) FROM mes.processes WHERE is_active").fetchone()
    step = first[0] if first and first[0] else 1
    items = [(f"SN-L{rng.getrandbits(48):012X}", lot[0], step, "QUEUED") for _ in range(quantity)]
    return 1 + _insert(
        conn, "mes", "wip_items", ("serial_number", "lot_id", "current_process_id", "status"), items
    )


def _tick_marketing(conn: psycopg.Connection[Any], rng: random.Random, rows: int) -> int:
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
    touched += _insert(conn, "marketing", "events", _EVENT_COLUMNS, events)
    if active:
        touched += _rowcount(
            conn,
            "UPDATE marketing.users SET last_seen_at = now() WHERE user_id = ANY(%s)",
            (active,),
        )
    if rng.random() < 0.1:  # the ad platforms report spend
        touched += _rowcount(
            conn,
            "UPDATE marketing.campaigns SET spend = least(budget, spend + %s) WHERE campaign_id = "
            "(SELECT campaign_id FROM marketing.campaigns WHERE status = 'active' "
            "ORDER BY random() LIMIT 1)",
            (round(rng.uniform(20, 400), 2),),
        )
    return touched


def _tick_saas(conn: psycopg.Connection[Any], rng: random.Random, rows: int) -> int:
    touched = 0
    now = datetime.now(UTC)
    accounts: list[Row] = []
    memberships: list[Row] = []
    if rng.random() < 0.4:  # a user signs up and gets a personal account
        first, last = _person(rng)
        user_id, account_id = _uuid(rng), _uuid(rng)
        email = f"{first.lower()}.{last.lower()}.{user_id.hex[:6]}@example.com"
        accounts.append((account_id, user_id, f"{first} {last}", None, email, True, now, now))
        memberships.append((user_id, account_id, "owner", now, now))
    if rng.random() < 0.08:  # a user creates a team
        owner = conn.execute(
            "SELECT user_id FROM saas.accounts_memberships ORDER BY random() LIMIT 1"
        ).fetchone()
        if owner is not None:
            account_id = _uuid(rng)
            name = f"{rng.choice(_COMPANY_A)} {rng.choice(_COMPANY_B)}"
            slug = f"{name.lower().replace(' ', '-')}-{account_id.hex[:8]}"
            accounts.append((account_id, owner[0], name, slug, f"admin@{slug}.example.com",
                             False, now, now))  # fmt: skip
            memberships.append((owner[0], account_id, "owner", now, now))
    touched += _insert(conn, "saas", "accounts", _ACCOUNT_COLUMNS, accounts)
    touched += _insert(conn, "saas", "accounts_memberships", _MEMBERSHIP_COLUMNS, memberships)

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
        touched += _insert(conn, "saas", "assets", _ASSET_COLUMNS, assets)
        if rng.random() < 0.15:
            licence = _license_row(rng, rng.choice(teams)[0], now, now, 20)
            touched += _insert(conn, "saas", "software_licenses", _LICENSE_COLUMNS, [licence])
    if rng.random() < 0.3:
        touched += _rowcount(
            conn,
            "UPDATE saas.assets SET status = 'retired', updated_at = now() WHERE id = "
            "(SELECT id FROM saas.assets WHERE status IN ('active', 'in_repair') "
            "ORDER BY random() LIMIT 1)",
        )
    if rng.random() < 0.1:
        touched += _rowcount(
            conn,
            "DELETE FROM saas.assets WHERE id = "
            "(SELECT id FROM saas.assets WHERE status = 'retired' ORDER BY random() LIMIT 1)",
        )
    if rng.random() < 0.1:  # renew the licence closest to expiry
        touched += _rowcount(
            conn,
            "UPDATE saas.software_licenses SET expiry_date = expiry_date + 365, "
            "updated_at = now() WHERE id = (SELECT id FROM saas.software_licenses "
            "WHERE expiry_date >= current_date ORDER BY expiry_date, id LIMIT 1)",
        )
    return touched


_TICKS: dict[str, Callable[[psycopg.Connection[Any], random.Random, int], int]] = {
    "school": _tick_school,
    "llm_usage": _tick_llm_usage,
    "mes": _tick_mes,
    "marketing": _tick_marketing,
    "saas": _tick_saas,
}


def run_generator(
    dsn: str,
    *,
    interval_s: float = 1.0,
    systems: Sequence[str] = SYSTEMS,
    stop: threading.Event | None = None,
    max_ticks: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> int:
    """Produce live traffic: every ``interval_s`` one :func:`insert_batch` per system.

    Runs until ``stop`` is set or ``max_ticks`` ticks are done; returns the rows touched.
    A failing batch is reported through ``progress`` and skipped; a lost connection is
    re-opened on the next tick, so the generator survives database restarts. Only the first
    connection attempt raises (a wrong ``dsn`` fails fast).
    """
    for system in systems:
        _check_system(system)
    stop = stop or threading.Event()
    say = progress or (lambda _msg: None)
    rng = random.Random()
    total = ticks = 0
    conn: psycopg.Connection[Any] | None = _connect(dsn)
    try:
        while not stop.is_set() and (max_ticks is None or ticks < max_ticks):
            if conn is None or conn.closed:
                try:
                    conn = _connect(dsn)
                except psycopg.OperationalError as exc:
                    say(f"generator: cannot connect ({exc}); retrying")
                    conn = None
            if conn is not None:
                touched = 0
                for system in systems:
                    try:
                        touched += insert_batch(conn, system, rng)
                    except psycopg.Error as exc:
                        say(f"generator: {system} batch failed: {exc}")
                        if conn.closed:
                            break
                total += touched
                say(f"generator: tick {ticks + 1}, {touched} rows touched ({total} total)")
            ticks += 1
            if (max_ticks is not None and ticks >= max_ticks) or stop.wait(interval_s):
                break
    finally:
        if conn is not None:
            conn.close()
    return total


def _connect(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True, application_name="mvo-demo-generator")
