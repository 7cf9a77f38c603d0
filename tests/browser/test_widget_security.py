"""Safety: hostile text stays text, links stay http(s), and a strict CSP page works."""

from __future__ import annotations

from typing import Any

from playwright.async_api import expect

from tests.browser.conftest import HostPages, host_page, items, wait_ready
from tests.conftest import Service

PAYLOAD_PARTS = [
    '<img src=x onerror="window.__xss=1">',
    "<script>window.__xss=2</script>",
    "\u202eevil override\u202c",
    "\u2067isolate\u2069",
    " 🎉👩\u200d👩\u200d👧 ",
    "&amp; &lt;b&gt;",
]
PAYLOAD = "".join(PAYLOAD_PARTS)
PAYLOAD = PAYLOAD + "x" * (500 - len(PAYLOAD))
VIOLATIONS = """
window.__violations = [];
document.addEventListener('securitypolicyviolation',
  e => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));
"""


async def test_hostile_text_is_shown_as_text_and_breaks_nothing(
    page: Any, host: HostPages, svc: Service
) -> None:
    await svc.publish("world", "A calm brief", time="2026-02-14T10:00:00Z")
    body = f'<news-ticker id="w" server="{svc.base}" channel="world" lang="fr"></news-ticker>'
    await page.goto(host.add(host_page(svc.base, body)))
    shown = items(page, "#w")
    await expect(shown).to_have_count(1)
    after = await page.locator("#after").bounding_box()

    assert len(PAYLOAD) == 500
    hostile = await svc.publish(
        "world",
        PAYLOAD,
        time="2026-02-14T10:00:00Z",
        url='https://example.org/a"><img/src=x/onerror=window.__xss=3>',
    )
    await expect(shown).to_have_count(2)
    text = shown.first.locator("[part~=text]")
    assert await text.evaluate("e => e.textContent") == hostile["text"] == PAYLOAD
    await expect(text).to_have_attribute("dir", "auto")  # bidi controls stay inside
    await expect(shown.first.locator("[part=date]")).to_have_text("14/02")
    href = await text.evaluate("e => e.getAttribute('href')")
    assert href.startswith("https://example.org/") and "<" not in href and '"' not in href
    counts = await page.evaluate(
        """() => { const r = document.querySelector('#w').shadowRoot;
             return [r.querySelectorAll('img, script, iframe, object').length, window.__xss]; }"""
    )
    assert counts == [0, None]
    # No horizontal overflow, and the host page did not move.
    overflow = await page.locator("#w [role=log]").evaluate("e => e.scrollWidth - e.clientWidth")
    assert overflow <= 0
    assert await page.locator("#after").bounding_box() == after


async def test_only_http_links_even_from_server_rendered_markup(
    page: Any, host: HostPages, svc: Service
) -> None:
    brief = await svc.publish("world", "A real brief")
    listing = (await svc.http.get("/v1/channels/world/briefs")).json()
    # Markup as a careless (or compromised) CMS might render it, with a javascript: link.
    body = (
        f'<news-ticker id="w" server="{svc.base}" channel="world" '
        f'data-cursor="{listing["cursor"]}" data-epoch="{listing["epoch"]}">'
        f'<ol><li data-id="{brief["id"]}" data-version="1" data-urgency="5">'
        f'<time datetime="{brief["time"]}">x</time> <span class="nt-text">'
        '<a href="javascript:window.__xss=4">Click me</a></span></li></ol></news-ticker>'
    )
    await page.goto(host.add(host_page(svc.base, body)))
    await wait_ready(page, "#w")
    shown = items(page, "#w")
    await expect(shown).to_have_count(1)
    await expect(shown.first.locator("[part~=text]")).to_have_text("Click me")
    await expect(shown.first.locator("a")).to_have_count(0)
    await shown.first.locator("[part~=text]").click()
    assert await page.evaluate("window.__xss") is None


async def test_works_under_a_strict_content_security_policy(
    page: Any, context: Any, host: HostPages, svc: Service
) -> None:
    ws_origin = svc.base.replace("http://", "ws://")
    csp = (
        f"default-src 'none'; script-src {svc.base}; connect-src {svc.base} {ws_origin}; "
        "style-src 'none'; img-src 'none'; font-src 'none'; base-uri 'none'; form-action 'none'; "
        "require-trusted-types-for 'script'; trusted-types 'none'"
    )
    await page.add_init_script(VIOLATIONS)
    await svc.publish("world", "Urgent under CSP", urgency=1)
    body = (
        f'<news-ticker id="w" server="{svc.base}" channel="world"></news-ticker>'
        f'<news-ticker id="c" server="{svc.base}" channel="world" mode="crawl"></news-ticker>'
    )
    await page.goto(host.add(host_page(svc.base, body), {"Content-Security-Policy": csp}))
    shown = items(page, "#w")
    await expect(shown).to_have_count(1)
    await svc.publish("world", "Live under CSP")
    await expect(shown).to_have_count(2)
    await expect(items(page, "#c")).to_have_count(2)
    # The widget's styles applied (constructable stylesheets need no 'unsafe-inline').
    await expect(page.locator("#w")).to_have_css("height", "320px")
    await expect(page.locator("#c")).to_have_css("height", "44px")
    await expect(shown.last.locator("[part=date]")).to_have_css("color", "rgb(176, 0, 32)")
    await page.wait_for_function(
        "() => document.querySelector('#c').shadowRoot.getAnimations()[0]?.playState === 'running'"
    )
    assert await page.evaluate("window.__violations") == []
    assert await context.cookies() == []
