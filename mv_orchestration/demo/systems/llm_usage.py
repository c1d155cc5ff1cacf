"""Demo system 001: LLM API usage analytics.

Calls of users to the chat and embedding models of several providers, with tokens, cost, latency
and failures; live traffic adds new calls. The schema and the catalog features it exercises are
in ``sql/llm_usage.sql``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
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
    scaled,
)


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
_CHAT_MODELS = Weighted(
    [m for m in _MODELS if not m.embedding], [m.weight for m in _MODELS if not m.embedding]
)
_EMBED_MODELS = Weighted(
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
_SERVICE_PICK = Weighted(list(_SERVICES), [v[0] for v in _SERVICES.values()])
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


def load(ld: Loader, rng: random.Random, scale: float, now: datetime) -> None:
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
    n_users = scaled(400, scale, 10)
    users = Weighted(
        [_llm_user(i) for i in range(1, n_users + 1)],
        [1.0 / (i**0.8) for i in range(1, n_users + 1)],
    )
    when = TimePicker(now, 120 * 24, daily_growth=1.012)

    def calls() -> Iterator[Row]:
        for _ in range(scaled(200_000, scale, 200)):
            yield _api_call(rng, users.pick(rng), when.pick(rng))

    ld.copy("api_usage", _API_USAGE_COLUMNS, calls())


def tick(conn: psycopg.Connection[Any], rng: random.Random, rows: int) -> int:
    top = conn.execute("SELECT max(user_id) FROM llm_usage.api_usage").fetchone()
    n_users = int(top[0].rsplit("-", 1)[1]) if top and top[0] else 10
    now = datetime.now(UTC)
    calls = []
    for _ in range(rows):
        uid = n_users + 1 if rng.random() < 0.01 else min(n_users, int(rng.paretovariate(0.6)))
        calls.append(_api_call(rng, _llm_user(uid), now - timedelta(seconds=rng.uniform(0, 2))))
    return insert_rows(conn, "llm_usage", "api_usage", _API_USAGE_COLUMNS, calls)


SYSTEM = System(
    name="llm_usage",
    matviews=(
        "mv_daily_metrics",
        "mv_provider_performance",
        "mv_model_costs",
        "mv_model_usage",
    ),
    load=load,
    tick=tick,
)
