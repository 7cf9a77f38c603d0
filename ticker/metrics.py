"""Prometheus metrics of one process, read from the hub when scraped (``GET /metrics``).

Only what the hub's state shows at scrape time, so nothing is added to the fan-out path:

    ticker_connections                 open subscriber connections (WebSocket and SSE)
    ticker_subscriptions{channel}      subscriptions per channel
    ticker_outbox_messages             messages queued in every outbox, summed
    ticker_outbox_bytes                bytes queued in every outbox and socket buffer, summed
    ticker_outbox_max_messages         the longest outbox (slow consumers show here first)
    ticker_reader_up                   1 while the Redis stream reader is connected

and counted as they happen (each a single increment per event, never per subscriber):

    ticker_events_delivered_total      messages handed to subscribers by the fan-out
    ticker_slow_consumer_closes_total  connections closed with 4008
    ticker_redis_reconnects_total      times the stream reader lost Redis
    ticker_publish_seconds             time to authorize, validate and append a publish
    ticker_publish_to_deliver_seconds  from the append in Redis (the time in the stream
                                       ID) to the hand-off to this process's subscribers

and, under ``ticker serve``, what the gate (``ticker.gate``) counted:

    ticker_gate_connections            connections the process holds (admitted)
    ticker_gate_refused_total{reason}  connections refused: busy (process full), crowded
                                       (address over its limit), dropped (no room to say so)
    ticker_gate_limit_total{limit}     requests stopped by a limit: head_size, header_count,
                                       idle_timeout, head_timeout, body_timeout

plus the standard ``process_*`` metrics.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ticker.gate import Gate
    from ticker.hub import Hub


class HubCollector(Collector):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        connections = list(hub.connections)
        yield GaugeMetricFamily(
            "ticker_connections", "Open subscriber connections (WebSocket and SSE).",
            value=len(connections),
        )
        subscriptions = GaugeMetricFamily(
            "ticker_subscriptions", "Subscriptions per channel in this process.",
            labels=["channel"],
        )
        for name, state in list(hub.channels.items()):
            subscriptions.add_metric([name], len(state.subscribers))
        yield subscriptions
        yield GaugeMetricFamily(
            "ticker_outbox_messages", "Messages queued in all outboxes.",
            value=sum(c.outbox_count for c in connections),
        )
        yield GaugeMetricFamily(
            "ticker_outbox_bytes", "Bytes queued in all outboxes.",
            value=sum(c.queued_bytes() for c in connections),
        )
        yield GaugeMetricFamily(
            "ticker_outbox_max_messages", "Messages queued in the longest outbox.",
            value=max((c.outbox_count for c in connections), default=0),
        )
        yield GaugeMetricFamily(
            "ticker_reader_up", "1 while the Redis stream reader is connected.",
            value=1 if hub.reader_healthy else 0,
        )


class GateCollector(Collector):
    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def collect(self) -> Iterator[Metric]:
        gate = self.gate
        yield GaugeMetricFamily(
            "ticker_gate_connections", "Connections this process holds.",
            value=gate.admission.open,
        )
        refused = CounterMetricFamily(
            "ticker_gate_refused", "Connections refused, by reason.", labels=["reason"],
        )
        for reason in ("busy", "crowded", "dropped"):
            refused.add_metric([reason], gate.refused.get(reason, 0))
        yield refused
        limits = CounterMetricFamily(
            "ticker_gate_limit", "Requests stopped by a limit, by limit.", labels=["limit"],
        )
        for kind in ("head_size", "header_count", "idle_timeout", "head_timeout", "body_timeout"):
            limits.add_metric([kind], gate.answered.get(kind, 0))
        yield limits


_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The metrics of one app, in a registry of its own (several apps in one process,
    as in the tests, never share or clash)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        self.delivered = Counter(
            "ticker_events_delivered", "Messages handed to subscribers by the fan-out.",
            registry=self.registry,
        )
        self.slow_closes = Counter(
            "ticker_slow_consumer_closes", "Connections closed for falling behind (4008).",
            registry=self.registry,
        )
        self.reader_reconnects = Counter(
            "ticker_redis_reconnects", "Times the stream reader lost Redis and reconnected.",
            registry=self.registry,
        )
        self.publish_seconds = Histogram(
            "ticker_publish_seconds", "Time to authorize, validate and append a publish.",
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.deliver_seconds = Histogram(
            "ticker_publish_to_deliver_seconds",
            "From the append in Redis to the hand-off to this process's subscribers.",
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )

    def watch(self, hub: Hub) -> None:
        self.registry.register(HubCollector(hub))

    def watch_gate(self, gate: Gate) -> None:
        self.registry.register(GateCollector(gate))
