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

    # --smoke: ticker with WebSocket subscribers, then with SSE ones (--transport ws,sse)
    runs = {r["server"]: r for r in results["runs"]}
    assert sorted(runs) == ["ticker", "ticker/sse"]
    run = runs["ticker"]
    assert run["server"] == "ticker" and run["n"] == N and run["transport"] == "ws"
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

    # post-burst: 5 briefs POSTed (API key, Idempotency-Key each) to N WebSocket subscribers
    post = run["post_burst"]
    assert post["via"] == "http" and run["post_burst_connect"]["failed"] == 0
    _check_live(post)
    assert post["deliveries"] == N * 5
    assert post["post"]["statuses"] == {"201": 5} and post["post"]["rtt_ms"]["n"] == 5
    assert post["span_s"] > 0

    # the same scenarios with SSE subscribers (GET /v1/channels/bench/events)
    sse = runs["ticker/sse"]
    assert sse["transport"] == "sse"
    assert sse["connect"]["ready"] == N and sse["connect"]["failed"] == 0
    assert sse["memory"]["per_connection_kib"] > 0
    _check_live(sse["burst"])
    assert sse["burst"]["deliveries"] == N * 5
    _check_live(sse["steady"])
    assert sse["skipped"] == {"post-burst": "WebSocket subscribers only"}
    resume = sse["reconnect"]
    assert resume["resumed"] == resume["recovered"] == N and resume["failed"] == 0
    assert resume["deliveries"] == resume["expected_deliveries"] == N * 3
    assert resume["duplicates"] == 0 and resume["unexpected"] == 0
    assert sse["down_closes"].get("1012") == N  # the last event of each stream: close 1012

    figures = results["summary"][f"{N}/ticker"]
    for name in ("burst_per_s", "steady_p99_ms", "memory_kib", "connect_s", "reconnect_s",
                 "post_span_s", "post_rtt_p99_ms"):
        assert figures[name]["runs"] == 1
    sse_figures = results["summary"][f"{N}/ticker/sse"]
    for name in ("burst_per_s", "steady_p99_ms", "memory_kib"):
        assert sse_figures[name]["runs"] == 1 and sse_figures[name]["ratio_to_ws"] > 0
    assert "versions" in results and "machine" in results


def test_a_small_benchmark_run_with_two_workers(tmp_path: Path) -> None:
    """``--workers 2``: ticker serve --workers 2 (a supervisor and two workers), the load
    client split over two processes (--client-n), the supervisor restarted for the
    reconnect storm; the figures summed over the workers and merged over the clients."""
    assert shutil.which("gcc"), "the benchmark compiles its load client: install gcc"
    out = tmp_path / "smoke-workers.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--servers", "ticker",
         "--workers", "2", "--client-n", str(N // 2 + 10), "--transport", "ws", "--out", str(out),
         "--build-dir", str(tmp_path / "build")],
        cwd=ROOT, capture_output=True, text=True, timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(out.read_text())
    assert results["args"]["pin"] == "none"  # several workers: nothing pinned

    (run,) = results["runs"]
    assert run["server"] == "ticker:w2" and run["n"] == N
    assert run["processes"] == {"server": 3, "workers": 2}  # the supervisor and two workers
    assert run["connect"]["ready"] == N and run["connect"]["failed"] == 0
    balance = run["balance"]
    assert len(balance["per_worker"]) == 2 and balance["total"] == N
    assert balance["busiest_over_mean"] >= 1.0
    assert run["memory"]["per_connection_kib"] > 0
    assert len(run["memory"]["rss_per_process_kib"]) == 3
    _check_live(run["burst"])
    assert run["burst"]["deliveries"] == run["burst"]["latency_ms"]["n"] == N * 5
    _check_live(run["steady"])
    for scenario in ("burst", "steady"):
        window = run[scenario]["window"]
        assert window["server_cpu_s"] > 0
        # every worker reads the stream: at least one XREAD per worker over the scenario
        assert window["redis_commands"]["calls"].get("xread", 0) >= 2
    assert run["publish_alone"]["total"] > 0

    resume = run["reconnect"]
    assert resume["resumed"] == resume["recovered"] == N and resume["failed"] == 0
    assert resume["deliveries"] == resume["expected_deliveries"] == N * 3
    assert resume["duplicates"] == 0 and resume["unexpected"] == 0
    assert run["down_closes"].get("1012") == N  # every worker drained its subscribers

    figures = results["summary"][f"{N}/ticker:w2"]
    for name in ("burst_per_s", "balance", "burst_cpu_ms_per_brief_1k", "redis_per_subscribe"):
        assert figures[name]["runs"] == 1


def test_the_http_benchmark_gets_every_expected_answer(tmp_path: Path) -> None:
    """``scripts/bench --scenarios http --smoke``: wrk against every endpoint of the HTTP
    benchmark (bench/http_bench.py), each window's answers all of the status it expects
    (a 304 target answered 200, a publish refused, a replayed idempotency key: the run
    exits 1)."""
    assert shutil.which("wrk"), "the HTTP benchmark drives wrk: apt-get install wrk"
    out = tmp_path / "http.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--scenarios", "http", "--smoke",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(out.read_text())
    expected = {"healthz": "200", "list": "200", "list_304": "304", "embed": "200",
                "embed_304": "304", "rss": "200", "rss_304": "304", "publish": "201",
                "bare_xadd": "201"}
    runs = {r["target"]: r for r in results["runs"]}
    probes = runs.pop("probes")["probes"]  # one GET of each read before the windows
    assert all(probes[read]["etag"] and probes[read]["items"] for read in ("list", "embed", "rss"))
    assert set(runs) == set(expected)
    for target, status in expected.items():
        run = runs[target]
        assert "error" not in run, run
        assert list(run["wrk"]["statuses"]) == [status], (target, run["wrk"]["statuses"])
        assert run["wrk"]["statuses"][status] > 0 and run["wrk"]["replayed"] == 0
        # A publish is one command (a script) or more; a read none (the reader's own
        # wake-ups, counted in the window, are a few in a thousand).
        writes = target in ("publish", "bare_xadd")
        per_request = run["redis_per_request"]
        assert per_request >= 1 if writes else per_request < 0.01, (target, per_request)
