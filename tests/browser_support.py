"""Render a self-contained HTML page in headless Chromium and read back what a reader sees.

``render`` loads a copy of the page with a small probe script (the copy's Content-Security-
Policy gains ``script-src 'unsafe-inline'`` for it, nothing else) and returns, from the
rendered DOM: the visible text (``innerText``), every ``data-fact`` element's text and whether
it has a box on screen, every image's load state and natural size, any reference that is not a
``data:`` URI or a fragment (attributes and computed background images), and the page's
resource-timing entries. Chromium runs with its proxy set to a closed loopback port and every
host name unresolvable, so nothing could leave even if the page tried, and with a NetLog whose
requests made by the page (network isolation key ``file://``) are returned as well.
``screenshot`` takes a full-page PNG of the unmodified page.

Without Chromium the tests skip with the reason, except under ``CI`` where they fail.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
QUIET = [
    "--headless=new",
    "--disable-gpu",
    "--no-sandbox",
    "--no-first-run",
    "--hide-scrollbars",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND",
]

PROBE = r"""<script>
window.addEventListener('load', () => {
  const shown = el => { const r = el.getBoundingClientRect(), s = getComputedStyle(el);
    return r.width > 0 && r.height > 0 && s.visibility !== 'hidden' && s.display !== 'none'; };
  const facts = {};
  document.querySelectorAll('[data-fact]').forEach(el => {
    facts[el.dataset.fact] = {text: el.innerText.trim(), visible: shown(el)}; });
  const images = [...document.images].map(i => ({alt: i.alt, complete: i.complete,
    width: i.naturalWidth, height: i.naturalHeight, scheme: i.currentSrc.split(':')[0],
    visible: shown(i)}));
  const refs = [];
  const names = ['src', 'href', 'srcset', 'poster', 'action', 'data', 'background', 'xlink:href'];
  document.querySelectorAll('*').forEach(el => {
    if (el.id === '__probe__') return;
    for (const n of names) { const v = el.getAttribute(n);
      if (v !== null && !v.startsWith('data:') && !v.startsWith('#')) refs.push(n + '=' + v); }
    const bg = getComputedStyle(el).backgroundImage;
    if (bg && bg !== 'none' && !bg.includes('url("data:')) refs.push('background ' + bg);
  });
  const out = {text: document.body.innerText, facts, images, refs,
    resources: performance.getEntriesByType('resource').map(e => e.name),
    height: document.documentElement.scrollHeight, title: document.title,
    highlighted: {bad: [...document.querySelectorAll('tr.bad')].filter(shown).length,
                  mark: [...document.querySelectorAll('tr.mark')].filter(shown).length}};
  const pre = document.createElement('pre');
  pre.id = '__probe__';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


@dataclass
class Rendered:
    text: str
    facts: dict[str, dict[str, Any]]
    images: list[dict[str, Any]]
    refs: list[str]
    resources: list[str]
    page_requests: list[str]
    height: int
    title: str
    highlighted: dict[str, int]  # visible table rows marked bad (findings) or mark (significant)


def chromium() -> str:
    """The Chromium binary, or skip (fail under CI) with the reason."""
    found = os.environ.get("CHROMIUM") or next(filter(None, map(shutil.which, NAMES)), None)
    if found:
        return found
    reason = (
        "headless Chromium not found (apt-get install chromium, or set CHROMIUM=/path); "
        "the page tests need a real browser"
    )
    if os.environ.get("CI"):
        pytest.fail(reason + " — CI is set, so this is a failure, not a skip")
    pytest.skip(reason)


def _dead_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str], work: Path) -> subprocess.CompletedProcess:
    profile = work / "profile"
    profile.mkdir(parents=True, exist_ok=True)
    cmd = [chromium(), *QUIET, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)


def _page_requests(netlog: Path) -> list[str]:
    """URLs of requests the page itself started (its network isolation key is file://);
    the browser's own background traffic has other keys and is left out."""
    try:
        log = json.loads(netlog.read_text())
    except (OSError, ValueError):
        raise AssertionError(f"Chromium wrote no readable NetLog at {netlog}") from None
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [
        e["params"].get("url", "?")
        for e in log["events"]
        if e.get("type") == start
        and "file://" in str(e.get("params", {}).get("network_isolation_key", ""))
    ]


def render(page: Path, work: Path) -> Rendered:
    """Load ``page`` (a probed copy of it) and return what the rendered DOM shows."""
    work.mkdir(parents=True, exist_ok=True)
    source = page.read_text(encoding="utf-8")
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">', source)
    assert csp and "default-src &#x27;none&#x27;" in csp.group(1), "page has no no-fetch policy"
    probed = source.replace(
        csp.group(1), csp.group(1) + "; script-src &#x27;unsafe-inline&#x27;", 1
    )
    probed = probed.replace("</body>", PROBE + "</body>", 1)
    copy = work / ("probed-" + page.name)
    copy.write_text(probed, encoding="utf-8")
    netlog = work / "netlog.json"
    proc = _run(
        [
            f"--proxy-server=http://127.0.0.1:{_dead_port()}",
            f"--log-net-log={netlog}",
            "--virtual-time-budget=10000",
            "--window-size=1200,900",
            "--dump-dom",
            copy.resolve().as_uri(),
        ],
        work,
    )
    found = re.search(r'<pre id="__probe__">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"no probe output from Chromium (exit {proc.returncode}): {proc.stderr[-2000:]}"
    out = json.loads(html.unescape(found.group(1)))
    return Rendered(
        out["text"],
        out["facts"],
        out["images"],
        out["refs"],
        out["resources"],
        _page_requests(netlog),
        int(out["height"]),
        out["title"],
        out["highlighted"],
    )


def screenshot(page: Path, png: Path, height: int, width: int = 1200) -> Path:
    """A PNG of the whole page as a reader sees it (the unmodified page)."""
    proc = _run(
        [
            f"--proxy-server=http://127.0.0.1:{_dead_port()}",
            f"--window-size={width},{min(max(height, 600), 16000)}",
            f"--screenshot={png}",
            page.resolve().as_uri(),
        ],
        png.parent / "shot-profile",
    )
    assert png.is_file() and png.stat().st_size > 0, f"no screenshot: {proc.stderr[-2000:]}"
    keep = os.environ.get("BROWSER_SCREENSHOTS")  # a folder to keep them in, for a person
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, Path(keep) / png.name)
    return png


def assert_self_contained(r: Rendered) -> None:
    """Every figure loaded from the page itself; nothing was or could be fetched."""
    assert r.images, "no figure on the page"
    for img in r.images:
        assert img["complete"] and img["width"] > 0 and img["height"] > 0, img
        assert img["scheme"] == "data", img
    assert r.refs == [], r.refs
    assert r.resources == [], r.resources
    assert r.page_requests == [], r.page_requests
