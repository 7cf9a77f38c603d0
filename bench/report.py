"""The benchmark's figures: medians, min-max and ratios to the baselines of the same run."""

from __future__ import annotations

import statistics
from typing import Any

BASELINES = ("floor", "joined", "naive", "ticker:w1")

# metric name -> path into one run's figures
METRICS: dict[str, tuple[str, ...]] = {
    "burst_per_s": ("burst", "deliveries_per_s"),
    "steady_p50_ms": ("steady", "latency_ms", "p50"),
    "steady_p99_ms": ("steady", "latency_ms", "p99"),
    "steady_max_ms": ("steady", "latency_ms", "max"),
    "memory_kib": ("memory", "per_connection_kib"),
    "connect_s": ("connect", "all_ready_s"),  # first storm: a 10-brief snapshot
    "connect_cpu_us": ("connect", "server_cpu_us"),  # server CPU per connection, first storm
    "connect2_s": ("steady_connect", "all_ready_s"),  # second: a 50-brief snapshot
    "reconnect_s": ("reconnect", "all_resumed_s"),
    # post-burst: --burst briefs POSTed to ticker (written to Redis for a baseline), N
    # WebSocket subscribers: first POST (write) -> last delivery, and the POST round trips
    "post_span_s": ("post_burst", "span_s"),
    "post_per_s": ("post_burst", "deliveries_per_s"),
    "post_rtt_p50_ms": ("post_burst", "post", "rtt_ms", "p50"),
    "post_rtt_p99_ms": ("post_burst", "post", "rtt_ms", "p99"),
    "post_rtt_max_ms": ("post_burst", "post", "rtt_ms", "max"),
    "post_lost": ("post_burst", "missing_on_ready"),
    "post_connect_failed": ("post_burst_connect", "failed"),
    # Lost: briefs missing on connections that were subscribed when the scenario began.
    "burst_lost": ("burst", "missing_on_ready"),
    "steady_lost": ("steady", "missing_on_ready"),
    "connect_failed": ("connect", "failed"),
    "connect_retries": ("connect", "retries"),
    "steady_connect_failed": ("steady_connect", "failed"),
    "reconnect_connect_failed": ("reconnect_connect", "failed"),
    "reconnect_failed": ("reconnect", "failed"),
    "reconnect_not_recovered": ("reconnect", "not_recovered"),
    "duplicates": ("duplicates",),
    "burst_client_cpu_s": ("burst", "client_cpu_s"),
    "steady_client_cpu_s": ("steady", "client_cpu_s"),
    # Several workers (ticker:wN): connections per worker, busiest over the average
    "balance": ("balance", "busiest_over_mean"),
    # Redis commands (INFO commandstats, scripts' commands included) per brief, per
    # subscribe, per second idle, and per publish with no server reading
    "redis_per_brief_burst": ("burst", "window", "redis_commands", "total_per_unit"),
    "redis_per_brief_steady": ("steady", "window", "redis_commands", "total_per_unit"),
    "redis_per_subscribe": ("connect", "window", "redis_commands", "total_per_unit"),
    "redis_idle_per_s": ("idle", "redis_commands", "total_per_unit"),
    "redis_per_publish_alone": ("publish_alone", "total_per_unit"),
}
# computed from several figures of one run (see metric())
DERIVED = (
    "burst_per_s_per_process",  # burst deliveries/s / worker processes
    "burst_per_server_cpu_s",  # deliveries / server CPU seconds (every process), burst
    "burst_cpu_ms_per_brief_1k",  # server CPU ms per brief per 1,000 subscribers, burst
    "steady_cpu_ms_per_brief_1k",  # the same, steady
    "steady_redis_cpu_us_per_brief",  # Redis CPU µs per brief (its process), steady
    "burst_redis_cpu_us_per_brief",
    "connect_redis_cpu_us_per_subscribe",
)


