"""``site-agent review BUNDLE``: the privacy reviewer's check of a bundle as it stands.

Verifies the signature (site key, or a given public key) and every hash, re-runs the PHI scan
with the manifest's minted UIDs and the workspace's deny-list, and writes ``review.md`` plus
``montage.png`` (middle slice of each sequence for up to 16 cases) into the report folder;
with ``html`` also ``review.html``, the self-contained page for a data-protection officer
(``review_html``). Reviewers' approvals in the bundle are checked against the site's reviewer
keys and listed (who, decision, valid or not) beside what the export policy requires.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.bundle.approval import ApprovalCheck
from shared.bundle.format import VerifiedBundle, open_bundle, verify_bundle
from site_agent.privacy.identifiers import DenyList
from site_agent.privacy.phi_scan import PhiReport, scan_manifest, scan_payload


@dataclass
class ReviewResult:
    manifest: dict[str, Any]
    phi: PhiReport
    report_dir: Path
    findings: list[str] = field(default_factory=list)
    html_path: Path | None = None
    manifest_sha256: str = ""
    key_fingerprint: str = ""
    approvals: list[ApprovalCheck] = field(default_factory=list)
    required_approvals: int = 0

    @property
    def ok(self) -> bool:
        return not self.findings


def _montage(root: Path, manifest: dict[str, Any], path: Path) -> bool:
    import gzip

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib

    cases = manifest.get("payload", {}).get("cases", [])[:16]
    if not cases:
        return False
    fig, axes = plt.subplots(len(cases), 3, figsize=(6, 2 * len(cases)), squeeze=False)
    for r, c in enumerate(cases):
        for j, s in enumerate(("t2w", "hbv", "adc")):
            data = gzip.decompress(
                (root / f"payload/cases/{c['id']}/nifti/{s}.nii.gz").read_bytes()
            )
            arr = np.asarray(nib.Nifti1Image.from_bytes(data).dataobj)
            ax = axes[r][j]
            ax.imshow(arr[:, :, arr.shape[2] // 2].T, cmap="gray", origin="lower")
            ax.set_axis_off()
            ax.set_title(f"{c['id']} {s} (csPCa {c['cspca']})", fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def review_bundle(
    bundle: Path,
    workspace: Path,
    keys: dict[str, Any],
    report_dir: Path | None = None,
    *,
    html: bool = False,
    key_description: str = "the site's public key",
    decide: Callable[[VerifiedBundle, list[str]], None] | None = None,
) -> ReviewResult:
    """Review ``bundle`` (see module). ``decide(verified bundle, PHI findings)`` runs once the
    bundle verified and was re-scanned, before the reports are written: a reviewer's decision
    (``approvals.record_decision``) is then part of the review it was made in."""
    from site_agent.export.release import export_required, site_approvals

    deny = DenyList.load(workspace)
    montages: dict[str, bytes] = {}
    with open_bundle(bundle) as root:
        vb = verify_bundle(root, keys, key_description=key_description)
        m = vb.manifest
        minted = set(m.get("uids", []))
        phi = scan_payload(root, m["kind"], minted, deny)
        phi.findings += scan_manifest(m, minted, deny)
        if decide is not None:
            decide(vb, [f.line() for f in phi.findings])
        report_dir = report_dir or Path(workspace) / "reports" / f"review-{m['bundle_id'][:8]}"
        report_dir.mkdir(parents=True, exist_ok=True)
        has_montage = m["kind"] == "synthetic" and _montage(root, m, report_dir / "montage.png")
        if html and m["kind"] == "synthetic":  # while the verified payload is still unpacked
            from site_agent.export.review_figures import montage_by_sequence

            montages = montage_by_sequence(root, m.get("payload", {}).get("cases", []))
        approvals = site_approvals(workspace, root, vb)
    required = export_required(workspace)
    findings = [f.line() for f in phi.findings]
    memo = m.get("privacy", {}).get("memorisation")
    lines = [
        f"# Review of bundle {m['bundle_id']}",
        "",
        f"- site: {m['site']}; kind: {m['kind']}; created {m['created']}; tool "
        f"{m['tool']['version']}; profile {m.get('profile')}",
        f"- signature: valid (key {vb.key_fingerprint}); manifest SHA-256 {vb.manifest_sha256}",
        f"- files: {len(m['files'])}, {sum(f['size'] for f in m['files'])} bytes, every hash "
        "verified",
        f"- counts: {m.get('counts')}",
        f"- PHI scan now: {'passed' if phi.passed else f'{len(findings)} finding(s)'} "
        f"({phi.files} files, {phi.elements} DICOM elements, deny-list of "
        f"{phi.deny_list_entries} salted hashes)",
    ]
    if memo:
        lines.append(
            f"- memorisation screen at export: {memo['flagged']} of {memo['screened']} flagged "
            f"({memo['flagged_fraction']:.0%}); threshold {memo['image_threshold']} (image), "
            f"{memo['latent_threshold']} (latent); calibration: {memo['method']}, "
            f"{memo['training_cases']} training / {memo['held_out_cases']} held-out cases"
        )
    weights = m.get("privacy", {}).get("weights")
    if weights:
        lines.append(f"- weights: {weights}")
    lines.append(
        f"- approvals: {'; '.join(a.line() for a in approvals) or 'none'} (export policy: "
        f"{required} required)"
    )
    if findings:
        lines += ["", "## Findings", ""] + [f"- {f}" for f in findings]
    if has_montage:
        lines += ["", "![montage](montage.png)"]
    lines += ["", "## Files", ""] + [f"- {f['path']} ({f['size']} B)" for f in m["files"][:500]]
    (report_dir / "review.md").write_text("\n".join(lines) + "\n")
    html_path = None
    if html:
        approval_view = (approvals, required)
        html_path = _write_html(
            workspace, vb, phi, key_description, montages, report_dir, approval_view
        )
    return ReviewResult(
        m,
        phi,
        report_dir,
        findings,
        html_path,
        vb.manifest_sha256,
        vb.key_fingerprint,
        approvals,
        required,
    )


def _write_html(
    workspace: Path,
    vb: Any,
    phi: PhiReport,
    key_description: str,
    montages: dict[str, bytes],
    report_dir: Path,
    approvals: tuple[list[ApprovalCheck], int],
) -> Path:
    from shared.atomic import atomic_write_text
    from site_agent.export.review_figures import memorisation_histogram
    from site_agent.export.review_html import ReviewPage, bundle_audit, render_review_html

    m = vb.manifest
    memo = m.get("privacy", {}).get("memorisation")
    page = ReviewPage(
        manifest=m,
        key_fingerprint=vb.key_fingerprint,
        manifest_sha256=vb.manifest_sha256,
        key_description=key_description,
        phi=phi,
        audit=bundle_audit(workspace, m["bundle_id"]),
        histogram=memorisation_histogram(memo) if memo else None,
        montage=montages,
        approvals=approvals[0],
        required_approvals=approvals[1],
    )
    path = report_dir / "review.html"
    atomic_write_text(path, render_review_html(page))
    return path
