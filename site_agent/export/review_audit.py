"""The review page's audit section: this bundle's entries in the site's audit log, read-only
through the audit module's log path and its ``verify`` (chain, signatures, signed head)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.html_page import Html, flatten, join, table, tag


@dataclass
class AuditView:
    """This bundle's entries in the site's audit log and whether the whole log verifies."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0
    problems: list[str] = field(default_factory=list)
    checked: bool = True
    note: str = ""


def bundle_audit(workspace: Path, bundle_id: str) -> AuditView:
    """Read-only: the log's entries that name ``bundle_id``, and the log's own verification."""
    from site_agent.export import audit
    from site_agent.export.keys import public_keys

    view = AuditView()
    log = Path(workspace) / audit.LOG
    lines = log.read_bytes().splitlines() if log.is_file() else []
    view.total = len(lines)
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # verify() below names the line
        details = entry.get("details") if isinstance(entry, dict) else None
        if isinstance(details, dict) and details.get("bundle_id") == bundle_id:
            view.entries.append(entry)
    try:
        rep = audit.verify(workspace, public_keys(workspace))
    except Exception as exc:  # no key in this workspace, unreadable head: say so, do not fail
        view.checked, view.note = False, f"the log could not be verified here ({exc})"
        return view
    view.problems = list(rep.problems)
    return view


def _entry_details(entry: dict[str, Any], manifest_sha256: str) -> Html:
    """One line per detail; the logged manifest hash is compared with this bundle's."""
    lines = []
    for k, v in (entry.get("details") or {}).items():
        if k == "bundle_id":
            continue
        if k == "manifest_sha256":
            same = "the manifest reviewed here" if v == manifest_sha256 else "ANOTHER manifest"
            lines.append(tag("div", f"manifest sha256: {str(v)[:16]}… ({same})"))
            continue
        lines += [tag("div", f"{label}: {value}") for label, value in flatten({k: v})]
    return join(lines)


def audit_section(a: AuditView, bundle_id: str, manifest_sha256: str) -> Html:
    parts = [tag("h2", "Audit log entries for this bundle")]
    if not a.checked:
        parts.append(tag("p", a.note, class_="warn"))
    elif a.problems:
        parts.append(
            tag(
                "div",
                join(
                    [
                        tag("strong", "The site's audit log does not verify:"),
                        *(tag("div", x) for x in a.problems[:20]),
                    ]
                ),
                class_="verdict fail",
            )
        )
    else:
        parts.append(
            tag(
                "p",
                f"The site's audit log verifies ({a.total} entries): every entry is signed, "
                "the hash chain is unbroken and it ends at the signed head.",
                data_fact="audit-status",
            )
        )
    if a.entries:
        rows = [
            (
                e.get("seq"),
                tag("span", e.get("time"), class_="nowrap"),
                e.get("event"),
                tag("span", str(e.get("key", ""))[:12] + "…", class_="mono nowrap"),
                _entry_details(e, manifest_sha256),
            )
            for e in a.entries
        ]
        parts.append(table(["#", "time (UTC)", "event", "signed by", "details"], rows, numeric=[0]))
    else:
        parts.append(
            tag(
                "p",
                f"No entry in this workspace's log names bundle {bundle_id}: it was not exported "
                "from this workspace, or the log was replaced.",
                class_="warn",
            )
        )
    return tag("section", join(parts), id="audit")
