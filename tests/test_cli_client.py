"""The client commands of the CLI (ticker publish | tail | channels), run as real
subprocesses (``python -m ticker``) against a running service."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator

import redis.asyncio as aioredis

from tests.conftest import Service, free_socket
from ticker.auth import KeyStore

TIMEOUT = 15.0


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TICKER_API_KEY", "TICKER_SERVER")}
    env["TZ"] = "UTC"  # "14/02 16:30" lines are in local time: make it known
    env.update(extra)
    return env


async def ticker(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """Run ``python -m ticker ARGS`` to completion: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ticker", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@contextlib.asynccontextmanager
async def tailing(*args: str, env: dict[str, str]) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ticker", "tail", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def readline(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    raw = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)
    assert raw, "tail ended"
    return raw.decode().rstrip("\n")


async def test_publish_prints_the_new_id_and_publishes_every_field(service: Service) -> None:
    code, out, err = await ticker(
        "publish", "--channel", "world", "Tsahal ne se retirera pas",
        "--url", "https://news.example/a", "--urgency", "2", "--tag", "liban", "--tag", "armée",
        "--time", "2026-02-14T16:30:00+01:00",
        env=_env(TICKER_API_KEY=service.key, TICKER_SERVER=service.base),
    )
    assert code == 0, err
    brief_id = out.strip()
    r = await service.http.get(f"/v1/channels/world/briefs/{brief_id}")
    assert r.status_code == 200
    brief = r.json()
    assert brief["text"] == "Tsahal ne se retirera pas" and brief["url"] == "https://news.example/a"
    assert brief["urgency"] == 2 and brief["tags"] == ["liban", "armée"]
    assert "14/02 15:30  Tsahal ne se retirera pas" in err


async def test_server_and_key_flags_win_over_the_environment(service: Service) -> None:
    with contextlib.closing(free_socket()) as unused:
        nowhere = f"http://127.0.0.1:{unused.getsockname()[1]}"
        code, out, err = await ticker(
            "publish", "--channel", "sport", "Flags win", "--server", service.base,
            "--key", service.key, env=_env(TICKER_API_KEY="tk_wrong", TICKER_SERVER=nowhere),
        )
    assert code == 0, err
    listed = (await service.http.get("/v1/channels/sport/briefs")).json()["briefs"]
    assert [b["id"] for b in listed] == [out.strip()]


async def test_publish_without_a_key_says_where_to_put_one(service: Service) -> None:
    code, out, err = await ticker(
        "publish", "--channel", "world", "no key", "--server", service.base, env=_env()
    )
    assert code == 2 and out == ""
    assert "TICKER_API_KEY" in err and "--key" in err and "ticker keys create" in err


async def test_publish_with_a_wrong_or_out_of_scope_key_says_so(
    service: Service, redis_client: aioredis.Redis
) -> None:
    env = _env(TICKER_SERVER=service.base)
    code, _, err = await ticker("publish", "--channel", "world", "x", "--key", "tk_nope", env=env)
    assert code == 1 and "refused the API key" in err and "unknown or was revoked" in err
    sport = await KeyStore(redis_client).create("sport-desk", ["sport"])
    code, _, err = await ticker("publish", "--channel", "world", "x", "--key", sport, env=env)
    assert code == 1 and "may not publish to channel 'world'" in err
    code, _, err = await ticker(
        "publish", "--channel", "world", "x", "--urgency", "12", "--key", service.key, env=env
    )
    assert code == 1 and "urgency" in err
    assert (await service.http.get("/v1/channels/world/briefs")).json()["briefs"] == []


async def test_an_unreachable_server_says_to_start_it_or_point_at_it() -> None:
    with contextlib.closing(free_socket()) as unused:
        nowhere = f"http://127.0.0.1:{unused.getsockname()[1]}"
        env = _env(TICKER_SERVER=nowhere, TICKER_API_KEY="k")
        for args in (("publish", "--channel", "world", "x"), ("channels",),
                     ("tail", "--channel", "world")):
            code, _, err = await ticker(*args, env=env)
            assert code == 1, args
            assert f"cannot reach the ticker server at {nowhere}" in err
            assert "ticker serve" in err and "TICKER_SERVER" in err


