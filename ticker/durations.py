"""Durations as operators write them on the command line: ``45s``, ``30m``, ``12h``, ``90d``.

One number and one unit, nothing else: ``1h30m`` or ``1.5h`` are refused rather than
guessed at, since a key's lifetime or a rotated secret's grace is a security decision
that should read the same to everyone who sees the command.
"""

from __future__ import annotations

import re

DURATION_RE = re.compile(r"(\d{1,7})([smhd])")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
FORMAT = "a whole number and a unit, s, m, h or d (e.g. 45s, 30m, 12h, 90d)"


def parse_duration(text: str, least: float, most: float) -> float:
    """``text`` in seconds, between ``least`` and ``most``; ``ValueError`` with a
    sentence that gives the format and the bounds otherwise."""
    match = DURATION_RE.fullmatch(text.strip())
    bounds = f"from {describe(least)} to {describe(most)}"
    if match is None:
        raise ValueError(f"{text[:40]!r} is not a duration: write {FORMAT}, {bounds}.")
    seconds = float(int(match[1]) * UNIT_SECONDS[match[2]])
    if not least <= seconds <= most:
        raise ValueError(f"{text!r} is out of bounds: give a duration {bounds}.")
    return seconds


def describe(seconds: float) -> str:
    """``seconds`` in the largest unit that writes it whole, days from two on (``86400``
    -> ``24h``, as one says of a grace; ``2592000`` -> ``30d``)."""
    whole = int(seconds)
    for unit in ("d", "h", "m"):
        size = UNIT_SECONDS[unit]
        if whole and whole % size == 0 and (unit != "d" or whole >= 2 * size):
            return f"{whole // UNIT_SECONDS[unit]}{unit}"
    return f"{whole}s"
