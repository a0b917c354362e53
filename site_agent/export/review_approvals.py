"""The review page's sign-off section: every approval in the bundle (who, decision, valid or
not, checked against the site's reviewer keys) beside what the export policy requires."""

from __future__ import annotations

from shared.bundle.approval import APPROVED, REJECTED, VALID, ApprovalCheck
from shared.html_page import Html, join, table, tag


def _status(c: ApprovalCheck) -> str:
    if c.status == VALID:
        return "valid: signed by this reviewer's key over this manifest"
    return f"NOT VALID ({c.status}): {c.why}"


def approvals_section(checks: list[ApprovalCheck], required: int) -> Html:
    approved = sorted({str(c.reviewer) for c in checks if c.valid and c.decision == APPROVED})
    rejected = [c for c in checks if c.valid and c.decision == REJECTED]
    policy = (
        f"The site's export policy requires {required} approval(s) before the bundle leaves; "
        f"{len(approved)} valid approval(s) are present."
        if required
        else f"The site's export policy requires no approval; {len(approved)} valid approval(s) "
        "are present."
    )
    parts = [tag("h2", "Reviewers' sign-off"), tag("p", policy, data_fact="approvals-status")]
    if rejected:
        parts.append(
            tag(
                "p",
                f"Rejected by {', '.join(str(c.reviewer) for c in rejected)}: the bundle "
                "cannot be released.",
                class_="warn",
            )
        )
    if checks:
        rows = [
            (
                c.reviewer or c.file,
                c.decision or "",
                tag("span", c.time or "", class_="nowrap"),
                c.reason or "",
                tag("span", (c.key_fingerprint or "")[:16] + "…", class_="mono nowrap"),
                _status(c),
            )
            for c in checks
        ]
        classes = [None if c.valid else "bad" for c in checks]
        parts.append(
            table(
                ["reviewer", "decision", "time (UTC)", "reason", "key", "signature"],
                rows,
                row_classes=classes,
            )
        )
    else:
        parts.append(tag("p", "No reviewer has signed a decision on this bundle yet."))
    return tag("section", join(parts), id="approvals")