async def test_channels_lists_one_name_per_line(service: Service) -> None:
    await service.publish("world", "a")
    await service.publish("arts", "b")
    code, out, err = await ticker("channels", env=_env(TICKER_SERVER=service.base))
    assert code == 0, err
    assert out.splitlines() == ["arts", "world"]


async def test_tail_prints_the_latest_then_live_lines_until_interrupted(service: Service) -> None:
    await service.publish("world", "older", time="2026-02-14T09:05:00Z")
    await service.publish("world", "newer", time="2026-02-14T10:00:00+01:00")
    async with tailing("--channel", "world", env=_env(TICKER_SERVER=service.base)) as proc:
        assert await readline(proc) == "14/02 09:05  older"
        assert await readline(proc) == "14/02 09:00  newer"
        live = await service.publish("world", "Live brief", time="2026-02-14T16:30:00+01:00")
        await service.publish("sport", "other channel")
        assert await readline(proc) == "14/02 15:30  Live brief"
        r = await service.http.patch(
            f"/v1/channels/world/briefs/{live['id']}", json={"text": "Live, fixed"},
            headers=service.auth(),
        )
        assert r.status_code == 200
        assert await readline(proc) == "14/02 15:30  (corrected) Live, fixed"
        path = f"/v1/channels/world/briefs/{live['id']}"
        r = await service.http.delete(path, headers=service.auth())
        assert r.status_code == 204
        assert await readline(proc) == "14/02 15:30  (retracted) Live, fixed"
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), TIMEOUT)
        assert proc.stderr is not None
        err = (await proc.stderr.read()).decode()
        assert code == 0 and "Traceback" not in err


async def test_tail_since_a_cursor_prints_exactly_the_missed_events_as_json(
    service: Service,
) -> None:
    seen = await service.publish("world", "seen")
    missed = [await service.publish("world", f"missed {i}") for i in range(3)]
    env = _env(TICKER_SERVER=service.base)
    async with tailing("--channel", "world", "--since", seen["id"], "--json", env=env) as proc:
        got = [json.loads(await readline(proc)) for _ in range(3)]
        assert got == [
            {"type": "brief", "channel": "world", "brief": b, "cursor": b["id"]} for b in missed
        ]
        live = await service.publish("world", "live")
        assert json.loads(await readline(proc))["brief"] == live


async def test_tail_of_a_private_channel_needs_a_token_and_says_so(
    service: Service, redis_client: aioredis.Redis
) -> None:
    keys = KeyStore(redis_client)
    admin = service.auth(await keys.create("boss", ["*"], role="admin"))
    r = await service.http.put("/v1/channels/premium", json={"private": True}, headers=admin)
    assert r.status_code == 201, r.text
    await service.publish("premium", "for subscribers", time="2026-02-14T09:05:00Z")
    env = _env(TICKER_SERVER=service.base)
    async with tailing("--channel", "premium", env=env) as proc:
        code = await asyncio.wait_for(proc.wait(), TIMEOUT)
        assert proc.stderr is not None
        err = (await proc.stderr.read()).decode()
    assert code == 1 and "channel 'premium' is private" in err and "--token" in err, err
    assert "Traceback" not in err
    reader = await keys.create("site", ["premium"], role="reader")
    r = await service.http.post("/v1/channels/premium/tokens", json={}, headers=service.auth(reader))
    token = r.json()["token"]
    for given in (("--token", token), ()):  # a reader token; a reader key from the environment
        extra = {} if given else {"TICKER_API_KEY": reader}
        async with tailing("--channel", "premium", *given, env={**env, **extra}) as proc:
            assert await readline(proc) == "14/02 09:05  for subscribers"
            await service.publish("premium", "live", time="2026-02-14T10:00:00Z")
            assert await readline(proc) == "14/02 10:00  live"
