"""Async Python client for ticker, the live news-ticker service.

    from ticker_client import TickerClient, BriefEvent

    async with TickerClient("http://127.0.0.1:8000") as c:
        async for event in c.subscribe(["world", "sport"]):
            if isinstance(event, BriefEvent):
                print(event.brief.time, event.brief.text)

See docs/clients.md in the ticker repository.
"""

from ticker_client._client import Position, TickerClient, full_jitter
from ticker_client._errors import (
    AuthenticationError,
    InvalidRequest,
    NotFoundError,
    PermissionDenied,
    ProblemError,
    ServerUnreachable,
    ServiceUnavailable,
    SubscriptionRefused,
    TickerClientError,
)
from ticker_client._models import (
    Brief,
    BriefEvent,
    Correction,
    Event,
    Retraction,
    Snapshot,
    cursor_key,
)

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "Brief",
    "BriefEvent",
    "Correction",
    "Event",
    "InvalidRequest",
    "NotFoundError",
    "PermissionDenied",
    "Position",
    "ProblemError",
    "Retraction",
    "ServerUnreachable",
    "ServiceUnavailable",
    "Snapshot",
    "SubscriptionRefused",
    "TickerClient",
    "TickerClientError",
    "__version__",
    "cursor_key",
    "full_jitter",
]
