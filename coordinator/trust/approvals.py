"""What ``coordinator import`` makes of the reviewers' approvals in a verified bundle.

Every file in the bundle's ``approvals/`` is judged (``shared.bundle.approval``) against the
reviewers pinned for the bundle's site (``coordinator.trust.reviewers``). The import is refused
(exit 4) when

* an approval is malformed, altered, or made for another bundle (copied), always;
* a pinned reviewer of the site rejected the bundle, always;
* an approval is by a reviewer not pinned here, when this coordinator takes part in sign-off
  (it requires approvals or pinned a reviewer of the site): nobody here can check it;
* fewer valid approvals by pinned reviewers than required: ``--require-approvals N``, else
  ``required_approvals`` in ``WORKSPACE/import-policy.toml``, else 0. The line names the
  pinned reviewers whose approval is missing.

A coordinator that neither requires approvals nor pinned a reviewer of the site imports the
bundle and says how many approvals it could not check.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from coordinator.trust.reviewers import pinned_reviewers
from shared.bundle.approval import (
    APPROVED,
    UNPINNED,
    ApprovalCheck,
    approval_refusal,
    check_approvals,
)
from shared.bundle.approval_policy import IMPORT_POLICY, check_required, required_approvals
from shared.bundle.format import VerifiedBundle
from shared.errors import IntegrityError

_HINTS = {
    "invalid": "the bundle's approvals were altered or copied after sign-off: ask the site to "
    "send the bundle again as its reviewers signed it",
    "unpinned": "confirm the reviewer's fingerprint with the site and pin it: coordinator "
    "trust add-reviewer REVIEWER.pub --site {site} --name NAME",
    "rejected": "a reviewer of the site refused this bundle: it is not imported",
    "missing": "the site's reviewers approve with `site-agent review BUNDLE --approve "
    "--reviewer NAME` and re-pack it (`site-agent export pack`); pin them here with "
    "coordinator trust add-reviewer",
}


@dataclass
class ImportApprovals:
    required: int
    approved: list[str]  # pinned reviewers whose valid approval the bundle carries
    checks: list[ApprovalCheck]
    note: str | None = None  # approvals nobody here could check


def import_required(workspace: Path, given: int | None) -> int:
    """``--require-approvals`` when given, else the coordinator's import policy."""
    if given is not None:
        return check_required(given, "--require-approvals")
    return required_approvals(workspace, IMPORT_POLICY)


def check_import_approvals(
    workspace: Path, root: Path, vb: VerifiedBundle, site: str, required: int
) -> ImportApprovals:
    """The approvals of bundle ``root`` if they let it in; ``IntegrityError`` else."""
    reviewers = pinned_reviewers(workspace, site)
    bundle_id = str(vb.manifest.get("bundle_id"))
    checks = check_approvals(
        root,
        bundle_id=bundle_id,
        site=site,
        manifest_sha256=vb.manifest_sha256,
        reviewers=reviewers,
    )
    refusal = approval_refusal(
        checks,
        required,
        sorted(reviewers),
        unpinned_refuse=bool(reviewers) or required > 0,
        site=site,
    )
    if refusal is not None:
        raise IntegrityError(
            f"bundle {bundle_id[:8]} from {site} refused: {refusal.message}",
            hint=_HINTS[refusal.kind].format(site=site),
        )
    approved = sorted(str(c.reviewer) for c in checks if c.valid and c.decision == APPROVED)
    unchecked = [c for c in checks if c.status == UNPINNED]
    note = None
    if unchecked:
        note = (
            f"{len(unchecked)} approval(s) not checked: no reviewer of {site} is pinned here "
            f"({', '.join(str(c.reviewer) for c in unchecked)})"
        )
    return ImportApprovals(required, approved, checks, note)
