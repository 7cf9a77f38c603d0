"""The widget's HTTP side: /widget.js and its caching, the size budget, /embed, /demo, CORS."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Service
from ticker.routes import widget

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "ticker" / "static" / "news-ticker.js"
BUDGET = 8704  # 8.5 KiB


def test_the_widget_fits_its_size_budget() -> None:
    size = len(gzip.compress(SOURCE.read_bytes(), 9))
    assert size <= BUDGET, f"news-ticker.js is {size} bytes gzipped; the budget is {BUDGET}"


def test_one_source_of_the_widget() -> None:
    link = ROOT / "clients" / "widget" / "news-ticker.js"
    assert link.is_symlink() and link.resolve() == SOURCE.resolve()
    assert widget.asset("news-ticker.js").body == SOURCE.read_bytes()


async def test_widget_js_revalidates_and_the_versioned_url_is_immutable(service: Service) -> None:
    body = SOURCE.read_bytes()
    version = widget.widget_version()
    r = await service.http.get("/widget.js", headers={"Accept-Encoding": "gzip"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/javascript; charset=utf-8"
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["content-encoding"] == "gzip"
    assert r.headers["access-control-allow-origin"] == "*"
    assert r.content == body  # httpx decodes the gzip
    assert int(r.headers["content-length"]) <= BUDGET, "served gzipped within the budget"
    etag = r.headers["etag"]
    assert version in etag

    again = await service.http.get(
        "/widget.js", headers={"If-None-Match": etag, "Accept-Encoding": "gzip"}
    )
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag

    plain = await service.http.get("/widget.js", headers={"Accept-Encoding": "identity"})
    assert plain.content == body and "content-encoding" not in plain.headers
    assert plain.headers["etag"] != etag

    for url in (f"/widget.{version}.js", f"/widget.js?v={version}"):
        r = await service.http.get(url)
        assert r.status_code == 200 and r.content == body
        assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
    # An old version's URL gets today's widget, but not for a year.
    r = await service.http.get("/widget.0123456789abcdef.js")
    assert r.status_code == 200 and r.content == body and r.headers["cache-control"] == "no-cache"


class _Items(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.items: list[dict[str, Any]] = []
        self.scripts: list[dict[str, str | None]] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "li":
            self.items.append({"attrs": a, "text": "", "time": "", "href": None})
        elif tag == "time" and self.items:
            self._in = "time"
        elif tag == "span" and a.get("class") == "nt-text":
            self._in = "text"
        elif tag == "a" and self.items:
            self.items[-1]["href"] = a.get("href")
        elif tag == "script":
            self.scripts.append(a)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("time", "span"):
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in and self.items:
            self.items[-1][self._in] += data


async def test_embed_renders_the_list_escaped_with_json_ld_and_cursor(service: Service) -> None:
    hostile = '</script><script>alert(1)</script> "quoted" & <b>bold</b>'
    a = await service.publish(
        "world", hostile, time="2026-02-14T23:30:00Z", urgency=1, url="https://example.org/?a=1&b=2"
    )
    b = await service.publish("world", "Épinglé", time="2026-02-14T08:00:00+01:00", pinned=True)
    r = await service.http.get("/embed/world", params={"lang": "fr", "tz": "Europe/Paris"})
    assert r.status_code == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
    page = r.text
    assert "<script>alert" not in page and "</script><script>" not in page

    parsed = _Items()
    parsed.feed(page)
    assert [i["attrs"]["data-id"] for i in parsed.items] == [b["id"], a["id"]]  # pinned first
    assert parsed.items[1]["text"] == hostile
    assert parsed.items[1]["href"] == "https://example.org/?a=1&b=2"
    assert parsed.items[1]["time"] == "15/02"  # 23:30 UTC is the 15th in Paris
    assert parsed.items[0]["time"] == "14/02"
    assert parsed.items[1]["attrs"]["class"] == "urgent"
    # Only the JSON-LD data block and the widget itself, nothing inline to execute.
    assert [s.get("type") for s in parsed.scripts] == ["application/ld+json", None]
    assert parsed.scripts[1]["src"] == f"{service.base}/widget.{widget.widget_version()}.js"

    listing = (await service.http.get("/v1/channels/world/briefs")).json()
    assert f'data-cursor="{listing["cursor"]}"' in page
    assert f'data-epoch="{listing["epoch"]}"' in page
    block = re.search(r'<script type="application/ld\+json">(.*?)</script>', page, re.S)
    assert block
    ld = json.loads(block.group(1))
    assert ld["@context"] == "https://schema.org" and ld["@type"] == "LiveBlogPosting"
    assert [u["articleBody"] for u in ld["liveBlogUpdate"]] == ["Épinglé", hostile]

    csp = r.headers["content-security-policy"]
    assert "unsafe-inline" not in csp and "script-src 'self'" in csp
    style = re.search(r"<style>(.*?)</style>", page, re.S)
    assert style
    digest = base64.b64encode(hashlib.sha256(style.group(1).encode()).digest()).decode()
    assert f"'sha256-{digest}'" in csp

    us = await service.http.get(
        "/embed/world", params={"lang": "en-US", "tz": "America/New_York", "fragment": "1"}
    )
    parsed = _Items()
    parsed.feed(us.text)
    assert [i["time"] for i in parsed.items] == ["02/14", "02/14"]
    assert us.text.lstrip().startswith("<news-ticker") and "<html" not in us.text


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/embed/Not_A_Channel", "channel"),
        ("/embed/world?tz=Mars/Olympus", "tz"),
        ("/embed/world?lang=%3Cscript%3E", "lang"),
        ("/embed/world?limit=0", "limit"),
        ("/embed/world?mode=sideways", "mode"),
        ("/demo?channel=%3Cb%3E", "channel"),
    ],
)
async def test_bad_page_parameters_get_a_problem(service: Service, path: str, field: str) -> None:
    r = await service.http.get(path)
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["field"] == field


async def test_demo_page_has_a_strict_csp_and_no_inline_script(service: Service) -> None:
    r = await service.http.get("/demo", params={"channel": "sport"})
    assert r.status_code == 200
    csp = r.headers["content-security-policy"]
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "script-src 'self'" in csp and "style-src 'self'" in csp
    assert not re.search(r"<script(?![^>]*\bsrc=)", r.text), "every script is a file"
    assert not re.search(r"\sstyle=|<style", r.text), "every style is a file"
    assert 'channel="sport"' in r.text
    for asset in ("/demo.js", "/demo.css"):
        a = await service.http.get(asset)
        assert a.status_code == 200 and a.headers["etag"]


async def test_public_reads_allow_any_origin_by_default(service: Service) -> None:
    origin = {"Origin": "https://news.example.org"}
    for path in ("/v1/channels", "/v1/channels/world/briefs?limit=5"):
        r = await service.http.get(path, headers=origin)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"
    # Errors too, so that a page can read them.
    r = await service.http.get("/v1/channels/Bad!/briefs", headers=origin)
    assert r.status_code == 400 and r.headers["access-control-allow-origin"] == "*"
    # Writes are untouched, and a 405 still lists every method of the path.
    r = await service.http.put("/v1/channels/world/briefs", headers=origin)
    assert r.status_code == 405 and "access-control-allow-origin" not in r.headers
    assert set(r.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST"}


async def test_public_reads_respect_the_origin_allowlist(serve_with: Any) -> None:
    async with serve_with(allowed_origins=("https://news.example.org",)) as svc:
        r = await svc.http.get(
            "/v1/channels/world/briefs", headers={"Origin": "https://news.example.org"}
        )
        assert r.headers["access-control-allow-origin"] == "https://news.example.org"
        assert "Origin" in r.headers["vary"]
        r = await svc.http.get(
            "/v1/channels/world/briefs", headers={"Origin": "https://evil.example"}
        )
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
