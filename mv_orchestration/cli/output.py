"""What ``mvo`` prints: numbers in the units people read and tables that fit a terminal.

A table is left-aligned text with two spaces between columns and fits :data:`WIDTH` columns
without ever shortening a name:

* the first column holds names; a name too long for it gets a line of its own, and the rest
  of its row continues on the next line;
* the last column may be a list (a view's sources), wrapped at its separators onto lines
  indented to the column;
* a row may carry a note (why a view is not healthy), printed below it, indented and wrapped.

A line is wider than :data:`WIDTH` only when one name on it is, alone, longer. ``width=None``
(the commands' ``--wide``) puts each row on one line, as wide as its content.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

WIDTH = 100
GAP = "  "
NOTE_INDENT = "    "
_MIN_LIST_WIDTH = 24  # the narrowest the wrapped last column is made to leave the names room


def human_bytes(n: float) -> str:
    """``512 B``, ``2.1 kB``, ``12 MB``, ``1.4 GB`` (powers of 1024)."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(size) < 1024 or unit == "TB":
            if unit == "B":
                return f"{size:.0f} B"
            return f"{size:.1f} {unit}" if abs(size) < 10 else f"{size:.0f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


_UNITS = (("d", 86400.0), ("h", 3600.0), ("min", 60.0), ("s", 1.0))


def human_duration(seconds: float | None) -> str:
    """``40 ms``, ``2.1 s``, ``42 s``, ``5 min``, ``1.5 h``, ``3 d``; ``-`` for None/NaN."""
    if seconds is None or math.isnan(seconds):
        return "-"
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))} ms"
    for unit, size in _UNITS:
        if seconds >= size:
            value = seconds / size
            text = f"{value:.1f}" if value < 10 and unit != "min" else f"{value:.0f}"
            return f"{text.removesuffix('.0')} {unit}"
    raise AssertionError("unreachable")


def human_ago(seconds: float | None) -> str:
    """``12 s ago``, ``5 min ago``, ``3 h ago``; ``never`` for None/NaN."""
    if seconds is None or math.isnan(seconds):
        return "never"
    if seconds < 1:
        return "just now"
    return f"{human_duration(seconds)} ago"


def human_in(seconds: float | None) -> str:
    """``in 5 min``, ``in 13 h``; ``-`` for None/NaN."""
    if seconds is None or math.isnan(seconds):
        return "-"
    return "now" if seconds < 1 else f"in {human_duration(seconds)}"


def human_percent(value: float | None) -> str:
    """``100%``, ``99.5%``, ``-``."""
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.1f}".removesuffix(".0") + "%"


@dataclass(frozen=True)
class Row:
    """The cells of one row, and an optional note printed below it."""

    cells: Sequence[str]
    note: str = ""


def render_table(
    headers: Sequence[str],
    rows: Sequence[Row],
    *,
    width: int | None = WIDTH,
    list_separator: str | None = None,
    note_separator: str = "; ",
) -> list[str]:
    """The lines of a table (see the module docstring). ``list_separator`` (e.g. ``", "``)
    makes the last column a list wrapped at it; notes wrap at ``note_separator``."""
    widths = [max([len(h), *(len(r.cells[i]) for r in rows)]) for i, h in enumerate(headers)]
    if width is None:
        return [_join(headers, widths), *(_wide_row(r, widths) for r in rows)]
    wrap = list_separator is not None
    widths[0] = _name_width(headers[0], [r.cells[0] for r in rows], widths, width, wrap)
    lines = [_join(headers, widths)]
    for row in rows:
        lines.extend(_fitted_row(row, widths, width, list_separator))
        if row.note:
            lines.extend(_wrapped(row.note, note_separator, NOTE_INDENT, width))
    return lines


def _join(cells: Sequence[str], widths: Sequence[int]) -> str:
    return GAP.join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()


def _wide_row(row: Row, widths: Sequence[int]) -> str:
    line = _join(row.cells, widths)
    return f"{line}{GAP}{row.note}" if row.note else line


def _name_width(
    header: str, names: Sequence[str], widths: Sequence[int], width: int, wrap: bool
) -> int:
    """The first column's width: its longest name that leaves the other columns (and a
    wrapped list its minimum) room; longer names get a line of their own."""
    others = widths[1:-1] if wrap else widths[1:]
    room = width - sum(others) - len(GAP) * (len(widths) - 1)
    if wrap:
        room -= min(widths[-1], _MIN_LIST_WIDTH)
    return max([len(header), *(len(n) for n in names if len(n) <= room)])


def _fitted_row(
    row: Row, widths: Sequence[int], width: int, list_separator: str | None
) -> list[str]:
    name, *rest = row.cells
    lines: list[str] = []
    if len(name) > widths[0]:  # the name alone; the row goes on below it
        lines.append(name)
        name = ""
    if list_separator is None:
        return [*lines, _join([name, *rest], widths)]
    start = sum(widths[:-1]) + len(GAP) * (len(widths) - 1)
    items = _wrapped(rest[-1], list_separator, " " * start, width)
    head = _join([name, *rest[:-1]], widths[:-1])
    first = items[0][start:] if items and items[0].startswith(" " * start) else None
    if first is None:  # the first item too long for the column: it starts a line of its own
        return [*lines, head, *items]
    return [*lines, f"{head.ljust(start)}{first}".rstrip(), *items[1:]]


def _wrapped(text: str, separator: str, indent: str, width: int) -> list[str]:
    """``text`` split at ``separator`` and packed into lines of ``indent`` + items, at most
    ``width`` wide, each line but the last ending in the separator's mark (``,`` of ``", "``).
    An item too long for the indented line starts further left: a line is wider than
    ``width`` only when its item alone is."""
    items = [i for i in text.split(separator) if i] if text else []
    mark = separator.rstrip()
    joiner = separator[len(mark) :]
    pieces = [item + (mark if n < len(items) - 1 else "") for n, item in enumerate(items)]
    room = width - len(indent)
    lines: list[str] = []
    current = ""
    for piece in pieces:
        if current and len(current) + len(joiner) + len(piece) <= room:
            current += joiner + piece
        else:
            if current:
                lines.append(current)
            current = piece
    if current:
        lines.append(current)
    too_long = [len(line) for line in lines if len(indent) + len(line) > width]
    further_left = " " * max(0, width - max(too_long, default=0))
    return [(indent if len(indent) + len(line) <= width else further_left) + line for line in lines]