def one_line(f: dict[str, Any]) -> str:
    """A progress line for one run of one server."""
    parts = [f"connect {f['connect']['all_ready_s']:.2f}s "
             f"({f['connect'].get('server_cpu_us', 0):.0f} µs server CPU/conn)",
             f"mem {f['memory']['per_connection_kib']:.1f}KiB"]
    if "burst" in f:
        b = f["burst"]
        parts.append(f"burst {b['deliveries_per_s']:,.0f}/s miss {b['missing']} "
                     f"dup {b['duplicates']} client cpu {b['client_cpu_s']:.2f}s")
    if "steady" in f:
        lat = f["steady"]["latency_ms"]
        parts.append(f"steady p50 {lat['p50']:.1f} p99 {lat['p99']:.1f} max {lat['max']:.1f}ms "
                     f"miss {f['steady']['missing']} dup {f['steady']['duplicates']}")
    if "post_burst" in f:
        p = f["post_burst"]
        rtt = p["post"].get("rtt_ms")
        parts.append(f"post-burst ({p['via']}) {p['span_s'] or 0:.3f}s to the last delivery"
                     + (f", POST p50 {rtt['p50']:.1f} p99 {rtt['p99']:.1f} max {rtt['max']:.1f}ms "
                        f"{p['post']['statuses']}" if rtt else "")
                     + f" miss {p['missing']} dup {p['duplicates']}")
    if "reconnect" in f:
        r = f["reconnect"]
        parts.append(f"reconnect {r['all_resumed_s']:.2f}s recovered {r['recovered']}")
    return ", ".join(parts)


def _get(run: dict[str, Any], *path: str) -> Any:
    value: Any = run
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def derived(run: dict[str, Any], name: str) -> float | None:
    n = run["n"]
    workers = _get(run, "processes", "workers") or 1
    if name == "burst_per_s_per_process":
        v = _get(run, "burst", "deliveries_per_s")
        return v / workers if v else None
    scenario = name.split("_", 1)[0]
    cpu = _get(run, scenario, "window", "server_cpu_s")
    per = _get(run, scenario, "window", "per")
    if name == "burst_per_server_cpu_s":
        deliveries = _get(run, "burst", "deliveries")
        return deliveries / cpu if cpu and deliveries else None
    if name.endswith("_cpu_ms_per_brief_1k"):
        return cpu * 1e3 / per / (n / 1000) if cpu is not None and per else None
    if name.endswith("redis_cpu_us_per_brief") or name.endswith("redis_cpu_us_per_subscribe"):
        redis = _get(run, scenario, "window", "redis_cpu_s")
        return redis * 1e6 / per if redis is not None and per else None
    return None


