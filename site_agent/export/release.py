"""Release: with ``required_approvals = N`` in ``WORKSPACE/export-policy.toml`` a bundle leaves
the site only after N of the site's reviewers approved it.

``export`` then always writes the bundle *folder* (even with ``--tar``) and stops there with
exit 5: that folder is what reviewers review and sign (``review --approve``). ``export pack
FOLDER`` (``pack_bundle``) releases it: it verifies the bundle with the site's keys, checks
every approval in it against the site's reviewer keys (one that is altered, copied from another
bundle or by an unknown reviewer stops it, exit 4; a valid rejection, too few approvals or an
identifier in an approval's text stop it, exit 5), then packs the folder and its approvals
into one tar for hand-over. Each release and each refused release is in the audit log.
Without the file (or with N = 0) exports are released as before; ``export pack`` still refuses
a bundle a reviewer rejected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shared.bundle.approval import (
    APPROVED,
    ApprovalCheck,
    approval_refusal,
    check_approvals,
)
from shared.bundle.approval_policy import EXPORT_POLICY, required_approvals
from shared.bundle.format import APPROVALS, VerifiedBundle, pack_tar, verify_bundle
from shared.errors import InputError, IntegrityError, PrivacyGateError
from site_agent.export import audit
from site_agent.export.approvals import audited_attempt, claimed_bundle
from site_agent.export.keys import Signer, public_keys
from site_agent.export.reviewer_keys import reviewer_public_keys

TAR_SUFFIX = ".tar"


def export_required(workspace: Path) -> int:
    """The approvals the site's export policy requires (0 without the file)."""
    return required_approvals(workspace, EXPORT_POLICY)


def held_folder(out: Path) -> Path:
    """Where an export held for approval writes its folder when a tar was asked for: the tar
    path without ``.tar`` (``export pack`` writes the tar there later)."""
    return out.with_name(out.name[: -len(TAR_SUFFIX)]) if out.name.endswith(TAR_SUFFIX) else out


def site_approvals(workspace: Path, root: Path, vb: VerifiedBundle) -> list[ApprovalCheck]:
    """Every approval in bundle folder ``root``, judged with the site's reviewer keys."""
    return check_approvals(
        root,
        bundle_id=str(vb.manifest.get("bundle_id")),
        site=str(vb.manifest.get("site")),
        manifest_sha256=vb.manifest_sha256,
        reviewers=reviewer_public_keys(workspace),
    )


def approval_gate(
    workspace: Path, root: Path, vb: VerifiedBundle, required: int
) -> list[ApprovalCheck]:
    """The approvals in ``root`` if they let the bundle leave; else the refusal (see module)."""
    from site_agent.privacy.identifiers import DenyList

    checks = site_approvals(workspace, root, vb)
    known = sorted(reviewer_public_keys(workspace))
    refusal = approval_refusal(
        checks, required, known, unpinned_refuse=True, site=str(vb.manifest.get("site"))
    )
    if refusal is not None and refusal.kind in ("invalid", "unpinned"):
        raise IntegrityError(
            refusal.message,
            hint=f"remove that file from {APPROVALS}/ and have the reviewer sign again with "
            "`site-agent review BUNDLE --approve --reviewer NAME`",
        )
    if refusal is not None:
        hint = (
            "each reviewer runs `site-agent review BUNDLE --approve --reviewer NAME`"
            if refusal.kind == "missing"
            else "the bundle stays on site; export a new one once the reason is addressed"
        )
        raise PrivacyGateError(refusal.message, hint=hint)
    deny = DenyList.load(workspace)
    for c in checks:
        if (root / c.file).is_file() and deny.contains((root / c.file).read_bytes()):
            raise PrivacyGateError(
                f"{c.file} holds a source identifier: it would leave with the bundle",
                hint="the reviewer signs again with a reason that names no patient or study",
            )
    return checks


@dataclass
class PackResult:
    tar: Path
    bundle_id: str
    manifest_sha256: str
    approvals: list[str]
    required: int


def check_pack_args(workspace: Path, bundle: Path, out: Path | None) -> tuple[Path, int]:
    """(tar path, approvals required) for ``export pack``; bad input is an ``InputError``,
    raised before any passphrase is asked for."""
    required = export_required(workspace)  # a broken policy file says so before anything else
    bundle = Path(bundle)
    if bundle.is_file():
        raise InputError(f"{bundle} is a file: `export pack` packs a bundle folder")
    if not bundle.is_dir():
        raise InputError(f"bundle folder not found: {bundle}")
    tar = Path(out) if out is not None else bundle.with_name(bundle.name + TAR_SUFFIX)
    if tar.exists():
        raise InputError(
            f"{tar} already exists", hint="choose another --out; nothing is overwritten"
        )
    return tar, required


def pack_bundle(
    workspace: Path, bundle: Path, signer: Signer, out: Path | None = None
) -> PackResult:
    """Release bundle folder ``bundle`` as one tar (default: ``BUNDLE.tar`` beside it) once its
    approvals satisfy the export policy (see module)."""
    workspace, bundle = Path(workspace), Path(bundle)
    tar, required = check_pack_args(workspace, bundle, out)
    details = claimed_bundle(bundle) | {"required_approvals": required}
    with audited_attempt(workspace, signer, "release-refused", details):
        vb = verify_bundle(bundle, public_keys(workspace), key_description="the site's public key")
        checks = approval_gate(workspace, bundle, vb, required)
        pack_tar(bundle, tar)
    approved = sorted(str(c.reviewer) for c in checks if c.valid and c.decision == APPROVED)
    audit.append(
        workspace,
        signer,
        "release",
        {
            "bundle_id": vb.manifest["bundle_id"],
            "bundle": bundle.name,
            "tar": tar.name,
            "manifest_sha256": vb.manifest_sha256,
            "approvals": approved,
            "required_approvals": required,
        },
    )
    return PackResult(tar, str(vb.manifest["bundle_id"]), vb.manifest_sha256, approved, required)


__all__ = [
    "PackResult",
    "approval_gate",
    "check_pack_args",
    "export_required",
    "held_folder",
    "pack_bundle",
    "site_approvals",
]
