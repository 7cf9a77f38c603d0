"""The benchmark cannot rot: a small run of bench/run.py against ticker (N = 200, a few
briefs), checked for correctness only. Timing is the benchmark's business, not the tests'.

Needs gcc: the run compiles the C load client (bench/loadclient.c) into a temporary
directory.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
N = 200


def _check_live(scenario: dict[str, Any]) -> None:
    assert scenario["expected"] > 0
    assert scenario["deliveries"] == scenario["expected"], scenario
    assert scenario["missing"] == 0 and scenario["missing_on_ready"] == 0
    assert scenario["ready_at_start"] == N and scenario["closed_during"] == 0
    assert scenario["duplicates"] == 0
    assert scenario["unexpected"] == 0
    assert scenario["timed_out"] is False
    assert scenario["error"] is None
    assert scenario["latency_ms"]["n"] == scenario["deliveries"]
    assert scenario["closes"] == {"abnormal": 0}


def test_a_small_benchmark_run_delivers_every_brief_once(tmp_path: Path) -> None:
    assert shutil.which("gcc"), "the benchmark compiles its load client: install gcc"
    out = tmp_path / "smoke.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--servers", "ticker",
         "--out", str(out), "--build-dir", str(tmp_path / "build")],
        cwd=ROOT, capture_output=True, text=True, timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(out.read_text())

    (run,) = results["runs"]
    assert run["server"] == "ticker" and run["n"] == N
    assert run["connect"]["ready"] == N and run["connect"]["failed"] == 0
    assert run["memory"]["per_connection_kib"] > 0
    _check_live(run["burst"])
    assert run["burst"]["deliveries"] == N * 5
    assert run["steady_connect"]["ready"] == N and run["steady_connect"]["failed"] == 0
    _check_live(run["steady"])

    resume = run["reconnect"]
    assert resume["resumed"] == N and resume["failed"] == 0
    assert run["reconnect_connect"]["ready"] == N
    assert resume["recovered"] == N and resume["not_recovered"] == resume["no_cursor"] == 0
    assert resume["deliveries"] == resume["expected_deliveries"] == N * 3
    assert resume["duplicates"] == 0 and resume["unexpected"] == 0
    assert resume["timed_out"] is False
    assert run["down_closes"].get("1012") == N  # ticker's restart close code

    figures = results["summary"][f"{N}/ticker"]
    for name in ("burst_per_s", "steady_p99_ms", "memory_kib", "connect_s", "reconnect_s"):
        assert figures[name]["runs"] == 1
    assert "versions" in results and "machine" in results
