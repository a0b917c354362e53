"""What both exports share: output location, the final gate steps, signing, audit."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import shared
from shared.atomic import atomic_directory, atomic_write_bytes
from shared.bundle.anchor import AUDIT_HEAD_FIELD
from shared.bundle.format import canonical_json, pack_tar, write_signed_manifest
from shared.errors import InputError, PrivacyGateError
from site_agent.export import audit
from site_agent.export.keys import Signer
from site_agent.privacy.identifiers import DenyList
from site_agent.privacy.phi_scan import PhiReport, scan_manifest, scan_payload


@dataclass
class ExportResult:
    path: Path
    bundle_id: str
    manifest: dict[str, Any]
    manifest_sha256: str
    notes: list[str] = field(default_factory=list)
    # > 0: the export policy holds the bundle (a folder) until this many reviewers approve it
    required_approvals: int = 0


def new_bundle_id() -> str:
    return uuid.uuid4().hex


def bundle_path(
    workspace: Path, site: str, kind: str, bundle_id: str, out: Path | None, tar: bool
) -> Path:
    """Where the bundle goes; checked (with the export policy) before any work starts. An
    export held for approval is written as a folder, at a tar path without ``.tar``."""
    from site_agent.export.release import export_required, held_folder

    held = export_required(workspace) > 0
    if out is not None and tar and held:
        out = held_folder(out)
    elif out is None:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        out = Path(workspace) / "exports" / f"{site}-{kind}-{stamp}-{bundle_id[:8]}"
        if tar and not held:
            out = out.with_name(out.name + ".tar")
    if out.exists():
        raise InputError(
            f"{out} already exists", hint="choose another --out; bundles are never overwritten"
        )
    return out


def header(signer: Signer, kind: str, bundle_id: str, profile: str | None) -> dict[str, Any]:
    return {
        "bundle_id": bundle_id,
        "kind": kind,
        "site": signer.site,
        "key_fingerprint": signer.fingerprint,
        "tool": {"name": "prostate-fl-toolkit", "version": shared.__version__},
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "profile": profile,
    }


def refuse(
    workspace: Path,
    signer: Signer,
    kind: str,
    message: str,
    details: dict[str, Any],
    hint: str | None = None,
) -> PrivacyGateError:
    """Record a refused export in the audit log; return the error to raise."""
    audit.append(workspace, signer, "export-refused", {"kind": kind, "reason": message} | details)
    return PrivacyGateError(message, hint=hint)


def finish(
    workspace: Path,
    signer: Signer,
    kind: str,
    out: Path,
    tar: bool,
    manifest: dict[str, Any],
    write_payload: Callable[[Path], None],
    minted: list[str],
    deny: DenyList,
    audit_details: dict[str, Any],
) -> ExportResult:
    """``minted``: the list the payload writer appends its minted UIDs to.

    Write the payload into a staging folder, run the PHI scan, sign, then move the bundle to
    ``out`` in one rename (or pack it as a tar). A failed step leaves nothing at ``out``. When
    the export policy requires approvals the bundle stays a folder (``release``)."""
    import hashlib

    from site_agent.export.release import export_required

    required = export_required(workspace)
    if required:
        tar = False  # packed by `export pack` once approved

    staging = out if not tar else out.with_name(f".{out.name}.staging")
    # The log's head goes into the signed manifest: a log later wiped or cut back below it
    # fails `audit verify` here and `coordinator import` at the coordinator.
    manifest[AUDIT_HEAD_FIELD] = audit.current_head(workspace).to_json()
    try:
        with atomic_directory(staging) as tmp:
            write_payload(tmp)
            uids = set(minted)  # filled by write_payload
            phi: PhiReport = scan_payload(tmp, kind, uids, deny)
            manifest.setdefault("privacy", {})["phi_scan"] = phi.summary()
            found = phi.findings + scan_manifest(manifest, uids, deny)
            if found:
                first = "; ".join(f.line() for f in found[:3])
                raise refuse(
                    workspace,
                    signer,
                    kind,
                    f"PHI scan refused the export: {len(found)} finding(s), e.g. {first}",
                    {"bundle_id": manifest["bundle_id"], "phi_findings": len(found)},
                    hint="nothing was exported; `site-agent review` explains each finding kind",
                )
            data = write_signed_manifest(tmp, manifest, signer.sign)
        if tar:
            pack_tar(staging, out)
            shutil.rmtree(staging)
    except BaseException:
        if tar:
            shutil.rmtree(staging, ignore_errors=True)
            if out.exists() and not out.is_dir():
                os.unlink(out)
        raise
    import json

    sha = hashlib.sha256(data).hexdigest()
    signed = json.loads(data)
    bundle_id = manifest["bundle_id"]
    # The full file list with hashes stays on site next to the log (the entry pins its hash).
    atomic_write_bytes(Path(workspace) / "audit" / "manifests" / f"{bundle_id}.json", data)
    audit.append(
        workspace,
        signer,
        "export",
        {
            "kind": kind,
            "bundle_id": bundle_id,
            "bundle": out.name,
            "manifest_sha256": sha,
            "files": len(signed["files"]),
            "payload_bytes": sum(int(f["size"]) for f in signed["files"]),
        }
        | ({"required_approvals": required} if required else {})
        | audit_details,
    )
    return ExportResult(out, bundle_id, signed, sha, required_approvals=required)


__all__ = [
    "ExportResult",
    "bundle_path",
    "canonical_json",
    "finish",
    "header",
    "new_bundle_id",
    "refuse",
]
