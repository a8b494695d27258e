"""Per-model settings: context window, tokens reserved for the reply, reasoning replay and cache policies.

Built-in defaults for DashScope's current Qwen models (context windows as DashScope's model pages give them for the
stable aliases; a dated snapshot such as ``qwen-plus-2025-07-28`` takes the settings of the longest configured name
it starts with), overridden or extended by ``[models."NAME"]`` tables in config.toml; ``[models.default]`` is the
catch-all for every other model.

``cache`` (``gateway.core.cache_markers``): ``"auto"`` for the models DashScope's context cache page lists as
supporting its explicit cache (qwen3-max, qwen3.6-plus, qwen3.5-plus, qwen-plus, qwen3.5-flash, qwen-flash,
qwen3-coder-plus, qwen3-coder-flash; https://www.alibabacloud.com/help/en/model-studio/context-cache, Mar 31,
2026, and https://docs.qwencloud.com/developer-guides/text-generation/context-cache), ``"implicit"`` for the rest.
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


BUILT_IN: dict[str, ModelSettings] = {
    "default": ModelSettings(32_768, 4_096),
    "qwen-max": ModelSettings(32_768, 8_192),
    "qwen3-max": ModelSettings(262_144, 65_536, cache="auto"),
    "qwen-plus": ModelSettings(1_000_000, 32_768, cache="auto"),
    "qwen-turbo": ModelSettings(1_000_000, 16_384),
    "qwen-flash": ModelSettings(1_000_000, 32_768, cache="auto"),
    "qwen-long": ModelSettings(10_000_000, 32_768),
    "qwen3-coder-plus": ModelSettings(1_000_000, 65_536, cache="auto"),
    "qwen3-coder-flash": ModelSettings(1_000_000, 65_536, cache="auto"),
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
        settings = entries.get(name, entries["default"])
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
            else:
                raise error(f"{path}: unknown setting (context_tokens, reserve_tokens, reasoning_replay, cache)")
        if settings.reserve_tokens >= settings.context_tokens:
            raise error(f'models."{name}".reserve_tokens: must be smaller than context_tokens')
        entries[name] = settings
    return ModelTable(entries)
