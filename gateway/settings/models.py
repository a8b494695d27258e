"""Per-model settings: context window, tokens reserved for the reply, reasoning replay, cache policy and prices.

Built-in defaults for DashScope's current Qwen models (context windows as DashScope's model pages give them for the
stable aliases; a dated snapshot such as ``qwen-plus-2025-07-28`` takes the settings of the longest configured name
it starts with), overridden or extended by ``[models."NAME"]`` tables in config.toml; ``[models.default]`` is the
catch-all for every other model.

``cache`` (``gateway.core.cache_markers``): ``"auto"`` for the models DashScope's context cache page lists as
supporting its explicit cache (qwen3-max, qwen3.6-plus, qwen3.5-plus, qwen-plus, qwen3.5-flash, qwen-flash,
qwen3-coder-plus, qwen3-coder-flash; https://www.alibabacloud.com/help/en/model-studio/context-cache, Mar 31,
2026, and https://docs.qwencloud.com/developer-guides/text-generation/context-cache), ``"implicit"`` for the rest.

``input_price`` / ``output_price`` (per million tokens, in ``currency``) price the cost ledger
(``gateway.core.ledger``).  Built in: Model Studio's international (Singapore) list prices in USD, first tier
(the shortest inputs; longer inputs cost more on qwen3-max and the coder models), non-thinking output, as
Alibaba Cloud's model and billing pages gave them (stored copies dated April 2025 to May 2026; checked
2026-12-01).  A model without prices gets token figures but no costs.  The China (Beijing) region bills in CNY at
other prices: configure them there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

REASONING_POLICIES = ("never", "tool_loop", "always")
# explicit: cache markers on every request; auto: markers once the prefix is long enough for DashScope to cache
# (at least 1,024 tokens); implicit: none, DashScope's own prefix cache only (what every model gets).
CACHE_POLICIES = ("explicit", "implicit", "auto")


@dataclass(frozen=True)
class ModelSettings:
    context_tokens: int
    reserve_tokens: int
    reasoning_replay: str = "never"
    cache: str = "implicit"
    input_price: float | None = None  # per million tokens, in currency
    output_price: float | None = None
    currency: str = "USD"


BUILT_IN: dict[str, ModelSettings] = {
    "default": ModelSettings(32_768, 4_096),
    "qwen-max": ModelSettings(32_768, 8_192, input_price=1.6, output_price=6.4),
    "qwen3-max": ModelSettings(262_144, 65_536, cache="auto", input_price=1.2, output_price=6.0),
    "qwen-plus": ModelSettings(1_000_000, 32_768, cache="auto", input_price=0.4, output_price=1.2),
    "qwen-turbo": ModelSettings(1_000_000, 16_384, input_price=0.05, output_price=0.2),
    "qwen-flash": ModelSettings(1_000_000, 32_768, cache="auto", input_price=0.05, output_price=0.4),
    "qwen-long": ModelSettings(10_000_000, 32_768),
    "qwen3-coder-plus": ModelSettings(1_000_000, 65_536, cache="auto", input_price=1.0, output_price=5.0),
    "qwen3-coder-flash": ModelSettings(1_000_000, 65_536, cache="auto", input_price=0.3, output_price=1.5),
    "qwq-plus": ModelSettings(131_072, 8_192, "tool_loop"),
}


class ModelTable:
    """Settings by model name: exact name, else the longest configured prefix, else ``default``."""

    def __init__(self, entries: Mapping[str, ModelSettings]) -> None:
        self._entries = dict(entries)
        self._by_prefix = sorted((name for name in self._entries if name != "default"), key=len, reverse=True)
        self._resolved: dict[str | None, ModelSettings] = {}

    def __getitem__(self, model: str | None) -> ModelSettings:
        found = self._resolved.get(model)
        if found is None:
            found = self._entries["default"]
            if model is not None:
                name = next((n for n in self._by_prefix if model == n or model.startswith(n)), None)
                found = self._entries[name] if name is not None else found
            if len(self._resolved) < 10_000:  # client-chosen names: keep the memo bounded
                self._resolved[model] = found
        return found

    def entries(self) -> Mapping[str, ModelSettings]:
        return self._entries


def parse_models(tables: Mapping[str, Any], error: type[Exception]) -> ModelTable:
    """``[models."NAME"]`` tables over the built-in ones; ``error(message)`` names the bad setting."""
    entries = dict(BUILT_IN)
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise error(f'models."{name}": expected a [models."{name}"] table')
        # A new entry (a dated snapshot, say) starts from what its name resolved to: its alias's window and prices.
        settings = entries.get(name) or ModelTable(entries)[name]
        for key, value in table.items():
            path = f'models."{name}".{key}'
            if key in ("context_tokens", "reserve_tokens"):
                if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100_000_000:
                    raise error(f"{path}: expected a positive number of tokens, got {value!r}")
                settings = (
                    replace(settings, context_tokens=value)
                    if key == "context_tokens"
                    else replace(settings, reserve_tokens=value)
                )
            elif key == "reasoning_replay":
                if value not in REASONING_POLICIES:
                    raise error(f"{path}: must be one of {', '.join(REASONING_POLICIES)}, got {value!r}")
                settings = replace(settings, reasoning_replay=value)
            elif key == "cache":
                if value not in CACHE_POLICIES:
                    raise error(f"{path}: must be one of {', '.join(CACHE_POLICIES)}, got {value!r}")
                settings = replace(settings, cache=value)
            elif key in ("input_price", "output_price"):
                if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1_000_000:
                    raise error(f"{path}: expected a price per million tokens (a number, 0 or more), got {value!r}")
                price = float(value)
                settings = (
                    replace(settings, input_price=price)
                    if key == "input_price"
                    else replace(settings, output_price=price)
                )
            elif key == "currency":
                if not isinstance(value, str) or not value.isalpha() or not 1 <= len(value) <= 8:
                    raise error(f'{path}: expected a currency code such as "USD" or "CNY", got {value!r}')
                settings = replace(settings, currency=value.upper())
            else:
                raise error(
                    f"{path}: unknown setting (context_tokens, reserve_tokens, reasoning_replay, cache, input_price, "
                    "output_price, currency)"
                )
        if (settings.input_price is None) != (settings.output_price is None):
            raise error(f'models."{name}": set both input_price and output_price, or neither')
        if "currency" in table and not ("input_price" in table and "output_price" in table):
            # Built-in prices are in USD: a currency alone would relabel them.
            raise error(f'models."{name}".currency: set input_price and output_price in that currency with it')
        if settings.reserve_tokens >= settings.context_tokens:
            raise error(f'models."{name}".reserve_tokens: must be smaller than context_tokens')
        entries[name] = settings
    return ModelTable(entries)
