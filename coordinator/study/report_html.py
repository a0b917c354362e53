"""``report.html``: the study report as one self-contained page (plot inline, no network).

Same content as ``report.md`` (``report.report_sections``), so the two cannot disagree; rows
whose seed-level AUC difference survives Holm are highlighted and the significance statements
stand in their own list.
"""

from __future__ import annotations

from typing import Any

from coordinator.study.report import PLOT_CAPTION, TITLE, report_sections
from shared.html_page import Html, figure, join, page, table, tag


def _section(i: int, title: str, body: list[Html], slug: str) -> Html:
    return tag("section", join([tag("h2", title), *body]), id=slug, data_section=str(i))


def render_report_html(
    summary: list[dict[str, Any]], comps: list[dict[str, Any]], note: str, plot_png: bytes
) -> str:
    parts = [
        tag("h1", TITLE),
        tag("p", note, class_="sub", data_fact="note"),
        tag("section", figure(plot_png, PLOT_CAPTION), id="plot"),
    ]
    for i, s in enumerate(report_sections(summary, comps), 1):
        body: list[Html] = []
        if s.text:
            body.append(tag("p", s.text))
        if s.header:
            body.append(
                table(
                    s.header,
                    s.rows,
                    row_classes=["mark" if m else None for m in s.marked] or None,
                    numeric=range(1, len(s.header)) if s.paper_table else (),
                    class_="compact" if s.paper_table else None,
                )
            )
        if s.items:
            slug = "significant" if s.title.startswith("Significant") else f"notes-{i}"
            body.append(
                tag("ul", join(tag("li", x) for x in s.items), class_="statements", data_fact=slug)
            )
        body_slug = s.title.split(" ")[0].lower()
        parts.append(_section(i, s.title, body, body_slug))
    return page(
        TITLE,
        join(parts),
        footer="Written by coordinator study. Self-contained: no scripts, no external resources.",
    )
