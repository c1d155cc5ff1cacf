"""The five demo systems, one module each, in load order; :mod:`.common` holds what they share."""

from __future__ import annotations

from mv_orchestration.demo.systems import llm_usage, marketing, mes, saas, school
from mv_orchestration.demo.systems.common import System

__all__ = ["BY_NAME", "System"]

BY_NAME: dict[str, System] = {
    m.SYSTEM.name: m.SYSTEM for m in (school, llm_usage, mes, marketing, saas)
}
