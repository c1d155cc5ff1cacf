"""Asset checks for every MV, from one factory.

Checks run inside the refresh step, right after each MV's refresh, on figures the refresh
measured (no extra scan), except ``success_rate`` which reads the refresh history and
``refresh_method`` which may probe the MV's columns once to suggest an index.

| check | severity | fails when |
|---|---|---|
| ``row_count`` | ERROR | the MV is empty (unless ``allow_empty``), or outside ``min_rows``/``max_rows`` |
| ``row_count`` | WARN | it changed by more than ``max_change_pct`` % since the previous refresh |
| ``refresh_duration`` | WARN | the refresh took longer than ``duration_warn_s`` (5 s) |
| ``success_rate`` | WARN / ERROR | success rate over ``success_window_h`` below 95 % / 80 % (seed 004) |
| ``refresh_method`` | WARN | the MV can only be refreshed blocking readers; names the index that would fix it |

ERROR checks are not blocking by default; with ``blocking: true`` a failed ERROR check stops
the MVs downstream of it in the same run (they keep their previous contents).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg
import psycopg
from psycopg import sql

from mv_orchestration.core.catalog import MaterializedView
from mv_orchestration.core.refresh import RefreshResult
from mv_orchestration.core.sql import qualname, quote_ident, relation
from mv_orchestration.errors import ConfigError

ROW_COUNT = "row_count"
REFRESH_DURATION = "refresh_duration"
SUCCESS_RATE = "success_rate"
REFRESH_METHOD = "refresh_method"


@dataclass(frozen=True)
class CheckThresholds:
    """Thresholds of the checks; set per view or group under ``checks:`` in the policy YAML."""

    allow_empty: bool = False
    min_rows: int | None = None
    max_rows: int | None = None
    max_change_pct: float | None = None
    duration_warn_s: float = 5.0
    success_rate_warn: float = 95.0
    success_rate_error: float = 80.0
    success_window_h: float = 24.0
    blocking: bool = False

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], where: str = "checks") -> CheckThresholds:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if key not in fields:
                allowed = ", ".join(sorted(fields))
                raise ConfigError(f"{where}.{key}: unknown check setting (allowed: {allowed})")
            default = getattr(cls(), key)
            if isinstance(default, bool) or key in ("allow_empty", "blocking"):
                if not isinstance(value, bool):
                    raise ConfigError(f"{where}.{key}: expected true or false, got {value!r}")
            elif value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or value < 0
            ):
                raise ConfigError(f"{where}.{key}: expected a number >= 0, got {value!r}")
            kwargs[key] = value
        result = cls(**kwargs)
        if result.success_rate_error > result.success_rate_warn:
            raise ConfigError(
                f"{where}: success_rate_error ({result.success_rate_error}) must not be above "
                f"success_rate_warn ({result.success_rate_warn})"
            )
        if (
            result.min_rows is not None
            and result.max_rows is not None
            and result.min_rows > result.max_rows
        ):
            raise ConfigError(f"{where}: min_rows is above max_rows")
        return result


def check_specs(
    key: dg.AssetKey, thresholds: CheckThresholds, *, with_history: bool, concurrent: bool = True
) -> list[dg.AssetCheckSpec]:
    """The check specs of one MV (``success_rate`` only when history is recorded);
    ``concurrent``: whether the MV has a unique index that allows CONCURRENTLY."""
    specs = [
        dg.AssetCheckSpec(
            ROW_COUNT,
            asset=key,
            description="Not empty and within the configured bounds after each refresh.",
            blocking=thresholds.blocking,
        ),
        dg.AssetCheckSpec(
            REFRESH_DURATION,
            asset=key,
            description=f"Refresh took at most {thresholds.duration_warn_s:g} s.",
        ),
        dg.AssetCheckSpec(
            REFRESH_METHOD,
            asset=key,
            description=(
                "Passes when a refresh runs CONCURRENTLY (readers are not blocked); warns when "
                "it had to block readers, naming the unique index that would fix that."
                if concurrent
                else "Warns on each refresh that blocks readers: this view has no unique index "
                "on plain columns, so it cannot be refreshed CONCURRENTLY; the warning names "
                "an index that would fix that when one fits the data."
            ),
        ),
    ]
    if with_history:
        specs.append(
            dg.AssetCheckSpec(
                SUCCESS_RATE,
                asset=key,
                description=(
                    f"Refresh success rate over {thresholds.success_window_h:g} h at least "
                    f"{thresholds.success_rate_warn:g} % (error below "
                    f"{thresholds.success_rate_error:g} %)."
                ),
                blocking=thresholds.blocking,
            )
        )
    return specs


def row_count_check(
    key: dg.AssetKey, result: RefreshResult, t: CheckThresholds
) -> dg.AssetCheckResult:
    rows = result.rows_after
    meta: dict[str, Any] = {}
    if rows is None:
        return dg.AssetCheckResult(
            asset_key=key,
            check_name=ROW_COUNT,
            passed=True,
            metadata={"note": "row counting is switched off"},
        )
    meta["rows"] = dg.MetadataValue.int(rows)
    problems: list[str] = []
    if rows == 0 and not t.allow_empty:
        problems.append("the view is empty")
    if t.min_rows is not None and rows < t.min_rows:
        problems.append(f"{rows} rows < min_rows {t.min_rows}")
    if t.max_rows is not None and rows > t.max_rows:
        problems.append(f"{rows} rows > max_rows {t.max_rows}")
    if problems:
        return dg.AssetCheckResult(
            asset_key=key,
            check_name=ROW_COUNT,
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            description="; ".join(problems),
            metadata=meta,
        )
    if result.rows_before is not None:
        before = result.rows_before
        change = (abs(rows - before) / before * 100.0) if before else (100.0 if rows else 0.0)
        meta["rows_before"] = dg.MetadataValue.int(before)
        meta["change_pct"] = dg.MetadataValue.float(round(change, 3))
        if t.max_change_pct is not None and change > t.max_change_pct:
            return dg.AssetCheckResult(
                asset_key=key,
                check_name=ROW_COUNT,
                passed=False,
                severity=dg.AssetCheckSeverity.WARN,
                description=(
                    f"row count changed {change:.1f} % ({before} → {rows}), "
                    f"more than max_change_pct {t.max_change_pct:g} %"
                ),
                metadata=meta,
            )
    return dg.AssetCheckResult(asset_key=key, check_name=ROW_COUNT, passed=True, metadata=meta)


def duration_check(
    key: dg.AssetKey, result: RefreshResult, t: CheckThresholds
) -> dg.AssetCheckResult:
    slow = result.duration_s > t.duration_warn_s
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=REFRESH_DURATION,
        passed=not slow,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            f"refresh took {result.duration_s:.3f} s > {t.duration_warn_s:g} s" if slow else None
        ),
        metadata={
            "duration_s": dg.MetadataValue.float(round(result.duration_s, 6)),
            "threshold_s": dg.MetadataValue.float(float(t.duration_warn_s)),
        },
    )


def success_rate_unknown(key: dg.AssetKey, why: str) -> dg.AssetCheckResult:
    """The success-rate check when the history could not be read (a WARN, saying why)."""
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=SUCCESS_RATE,
        passed=False,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"success rate unknown: {why}",
    )


def success_rate_check(
    key: dg.AssetKey, *, successes: int, total: int, t: CheckThresholds
) -> dg.AssetCheckResult:
    """Success rate over the window, from the history (including this refresh)."""
    rate = 100.0 * successes / total if total else 100.0
    meta = {
        "success_rate_pct": dg.MetadataValue.float(round(rate, 3)),
        "attempts": dg.MetadataValue.int(total),
        "failures": dg.MetadataValue.int(total - successes),
        "window_h": dg.MetadataValue.float(float(t.success_window_h)),
    }
    if rate < t.success_rate_error:
        severity, passed = dg.AssetCheckSeverity.ERROR, False
    elif rate < t.success_rate_warn:
        severity, passed = dg.AssetCheckSeverity.WARN, False
    else:
        severity, passed = dg.AssetCheckSeverity.WARN, True
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=SUCCESS_RATE,
        passed=passed,
        severity=severity,
        description=None
        if passed
        else (
            f"success rate {rate:.1f} % over {t.success_window_h:g} h "
            f"({total - successes} of {total} refreshes failed)"
        ),
        metadata=meta,
    )


def suggest_unique_index(conn: psycopg.Connection[Any], mv: MaterializedView) -> str | None:
    """The smallest leading set of the MV's columns that is unique in its current rows, as a
    ``CREATE UNIQUE INDEX`` statement; None when no prefix is unique (or the MV is empty)."""
    cols = [c.name for c in mv.columns]
    if not cols:
        return None
    counts = sql.SQL(", ").join(
        sql.SQL("count(DISTINCT ({}))").format(
            sql.SQL("ROW({})").format(sql.SQL(", ").join(map(sql.Identifier, cols[: i + 1])))
            if i
            else sql.Identifier(cols[0])
        )
        for i in range(len(cols))
    )
    with conn.cursor() as cur:
        row = cur.execute(
            sql.SQL("SELECT count(*), {} FROM {}").format(counts, relation(mv.schema, mv.name))
        ).fetchone()
    if row is None or not row[0]:
        return None
    total = row[0]
    for i, distinct in enumerate(row[1:]):
        # NULLs are distinct in a unique index; the prefix must also be NOT NULL to be safe,
        # which count(DISTINCT) already reflects by skipping NULL rows.
        if distinct == total:
            key_cols = ", ".join(quote_ident(c) for c in cols[: i + 1])
            return f"CREATE UNIQUE INDEX ON {qualname(mv.schema, mv.name)} ({key_cols})"
    return None


def method_check(
    key: dg.AssetKey, mv: MaterializedView, result: RefreshResult, suggestion: str | None
) -> dg.AssetCheckResult:
    if result.method != "blocking":
        return dg.AssetCheckResult(
            asset_key=key,
            check_name=REFRESH_METHOD,
            passed=True,
            metadata={"method": result.method},
        )
    unusable = [ix for ix in mv.unique_indexes if not ix.usable_for_concurrently]
    why = (
        "its unique indexes can't be used: "
        + "; ".join(f"{ix.name} {ix.reason}" for ix in unusable)
        if unusable
        else "it has no unique index"
    )
    fix = f"; this would fix it: {suggestion}" if suggestion else ""
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=REFRESH_METHOD,
        passed=False,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"refreshed blocking readers because {why}{fix}",
        metadata={"method": result.method, "suggested_index": suggestion or "none found"},
    )


def blocking_failures(
    results: Sequence[dg.AssetCheckResult], specs: Sequence[dg.AssetCheckSpec]
) -> list[str]:
    """Names of failed ERROR checks that are blocking."""
    blocking = {s.name for s in specs if s.blocking}
    return [
        r.check_name or ""
        for r in results
        if not r.passed and r.severity == dg.AssetCheckSeverity.ERROR and r.check_name in blocking
    ]