def metric(run: dict[str, Any], name: str) -> float | None:
    if name in DERIVED:
        return derived(run, name)
    if name == "duplicates":
        return float(sum(run.get(s, {}).get("duplicates", 0)
                         for s in ("burst", "steady", "reconnect", "post_burst")))
    value: Any = run
    for key in METRICS[name]:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return float(value) if value is not None else None


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median, min and max of every metric over the runs, and the median of the per-run
    ratios to each baseline measured in the same repetition (so that a noisy machine
    moves both sides of a ratio together)."""
    out: dict[str, Any] = {}
    for n, server in sorted({(r["n"], r["server"]) for r in runs}):
        mine = [r for r in runs if r["n"] == n and r["server"] == server]
        entry: dict[str, Any] = {}
        for name in (*METRICS, *DERIVED):
            values = [v for v in (metric(r, name) for r in mine) if v is not None]
            if not values:
                continue
            m: dict[str, Any] = {"median": statistics.median(values), "min": min(values),
                                 "max": max(values), "runs": len(values)}
            # ticker/sse: also to ticker (its WebSocket run) of the same repetition
            ws = {"ws": server.replace("/sse", "")} if "/sse" in server else {}
            for label, base in [*((b, b) for b in BASELINES), *ws.items()]:
                if base == server:
                    continue
                ratios = []
                for r in mine:
                    same_rep = [o for o in runs
                                if o["n"] == n and o["server"] == base and o["rep"] == r["rep"]]
                    b = metric(same_rep[0], name) if same_rep else None
                    v = metric(r, name)
                    if b and v is not None:
                        ratios.append(v / b)
                if ratios:
                    m[f"ratio_to_{label}"] = statistics.median(ratios)
            entry[name] = m
        out[f"{n}/{server}"] = entry
    return out


def _cell(entry: dict[str, Any], name: str, fmt: str, ratio: str | None = None,
          *more: str) -> str:
    m = entry.get(name)
    if not m:
        return "n/a"
    text = f"{fmt.format(m['median'])} ({fmt.format(m['min'])}-{fmt.format(m['max'])})"
    for base in (ratio, *more):
        if base and f"ratio_to_{base}" in m:
            text += f" x{m[f'ratio_to_{base}']:.2f}" + (f" {base}" if more else "")
    return text


def workers_table(summary: dict[str, Any]) -> str:
    """Markdown: the per-process figures of a run with several workers (and its baselines):
    medians (min-max), x the median ratio to ticker:w1 and to joined of the same run."""
    lines = [
        "| N | server | connect s | burst deliveries/s | per process "
        "| deliveries per server CPU s (burst) | steady p50 ms | steady p99 ms | lost, dup "
        "| memory KiB/conn | balance (busiest / mean) "
        "| server CPU ms per brief per 1,000 (burst) | (steady) | connect µs/conn "
        "| Redis cmds per brief (steady) | per subscribe | Redis CPU µs per brief (burst) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
        "| --- | --- | --- |",
    ]
    for key, e in summary.items():
        n, server = key.split("/", 1)
        lost = sum(int(e.get(k, {}).get("max", 0)) for k in ("burst_lost", "steady_lost"))
        dup = int(e.get("duplicates", {}).get("max", 0))
        lines.append(
            f"| {int(n):,} | {server} "
            f"| {_cell(e, 'connect_s', '{:.2f}', 'ticker:w1', 'joined')} "
            f"| {_cell(e, 'burst_per_s', '{:,.0f}', 'ticker:w1', 'joined')} "
            f"| {_cell(e, 'burst_per_s_per_process', '{:,.0f}')} "
            f"| {_cell(e, 'burst_per_server_cpu_s', '{:,.0f}', 'ticker:w1', 'joined')} "
            f"| {_cell(e, 'steady_p50_ms', '{:.1f}', 'ticker:w1', 'joined')} "
            f"| {_cell(e, 'steady_p99_ms', '{:.1f}', 'ticker:w1', 'joined')} | {lost}, {dup} "
            f"| {_cell(e, 'memory_kib', '{:.2f}')} | {_cell(e, 'balance', '{:.3f}')} "
            f"| {_cell(e, 'burst_cpu_ms_per_brief_1k', '{:.3f}')} "
            f"| {_cell(e, 'steady_cpu_ms_per_brief_1k', '{:.3f}')} "
            f"| {_cell(e, 'connect_cpu_us', '{:.0f}')} "
            f"| {_cell(e, 'redis_per_brief_steady', '{:.2f}')} "
            f"| {_cell(e, 'redis_per_subscribe', '{:.4f}')} "
            f"| {_cell(e, 'burst_redis_cpu_us_per_brief', '{:.0f}')} |"
        )
    return "\n".join(lines)


def table(summary: dict[str, Any]) -> str:
    """Markdown: median (min-max) and, after x, the median ratio to a baseline; lost,
    duplicated and failed: the worst run."""
    lines = [
        "| N | server | burst deliveries/s (x floor) | steady p50 ms | steady p99 ms (x joined) "
        "| steady max ms | lost, dup | memory KiB/conn | connect s (x floor) "
        "| connect: server CPU µs/conn (x floor) | connect s, 50-brief snapshot "
        "| reconnect s (x floor) | failed (storms 1/2/3/resume) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, e in summary.items():
        n, server = key.split("/", 1)
        # worst run of each: a loss in any run is a loss
        lost = sum(int(e.get(k, {}).get("max", 0)) for k in ("burst_lost", "steady_lost"))
        dup = int(e.get("duplicates", {}).get("max", 0))
        failed = "/".join(str(int(e.get(k, {}).get("max", 0))) for k in (
            "connect_failed", "steady_connect_failed", "reconnect_connect_failed",
            "reconnect_failed"))
        lines.append(
            f"| {int(n):,} | {server} | {_cell(e, 'burst_per_s', '{:,.0f}', 'floor')} "
            f"| {_cell(e, 'steady_p50_ms', '{:.1f}')} "
            f"| {_cell(e, 'steady_p99_ms', '{:.1f}', 'joined')} "
            f"| {_cell(e, 'steady_max_ms', '{:.0f}')} | {lost}, {dup} "
            f"| {_cell(e, 'memory_kib', '{:.1f}')} "
            f"| {_cell(e, 'connect_s', '{:.2f}', 'floor')} "
            f"| {_cell(e, 'connect_cpu_us', '{:.0f}', 'floor')} "
            f"| {_cell(e, 'connect2_s', '{:.2f}')} "
            f"| {_cell(e, 'reconnect_s', '{:.2f}', 'floor')} | {failed} |"
        )
    return "\n".join(lines)


def _target(entry: dict[str, Any], name: str, base: str, ok: Any) -> str:
    """`x1.23 ok` or `x1.23 MISSED`: the median ratio and whether it meets its target."""
    m = entry.get(name) or {}
    ratio = m.get(f"ratio_to_{base}")
    if ratio is None:
        return "n/a"
    return f"x{ratio:.2f} {'ok' if ok(ratio) else 'MISSED'}"


def transport_table(summary: dict[str, Any]) -> str:
    """Markdown: ticker's SSE runs against its WebSocket runs of the same repetitions:
    medians (min-max) of each, and the median of the per-repetition ratios SSE/WS, with
    issue 12's targets (memory <= 2x, burst >= 0.5x, steady p99 <= 1.5x)."""
    rows = [(k, e) for k, e in summary.items() if "/sse" in k.split("/", 1)[1]]
    if not rows:
        return ""
    lines = [
        "| N | run | memory KiB/conn: SSE, WS, SSE/WS (<= 2) "
        "| burst deliveries/s: SSE, WS, SSE/WS (>= 0.5) | steady p50 ms: SSE, WS, SSE/WS "
        "| steady p99 ms: SSE, WS, SSE/WS (<= 1.5) | connect s: SSE, WS, SSE/WS "
        "| lost, dup (SSE) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    targets = {"memory_kib": lambda r: r <= 2, "burst_per_s": lambda r: r >= 0.5,
               "steady_p50_ms": lambda r: True, "steady_p99_ms": lambda r: r <= 1.5,
               "connect_s": lambda r: True}
    formats = {"memory_kib": "{:.2f}", "burst_per_s": "{:,.0f}", "steady_p50_ms": "{:.1f}",
               "steady_p99_ms": "{:.1f}", "connect_s": "{:.2f}"}
    for key, e in rows:
        n, server = key.split("/", 1)
        ws = summary.get(f"{n}/{server.replace('/sse', '')}", {})
        cells = []
        for name, fmt in formats.items():
            mark = _target(e, name, "ws", targets[name])
            if name in ("steady_p50_ms", "connect_s"):
                mark = mark.replace(" ok", "")
            cells.append(f"{_cell(e, name, fmt)}; {_cell(ws, name, fmt)}; {mark}")
        lost = sum(int(e.get(k, {}).get("max", 0)) for k in ("burst_lost", "steady_lost"))
        dup = int(e.get("duplicates", {}).get("max", 0))
        lines.append(f"| {int(n):,} | {server} | " + " | ".join(cells) + f" | {lost}, {dup} |")
    return "\n".join(lines)


