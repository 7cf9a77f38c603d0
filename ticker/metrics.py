"""Prometheus metrics of one process, read from the hub when scraped (``GET /metrics``).

Only what the hub's state shows at scrape time, so nothing is added to the fan-out path:

    ticker_connections                 open subscriber connections (WebSocket and SSE)
    ticker_subscriptions{channel}      subscriptions per channel
    ticker_outbox_messages             messages queued in every outbox, summed
    ticker_outbox_bytes                bytes queued in every outbox, summed
    ticker_outbox_max_messages         the longest outbox (slow consumers show here first)
    ticker_reader_up                   1 while the Redis stream reader is connected

plus the standard ``process_*`` metrics.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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
            value=sum(len(c.outbox) for c in connections),
        )
        yield GaugeMetricFamily(
            "ticker_outbox_bytes", "Bytes queued in all outboxes.",
            value=sum(c.outbox_bytes for c in connections),
        )
        yield GaugeMetricFamily(
            "ticker_outbox_max_messages", "Messages queued in the longest outbox.",
            value=max((len(c.outbox) for c in connections), default=0),
        )
        yield GaugeMetricFamily(
            "ticker_reader_up", "1 while the Redis stream reader is connected.",
            value=1 if hub.reader_healthy else 0,
        )


def registry_for(hub: Hub) -> CollectorRegistry:
    """A registry of its own per app, so that several apps in one process (tests) never
    share or clash."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector(hub))
    ProcessCollector(registry=registry)
    return registry
