"""``site-agent review BUNDLE --approve|--reject``: a reviewer's signed decision on a bundle.

The bundle is verified and re-scanned first (``review.review_bundle``); only then does the
reviewer's own key (``reviewer_keys``) sign the decision over the manifest's SHA-256
(``shared.bundle.approval``), written to ``approvals/NAME.json`` + ``.sig`` in the bundle
folder, and the site's audit log records it (event ``approval``, with ``bundle_id`` so the
review page lists it). Every refused attempt (a bundle that fails verification, a wrong
reviewer passphrase, a PHI finding, a tar instead of a folder) is logged as
``approval-refused`` with what refused it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.bundle.approval import (
    APPROVED,
    approval_body,
    approval_paths,
    check_reason,
    check_reviewer_name,
    write_approval,
)
from shared.bundle.format import unverified_claims
from shared.errors import InputError, PrivacyGateError, ToolkitError
from site_agent.export import audit
from site_agent.export.keys import Signer
from site_agent.export.reviewer_keys import ReviewerKey


@dataclass
class Decision:
    """A decision as signed and logged."""

    reviewer: str
    decision: str
    bundle_id: str
    manifest_sha256: str
    record: Path
    reason: str | None
    audit_seq: int
    replaced: bool  # the reviewer had decided on this bundle before


@contextlib.contextmanager
def audited_attempt(
    workspace: Path, signer: Signer, event: str, details: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    """Yield ``details`` (the body may add to it); a ``ToolkitError`` raised in the body is
    appended to the audit log as ``event`` with what refused it, then raised again."""
    try:
        yield details
    except ToolkitError as exc:
        audit.append(workspace, signer, event, details | {"refused_because": exc.message})
        raise


def claimed_bundle(bundle: Path) -> dict[str, Any]:
    """What an attempt's audit entry names before anything is verified: the bundle's folder
    name and, when its (unverified) manifest states one, its id, so the review page of that
    bundle lists the refused attempt too."""
    details: dict[str, Any] = {"bundle": Path(bundle).name}
    claimed = unverified_claims(bundle).get("bundle_id") if Path(bundle).is_dir() else None
    if claimed:
        details["bundle_id"] = claimed
    return details


def bundle_folder(bundle: Path) -> Path:
    """Decisions are written into a bundle folder: a tar or a missing path is bad input."""
    bundle = Path(bundle)
    if bundle.is_dir():
        return bundle
    if bundle.is_file():
        raise InputError(
            f"{bundle} is a file: approvals are written into a bundle folder",
            hint="review the folder `site-agent export` wrote (with required_approvals in "
            "WORKSPACE/export-policy.toml it keeps the folder until `export pack`)",
        )
    raise InputError(f"bundle not found: {bundle}")


def check_decision_args(
    approve: bool, reject: bool, reviewer: str | None, reason: str | None
) -> str | None:
    """The decision the options ask for (None: a plain review); bad combinations are one
    ``InputError`` each, before anything is read."""
    if approve and reject:
        raise InputError("give either --approve or --reject, not both")
    if not (approve or reject):
        if reviewer is not None or reason is not None:
            raise InputError("--reviewer and --reason go with --approve or --reject")
        return None
    decision = APPROVED if approve else "rejected"
    if reviewer is None:
        raise InputError(f"--{'approve' if approve else 'reject'} needs --reviewer NAME")
    check_reviewer_name(reviewer)
    check_reason(reason, decision)
    return decision


def record_decision(
    workspace: Path,
    signer: Signer,
    root: Path,
    reviewer: ReviewerKey,
    decision: str,
    reason: str | None,
    manifest: dict[str, Any],
    manifest_sha256: str,
) -> Decision:
    """Sign ``decision`` on the verified bundle in folder ``root`` (its manifest and digest as
    verified) and log it. The files and the log entry are written under the log's lock; if
    the entry cannot be written, the reviewer's earlier files are put back."""
    from site_agent.privacy.identifiers import DenyList

    reason = check_reason(reason, decision)
    if reason and DenyList.load(workspace).contains(reason):
        raise PrivacyGateError(
            "the reason holds a source identifier (a patient or study identifier of this "
            "site): it would leave with the bundle",
            hint="describe the problem without identifiers",
        )
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    body = approval_body(
        bundle_id=str(manifest["bundle_id"]),
        site=str(manifest["site"]),
        manifest_sha256=manifest_sha256,
        decision=decision,
        time=now,
        reviewer=reviewer.name,
        key_fingerprint=reviewer.fingerprint,
        reason=reason,
    )
    paths = approval_paths(root, reviewer.name)
    before = {p: p.read_bytes() if p.is_file() else None for p in paths}
    with audit.locked(workspace):
        data = write_approval(root, body, reviewer.sign)
        try:
            entry = audit.append_unlocked(
                workspace,
                signer,
                "approval",
                {
                    "bundle_id": body["bundle_id"],
                    "bundle": Path(root).name,
                    "manifest_sha256": manifest_sha256,
                    "reviewer": reviewer.name,
                    "reviewer_fingerprint": reviewer.fingerprint,
                    "decision": decision,
                    "approval_sha256": hashlib.sha256(data).hexdigest(),
                }
                | ({"reason": reason} if reason else {}),
            )
        except BaseException:
            for p, old in before.items():
                if old is None:
                    p.unlink(missing_ok=True)
                else:
                    p.write_bytes(old)
            raise
    return Decision(
        reviewer.name,
        decision,
        body["bundle_id"],
        manifest_sha256,
        paths[0],
        reason,
        int(entry["seq"]),
        before[paths[0]] is not None,
    )
