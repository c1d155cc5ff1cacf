"""Demo system 000: a multi-school dashboard.

Schools, teachers, classes and students with their attendance, grades and fees; live traffic
takes today's registers, enters quiz marks, records payments and enrols or transfers students.
The schema and the catalog features it exercises are in ``sql/school.sql``.
"""

from __future__ import annotations

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
    Weighted,
    person,
    rowcount,
    scaled,
)

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


def load(ld: Loader, rng: random.Random, scale: float, now: datetime) -> None:
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
    per_school = scaled(25, scale, len(_SUBJECTS) + 2)
    for school_id in range(1, len(_SCHOOLS) + 1):
        for k in range(per_school):
            tid = len(teachers) + 1
            subject_id = k % len(_SUBJECTS) + 1
            first, last = person(rng)
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
    school_pick = Weighted(range(1, len(_SCHOOLS) + 1), [1.2, 1.0, 0.8, 0.6])
    for sid in range(1, scaled(2000, scale, 24) + 1):
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
        first, last = person(rng)
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


def tick(conn: psycopg.Connection[Any], rng: random.Random, rows: int) -> int:
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
    touched += rowcount(
        conn,
        "UPDATE school.fees SET amount_paid = amount, status = 'paid', paid_at = now() "
        "WHERE fee_id IN (SELECT fee_id FROM school.fees WHERE status IN ('pending', 'partial') "
        "ORDER BY due_date, fee_id LIMIT %s)",
        (rng.randint(1, 3),),
    )
    if rng.random() < 0.1:  # a new enrolment, billed for the current month
        first, last = person(rng)
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
            touched += 1 + rowcount(
                conn,
                "INSERT INTO school.fees (student_id, school_id, fee_type, period_month, amount, "
                "due_date) VALUES (%s, %s, 'tuition', date_trunc('month', current_date)::date, "
                "%s, current_date + 14)",
                (new[0], new[1], _SCHOOLS[(new[1] - 1) % len(_SCHOOLS)][3]),
            )
    if rng.random() < 0.03:
        touched += rowcount(
            conn,
            "UPDATE school.students SET status = 'transferred' WHERE student_id = "
            "(SELECT student_id FROM school.students WHERE status = 'active' "
            "ORDER BY random() LIMIT 1)",
        )
    return touched


SYSTEM = System(
    name="school",
    matviews=(
        "mv_attendance_daily",
        "mv_grade_summary",
        "mv_fee_collection",
        "mv_school_overview",
    ),
    load=load,
    tick=tick,
)
