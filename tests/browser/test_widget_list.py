"""The list mode as a reader sees it: dates, live briefs, corrections, retractions, urgency,
pinning, the "N new" button, a still host page, and server-rendered markup taken over."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from playwright.async_api import expect

from tests.browser.conftest import TIMEOUT_MS, HostPages, Watch, host_page, items
from tests.conftest import Service

SHADOW = "document.querySelector(sel).shadowRoot"
# The id of the brief at the top of the visible part of a scrolled list.
TOP_ITEM = """e => { const r = e.getBoundingClientRect();
  return e.getRootNode().elementFromPoint(r.left + 40, r.top + 10).closest('li').dataset.id }"""


def widget(svc: Service, wid: str = "w", **attrs: str) -> str:
    extra = " ".join(f'{k.replace("_", "-")}="{v}"' for k, v in attrs.items())
    return f'<news-ticker id="{wid}" server="{svc.base}" channel="world" {extra}></news-ticker>'


async def test_dates_follow_lang_and_time_zone(page: Any, host: HostPages, svc: Service) -> None:
    await svc.publish("world", "Tsahal ne se retirera pas", time="2026-02-14T16:30:00+01:00")
    body = widget(svc, "fr", lang="fr", time_zone="Europe/Paris") + widget(
        svc, "us", lang="en-US", time_zone="America/New_York"
    )
    await page.goto(host.add(host_page(svc.base, body)))
    fr, us = items(page, "#fr"), items(page, "#us")
    await expect(fr).to_have_count(1)
    await expect(fr.first.locator("[part=date]")).to_have_text("14/02")
    await expect(us.first.locator("[part=date]")).to_have_text("02/14")

    # Published while the page is open: 23:30 UTC is already the 15th in Paris, not in New York.
    await svc.publish(
        "world", "Late news", time="2026-02-14T23:30:00Z", url="https://example.org/late"
    )
    await expect(fr).to_have_count(2)
    await expect(fr.first).to_contain_text("Late news")
    await expect(fr.first.locator("[part=date]")).to_have_text("15/02")
    await expect(us.first.locator("[part=date]")).to_have_text("02/14")
    await expect(fr.first.locator("time")).to_have_attribute("datetime", "2026-02-14T23:30:00Z")
    link = fr.first.locator("a")
    await expect(link).to_have_attribute("href", "https://example.org/late")
    await expect(link).to_have_attribute("rel", "noopener")
    await expect(fr.nth(1).locator("a")).to_have_count(0)  # no URL, no link


async def test_correction_and_retraction_show_live(
    page: Any, host: HostPages, svc: Service
) -> None:
    first = await svc.publish("world", "Premier bilan: 3 blessés", author="Ana Pérez")
    second = await svc.publish("world", "Rumeur non confirmée")
    await page.goto(host.add(host_page(svc.base, widget(svc, lang="fr"))))
    shown = items(page, "#w")
    await expect(shown).to_have_count(2)
    item = page.locator(f'#w li[data-id="{first["id"]}"]')
    await expect(item.locator("[part=mark]")).to_have_count(0)
    # The byline, after the headline; none on a brief without one.
    await expect(item.locator("[part=byline]")).to_have_text("par Ana Pérez")
    await expect(item.locator("[part=byline] bdi")).to_have_text("Ana Pérez")
    await expect(page.locator(f'#w li[data-id="{second["id"]}"] [part=byline]')).to_have_count(0)
    await page.evaluate(
        "([sel, id]) => { " + SHADOW + ".querySelector(`li[data-id='${id}']`).keep = 1 }",
        ["#w", first["id"]],
    )

    await svc.correct(first["id"], text="Bilan corrigé: 2 blessés", author=None)
    await expect(item.locator("[part~=text]")).to_have_text("Bilan corrigé: 2 blessés")
    await expect(item.locator("[part=mark]")).to_have_text("corrigé")
    await expect(item.locator("[part=byline]")).to_have_count(0)  # cleared
    # Changed in place: the same element, at the same place.
    assert (
        await page.evaluate(
            "([sel, id]) => " + SHADOW + ".querySelector(`li[data-id='${id}']`).keep",
            ["#w", first["id"]],
        )
        == 1
    )
    await expect(shown.nth(1)).to_have_attribute("data-id", first["id"])

    await svc.retract(second["id"])
    await expect(shown).to_have_count(1)
    await expect(page.locator(f'#w li[data-id="{second["id"]}"]')).to_have_count(0)
    await expect(shown.first).to_have_attribute("data-id", first["id"])


async def test_a_new_brief_is_announced_alone(page: Any, host: HostPages, svc: Service) -> None:
    for i in range(3):
        await svc.publish("world", f"Brief {i}")
    await page.goto(host.add(host_page(svc.base, widget(svc, label="Dernières nouvelles"))))
    await expect(items(page, "#w")).to_have_count(3)
    log = page.locator("#w [role=log]")
    await expect(log).to_have_attribute("aria-label", "Dernières nouvelles")
    assert await log.get_attribute("aria-live") in (None, "polite")  # role=log: polite
    # Record every element added inside the live region from now on.
    await page.evaluate(
        """sel => { window.added = [];
             new MutationObserver(ms => { for (const m of ms) for (const n of m.addedNodes)
               if (n.nodeType === 1) window.added.push(n.tagName + ':' + n.textContent); })
             .observe(document.querySelector(sel).shadowRoot.querySelector('[role=log]'),
                      {childList: true, subtree: true}); }""",
        "#w",
    )
    await svc.publish("world", "Only this one")
    await expect(items(page, "#w")).to_have_count(4)
    added = await page.evaluate("window.added")
    assert len(added) == 1 and added[0].startswith("LI:") and "Only this one" in added[0], added


async def test_urgent_stands_out_and_pinned_stays_on_top(
    page: Any, host: HostPages, svc: Service
) -> None:
    pinned = await svc.publish("world", "Suivez notre direct", pinned=True)
    urgent = await svc.publish("world", "Séisme de magnitude 6", urgency=1)
    await page.goto(host.add(host_page(svc.base, widget(svc, lang="fr"))))
    shown = items(page, "#w")
    await expect(shown).to_have_count(2)
    await expect(shown.first).to_have_attribute("data-id", pinned["id"])
    await expect(shown.first).to_have_attribute("part", "item pinned")
    top = page.locator(f'#w li[data-id="{urgent["id"]}"]')
    await expect(top).to_have_attribute("part", "item urgent")
    await expect(top.locator("[part=badge]")).to_have_text("Urgent")
    await expect(top.locator("[part=date]")).to_have_css("color", "rgb(176, 0, 32)")
    normal_color = await shown.first.locator("[part=date]").evaluate(
        "e => getComputedStyle(e).color"
    )
    assert normal_color != "rgb(176, 0, 32)"

    newer = await svc.publish("world", "Plus récent")
    await expect(shown).to_have_count(3)
    assert [await shown.nth(i).get_attribute("data-id") for i in range(3)] == [
        pinned["id"],
        newer["id"],
        urgent["id"],
    ]
    # Unpinned by a correction: back to its place by date.
    await svc.correct(pinned["id"], pinned=False)
    await expect(shown.last).to_have_attribute("data-id", pinned["id"])


async def test_a_scrolled_reader_gets_a_new_button_and_the_page_never_moves(
    page: Any, host: HostPages, svc: Service
) -> None:
    for i in range(25):
        await svc.publish("world", f"Older brief number {i} with enough words to fill a line")
    await page.goto(host.add(host_page(svc.base, widget(svc, limit="40"))))
    shown = items(page, "#w")
    await expect(shown).to_have_count(25)
    after = page.locator("#after")
    box_before = await page.locator("#w").bounding_box()
    after_before = await after.bounding_box()
    await page.evaluate(
        """() => { window.resized = 0; let first = true;
             new ResizeObserver(() => { if (!first) window.resized++; first = false; })
               .observe(document.querySelector('#w')); }"""
    )
    # The reader scrolls down the list and reads.
    await page.locator("#w [role=log]").evaluate("e => { e.scrollTop = 300 }")
    reading = await page.locator("#w [role=log]").evaluate(TOP_ITEM)

    one = await svc.publish("world", "Arrived while reading (1)")
    two = await svc.publish("world", "Arrived while reading (2)")
    more = page.locator("#w [part=new]")
    await expect(more).to_have_text("2 new")
    await expect(more).to_be_visible()
    await expect(shown).to_have_count(25)
    log = page.locator("#w [role=log]")
    assert await log.evaluate("e => e.scrollTop") == 300
    assert await log.evaluate(TOP_ITEM) == reading

    await more.click()
    await expect(shown).to_have_count(27)
    await expect(more).to_be_hidden()
    await expect(shown.first).to_have_attribute("data-id", two["id"])
    await expect(shown.nth(1)).to_have_attribute("data-id", one["id"])
    assert await log.evaluate("e => e.scrollTop") == 0

    # Back at the top, briefs come in directly; the host page never moved or resized.
    await svc.publish("world", "Live again")
    await expect(shown).to_have_count(28)
    await expect(more).to_be_hidden()
    assert await page.locator("#w").bounding_box() == box_before
    assert await after.bounding_box() == after_before
    assert await page.evaluate("window.resized") == 0


@pytest.mark.parametrize("script", ["async", "blocking"])
async def test_server_rendered_markup_is_upgraded_in_place_and_resumed(
    page: Any, host: HostPages, svc: Service, watch: Watch, script: str
) -> None:
    """With ``blocking``, the widget is defined before the parser reaches the element and
    its server-rendered children: it must still take them over."""
    a = await svc.publish("world", "Rendered on the server (A)", urgency=2, author="Desk <A>")
    b = await svc.publish("world", "Rendered on the server (B)", url="https://example.org/b")
    r = await svc.http.get("/embed/world", params={"fragment": "1", "lang": "fr"})
    assert r.status_code == 200
    fragment = r.text
    cursor = re.search(r'data-cursor="([^"]+)"', fragment)
    assert cursor and cursor.group(1) == b["id"]
    # Published after the page was rendered: the widget must fetch exactly this one.
    c = await svc.publish("world", "Published after rendering (C)")

    html = host_page(svc.base, fragment.replace("<news-ticker", '<news-ticker id="w"'))
    if script == "blocking":
        html = html.replace("<script async src=", "<script src=", 1)
    await page.goto(host.add(html))
    shown = items(page, "#w")
    await expect(shown).to_have_count(3)
    assert [await shown.nth(i).get_attribute("data-id") for i in range(3)] == [
        c["id"],
        b["id"],
        a["id"],
    ]
    await expect(shown.nth(2)).to_have_attribute("part", "item urgent")
    await expect(shown.nth(2).locator("[part=byline]")).to_have_text("par Desk <A>")
    await expect(shown.nth(1).locator("a")).to_have_attribute("href", "https://example.org/b")
    # It resumed from the rendered cursor instead of loading the list again.
    subscribes = [json.loads(f) for f in watch.sent if '"subscribe"' in f]
    assert subscribes and subscribes[0]["since"] == b["id"], watch.sent
    assert any('"recovered":true' in f for f in watch.received), watch.received
    assert not any('"type":"snapshot"' in f for f in watch.received), watch.received


async def test_a_cursor_the_server_cannot_read_falls_back_to_a_snapshot(
    page: Any, host: HostPages, svc: Service
) -> None:
    brief = await svc.publish("world", "The real list")
    body = (
        f'<news-ticker id="w" server="{svc.base}" channel="world" data-cursor="not-a-cursor">'
        '<ol><li data-id="1-0" data-version="1"><time datetime="2020-01-01T00:00:00Z">x</time> '
        '<span class="nt-text">Stale markup</span></li></ol></news-ticker>'
    )
    await page.goto(host.add(host_page(svc.base, body)))
    shown = items(page, "#w")
    await expect(shown).to_have_count(1)
    await expect(shown.first).to_have_attribute("data-id", brief["id"])
    await svc.publish("world", "And live after it")
    await expect(shown).to_have_count(2)


async def test_changing_attributes_switches_channel_and_language(
    page: Any, host: HostPages, svc: Service
) -> None:
    await svc.publish("world", "World news", time="2026-02-14T12:00:00Z")
    sport = await svc.publish("sport", "Sport news", time="2026-02-14T12:00:00Z")
    body = f'<news-ticker id="w" server="{svc.base}" channel="world" lang="fr"></news-ticker>'
    await page.goto(host.add(host_page(svc.base, body)))
    shown = items(page, "#w")
    await expect(shown).to_have_text(["14/02 World news"])
    await page.evaluate(
        "() => { const w = document.querySelector('#w');"
        " w.setAttribute('channel', 'sport'); w.setAttribute('lang', 'en-US'); }"
    )
    await expect(shown).to_have_text(["02/14 Sport news"])
    await expect(shown.first).to_have_attribute("data-id", sport["id"])
    await expect(page.locator("#w [part=pause]")).to_have_text("Pause")
    await svc.publish("world", "Not for this widget any more")
    await svc.publish("sport", "Goal")
    await expect(shown).to_have_count(2)
    await expect(shown.first).to_contain_text("Goal")


async def test_embed_page_works_without_javascript(browser: Any, svc: Service) -> None:
    await svc.publish(
        "world", "Sans JavaScript <b>aussi</b>", time="2026-02-14T16:30:00+01:00", urgency=1,
        author="Ana <i>Pérez</i>",
    )
    ctx = await browser.new_context(java_script_enabled=False)
    try:
        page = await ctx.new_page()
        requests: list[str] = []
        page.on("request", lambda req: requests.append(req.url))
        await page.goto(f"{svc.base}/embed/world?lang=fr&tz=Europe/Paris", timeout=TIMEOUT_MS)
        li = page.locator("news-ticker > ol > li")
        await expect(li).to_have_count(1)
        await expect(li.locator("time")).to_have_text("14/02")
        await expect(li.locator(".nt-text")).to_have_text("Sans JavaScript <b>aussi</b>")
        await expect(li.locator(".by")).to_have_text("par Ana <i>Pérez</i>")
        ld = json.loads(
            await page.locator('script[type="application/ld+json"]').text_content() or ""
        )
        assert ld["@type"] == "LiveBlogPosting"
        assert ld["liveBlogUpdate"][0]["articleBody"] == "Sans JavaScript <b>aussi</b>"
        assert all(u.startswith(svc.base) for u in requests), requests
    finally:
        await ctx.close()


async def test_a_page_without_lang_or_time_zone_takes_the_channels_defaults(
    page: Any, host: HostPages, svc: Service, redis_client: Any
) -> None:
    """The channel's lang and time zone (set by an operator) where the page gives none;
    the page's lang and the widget's time-zone attribute win, and then nothing is asked."""
    from ticker.auth import KeyStore

    admin = svc.auth(await KeyStore(redis_client).create("boss", ["*"], role="admin"))
    r = await svc.http.put("/v1/channels/world", headers=admin,
                           json={"lang": "fr", "time_zone": "Asia/Tokyo", "title": "Monde"})
    assert r.status_code == 201, r.text
    await svc.publish("world", "Tard le soir", time="2026-02-14T20:00:00Z")  # the 15th in Tokyo
    asked: list[str] = []
    page.on("request", lambda req: asked.append(req.url) if "/v1/channels/world" in req.url
            and "/briefs" not in req.url else None)
    bare = (f'<!doctype html>\n<html>\n<head><meta charset="utf-8"><title>No lang</title>\n'
            f'<script async src="{svc.base}/widget.js"></script></head>\n<body>'
            f'{widget(svc, "bare")}</body>\n</html>\n')
    await page.goto(host.add(bare))
    listed = items(page, "#bare")
    await expect(listed).to_have_count(1)
    await expect(listed.first.locator("[part=date]")).to_have_text("15/02")
    await expect(page.locator("#bare [part~=container]")).to_have_attribute("lang", "fr")
    await expect(page.locator("#bare").get_by_role("log")).to_have_accessible_name("Monde")
    assert asked == [f"{svc.base}/v1/channels/world"]
    # Live briefs after the defaults came are drawn with them too.
    await svc.publish("world", "Plus tard", time="2026-02-14T16:00:00Z")  # the 15th at 01:00
    await expect(listed).to_have_count(2)
    await expect(listed.first.locator("[part=date]")).to_have_text("15/02")

    asked.clear()
    body = widget(svc, "own", time_zone="UTC", label="World news")  # and the page's lang (en)
    await page.goto(host.add(host_page(svc.base, body)))
    own = items(page, "#own")
    await expect(own).to_have_count(2)
    await expect(own.last.locator("[part=date]")).to_have_text("02/14")
    await expect(page.locator("#own").get_by_role("log")).to_have_accessible_name("World news")
    assert asked == []