def post_burst_table(summary: dict[str, Any]) -> str:
    """Markdown: the post-burst scenario. ticker: the briefs POSTed through its HTTP API;
    a baseline: the same briefs written to Redis directly. The span from the first POST
    (write) to the last delivery, x the joined-writes floor's of the same repetition
    (issue 12: <= 2), and the POST round trips (p99 <= 250 ms)."""
    rows = [(k, e) for k, e in summary.items() if "post_span_s" in e]
    if not rows:
        return ""
    lines = [
        "| N | server | first POST (write) -> last delivery, s | x joined (<= 2) "
        "| deliveries/s | POST p50 ms | POST p99 ms (<= 250) | POST max ms | lost, dup "
        "| connect failed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, e in rows:
        n, server = key.split("/", 1)
        p99 = e.get("post_rtt_p99_ms")
        p99_cell = _cell(e, "post_rtt_p99_ms", "{:.1f}")
        if p99:
            p99_cell += " ok" if p99["median"] <= 250 else " MISSED"
        span = (_target(e, "post_span_s", "joined", lambda r: r <= 2)
                if server != "joined" else "1")
        lost = int(e.get("post_lost", {}).get("max", 0))
        dup = int(e.get("duplicates", {}).get("max", 0))
        failed = int(e.get("post_connect_failed", {}).get("max", 0))
        lines.append(
            f"| {int(n):,} | {server} | {_cell(e, 'post_span_s', '{:.3f}')} | {span} "
            f"| {_cell(e, 'post_per_s', '{:,.0f}')} | {_cell(e, 'post_rtt_p50_ms', '{:.1f}')} "
            f"| {p99_cell} | {_cell(e, 'post_rtt_max_ms', '{:.1f}')} | {lost}, {dup} "
            f"| {failed} |")
    return "\n".join(lines)
