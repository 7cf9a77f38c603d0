"""Polling over HTTP: ``GET /v1/channels/{ch}/briefs?since=CURSOR`` answers exactly what
happened after the cursor (as a WebSocket resume does), and every list answers ``304``
to an ``If-None-Match`` while nothing changed. Real service, real Redis."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import Service


async def _poll(
    service: Service, since: str, etag: str | None = None, **params: str
) -> httpx.Response:
    headers = {"If-None-Match": etag} if etag else {}
    return await service.http.get(
        "/v1/channels/world/briefs", params={"since": since, **params}, headers=headers
    )


def _events(answer: httpx.Response) -> list[tuple[str, str]]:
    """(type, brief id) of each event of a ``since`` answer."""
    body: dict[str, Any] = answer.json()
    return [(e["type"], e.get("brief", e)["id"]) for e in body["events"]]


async def test_since_answers_exactly_the_events_after_the_cursor_then_304_until_more(
    service: Service,
) -> None:
    first = await service.publish("world", "before the cursor")
    cursor = first["id"]
    second = await service.publish("world", "after the cursor")
    fixed = await service.correct(second["id"], text="after the cursor, corrected")
    third = await service.publish("world", "retracted soon")
    await service.retract(third["id"])

    answer = await _poll(service, cursor)
    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-cache"
    body = answer.json()
    assert body["recovered"] is True and body["epoch"]
    assert _events(answer) == [
        ("brief", second["id"]), ("correction", fixed["id"]), ("brief", third["id"]),
        ("retraction", third["id"]),
    ]
    assert body["events"][1]["brief"]["text"] == "after the cursor, corrected"
    cursor, etag = body["cursor"], answer.headers["etag"]
    assert body["events"][-1]["cursor"] == cursor

    # Nothing new: an empty answer, or 304 for the ETag the last answer gave.
    empty = await _poll(service, cursor)
    assert empty.status_code == 200 and empty.json()["events"] == []
    assert empty.json()["cursor"] == cursor and empty.headers["etag"] == etag
    unchanged = await _poll(service, cursor, etag)
    assert unchanged.status_code == 304 and unchanged.content == b""

    fourth = await service.publish("world", "new since the last poll")
    changed = await _poll(service, cursor, etag)
    assert changed.status_code == 200 and _events(changed) == [("brief", fourth["id"])]
    assert changed.headers["etag"] != etag


async def test_a_cursor_no_longer_kept_or_of_another_epoch_gets_recovered_false_and_the_briefs(
    serve_with: Any,
) -> None:
    async with serve_with(retention_max_events=3) as service:
        old = await service.publish("world", "soon trimmed")
        newer = [await service.publish("world", f"brief {i}") for i in range(4)]
        trimmed = await _poll(service, old["id"])
        assert trimmed.status_code == 200
        body = trimmed.json()
        assert body["recovered"] is False and "events" not in body
        assert [b["id"] for b in body["briefs"]] == [b["id"] for b in reversed(newer[-3:])]
        assert body["cursor"] == newer[-1]["id"]
        other = await _poll(service, newer[-2]["id"], epoch="not-this-log")
        assert other.json()["recovered"] is False
        same = await _poll(service, newer[-2]["id"], epoch=body["epoch"])
        assert same.json()["recovered"] is True and _events(same) == [("brief", newer[-1]["id"])]


async def test_a_bad_cursor_is_a_400_that_says_what_to_send(service: Service) -> None:
    answer = await _poll(service, "yesterday")
    assert answer.status_code == 400
    problem = answer.json()
    assert "is not a cursor" in problem["detail"] and "?since=" in problem["detail"]
    assert problem["field"] == "since"


async def test_the_list_answers_304_while_the_channel_is_unchanged(service: Service) -> None:
    await service.publish("world", "one")
    first = await service.http.get("/v1/channels/world/briefs")
    etag = first.headers["etag"]
    again = await service.http.get("/v1/channels/world/briefs", headers={"If-None-Match": etag})
    assert again.status_code == 304
    other_limit = await service.http.get(
        "/v1/channels/world/briefs", params={"limit": 1}, headers={"If-None-Match": etag}
    )
    assert other_limit.status_code == 200  # another representation, another tag
    await service.publish("world", "two")
    changed = await service.http.get(
        "/v1/channels/world/briefs", headers={"If-None-Match": etag}
    )
    assert changed.status_code == 200 and changed.headers["etag"] != etag
