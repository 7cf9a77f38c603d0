"""Prometheus metrics (``GET /metrics``), of one process or of every worker of a server.

Read from the hub's state, so nothing is added to the fan-out path:

    ticker_connections                 open subscriber connections (WebSocket and SSE)
    ticker_subscriptions{channel}      subscriptions per channel
    ticker_outbox_messages             messages queued in every outbox, summed
    ticker_outbox_bytes                bytes queued in every outbox and socket buffer, summed
    ticker_outbox_max_messages         the longest outbox (slow consumers show here first)
    ticker_reader_up                   1 while the Redis stream reader is connected (with
                                       workers: while every worker's reader is)

counted as they happen (each a single increment per event, never per subscriber):

    ticker_events_delivered_total      messages handed to live subscribers by the fan-out
                                       (not a snapshot's or a resume's)
    ticker_slow_consumer_closes_total  connections closed with 4008
    ticker_redis_reconnects_total      times the stream reader lost Redis
    ticker_publish_seconds             time to authorize, validate and append a publish
    ticker_publish_to_deliver_seconds  from the append in Redis (the time in the stream
                                       ID) to the hand-off to this process's subscribers

and, under ``ticker serve``, what the gate (``ticker.gate``) counted:

    ticker_gate_connections            connections held (admitted)
    ticker_gate_refused_total{reason}  connections refused: busy (process full), crowded
                                       (address over its limit), dropped (no room to say so)
    ticker_gate_limit_total{limit}     requests stopped by a limit: head_size, header_count,
                                       idle_timeout, head_timeout, body_timeout

A lone process reads its state when scraped, and adds the standard ``process_*`` metrics.

Under ``ticker serve --workers N`` a scrape reaches one worker, chosen by the kernel, and
must still describe the whole server. So each worker writes its figures to files in a
directory that the supervisor made (prometheus-client's multiprocess mode; the supervisor
sets ``PROMETHEUS_MULTIPROC_DIR`` for the workers, and removes a dead worker's gauges), and
the worker that answers reads every file. Counters and histograms are summed over every
worker that ran since the server started (a dead worker's counts stay, so totals never go
down); gauges over the workers alive now, as a sum, or as a max or min where a sum means
nothing (``Family.combine``). Each worker copies its state into its gauges every
``REFRESH_SECONDS`` and when it answers a scrape, so another worker's figures may be that
old. ``process_*`` would describe whichever worker answered: workers export instead

    ticker_workers                     worker processes alive
    ticker_resident_memory_bytes       their resident memory, summed
    ticker_open_fds                    their open file descriptors, summed
    ticker_cpu_seconds_total           CPU time of every worker that ran
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    values,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ticker.gate import Gate
    from ticker.hub import Hub

CONTENT_TYPE = CONTENT_TYPE_LATEST
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own variable
REFRESH_SECONDS = 1.0  # how often a worker copies its state into the shared gauges


@dataclasses.dataclass(frozen=True)
class Family:
    """A metric read from state (not counted as events happen)."""

    name: str
    help: str
    kind: str = "gauge"  # or "counter" (a running total kept by the state's owner)
    labels: tuple[str, ...] = ()
    # How the gauges of several workers combine (prometheus-client's multiprocess_mode).
    combine: Literal["livesum", "livemax", "livemin"] = "livesum"


CONNECTIONS = Family("ticker_connections", "Open subscriber connections (WebSocket and SSE).")
SUBSCRIPTIONS = Family("ticker_subscriptions", "Subscriptions per channel.", labels=("channel",))
OUTBOX_MESSAGES = Family("ticker_outbox_messages", "Messages queued in all outboxes.")
OUTBOX_BYTES = Family("ticker_outbox_bytes", "Bytes queued in all outboxes.")
OUTBOX_MAX = Family(
    "ticker_outbox_max_messages", "Messages queued in the longest outbox.", combine="livemax",
)
READER_UP = Family(
    "ticker_reader_up", "1 while the Redis stream reader is connected (every worker's).",
    combine="livemin",
)
GATE_CONNECTIONS = Family("ticker_gate_connections", "Connections held.")
GATE_REFUSED = Family(
    "ticker_gate_refused", "Connections refused, by reason.", "counter", ("reason",),
)
GATE_LIMIT = Family(
    "ticker_gate_limit", "Requests stopped by a limit, by limit.", "counter", ("limit",),
)
WORKERS = Family("ticker_workers", "Worker processes alive.")
MEMORY = Family("ticker_resident_memory_bytes", "Resident memory of the workers, summed.")
OPEN_FDS = Family("ticker_open_fds", "Open file descriptors of the workers, summed.")
CPU = Family("ticker_cpu_seconds", "CPU time of every worker that ran.", "counter")

REFUSAL_REASONS = ("busy", "crowded", "dropped")
LIMITS = ("head_size", "header_count", "idle_timeout", "head_timeout", "body_timeout")

Reading = tuple[Family, tuple[str, ...], float]


@dataclasses.dataclass(frozen=True)
class Source:
    """Some state and the families it gives: ``read`` yields a reading per labelled value."""

    families: tuple[Family, ...]
    read: Callable[[], Iterable[Reading]]


def hub_source(hub: Hub) -> Source:
    def read() -> Iterator[Reading]:
        connections = list(hub.connections)
        yield CONNECTIONS, (), len(connections)
        for name, state in list(hub.channels.items()):
            yield SUBSCRIPTIONS, (name,), len(state.subscribers)
        yield OUTBOX_MESSAGES, (), sum(c.outbox_count for c in connections)
        yield OUTBOX_BYTES, (), sum(c.queued_bytes() for c in connections)
        yield OUTBOX_MAX, (), max((c.outbox_count for c in connections), default=0)
        yield READER_UP, (), 1 if hub.reader_healthy else 0

    return Source((CONNECTIONS, SUBSCRIPTIONS, OUTBOX_MESSAGES, OUTBOX_BYTES, OUTBOX_MAX,
                   READER_UP), read)


def gate_source(gate: Gate) -> Source:
    def read() -> Iterator[Reading]:
        yield GATE_CONNECTIONS, (), gate.admission.open
        for reason in REFUSAL_REASONS:
            yield GATE_REFUSED, (reason,), gate.refused.get(reason, 0)
        for kind in LIMITS:
            yield GATE_LIMIT, (kind,), gate.answered.get(kind, 0)

    return Source((GATE_CONNECTIONS, GATE_REFUSED, GATE_LIMIT), read)


def worker_source() -> Source:
    """This process, for the whole-server figures that replace ``process_*``."""
    process = ProcessCollector(registry=None)
    wanted = {
        "process_resident_memory_bytes": MEMORY, "process_open_fds": OPEN_FDS,
        "process_cpu_seconds": CPU,
    }

    def read() -> Iterator[Reading]:
        yield WORKERS, (), 1
        for metric in process.collect():
            family = wanted.get(metric.name)
            if family is not None and metric.samples:
                yield family, (), metric.samples[0].value

    return Source((WORKERS, MEMORY, OPEN_FDS, CPU), read)


class _StateCollector(Collector):
    """A lone process: its sources, read when scraped."""

    def __init__(self, source: Source) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        found: dict[Family, Metric] = {}
        for family in self.source.families:
            kind = GaugeMetricFamily if family.kind == "gauge" else CounterMetricFamily
            found[family] = kind(family.name, family.help, labels=list(family.labels))
        for family, labels, value in self.source.read():
            found[family].add_metric(list(labels), value)  # type: ignore[attr-defined]
        yield from found.values()


class _SharedState:
    """A worker: its sources copied into file-backed gauges and counters that every worker
    of the server reads (multiprocess mode)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.sources: list[Source] = []
        self.metrics: dict[Family, Gauge | Counter] = {}
        self.totals: dict[tuple[Family, tuple[str, ...]], float] = {}  # counters, as copied
        self.labelled: dict[Family, set[tuple[str, ...]]] = {}  # label values set last time

    def add(self, source: Source) -> None:
        for family in source.families:
            if family.kind == "gauge":
                self.metrics[family] = Gauge(
                    family.name, family.help, family.labels, registry=self.registry,
                    multiprocess_mode=family.combine,
                )
            else:
                self.metrics[family] = Counter(
                    family.name, family.help, family.labels, registry=self.registry,
                )
        self.sources.append(source)

    def refresh(self) -> None:
        seen: dict[Family, set[tuple[str, ...]]] = {}
        for source in self.sources:
            for family, labels, value in source.read():
                metric = self.metrics[family]
                child = metric.labels(*labels) if labels else metric
                if isinstance(child, Gauge):
                    child.set(value)
                    if labels:
                        seen.setdefault(family, set()).add(labels)
                else:
                    copied = self.totals.get((family, labels), 0.0)
                    if value > copied:
                        child.inc(value - copied)
                        self.totals[family, labels] = value
        # A label value that is gone (a channel nobody follows now) reads 0 from now on:
        # its entry stays in the file, and the scrape leaves zero subscriptions out.
        for family, before in self.labelled.items():
            for labels in before - seen.get(family, set()):
                self.metrics[family].labels(*labels).set(0)  # type: ignore[union-attr]
        self.labelled = seen


