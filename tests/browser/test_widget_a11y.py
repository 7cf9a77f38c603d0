"""Accessibility (axe-core finds nothing) and the demo page, used as a person would."""

from __future__ import annotations

import re
from typing import Any

from playwright.async_api import expect

from tests.browser.conftest import HostPages, Watch, host_page, items, wait_ready
from tests.conftest import Service

AXE_RUN = """async () => {
  const result = await axe.run(document, {resultTypes: ['violations']});
  return result.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.map(n => n.target.join(' ') + ': ' + n.failureSummary)}));
}"""


async def axe_violations(page: Any, axe_source: str) -> list[dict[str, Any]]:
    await page.evaluate(axe_source)
    violations: list[dict[str, Any]] = await page.evaluate(AXE_RUN)
    return violations


async def test_axe_finds_no_violations_in_either_mode(
    page: Any, host: HostPages, svc: Service, axe_source: str
) -> None:
    first = await svc.publish(
        "world", "Suivez notre direct", pinned=True, url="https://example.org/live",
        author="La rédaction",  # a byline on the pinned background
    )
    await svc.publish("world", "Séisme de magnitude 6", urgency=1, author="Ana Pérez")
    await svc.publish("world", "Sans lien, en anglais", lang="en")
    for i in range(12):
        await svc.publish(
            "world", f"Dépêche numéro {i}, assez longue pour remplir une ligne entière"
        )
    r = await svc.http.patch(
        f"/v1/channels/world/briefs/{first['id']}",
        json={"text": "Suivez notre direct (mis à jour)"},
        headers=svc.auth(),
    )
    assert r.status_code == 200
    body = (
        f'<news-ticker id="c" server="{svc.base}" channel="world" lang="fr" mode="crawl">'
        "</news-ticker>"
        f'<news-ticker id="w" server="{svc.base}" channel="world" lang="fr" '
        'time-zone="Europe/Paris"></news-ticker>'
    )
    await page.goto(host.add(host_page(svc.base, body, lang="fr", title="Page hôte")))
    await expect(items(page, "#w")).to_have_count(15)
    await expect(items(page, "#c")).to_have_count(15)
    # With the "N new" button showing too.
    await page.locator("#w [role=log]").evaluate("e => { e.scrollTop = 200 }")
    await svc.publish("world", "Arrivée pendant la lecture")
    await expect(page.locator("#w [part=new]")).to_be_visible()
    assert await axe_violations(page, axe_source) == []


async def test_demo_page_publishes_under_its_own_csp(
    page: Any, svc: Service, watch: Watch, axe_source: str
) -> None:
    await page.add_init_script(
        "window.__violations = []; document.addEventListener('securitypolicyviolation',"
        " e => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));"
    )
    response = await page.goto(f"{svc.base}/demo?channel=demo")
    assert (
        response is not None
        and "script-src 'self'" in (await response.all_headers())["content-security-policy"]
    )
    await wait_ready(page, "#list")
    await wait_ready(page, "#crawl")
    await page.get_by_label("API key").fill(svc.key)
    await page.get_by_label("Text").fill("Publié depuis la démo")
    await page.get_by_label("Urgency").select_option("2")
    await page.get_by_role("button", name="Publish").click()
    await expect(page.locator("#result")).to_contain_text("Published")
    for widget in ("#list", "#crawl"):
        await expect(items(page, widget)).to_have_count(1)
        await expect(items(page, widget).first).to_contain_text("Publié depuis la démo")
        await expect(items(page, widget).first).to_have_attribute("part", "item urgent")
        # The new item fades in: contrast is checked once it is fully drawn (mid-fade,
        # axe blends its colours with the page and finds them too pale).
        await expect(items(page, widget).first).not_to_have_class(re.compile(r"\bin\b"))
    assert await axe_violations(page, axe_source) == []

    await page.get_by_role("button", name="Retract the last brief").click()
    await expect(page.locator("#result")).to_contain_text("Retracted")
    await expect(items(page, "#list")).to_have_count(0)
    await expect(items(page, "#crawl")).to_have_count(0)

    # A wrong key is refused with the server's explanation.
    await page.get_by_label("API key").fill("tk_wrong")
    await page.get_by_label("Text").fill("Nope")
    await page.get_by_role("button", name="Publish").click()
    await expect(page.locator("#result")).to_contain_text("unknown or was revoked")
    assert await page.evaluate("window.__violations") == []
