"""Self-contained HTML pages (the privacy review and the study report) without a template engine.

A page must open on an air-gapped reviewer's laptop and must not be able to reach anything:
styles are inline, figures are ``data:`` URIs, there are no scripts, and a
Content-Security-Policy forbids every fetch except ``data:`` images, so even a value that looked
like a URL could not make the browser load it. Every value goes through ``esc`` unless it is
already markup built here (``Html``).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from typing import Any

# No script-src: the page needs none, and the tests add theirs to a copy (see tests).
CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; "
    "form-action 'none'"
)

CSS = """
:root { --ink: #1d2430; --muted: #5b6573; --line: #d8dde5; --ok: #16603a; --ok-bg: #e3f4ea;
  --bad: #9b1c1c; --bad-bg: #fde8e8; --warn: #7a4d00; --warn-bg: #fff4d6; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--ink); background: #f4f6f9; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 20px; margin: 0 0 10px; }
h3 { font-size: 16px; margin: 18px 0 6px; }
.sub { color: var(--muted); margin: 0 0 18px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px;
  padding: 18px 22px; margin: 16px 0; }
table { border-collapse: collapse; width: 100%; margin: 8px 0; font-size: 14px; }
th, td { text-align: left; vertical-align: top; padding: 5px 8px;
  border-bottom: 1px solid var(--line); }
th { background: #eef1f5; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.compact { width: auto; min-width: 50%; }
table.kv th { width: 28%; background: none; color: var(--muted); font-weight: 500; }
tr.bad td { background: var(--bad-bg); color: var(--bad); font-weight: 600; }
tr.mark td { background: var(--ok-bg); }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: 13px; word-break: break-all; }
.verdict { border-radius: 8px; padding: 14px 20px; margin: 12px 0; font-size: 17px; }
.verdict strong { font-size: 22px; display: block; }
.pass { background: var(--ok-bg); color: var(--ok); border: 2px solid var(--ok); }
.fail { background: var(--bad-bg); color: var(--bad); border: 2px solid var(--bad); }
.warn { background: var(--warn-bg); color: var(--warn); border: 1px solid var(--warn);
  border-radius: 6px; padding: 8px 12px; }
.facts { display: flex; flex-wrap: wrap; gap: 12px; margin: 10px 0; }
.fact { border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px; min-width: 150px; }
.fact span { display: block; color: var(--muted); font-size: 12px; text-transform: uppercase;
  letter-spacing: .04em; }
.fact b { font-size: 20px; font-variant-numeric: tabular-nums; }
figure { margin: 12px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { color: var(--muted); font-size: 13px; }
.gallery { display: flex; flex-wrap: wrap; gap: 8px 20px; align-items: flex-start; }
.nowrap { white-space: nowrap; }
ul.statements li { margin: 4px 0; }
.numbered { counter-reset: section; }
.numbered section > h2::before { counter-increment: section; content: counter(section) ". "; }
footer { color: var(--muted); font-size: 12px; margin-top: 24px; }
@media print { body { background: #fff; } section { break-inside: avoid; } }
"""


class Html(str):
    """Markup built by these helpers: inserted as is, never escaped again."""


def esc(value: object) -> Html:
    """Any value as text safe inside an element or a quoted attribute."""
    if isinstance(value, Html):
        return value
    return Html(html.escape("" if value is None else str(value), quote=True))


def tag(name: str, content: object = "", **attrs: object) -> Html:
    """``<name attrs>content</name>``; ``class_`` stands for ``class``, ``data_x`` for
    ``data-x``; attribute values and plain-text content are escaped."""
    parts = [name]
    for key, value in attrs.items():
        if value is None or value is False:
            continue
        key = key.rstrip("_").replace("_", "-")
        parts.append(key if value is True else f'{key}="{esc(value)}"')
    return Html(f"<{' '.join(parts)}>{esc(content)}</{name}>")


def join(parts: Iterable[object]) -> Html:
    return Html("".join(esc(p) for p in parts))


def png_img(png: bytes, alt: str, **attrs: object) -> Html:
    """An inline PNG (``data:`` URI), so the page carries its figures with it."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    src = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    extra = "".join(f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"' for k, v in attrs.items())
    return Html(f'<img src="{src}" alt="{esc(alt)}"{extra}>')


def figure(png: bytes, caption: str, **attrs: object) -> Html:
    return tag("figure", join([png_img(png, caption, **attrs), tag("figcaption", caption)]))


def table(
    header: Sequence[object],
    rows: Iterable[Sequence[object]],
    *,
    row_classes: Sequence[str | None] | None = None,
    numeric: Sequence[int] = (),
    class_: str | None = None,
) -> Html:
    """A table; columns listed in ``numeric`` are right-aligned."""

    def cells(values: Sequence[object], name: str) -> Html:
        return join(
            tag(name, v, class_="num" if i in numeric else None) for i, v in enumerate(values)
        )

    body = []
    for i, r in enumerate(rows):
        cls = row_classes[i] if row_classes is not None and i < len(row_classes) else None
        body.append(tag("tr", cells(r, "td"), class_=cls))
    return tag(
        "table",
        join([tag("thead", tag("tr", cells(header, "th"))), tag("tbody", join(body))]),
        class_=class_,
    )


def kv_table(pairs: Iterable[tuple[object, object]]) -> Html:
    """Two columns: what, and its value."""
    return tag(
        "table", join(tag("tr", join([tag("th", k), tag("td", v)])) for k, v in pairs), class_="kv"
    )


def fact(label: str, value: object, name: str) -> Html:
    """A headline number; ``data-fact`` lets a test find it in the rendered page."""
    return tag("div", join([tag("span", label), tag("b", value, data_fact=name)]), class_="fact")


def brief(value: Any, limit: int = 12) -> str:
    """A JSON-like value as one short line: lists cut at ``limit``, dicts as k=v pairs."""
    if value is None:
        return "not recorded"
    if isinstance(value, list):
        shown = ", ".join(str(v) for v in value[:limit])
        return shown + (f", … ({len(value)} in all)" if len(value) > limit else "")
    if isinstance(value, dict):
        return "; ".join(f"{k}={brief(v, 4)}" for k, v in value.items())
    return str(value)


def flatten(obj: Any, prefix: str = "") -> Iterable[tuple[str, str]]:
    """Nested manifest keys as readable labels ("models diffusion sha256") with their values."""
    if isinstance(obj, dict) and obj:
        for k, v in obj.items():
            yield from flatten(v, f"{prefix}{str(k).replace('_', ' ')} ")
    else:
        yield prefix.strip(), brief(obj)


def page(title: str, body: Html, footer: str = "") -> str:
    """The whole document: UTF-8, the no-fetch policy, inline styles, ``body`` in ``<main>``."""
    head = join(
        [
            Html('<meta charset="utf-8">'),
            Html(f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">'),
            Html('<meta name="viewport" content="width=device-width, initial-scale=1">'),
            Html('<meta name="referrer" content="no-referrer">'),
            tag("title", title),
            Html(f"<style>{CSS}</style>"),
        ]
    )
    foot = tag("footer", footer) if footer else Html("")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head>{head}</head>'
        f"<body><main>{body}{foot}</main></body></html>\n"
    )
