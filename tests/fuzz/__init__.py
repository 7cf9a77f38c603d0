"""Fuzz targets for ticker's hand-written parsers, with hypothesis (docs/fuzzing.md).

* ``test_frames``: the subscribers' frame reader (``ticker.wsproto.Subscriber``), against
  websockets' own sans-I/O parser.
* ``test_handshake``: the upgrade parser (``ticker.wsproto.parse_upgrade``), against
  websockets' ``ServerProtocol``.
* ``test_parsers``: the cursor (``ticker.models.parse_stream_id``), the client messages
  (``ticker.protocol.parse_client_message``) and the SSE resume point
  (``ticker.routes.sse.resume_point``).
* ``test_events_request``: the event stream's request head
  (``ticker.sseproto.parse_events_request``), against the grammar written out again.

The suite runs each target for a bounded number of examples (the ``ticker-fuzz``
profile: the whole package in well under a minute on two shared cores). ``TICKER_FUZZ``
asks for more: ``TICKER_FUZZ=long`` (the ``ticker-fuzz-long`` profile, 50,000 examples
per target) or a number of examples. Nothing is written into the repository: no
example database (a failure prints the ``@reproduce_failure`` blob to replay it).
"""

from __future__ import annotations

import contextlib
import os
import warnings

from hypothesis import HealthCheck, settings

# On a failure hypothesis imports libcst (to suggest an @example patch), whose import
# warns (mypy_extensions.TypedDict is deprecated): filterwarnings = error would turn that
# into an INTERNALERROR that hides the failure. Imported once here, quietly.
with warnings.catch_warnings(), contextlib.suppress(ImportError):
    warnings.simplefilter("ignore", DeprecationWarning)
    import hypothesis.extra._patching  # noqa: F401

settings.register_profile(
    "ticker-fuzz", max_examples=300, deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "ticker-fuzz-long", settings.get_profile("ticker-fuzz"), max_examples=50_000,
)


def _fuzz_settings() -> settings:
    wanted = os.environ.get("TICKER_FUZZ", "").strip()
    if not wanted:
        return settings.get_profile("ticker-fuzz")
    if wanted == "long":
        return settings.get_profile("ticker-fuzz-long")
    if wanted.isdigit():
        return settings(settings.get_profile("ticker-fuzz"), max_examples=int(wanted))
    raise RuntimeError(
        f"TICKER_FUZZ={wanted!r} is not understood: use 'long' or a number of examples."
    )


FUZZ = _fuzz_settings()
"""The settings every fuzz target runs with: ``@FUZZ`` above ``@given``."""
