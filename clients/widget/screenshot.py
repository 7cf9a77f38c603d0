"""Take docs/widget.png: the demo page with both widget modes, on a real service.

    python clients/widget/screenshot.py [--out docs/widget.png]

Starts a private Redis and the service on loopback (as the tests do), publishes a few
briefs, and photographs /demo in Debian's Chromium (TICKER_CHROMIUM to use another).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from playwright.async_api import async_playwright  # noqa: E402

from tests.browser.conftest import CHROMIUM, CHROMIUM_FLAGS, items  # noqa: E402
from tests.conftest import run_service, tcp_socket  # noqa: E402
from ticker.auth import KeyStore  # noqa: E402
from ticker.config import Settings  # noqa: E402
from ticker.embedded import EmbeddedRedis  # noqa: E402
from ticker.store import connect  # noqa: E402


def hours_ago(hours: float) -> str:
    return (datetime.now(UTC) - timedelta(hours=hours)).isoformat(timespec="seconds")


BRIEFS = [
    {
        "text": "Suivez notre direct: le sommet européen minute par minute",
        "pinned": True,
        "url": "https://example.org/direct",
        "time": hours_ago(30),
    },
    {"text": "Tempête Zoé: 40 000 foyers privés d'électricité dans l'Ouest", "time": hours_ago(28)},
    {
        "text": "Le Parlement adopte la réforme des retraites en première lecture",
        "url": "https://example.org/retraites",
        "time": hours_ago(20),
    },
    {"text": "Ligue des champions: Lyon s'impose 2-1 à Madrid", "time": hours_ago(3)},
    {
        "text": "Séisme de magnitude 6,1 au large de la Crète, pas de victime signalée",
        "urgency": 1,
        "time": hours_ago(1),
    },
]


async def main(out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="tk-") as tmp:
        redis = EmbeddedRedis(tmp)
        redis.start()
        try:
            settings = Settings(redis_url=redis.url, log_level="warning", shutdown_drain=0.5)
            async with run_service(settings, tcp_socket()) as svc:
                client = connect(settings, redis.url)
                svc.key = await KeyStore(client).create("demo", ["*"])
                await client.aclose()
                published = [await svc.publish("demo", **b) for b in BRIEFS]
                r = await svc.http.patch(
                    f"/v1/channels/demo/briefs/{published[2]['id']}",
                    headers=svc.auth(),
                    json={
                        "text": "Le Parlement adopte la réforme des retraites en deuxième lecture"
                    },
                )
                r.raise_for_status()
                async with async_playwright() as pw:
                    browser = await pw.chromium.launch(
                        executable_path=CHROMIUM, args=CHROMIUM_FLAGS
                    )
                    page = await browser.new_page(viewport={"width": 1200, "height": 900})
                    await page.goto(f"{svc.base}/demo?channel=demo")
                    await items(page, "#list").nth(len(BRIEFS) - 1).wait_for()
                    await page.get_by_label("API key").fill(svc.key)
                    await page.get_by_label("Text").fill("Nouvelle dépêche en cours de saisie…")
                    await svc.publish(
                        "demo", "Dernière minute: accord trouvé à Bruxelles", urgency=2
                    )
                    await items(page, "#list").nth(len(BRIEFS)).wait_for()
                    await page.evaluate("document.querySelector('#crawl').paused = true")
                    await page.wait_for_function(
                        "() => !document.querySelector('#list').shadowRoot.getAnimations().length"
                    )
                    out.parent.mkdir(parents=True, exist_ok=True)
                    await page.screenshot(path=str(out), full_page=True)
                    await browser.close()
        finally:
            redis.stop()
    print(out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "widget.png")
    asyncio.run(main(parser.parse_args().out))
