"""Motion: the crawl, the pause control (from the keyboard), and reduced motion."""

from __future__ import annotations

from typing import Any

from playwright.async_api import expect

from tests.browser.conftest import HostPages, host_page, items, wait_ready
from tests.conftest import Service

ANIMATIONS = """sel => document.querySelector(sel).shadowRoot.getAnimations()
                        .map(a => a.playState)"""
# The crawl's position, read over a few frames: a paused strip stays put.
POSITIONS = """async sel => {
  const track = document.querySelector(sel).shadowRoot.querySelector('.track');
  const seen = [];
  for (let i = 0; i < 6; i++) {
    await new Promise(r => requestAnimationFrame(r));
    seen.push(getComputedStyle(track).transform);
  }
  return seen;
}"""


def crawl(svc: Service, wid: str = "c", **attrs: str) -> str:
    extra = " ".join(f'{k}="{v}"' for k, v in attrs.items())
    return (
        f'<news-ticker id="{wid}" mode="crawl" server="{svc.base}" channel="world" '
        f'label="Breaking news" {extra}></news-ticker>'
    )


async def test_pause_control_from_the_keyboard_stops_the_crawl(
    page: Any, host: HostPages, svc: Service
) -> None:
    for i in range(3):
        await svc.publish("world", f"Crawling brief {i}")
    await page.goto(host.add(host_page(svc.base, crawl(svc))))
    shown = items(page, "#c")
    await expect(shown).to_have_count(3)
    marquee = page.locator("#c [role=marquee]")
    await expect(marquee).to_have_attribute("aria-label", "Breaking news")
    hidden_copy = page.locator("#c .copy")
    await expect(hidden_copy).to_have_attribute("aria-hidden", "true")
    await expect(hidden_copy.locator("li")).to_have_count(3)
    assert await page.evaluate(ANIMATIONS, "#c") == ["running"]
    moving = await page.evaluate(POSITIONS, "#c")
    assert len(set(moving)) > 1, moving

    # A keyboard user: Tab reaches the pause control first, Space presses it.
    await page.keyboard.press("Tab")
    pause = page.locator("#c [part=pause]")
    await expect(pause).to_be_focused()
    await expect(pause).to_have_text("Pause")
    await page.keyboard.press("Space")
    await expect(pause).to_have_text("Resume")
    assert await page.evaluate(ANIMATIONS, "#c") == ["paused"]
    still = await page.evaluate(POSITIONS, "#c")
    assert len(set(still)) == 1, still

    # Paused means no auto-update either: a new brief waits, counted, until resumed.
    await svc.publish("world", "Held while paused")
    await expect(page.locator("#c [part=new]")).to_have_text("1 new")
    await expect(shown).to_have_count(3)
    assert len(set(await page.evaluate(POSITIONS, "#c"))) == 1

    await page.keyboard.press("Enter")
    await expect(pause).to_have_text("Pause")
    await expect(shown).to_have_count(4)
    await expect(shown.first).to_contain_text("Held while paused")
    await expect(page.locator("#c [part=new]")).to_be_hidden()
    assert await page.evaluate(ANIMATIONS, "#c") == ["running"]

    # Keyboard focus inside the strip holds it still too; leaving it lets it move again.
    await page.keyboard.press("Tab")
    await expect(page.locator("#c [role=marquee]")).to_be_focused()
    assert await page.evaluate(ANIMATIONS, "#c") == ["paused"]
    await page.keyboard.press("Shift+Tab")
    await expect(pause).to_be_focused()
    assert await page.evaluate(ANIMATIONS, "#c") == ["running"]


async def test_pause_holds_the_list_too(page: Any, host: HostPages, svc: Service) -> None:
    await svc.publish("world", "Before")
    body = f'<news-ticker id="w" server="{svc.base}" channel="world" lang="fr"></news-ticker>'
    await page.goto(host.add(host_page(svc.base, body)))
    shown = items(page, "#w")
    await expect(shown).to_have_count(1)
    pause = page.locator("#w [part=pause]")
    await pause.focus()
    await page.keyboard.press("Enter")
    await expect(pause).to_have_text("Reprendre")
    await svc.publish("world", "Pendant la pause")
    await expect(page.locator("#w [part=new]")).to_have_text("1 nouvelle")
    await expect(shown).to_have_count(1)
    await page.keyboard.press("Enter")
    await expect(shown).to_have_count(2)


async def test_reduced_motion_means_no_animation(page: Any, host: HostPages, svc: Service) -> None:
    await page.emulate_media(reduced_motion="reduce")
    for i in range(3):
        await svc.publish("world", f"Still brief {i}")
    body = f'<news-ticker id="w" server="{svc.base}" channel="world"></news-ticker>' + crawl(svc)
    await page.goto(host.add(host_page(svc.base, body)))
    await wait_ready(page, "#w")
    await wait_ready(page, "#c")
    await expect(items(page, "#c")).to_have_count(3)
    await svc.publish("world", "Arrives without sliding")
    await expect(items(page, "#w")).to_have_count(4)
    await expect(items(page, "#c")).to_have_count(4)
    assert await page.evaluate(ANIMATIONS, "#w") == []
    assert await page.evaluate(ANIMATIONS, "#c") == []
    new = items(page, "#w").first
    await expect(new).to_have_css("animation-name", "none")
    # The strip does not move; it scrolls by hand instead, with no duplicate.
    assert len(set(await page.evaluate(POSITIONS, "#c"))) == 1
    await expect(page.locator("#c [role=marquee]")).to_have_css("overflow-x", "auto")
    await expect(page.locator("#c .copy")).to_be_hidden()

    # The control: without the preference, the same page animates.
    await page.emulate_media(reduced_motion="no-preference")
    await page.wait_for_function(
        "() => document.querySelector('#c').shadowRoot.getAnimations().length === 1"
    )
