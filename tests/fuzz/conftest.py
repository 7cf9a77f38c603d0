"""A longer fuzz run (``TICKER_FUZZ``, docs/fuzzing.md) is not cut short by the suite's
timeout per test (pytest-timeout, 120 s): the bounded run keeps it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not os.environ.get("TICKER_FUZZ", "").strip():
        return
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.timeout(0))
