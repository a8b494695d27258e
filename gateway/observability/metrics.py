"""Prometheus metrics (prometheus-client), in a registry of the app's own, exposed at ``GET /metrics``.

Routes are labelled by their pattern (``/v1/conversations/{conversation_id}``), never by a path holding an id, so
the number of series stays fixed.  No label ever holds a key, an owner or message text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_DB_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "gateway_requests", "Requests answered, by route and status.", ["route", "status"], registry=r
        )
        self.duration = Histogram(
            "gateway_request_duration_seconds", "Whole request time, by route.", ["route"], buckets=_LATENCY_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.first_byte = Histogram(
            "gateway_time_to_first_byte_seconds", "From the request to its response headers, by route.", ["route"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.upstream = Histogram(
            "gateway_upstream_duration_seconds", "From sending a request upstream to its response headers.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.in_flight = Gauge("gateway_in_flight_requests", "Requests being handled.", registry=r)
        self.open_streams = Gauge("gateway_open_streams", "Streamed replies being relayed.", registry=r)
        self.tokens = Counter("gateway_tokens", "Tokens reported by the upstream, by kind.", ["kind"], registry=r)
        self.retries = Counter("gateway_upstream_retries", "Upstream retries, by reason.", ["reason"], registry=r)
        self.upstream_errors = Counter(
            "gateway_upstream_errors", "Upstream failures that reached a client, by class.", ["error_class"], registry=r
        )
        self._children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}
        self._first_byte: dict[str, Histogram] = {}
        self._token_kinds = {
            kind: self.tokens.labels(kind) for kind in ("prompt", "completion", "cached", "cache_creation")
        }
        self.cost = Counter(
            "gateway_cost", "Replies' cost by kind: as billed, at list price (no cache), and the explicit cache's "
            "write premium (part of billed), by currency.",
            ["kind", "currency"], registry=r,
        )  # fmt: skip
        self.cost_saved = Counter(
            "gateway_cost_saved", "What cache hits and the window's cut took off the list price, before the write "
            "premium (gateway_cost_total{kind=\"cache_write_premium\"}).",
            ["currency"], registry=r,
        )  # fmt: skip
        self.db_writes = Histogram(
            "gateway_db_write_seconds", "Time to commit a batch of turns.", buckets=_DB_BUCKETS, registry=r
        )

    def request_done(self, route: str, status: int, seconds: float) -> None:
        """Count an answered request.  The labelled children are kept here: ``labels()`` takes a lock and builds
        a key on every call, a visible share of a fast request."""
        key = (route, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.requests.labels(route, str(status)), self.duration.labels(route))
        children[0].inc()
        children[1].observe(seconds)

    def first_byte_after(self, route: str, seconds: float) -> None:
        child = self._first_byte.get(route)
        if child is None:
            child = self._first_byte[route] = self.first_byte.labels(route)
        child.observe(seconds)

    def count_conversations(self, count: Callable[[], int]) -> None:
        """Report the number of stored conversations, read when scraped."""
        self.registry.register(_Conversations(count))

    def note_usage(self, prompt: int, completion: int, cached: int, creation: int) -> None:
        for kind, value in (("prompt", prompt), ("completion", completion), ("cached", cached)):
            if value > 0:
                self._token_kinds[kind].inc(value)
        if creation > 0:
            self._token_kinds["cache_creation"].inc(creation)

    def note_cost(self, currency: str, *, billed: float, listed: float, premium: float, saved: float) -> None:
        """One reply's cost (``gateway.core.ledger.TurnCost``): ``saved`` before the cache-write ``premium``."""
        self.cost.labels("billed", currency).inc(billed)
        self.cost.labels("list", currency).inc(listed)
        if premium > 0:
            self.cost.labels("cache_write_premium", currency).inc(premium)
        if saved > 0:
            self.cost_saved.labels(currency).inc(saved)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Conversations(Collector):
    def __init__(self, count: Callable[[], int]) -> None:
        self._count = count

    def describe(self) -> Iterator[Metric]:
        return iter(())  # registering must not read the database

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("gateway_conversations", "Conversations stored.", value=self._count())
