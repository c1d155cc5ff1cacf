"""The one duration grammar of the policy file and the CLI (``mvo status --since``)."""

from __future__ import annotations

import re
from datetime import timedelta

_NUMBER = r"(\d+(?:\.\d+)?)"
_DURATION = re.compile(rf"(?:{_NUMBER}d)?(?:{_NUMBER}h)?(?:{_NUMBER}m)?(?:{_NUMBER}s)?")


def parse_duration(text: str) -> timedelta | None:
    """``90s``, ``15m``, ``1.5h``, ``1d`` or a combination like ``1d12h`` (units in the order
    d, h, m, s; case-insensitive); None if malformed."""
    raw = text.strip().lower()
    match = _DURATION.fullmatch(raw)
    if not raw or match is None:
        return None
    days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
