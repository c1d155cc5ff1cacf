"""Demo system 002: manufacturing work in progress (MES).

Serial-numbered items of production lots move through a fixed route of processes, every pass
logged; live traffic moves items on, reworks, holds and releases them, and releases new lots.
The schema and the catalog features it exercises are in ``sql/mes.sql``.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
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
_PRODUCTS = Weighted(["NH-100", "NH-200", "NH-200P", "NH-X1"], [5, 3, 2, 1])
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


def load(ld: Loader, rng: random.Random, scale: float, now: datetime) -> None:
    ld.copy(
        "processes",
        ("process_id", "process_code", "process_name", "sequence_no", "standard_cycle_s"),
        [(i, code, name, i, std) for i, (code, name, std) in enumerate(_PROCESSES, 1)],
    )
    last_step = len(_PROCESSES)
    # Production runs in two shifts: lots are released during working hours.
    shifts = [0.05] * 6 + [1.0] * 16 + [0.05] * 2
    lot_time = TimePicker(now, 30 * 24, weekend=0.3, diurnal=shifts)
    lots: list[Row] = []
    items: list[Row] = []
    history: list[Row] = []
    for lot_id, created in enumerate(
        sorted(lot_time.pick(rng) for _ in range(scaled(300, scale, 6))), 1
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


def tick(conn: psycopg.Connection[Any], rng: random.Random, rows: int) -> int:
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
    touched += insert_rows(conn, "mes", "wip_process_history", _HISTORY_COLUMNS, history)
    with conn.cursor() as cur:
        cur.executemany(
            "UPDATE mes.wip_items SET current_process_id = %s, status = %s, "
            "rework_count = rework_count + %s, updated_at = now(), "
            "completed_at = CASE WHEN %s THEN now() END WHERE wip_id = %s",
            updates,
        )
        touched += max(cur.rowcount, 0)
    if rng.random() < 0.1:  # an engineer releases the oldest hold
        touched += rowcount(
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
    touched += rowcount(
        conn,
        "UPDATE mes.lots l SET status = 'COMPLETED', closed_at = now() "
        "WHERE l.status IN ('CREATED', 'IN_PROGRESS') AND l.lot_id IN "
        "(SELECT lot_id FROM mes.wip_items WHERE wip_id = ANY(%s)) AND NOT EXISTS "
        "(SELECT 1 FROM mes.wip_items w WHERE w.lot_id = l.lot_id "
        " AND w.status NOT IN ('COMPLETED', 'SCRAPPED'))",
        ([u[4] for u in updates],),
    )
    touched += rowcount(
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
    return 1 + insert_rows(
        conn, "mes", "wip_items", ("serial_number", "lot_id", "current_process_id", "status"), items
    )


SYSTEM = System(
    name="mes",
    matviews=(
        "mv_wip_status_dashboard",
        "mv_process_wip_queue",
    ),
    load=load,
    tick=tick,
)