class _AllWorkers(Collector):
    """Every worker's files, combined; channels with no subscription anywhere left out."""

    def __init__(self, path: str) -> None:
        self.files = MultiProcessCollector(None, path)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterator[Metric]:
        for metric in self.files.collect():  # type: ignore[no-untyped-call]
            if metric.name == SUBSCRIPTIONS.name:
                metric.samples = [s for s in metric.samples if s.value]
            yield metric


_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The metrics of one app. A lone app has a registry of its own (several apps in one
    process, as in the tests, never share or clash); a worker's counters live in the
    shared files, when ``PROMETHEUS_MULTIPROC_DIR`` was set before prometheus-client was
    imported (the supervisor starts each worker with it)."""

    def __init__(self) -> None:
        self.shared_dir = os.environ.get(MULTIPROCESS_DIR) or None
        if self.shared_dir is not None and values.ValueClass is values.MutexValue:
            raise RuntimeError(
                f"{MULTIPROCESS_DIR} was set after prometheus_client was imported: "
                "set it in the environment of the process"
            )
        self.registry = CollectorRegistry(auto_describe=False)
        self._shared: _SharedState | None = None
        self._refresher: asyncio.Task[None] | None = None
        if self.shared_dir is None:
            ProcessCollector(registry=self.registry)
        else:
            self._shared = _SharedState(self.registry)
            self._shared.add(worker_source())
            self._scrape = CollectorRegistry(auto_describe=False)
            self._scrape.register(_AllWorkers(self.shared_dir))
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

    def watch(self, source: Source) -> None:
        if self._shared is not None:
            self._shared.add(source)
        else:
            self.registry.register(_StateCollector(source))

    def watch_hub(self, hub: Hub) -> None:
        self.watch(hub_source(hub))

    def watch_gate(self, gate: Gate) -> None:
        self.watch(gate_source(gate))

    def start(self) -> None:
        """A worker copies its state into the shared files every ``REFRESH_SECONDS``."""
        if self._shared is not None and self._refresher is None:
            self._refresher = asyncio.create_task(self._refresh_every(REFRESH_SECONDS))

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None

    async def _refresh_every(self, seconds: float) -> None:
        assert self._shared is not None
        while True:
            self._shared.refresh()
            await asyncio.sleep(seconds)

    def exposition(self) -> bytes:
        """The text a scrape gets: this process's, or the whole server's."""
        if self._shared is None:
            return generate_latest(self.registry)
        self._shared.refresh()  # this worker's own figures are current
        return generate_latest(self._scrape)
