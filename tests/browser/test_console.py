"""The editor console (``/console``) used as an editor would, in Chromium against the real
service: sign in, compose and publish, see it live here and in a widget on another
origin, correct, retract, pin, history, a service that refuses, scoped keys, axe-core on
each state, and a phone."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from playwright.async_api import expect

from tests.browser.conftest import TIMEOUT_MS, HostPages, Watch, host_page, items, wait_ready
from tests.browser.test_widget_a11y import axe_violations
from tests.browser.test_widget_resilience import same_port
from tests.conftest import Service, run_service, tcp_socket
from ticker.auth import KeyStore
from ticker.config import Settings

CSP_WATCH = (
    "window.__violations = []; document.addEventListener('securitypolicyviolation',"
    " e => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));"
)


@pytest.fixture
async def svc(serve_with: Any) -> AsyncIterator[Service]:
    """The service, reporting its readers often, so that the counts show without waiting."""
    async with serve_with(readers_report_interval=0.2) as service:
        yield service


@pytest.fixture
async def keys(redis_client: aioredis.Redis) -> KeyStore:
    return KeyStore(redis_client)


@pytest.fixture
async def console(page: Any, svc: Service) -> Any:
    """The console, open and not signed in, watched for CSP violations."""
    await page.add_init_script(CSP_WATCH)
    await page.goto(f"{svc.base}/console")
    await expect(page.get_by_label("API key")).to_be_focused()
    yield page
    assert await page.evaluate("window.__violations") == []


async def sign_in(page: Any, key: str) -> None:
    await page.get_by_label("API key").fill(key)
    await page.get_by_role("button", name="Sign in").click()


async def signed_in(page: Any, key: str, channel: str = "world") -> None:
    await sign_in(page, key)
    await expect(page.locator("#who")).to_contain_text("Signed in as")
    await expect(page.locator("#live-status")).to_contain_text("Live")
    if await page.locator("#channel").input_value() != channel:
        await page.get_by_label("Channel", exact=True).select_option(channel)


async def eventually_readers(svc: Service, count: int, channel: str = "world") -> None:
    """Until ``GET /v1/channels`` counts ``count`` live readers of ``channel``."""
    for _ in range(100):
        r = await svc.http.get("/v1/channels")
        if {c["name"]: c["readers"] for c in r.json()["channels"]}.get(channel) == count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{channel} never had {count} readers: {r.json()}")


def live(page: Any) -> Any:
    return page.locator("#briefs > li")


async def briefs_on(svc: Service, channel: str = "world") -> list[dict[str, Any]]:
    r = await svc.http.get(f"/v1/channels/{channel}/briefs")
    briefs: list[dict[str, Any]] = r.json()["briefs"]
    return briefs


async def test_sign_in_with_good_bad_revoked_expired_and_reader_keys(
    console: Any, svc: Service, keys: KeyStore, axe_source: str
) -> None:
    page, status = console, console.locator("#signin-status")
    assert await axe_violations(page, axe_source) == []
    await page.get_by_role("button", name="Sign in").click()
    await expect(status).to_have_text("Enter an API key first.")

    await sign_in(page, "tk_not-a-key")
    await expect(status).to_have_text("Not signed in: This API key is unknown or was revoked.")
    revoked = await keys.create("gone", ["world"])
    await keys.revoke("gone")
    await sign_in(page, revoked)
    await expect(status).to_contain_text("unknown or was revoked")
    expired = await keys.create("short", ["world"], expires_in=0.05)
    await page.wait_for_timeout(100)
    await sign_in(page, expired)
    await expect(status).to_contain_text("API key 'short' expired at")
    await expect(status).to_contain_text("ask an operator for a new one")
    reader = await keys.create("site", ["world"], role="reader")
    await sign_in(page, reader)
    await expect(status).to_contain_text("'site' is a reader key, which cannot publish")
    assert await axe_violations(page, axe_source) == []  # with an error showing

    desk = await keys.create("desk", ["world"])
    await sign_in(page, desk)
    await expect(page.locator("#who")).to_have_text(
        "Signed in as desk (publisher key for world)."
    )
    await expect(page.get_by_label("API key")).to_be_hidden()
    await expect(page.get_by_label("Text", exact=True)).to_be_focused()
    await expect(page.locator("#live-status")).to_contain_text("Live")
    # The key is in no storage, no cookie, no URL, and not in the DOM.
    stored = await page.evaluate("JSON.stringify([localStorage, sessionStorage, document.cookie])")
    assert desk not in stored and desk not in page.url
    assert desk not in await page.content()
    assert await axe_violations(page, axe_source) == []

    await page.get_by_role("button", name="Sign out").click()
    await expect(status).to_contain_text("Signed out")
    await expect(page.get_by_label("API key")).to_be_focused()
    await expect(page.locator("#desk")).to_be_hidden()


async def test_publish_reaches_the_console_and_a_widget_on_another_origin_once(
    console: Any, svc: Service, host: HostPages, context: Any, watch: Watch, keys: KeyStore,
    axe_source: str,
) -> None:
    page = console
    await svc.publish("world", "Déjà là")  # GET /v1/channels lists channels published to
    reader = await context.new_page()
    reader.on("pageerror", lambda e: watch.errors.append(str(e)))
    body = f'<news-ticker id="w" server="{svc.base}" channel="world" lang="fr"></news-ticker>'
    await reader.goto(host.add(host_page(svc.base, body)))
    await wait_ready(reader, "#w")
    await page.bring_to_front()  # a page behind another gets no animation frames to click

    await eventually_readers(svc, 1)
    await signed_in(page, await keys.create("desk", ["world"]))
    await expect(page.locator("#readers")).to_have_text("1 reader is following world live.")
    await expect(page.get_by_label("Channel", exact=True)).to_contain_text("world (1 reader)")
    text = page.get_by_label("Text", exact=True)
    await text.fill("Séisme de magnitude 6 au large de la côte")
    await expect(page.locator("#count")).to_have_text("41/500")
    await page.get_by_label("Urgency").select_option("2")
    await page.get_by_text("More: tags, language").click()  # the optional fields
    await page.get_by_label("Time it happened (optional)").fill("2026-02-14T16:30:00")
    await page.get_by_label("Readers' language").fill("fr")
    await page.get_by_label("Readers' time zone").fill("Europe/Paris")
    preview = page.locator("#preview > li")
    await expect(preview.locator("time")).to_have_text("14/02")
    await expect(preview).to_have_text(re.compile(r"^14/02 Urgent Séisme de magnitude 6"))
    assert await axe_violations(page, axe_source) == []

    await page.get_by_role("button", name="Publish").dblclick()  # publishes once
    await expect(page.locator("#compose-status")).to_contain_text("Published on world")
    await expect(live(page)).to_have_count(2)
    await expect(live(page).first).to_contain_text("Séisme de magnitude 6")
    await expect(text).to_have_value("")  # a fresh draft
    await expect(items(reader, "#w")).to_have_count(2)
    await expect(items(reader, "#w").first).to_contain_text("Séisme de magnitude 6")
    published = await briefs_on(svc)
    assert len(published) == 2 and published[0]["urgency"] == 2
    assert published[0]["time"] == "2026-02-14T16:30:00Z"  # the browser runs in UTC
    # Over the limit: the count says so, and nothing is sent.
    await text.fill("x" * 501)
    await expect(page.locator("#count")).to_have_text("501/500: 1 too many")
    await page.get_by_role("button", name="Publish").click()
    await expect(page.locator("#compose-status")).to_have_text(
        "Not published: The text is 501 characters long; the limit is 500."
    )
    assert len(await briefs_on(svc)) == 2
    # Ctrl+Enter publishes too.
    await text.fill("Deuxième dépêche")
    await text.press("Control+Enter")
    await expect(live(page)).to_have_count(3)
    await expect(live(page).first).to_contain_text("Deuxième dépêche")
    await expect(items(reader, "#w")).to_have_count(3)
    assert len(await briefs_on(svc)) == 3
    assert await axe_violations(page, axe_source) == []


async def test_correct_retract_pin_and_history_reach_every_reader(
    console: Any, svc: Service, host: HostPages, context: Any, keys: KeyStore, axe_source: str
) -> None:
    page = console
    first = await svc.publish("world", "Premier bilan: 3 blessés")
    await svc.publish("world", "Rumeur non confirmée")
    reader = await context.new_page()
    body = f'<news-ticker id="w" server="{svc.base}" channel="world" lang="fr"></news-ticker>'
    await reader.goto(host.add(host_page(svc.base, body)))
    await expect(items(reader, "#w")).to_have_count(2)
    await page.bring_to_front()  # a page behind another gets no animation frames to click
    desk = await keys.create("desk", ["world"])
    await signed_in(page, desk)
    await expect(live(page)).to_have_count(2)
    older = page.locator(f'#briefs > li[data-id="{first["id"]}"]')
    await expect(live(page).nth(1)).to_have_attribute("data-id", first["id"])

    # Correct in place.
    await older.get_by_role("button", name="Correct").click()
    box = older.get_by_label("Corrected text")
    await expect(box).to_be_focused()
    await box.fill("Bilan corrigé: 2 blessés")
    assert await axe_violations(page, axe_source) == []
    await box.press("Control+Enter")
    await expect(page.locator("#action-status")).to_contain_text("Corrected: version 2")
    await expect(older.locator(".line")).to_contain_text("Bilan corrigé: 2 blessés")
    await expect(older.locator(".mark")).to_have_text("corrected")
    widget_item = reader.locator(f'#w li[data-id="{first["id"]}"]')
    await expect(widget_item.locator("[part~=text]")).to_have_text("Bilan corrigé: 2 blessés")
    await expect(items(reader, "#w")).to_have_count(2)

    # Pin: on top, here and in the widget; then unpin.
    await older.get_by_role("button", name="Pin").click()
    await expect(page.locator("#action-status")).to_contain_text("Pinned")
    await expect(live(page).first).to_have_attribute("data-id", first["id"])
    await expect(items(reader, "#w").first).to_have_attribute("data-id", first["id"])
    await svc.publish("world", "Plus récent, mais pas épinglé")
    await expect(live(page)).to_have_count(3)
    await expect(live(page).first).to_have_attribute("data-id", first["id"])
    await expect(older.get_by_role("button", name="Unpin")).to_be_focused()

    # History: who changed what and when.
    await older.get_by_role("button", name="History").click()
    dialog = page.get_by_role("dialog", name="History")
    await expect(dialog).to_be_visible()
    rows = dialog.locator("tbody tr")
    await expect(rows).to_have_count(3)
    await expect(rows.nth(0)).to_contain_text("publish")
    await expect(rows.nth(0)).to_contain_text("test")  # the service's key published it
    await expect(rows.nth(1)).to_contain_text("correction")
    await expect(rows.nth(1)).to_contain_text("desk")
    await expect(rows.nth(1)).to_contain_text('text: "Bilan corrigé: 2 blessés"')
    await expect(rows.nth(2)).to_contain_text("pinned: true")
    assert await axe_violations(page, axe_source) == []
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(older.get_by_role("button", name="History")).to_be_focused()

    # Retract, with a confirmation: "Keep it" keeps it.
    await older.get_by_role("button", name="Retract").click()
    confirm = page.get_by_role("dialog", name="Retract this brief?")
    await expect(confirm).to_contain_text("Bilan corrigé: 2 blessés")
    assert await axe_violations(page, axe_source) == []
    await confirm.get_by_role("button", name="Keep it").click()
    await expect(confirm).to_be_hidden()
    await expect(live(page)).to_have_count(3)
    await older.get_by_role("button", name="Retract").click()
    await confirm.get_by_role("button", name="Retract").click()
    await expect(page.locator("#action-status")).to_contain_text("Retracted")
    await expect(live(page)).to_have_count(2)
    await expect(items(reader, "#w")).to_have_count(2)
    await expect(reader.locator(f'#w li[data-id="{first["id"]}"]')).to_have_count(0)
    r = await svc.http.get(f"/v1/channels/world/briefs/{first['id']}")
    assert r.json()["status"] == "canceled"

    # Changes made elsewhere (another editor, a CMS) arrive live too.
    newest = live(page).first
    newest_id = await newest.get_attribute("data-id")
    await svc.correct(newest_id, text="Corrigé par un autre rédacteur")
    await expect(newest.locator(".line")).to_contain_text("Corrigé par un autre rédacteur")
    await svc.retract(newest_id)
    await expect(live(page)).to_have_count(1)

    # A key revoked while signed in: the next action signs out and says why.
    await keys.revoke("desk")
    for _ in range(100):  # until every process has dropped it from its cache
        if (await svc.http.get("/v1/keys/self", headers=svc.auth(desk))).status_code == 401:
            break
        await asyncio.sleep(0.02)
    await live(page).first.get_by_role("button", name="Pin").click()
    await expect(page.locator("#signin-status")).to_have_text(
        "This API key is unknown or was revoked."
    )
    await expect(page.get_by_label("API key")).to_be_focused()


async def test_a_refused_publish_keeps_the_draft_and_publishes_once_later(
    console: Any, svc: Service, keys: KeyStore, axe_source: str
) -> None:
    page = console
    desk = await keys.create("desk", ["world"])
    await signed_in(page, desk)
    text = page.get_by_label("Text", exact=True)
    await text.fill("Dépêche envoyée pendant la panne")
    await page.get_by_text("More: tags, language").click()
    await page.get_by_label("Tags (optional)").fill("panne, réseau")

    # The network fails: nothing reaches the server.
    await page.route("**/v1/channels/world/briefs", lambda route: route.abort())
    await page.get_by_role("button", name="Publish").click()
    status = page.locator("#compose-status")
    await expect(status).to_contain_text("Not published: The server cannot be reached")
    await expect(status).to_contain_text("Your draft is kept on this device")
    assert await axe_violations(page, axe_source) == []
    await page.unroute("**/v1/channels/world/briefs")

    # The request reaches the server but its answer is lost: a retry must not publish twice.
    async def lose_answer(route: Any) -> None:
        await route.fetch()
        await route.abort()

    await page.route("**/v1/channels/world/briefs", lose_answer)
    await page.get_by_role("button", name="Publish").click()
    await expect(status).to_contain_text("Not published")
    assert len(await briefs_on(svc)) == 1
    await page.unroute("**/v1/channels/world/briefs")

    # The server refuses (503): the sentence says why.
    await page.route(
        "**/v1/channels/world/briefs",
        lambda route: route.fulfill(
            status=503, content_type="application/problem+json",
            body=json.dumps({"type": "urn:ticker:problem:unavailable", "title": "Unavailable",
                             "status": 503, "detail": "Redis is unreachable; retry in 2 s."}),
        ),
    )
    await page.get_by_role("button", name="Publish").click()
    await expect(status).to_contain_text("Not published: Redis is unreachable; retry in 2 s.")
    await page.unroute("**/v1/channels/world/briefs")

    # A reload signs out; the draft survives it, with its Idempotency-Key (which the server
    # scopes to the API key: the same editor signs in again).
    await page.reload()
    await expect(page.get_by_label("API key")).to_be_visible()
    await signed_in(page, desk)
    await expect(text).to_have_value("Dépêche envoyée pendant la panne")
    await expect(page.get_by_label("Tags (optional)")).to_have_value("panne, réseau")
    await page.get_by_role("button", name="Publish").click()
    await expect(status).to_contain_text("Published on world")
    await expect(live(page)).to_have_count(1)
    published = await briefs_on(svc)
    assert len(published) == 1 and published[0]["tags"] == ["panne", "réseau"]
    assert await page.evaluate("localStorage.getItem('ticker.console.drafts')") == "{}"


async def test_a_key_of_one_channel_cannot_write_another(
    console: Any, svc: Service, keys: KeyStore
) -> None:
    page = console
    await svc.publish("sport", "Un autre canal")
    desk = await keys.create("desk", ["world"])
    await signed_in(page, desk)
    options = await page.locator("#channel option").evaluate_all("os => os.map(o => o.value)")
    assert options == ["world"]
    await expect(page.get_by_label("Another channel")).to_be_hidden()
    r = await svc.http.post(
        "/v1/channels/sport/briefs", json={"text": "Nope"}, headers=svc.auth(desk)
    )
    assert r.status_code == 403 and "may not publish to channel 'sport'" in r.json()["detail"]

    # An admin key sees every channel and may open a new one.
    await page.get_by_role("button", name="Sign out").click()
    await signed_in(page, await keys.create("ops", [], role="admin"), channel="sport")
    await expect(live(page)).to_have_count(1)
    await page.get_by_label("Text", exact=True).fill("Brouillon pour sport")  # one draft per channel
    await page.get_by_label("Another channel").fill("Not A Name")
    await page.get_by_role("button", name="Open").click()
    await expect(page.locator("#action-status")).to_contain_text("is not a channel name")
    await page.get_by_label("Another channel").fill("elections")
    await page.get_by_role("button", name="Open").click()
    await expect(page.locator("#live-title")).to_have_text("Live on elections")
    await expect(page.get_by_label("Text", exact=True)).to_have_value("")
    await page.get_by_label("Text", exact=True).fill("Premier brief du canal")
    await page.get_by_role("button", name="Publish").click()
    await expect(live(page)).to_have_count(1)
    assert len(await briefs_on(svc, "elections")) == 1
    await page.get_by_label("Channel", exact=True).select_option("sport")
    await expect(page.get_by_label("Text", exact=True)).to_have_value("Brouillon pour sport")
    assert len(await briefs_on(svc, "sport")) == 1


async def test_on_a_phone(
    browser: Any, svc: Service, keys: KeyStore, watch: Watch, axe_source: str
) -> None:
    ctx = await browser.new_context(
        viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True, locale="en-GB"
    )
    ctx.set_default_timeout(TIMEOUT_MS)
    try:
        page = await ctx.new_page()
        page.on("request", lambda r: watch.requests.append(r.url))
        page.on("pageerror", lambda e: watch.errors.append(str(e)))
        await svc.publish("world", "Une dépêche déjà là, assez longue pour passer à la ligne")
        await page.goto(f"{svc.base}/console")
        await signed_in(page, await keys.create("field", ["world"]))
        await expect(live(page)).to_have_count(1)
        wide = await page.evaluate("document.documentElement.scrollWidth - innerWidth")
        assert wide <= 0, f"the page scrolls sideways by {wide}px on a phone"
        await page.get_by_label("Text", exact=True).fill("Depuis le terrain")
        publish = page.get_by_role("button", name="Publish")
        box = await publish.bounding_box()
        assert box is not None and box["width"] >= 44 and box["height"] >= 36
        await publish.tap()
        await expect(live(page)).to_have_count(2)
        assert await axe_violations(page, axe_source) == []
    finally:
        await ctx.close()


async def recording_sockets(page: Any) -> tuple[list[Any], list[dict[str, Any]]]:
    """The console's WebSockets passed through to the service, each droppable: (their
    routes, in order; every message the page sent, decoded)."""
    routes: list[Any] = []
    sent: list[dict[str, Any]] = []

    def through(route: Any) -> None:
        server = route.connect_to_server()
        routes.append(route)

        def forward(message: Any) -> None:
            sent.append(json.loads(message))
            server.send(message)

        route.on_message(forward)

    await page.route_web_socket(re.compile(r"/v1/ws$"), through)
    return routes, sent


async def test_the_live_list_resumes_from_its_cursor_after_a_drop(
    console: Any, svc: Service, keys: KeyStore
) -> None:
    page = console
    routes, sent = await recording_sockets(page)
    first = await svc.publish("world", "Avant la coupure")
    await signed_in(page, await keys.create("desk", ["world"]))
    await expect(live(page)).to_have_count(1)
    assert sent == [{"op": "subscribe", "channel": "world"}]

    await routes[0].close(code=1012, reason="server restart")  # as a deploy would
    await svc.publish("world", "Pendant la coupure")
    await svc.correct(first["id"], text="Avant la coupure (corrigé)")
    await expect(live(page)).to_have_count(2)
    await expect(live(page).nth(1).locator(".line")).to_contain_text("(corrigé)")
    await expect(page.locator("#live-status")).to_contain_text("Live")
    assert len(routes) == 2
    resume = sent[-1]
    assert resume["op"] == "subscribe" and resume["channel"] == "world"
    assert resume["since"] == first["id"] and resume["epoch"], "resumed from its cursor"


async def test_a_private_channel_is_followed_live_with_the_desks_own_key(
    console: Any, svc: Service, keys: KeyStore
) -> None:
    """The live list of a channel made private while the console follows it: the server
    ends the subscription (token_required), the console subscribes again with its key as
    the token, from its cursor, and nothing published meanwhile is missed. The key goes
    over the socket only once the server asked for it."""
    page = console
    _, sent = await recording_sockets(page)
    first = await svc.publish("world", "Public for now")
    desk = await keys.create("desk", ["world"])
    await signed_in(page, desk)
    await expect(live(page)).to_have_count(1)
    assert sent == [{"op": "subscribe", "channel": "world"}]

    admin = svc.auth(await keys.create("boss", ["*"], role="admin"))
    r = await svc.http.patch("/v1/channels/world", json={"private": True}, headers=admin)
    if r.status_code == 404:  # a channel only published to has no object yet
        r = await svc.http.put("/v1/channels/world", json={"private": True}, headers=admin)
    assert r.status_code in (200, 201) and r.json()["private"] is True, r.text
    await svc.publish("world", "Subscribers only")
    await expect(live(page)).to_have_count(2)
    await expect(live(page).first.locator(".line")).to_contain_text("Subscribers only")
    again = sent[-1]
    assert again["op"] == "subscribe" and again["token"] == desk, again
    assert again["since"] == first["id"], "resumed from its cursor"
    await expect(page.locator("#live-status")).not_to_contain_text("cannot follow")
    # A reader without a token gets nothing of it.
    r = await svc.http.get("/v1/channels/world/briefs")
    assert r.status_code == 401, r.text


async def test_publish_while_the_service_is_down_keeps_the_draft_then_publishes_once(
    page: Any, svc: Service, settings: Settings, keys: KeyStore, watch: Watch
) -> None:
    """The console is served by node A; A stops and starts again on the same port, while
    ``svc`` (the same Redis) is there to check what was published."""
    sock = tcp_socket()
    port = sock.getsockname()[1]
    node = contextlib.AsyncExitStack()
    a = await node.enter_async_context(run_service(settings, sock))
    watch.allowed.add(a.base)
    try:
        await svc.publish("world", "Avant la panne")
        await page.goto(f"{a.base}/console")
        await signed_in(page, await keys.create("desk", ["world"]))
        await expect(live(page)).to_have_count(1)
        await page.get_by_label("Text", exact=True).fill("Écrit pendant la panne")

        await node.aclose()  # the service is down
        await expect(page.locator("#live-status")).to_contain_text("Connection lost")
        await page.get_by_role("button", name="Publish").click()
        status = page.locator("#compose-status")
        await expect(status).to_contain_text("Not published: The server cannot be reached")
        await expect(status).to_contain_text("Your draft is kept on this device")
        await expect(page.get_by_label("Text", exact=True)).to_have_value("Écrit pendant la panne")

        node = contextlib.AsyncExitStack()
        await node.enter_async_context(run_service(settings, same_port(port)))
        await page.get_by_role("button", name="Publish").click()
        await expect(status).to_contain_text("Published on world")
        await expect(live(page)).to_have_count(2, timeout=20_000)  # the list reconnected
        await expect(page.locator("#live-status")).to_contain_text("Live")
        assert [b["text"] for b in await briefs_on(svc)] == [
            "Écrit pendant la panne", "Avant la panne"
        ]
    finally:
        await node.aclose()


async def test_the_preview_uses_the_channels_language_and_time_zone(
    console: Any, svc: Service, keys: KeyStore
) -> None:
    """A channel made with a language and a time zone (as /embed and the feeds use them):
    the preview shows a brief in them, as its readers will see it, until the editor sets
    their own under More."""
    admin = await keys.create("boss", [], role="admin")
    made = await svc.http.put("/v1/channels/tokyo", json={"lang": "fr", "time_zone": "Asia/Tokyo"},
                              headers=svc.auth(admin))
    assert made.status_code == 201, made.text
    page = console
    await signed_in(page, await keys.create("desk", ["tokyo"]), channel="tokyo")
    await expect(page.get_by_label("Readers' language")).to_have_value("fr")
    await expect(page.get_by_label("Readers' time zone")).to_have_value("Asia/Tokyo")
    await page.get_by_label("Text", exact=True).fill("Séisme au large de Honshu")
    await page.get_by_text("More: tags, language").click()
    await page.get_by_label("Time it happened (optional)").fill("2026-02-14T16:30:00")
    # The editor's 16:30 (in the browser's zone), as Tokyo's readers see its day.
    expected = await page.evaluate(
        "new Intl.DateTimeFormat('fr', {day: '2-digit', month: '2-digit', timeZone: 'Asia/Tokyo'})"
        ".format(new Date('2026-02-14T16:30:00'))"
    )
    await expect(page.locator("#preview > li time")).to_have_text(expected)
    await page.get_by_label("Readers' time zone").fill("America/Los_Angeles")  # their own
    expected = await page.evaluate(
        "new Intl.DateTimeFormat('fr', {day: '2-digit', month: '2-digit', "
        "timeZone: 'America/Los_Angeles'}).format(new Date('2026-02-14T16:30:00'))"
    )
    await expect(page.locator("#preview > li time")).to_have_text(expected)
