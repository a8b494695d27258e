"""A closed-loop HTTP load generator: N workers, each sending its next request as soon as the last one ends.

Every request is a chat completion carrying one new user message, as a stateless client of the gateway sends it.
With ``conversations`` set, each request also carries an ``X-Conversation-Id``: requests go round-robin over that
many active conversations, and once each has had ``turns`` turns the next batch of fresh conversations takes over.
So the gateway loads and extends real histories of a bounded, realistic length (a phone-store dialog is 4-6 turns),
and two concurrent requests rarely share a conversation (which the gateway would rightly serialize).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import time
from dataclasses import dataclass, field

import aiohttp


@dataclass(frozen=True)
class Load:
    concurrency: int
    requests: int | None = None  # stop after this many requests ...
    seconds: float | None = None  # ... or after this long
    conversations: int = 0  # active conversations; 0: no X-Conversation-Id header
    turns: int = 8  # turns per conversation before it is replaced by a fresh one
    id_prefix: str = "bench"


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests only
    errors: int = 0
    elapsed: float = 0.0

    def merge(self, other: Result) -> None:
        self.latencies.extend(other.latencies)
        self.errors += other.errors
        self.elapsed += other.elapsed

    @property
    def requests_per_second(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0

    def percentile(self, fraction: float) -> float:
        """The ``fraction`` percentile in milliseconds."""
        if not self.latencies:
            return float("nan")
        if len(self.latencies) == 1:
            return self.latencies[0] * 1000
        cuts = statistics.quantiles(self.latencies, n=1000, method="inclusive")
        return cuts[round(fraction * 1000) - 1] * 1000


def quantile(values: list[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``values`` (in their unit), to the percent; one value is its own, none NaN."""
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[round(fraction * 100) - 1]


def _body(turn: int) -> bytes:
    message = {"role": "user", "content": f"I would like a phone with a 6.7 inch screen, please ({turn})."}
    return json.dumps({"model": "qwen-plus", "messages": [message]}).encode()


async def run_load(url: str, load: Load) -> Result:
    """Drive ``url`` (a chat completions endpoint) with ``load`` and return what was measured."""
    result = Result()
    counter = itertools.count()
    deadline = None
    connector = aiohttp.TCPConnector(limit=load.concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while True:
                n = next(counter)
                if load.requests is not None and n >= load.requests:
                    return
                if deadline is not None and time.perf_counter() >= deadline:
                    return
                headers = {"Content-Type": "application/json", "Authorization": "Bearer bench-key"}
                if load.conversations:
                    generation, slot = divmod(n, load.conversations)
                    batch = generation // load.turns
                    headers["X-Conversation-Id"] = f"{load.id_prefix}-{batch}-{slot}"
                sent = time.perf_counter()
                try:
                    async with session.post(url, data=_body(n), headers=headers) as response:
                        await response.read()
                        ok = response.status == 200
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    result.latencies.append(time.perf_counter() - sent)
                else:
                    result.errors += 1

        started = time.perf_counter()
        if load.seconds is not None:
            deadline = started + load.seconds
        await asyncio.gather(*(worker() for _ in range(load.concurrency)))
        result.elapsed = time.perf_counter() - started
    return result
