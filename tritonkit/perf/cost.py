"""What the measured job costs: on your own server at $/hour, and at hosted-API prices.

The seed's formula, cost_per_1k = price_per_hour / (rps * 3600 * (in_tokens + out_tokens)) * 1000,
is applied to *measured* numbers: rps is the step's successful requests/s and the token counts
are the server-reported mean input and output tokens of those requests. (The seed used the
configured rate and assumed token counts.) It equals price_per_hour / (total tokens/s * 3600) * 1000.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ApiPrice:
    name: str
    input: float  # USD per 1M input tokens
    output: float  # USD per 1M output tokens
    set: str
    source: str
    date: str


@dataclass(frozen=True)
class Cost:
    price_per_hour: float
    price_source: str
    rps: float
    mean_input_tokens: float
    mean_output_tokens: float
    per_1k_tokens: float | None  # seed formula, all tokens
    per_1k_output_tokens: float | None
    per_1m_requests: float | None
    api: list[dict]  # the same 1M requests priced at each API's list prices
    at: str  # the load and SLO the numbers hold at

    def to_dict(self) -> dict:
        return asdict(self)


def seed_cost_per_1k(price_per_hour: float, rps: float, in_tokens: float, out_tokens: float) -> float | None:
    tokens = in_tokens + out_tokens
    if rps <= 0 or tokens <= 0:
        return None
    return price_per_hour / (rps * 3600 * tokens) * 1000


def api_cost_per_1m_requests(price: ApiPrice, in_tokens: float, out_tokens: float) -> float:
    # 1M requests of (in, out) tokens at USD per 1M tokens: the millions cancel.
    return in_tokens * price.input + out_tokens * price.output


def cost(price_per_hour: float, price_source: str, rps: float, in_tokens: float, out_tokens: float,
         api_prices: list[ApiPrice], at: str) -> Cost:
    per_1m = price_per_hour / (rps * 3600) * 1e6 if rps > 0 else None
    per_1k_out = price_per_hour / (rps * out_tokens * 3600) * 1000 if rps > 0 and out_tokens > 0 else None
    api = []
    for p in api_prices:
        job = api_cost_per_1m_requests(p, in_tokens, out_tokens)
        api.append({"name": p.name, "set": p.set, "source": p.source, "date": p.date,
                    "usd_per_1m_input_tokens": p.input, "usd_per_1m_output_tokens": p.output,
                    "per_1m_requests": job, "times_self_hosted": (job / per_1m) if per_1m else None})
    return Cost(price_per_hour, price_source, rps, in_tokens, out_tokens,
                seed_cost_per_1k(price_per_hour, rps, in_tokens, out_tokens), per_1k_out, per_1m, api, at)


def parse_prices(doc: dict) -> list[ApiPrice]:
    """The api_prices.json document -> ApiPrice list (USD per 1M tokens)."""
    scale = {"usd_per_1m_tokens": 1.0, "usd_per_1k_tokens": 1000.0}[doc.get("unit", "usd_per_1m_tokens")]
    return [ApiPrice(m["name"], float(m["input"]) * scale, float(m["output"]) * scale, m.get("set", ""),
                     m.get("source", ""), m.get("date", "")) for m in doc.get("models", [])]
