"""Summaries of the turns a cut leaves out (``memory.summarize``): one upstream call, never fatal to the turn.

The summary is a system message sent right after the system prompt from the cut on, and stored with the
conversation as its checkpoint; the next cut summarizes the previous summary together with the newly dropped
turns.  Any failure (an error status, a timeout, a reply that is not a summary) is logged and the turn goes on
without a new summary.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from gateway.core.ports import Upstream
from gateway.core.tokens import TokenCounter
from gateway.errors import GatewayError
from gateway.protocols.openai_chat import Message, dumps, loads

log = structlog.get_logger("gateway")
SUMMARY_PREFIX = "Summary of the earlier conversation:\n"
SUMMARY_MAX_TOKENS = 1024


class Summarizer:
    def __init__(self, upstream: Upstream, counter: TokenCounter, *, model: str, prompt: str) -> None:
        self._upstream = upstream
        self._counter = counter
        self._model = model
        self._prompt = prompt

    async def summarize(
        self,
        previous: Message | None,
        dropped: Sequence[Message],
        *,
        model: str | None,
        input_limit: int,
        authorization: str | None,
        headers: Mapping[str, str],
    ) -> Message | None:
        """A summary message of ``previous`` (the last summary) and ``dropped``, or None when it failed."""
        model = self._model or model
        transcript = self._transcript(previous, dropped, model, input_limit // 2)
        body = {
            "model": model,
            "messages": [{"role": "system", "content": self._prompt}, {"role": "user", "content": transcript}],
            "max_tokens": SUMMARY_MAX_TOKENS,
            "stream": False,
        }
        try:
            async with self._upstream.chat_completions(
                dumps(body).encode(), client_authorization=authorization, client_headers={}
            ) as response:
                raw = await response.read()
                status = response.status
        except GatewayError as exc:
            log.warning("summary_failed", error=exc.code)
            return None
        text = _reply_text(raw) if status < 400 else None
        if not text:
            log.warning("summary_failed", upstream_status=status)
            return None
        log.info("summary_written", dropped_messages=len(dropped))
        return {"role": "system", "content": SUMMARY_PREFIX + text}

    def _transcript(self, previous: Message | None, dropped: Sequence[Message], model: str | None, limit: int) -> str:
        """The dropped turns as ``role: text`` lines, newest kept when they do not all fit in ``limit`` tokens."""
        lines: list[str] = []
        used = 0
        for message in reversed(dropped):
            line = f"{message.get('role')}: {_text(message)}"
            used += self._counter.text(model, line, limit)
            if used > limit:
                break
            lines.append(line)
        lines.reverse()
        if previous is not None:
            lines.insert(0, f"(earlier) {_text(previous)}")
        return "\n".join(lines)


def _text(message: Message) -> str:
    content = message.get("content")
    parts = [content] if isinstance(content, str) else []
    if isinstance(content, list):
        parts += [str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text"]
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            parts.append(f"[calls {function.get('name')}({function.get('arguments', '')})]")
    return " ".join(parts)


def _reply_text(raw: bytes) -> str | None:
    try:
        data: Any = loads(raw)
        content = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return content.strip() if isinstance(content, str) else None
