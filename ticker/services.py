"""What the routes share: settings, the store, the API keys and the hub of one process."""

from __future__ import annotations

import dataclasses
import functools
from typing import Protocol

import redis.asyncio as aioredis

from ticker.audit import AuditLog
from ticker.auth import KeyStore
from ticker.channels import ChannelStore
from ticker.config import Settings
from ticker.hub import Hub
from ticker.metrics import Metrics
from ticker.store import Store
from ticker.storewatch import StoreWatch
from ticker.tokens import Tokens


class StoreHealth(Protocol):
    """Whoever restarts the embedded store: ``failure`` says why it cannot, or is None."""

    @property
    def failure(self) -> str | None: ...


@dataclasses.dataclass
class Services:
    settings: Settings
    redis: aioredis.Redis
    reader: aioredis.Redis
    store: Store
    keys: KeyStore
    hub: Hub
    metrics: Metrics
    # The embedded store's supervision, when this process started the server itself.
    store_watch: StoreWatch | None = None
    # A worker's: its supervisor runs the store (``ticker.supervisor.RunDir``).
    supervisor: StoreHealth | None = None

    @functools.cached_property
    def channels(self) -> ChannelStore:
        """Channel objects (``ticker.channels``), managed through the write pool."""
        return ChannelStore(self.redis, self.store.keys)

    @functools.cached_property
    def tokens(self) -> Tokens:
        """Reader tokens (``ticker.tokens``), with the secrets this process's readers
        keep true (``Hub.secrets``) and the CMS's keys parsed with the settings."""
        return Tokens(self.redis, self.store.keys, self.settings.reader_token_secret,
                      self.hub.secrets, self.settings.public_keys)

    @functools.cached_property
    def audit(self) -> AuditLog:
        return AuditLog(self.redis, self.store.keys)

    @property
    def store_health(self) -> StoreHealth | None:
        return self.store_watch or self.supervisor
