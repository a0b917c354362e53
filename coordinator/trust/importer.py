"""``coordinator import``: verify a bundle against the pinned keys, then import it.

Nothing in the payload is opened before ``shared.bundle.verify_bundle`` has checked the
signature (against every pinned key, on the raw manifest bytes) and every file's hash. The
manifest's site must be the one the key was pinned for; a key the site has rotated out
(still pinned as retired) is accepted only for bundles dated before its retirement; and the
audit-log head the manifest records must fit those seen from the site before
(``coordinator.trust.anchors``). Reviewers' approvals in the bundle are checked against the
reviewers pinned for its site and the approvals the coordinator requires
(``coordinator.trust.approvals``) and kept with the import. Synthetic cases land in the case
format (origin ``synthetic``) under ``WS/imports/<site>/<bundle-id>/cases/<case-id>/``,
weights under ``.../weights/<model>/``; the import is one atomic folder, and
``WS/imports/index.json`` refuses a bundle imported before.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.trust.anchors import check_head, record_head
from coordinator.trust.approvals import check_import_approvals, import_required
from coordinator.trust.store import PinnedKey, pinned_keys
from shared.atomic import atomic_directory, atomic_write_json
from shared.bundle.anchor import AUDIT_HEAD_FIELD, AuditHead, parse_time
from shared.bundle.format import (
    APPROVALS,
    MANIFEST,
    SIGNATURE,
    UnknownSigner,
    VerifiedBundle,
    open_bundle,
    unverified_claims,
    verify_bundle,
)
from shared.case_format import SEQUENCES, CaseMeta, Label, scale_adc, write_case
from shared.errors import InputError, IntegrityError
from shared.volume import Volume

_CASE_ID = re.compile(r"^SYN-\d{4,6}$")


@dataclass
class ImportResult:
    site: str
    bundle_id: str
    kind: str
    folder: Path
    cases: int
    weights: list[str]
    approvals: list[str] = field(default_factory=list)  # pinned reviewers who approved it
    required_approvals: int = 0
    approvals_note: str | None = None


def imports_dir(workspace: Path) -> Path:
    return Path(workspace) / "imports"


def _index(workspace: Path) -> dict[str, Any]:
    path = imports_dir(workspace) / "index.json"
    return json.loads(path.read_text()) if path.is_file() else {"bundles": {}}


def _other_key(root: Path, pinned: dict[str, PinnedKey]) -> IntegrityError | None:
    """When the (unverified) manifest names a pinned site but another key than its pinned
    ones, say so with that key's fingerprint (the usual cause: the site rotated its key)."""
    claims = unverified_claims(root)
    site, fp = claims.get("site"), claims.get("key_fingerprint")
    mine = [p for p in pinned.values() if p.site == site]
    if not site or not fp or not mine or fp in {p.fingerprint for p in mine}:
        return None
    current = next((p.fingerprint for p in mine if p.not_after is None), mine[0].fingerprint)
    return IntegrityError(
        f"this bundle was signed by a key other than the one pinned for site {site} "
        f"(fingerprint {fp}; pinned {current[:16]}...)",
        hint="if the site rotated its key, pin the new one from its signed hand-over: "
        f"coordinator trust rotate HANDOVER --site {site}",
    )


def verify_against_trust(root: Path, workspace: Path) -> tuple[VerifiedBundle, str]:
    pinned = pinned_keys(workspace)
    if not any(p.not_after is None for p in pinned.values()):
        raise IntegrityError(
            "no site key is pinned in this coordinator workspace",
            hint="pin the site key first: coordinator trust add SITE-KEY.pub --site NAME",
        )
    try:
        vb = verify_bundle(
            root, {fp: p.key for fp, p in pinned.items()}, key_description="any pinned site key"
        )
    except UnknownSigner as exc:
        raise (_other_key(root, pinned) or exc) from None
    key = pinned[vb.key_fingerprint]
    site = key.site
    if vb.manifest.get("site") != site:
        raise IntegrityError(
            f"bundle claims site {vb.manifest.get('site')!r} but is signed with the key pinned "
            f"for {site!r}"
        )
    if vb.manifest.get("key_fingerprint") != vb.key_fingerprint:
        raise IntegrityError("manifest names another signing key than the one that signed it")
    if key.not_after is not None:
        created, end = parse_time(vb.manifest.get("created")), parse_time(key.not_after)
        if created is None or end is None or created > end:
            raise IntegrityError(
                f"bundle dated {vb.manifest.get('created')} is signed by a retired key of "
                f"{site} ({key.fingerprint[:16]}..., valid until {key.not_after}): refused",
                hint="a retired key signs nothing after its hand-over; ask the site to "
                "re-export with its current key",
            )
    return vb, site


def _audit_head(vb: VerifiedBundle) -> AuditHead | None:
    raw = vb.manifest.get(AUDIT_HEAD_FIELD)
    return None if raw is None else AuditHead.parse(raw, "manifest audit head")


def _import_cases(vb: VerifiedBundle, dest: Path, site: str) -> int:
    import gzip

    import nibabel as nib

    from shared.volume import LPS_TO_RAS

    cases = vb.manifest.get("payload", {}).get("cases", [])
    labels_rows = vb.path("payload/labels.csv").read_text().splitlines()[1:]
    from_csv = {r.split(",")[0]: int(r.split(",")[1]) for r in labels_rows if r}
    for entry in cases:
        cid, y = entry["id"], int(entry["cspca"])
        if not _CASE_ID.match(cid) or from_csv.get(cid) != y:
            raise IntegrityError(f"case {cid!r}: id or label disagrees with labels.csv")
        vols: dict[str, Volume] = {}
        for s in SEQUENCES:
            data = gzip.decompress(vb.path(f"payload/cases/{cid}/nifti/{s}.nii.gz").read_bytes())
            img = nib.Nifti1Image.from_bytes(data)
            arr = np.asarray(img.dataobj, dtype=np.float32)
            if s == "adc":  # the bundle carries µm²/s; the case format a fixed scale
                arr = scale_adc(arr)
            vols[s] = Volume(arr, LPS_TO_RAS @ np.asarray(img.affine, dtype=np.float64))
        shapes = {v.shape for v in vols.values()}
        if len(shapes) != 1:
            raise IntegrityError(f"case {cid}: sequences on different grids")
        ref = vols["t2w"]
        meta = CaseMeta(
            case_id=cid,
            origin="synthetic",
            label=Label(cspca=y, source="generated"),
            grid_size=list(ref.shape),
            grid_spacing=[float(v) for v in ref.spacing],
            profile=str(vb.manifest.get("profile")),
            intensity={
                "t2w": {"method": "percentile", "clip": [0.0, 3.0]},
                "hbv": {"method": "percentile", "clip": [0.0, 3.0]},
                "adc": {"method": "fixed", "unit": "um2/s", "range": [0.0, 3000.0]},
            },
            provenance={
                "site": site,
                "bundle_id": vb.manifest["bundle_id"],
                "manifest_sha256": vb.manifest_sha256,
                "models": vb.manifest.get("provenance", {}).get("models", {}),
            },
        )
        write_case(dest / "cases" / cid, meta, vols)
    return len(cases)


def import_bundle(
    workspace: Path, bundle: Path, require_approvals: int | None = None
) -> ImportResult:
    """Verify ``bundle`` (folder or tar) against the pinned keys, check its approvals
    (``require_approvals`` overrides the import policy's ``required_approvals``) and import
    its payload."""
    workspace = Path(workspace)
    required = import_required(workspace, require_approvals)  # a bad policy: before any work
    with open_bundle(bundle) as root:
        vb, site = verify_against_trust(root, workspace)
        approvals = check_import_approvals(workspace, root, vb, site, required)
        bundle_id = str(vb.manifest.get("bundle_id", ""))
        if not re.fullmatch(r"[0-9a-f]{32}", bundle_id):
            raise IntegrityError("manifest has no valid bundle id")
        index = _index(workspace)
        seen = index["bundles"].get(bundle_id) or next(
            (b for b in index["bundles"].values() if b["manifest_sha256"] == vb.manifest_sha256),
            None,
        )
        if seen:
            raise InputError(
                f"bundle {bundle_id} from {site} was already imported on {seen['imported']}",
                hint=f"its cases are in {seen['folder']}",
            )
        head = _audit_head(vb)
        # ordered by when the site read its head (older manifests: when the bundle was made)
        created = (head.time if head else None) or vb.manifest.get("created")
        source = f"bundle {bundle_id[:8]}"
        check_head(workspace, site, head, created, source)
        kind = vb.manifest.get("kind")
        final = imports_dir(workspace) / site / bundle_id
        n_cases, weights = 0, []
        with atomic_directory(final) as tmp:
            shutil.copyfile(root / MANIFEST, tmp / MANIFEST)
            shutil.copyfile(root / SIGNATURE, tmp / SIGNATURE)
            if approvals.checks:  # the sign-off travels with the import, as evidence
                shutil.copytree(root / APPROVALS, tmp / APPROVALS)
            if kind == "synthetic":
                n_cases = _import_cases(vb, tmp, site)
            elif kind == "weights":
                for f in vb.manifest["files"]:
                    m = re.fullmatch(r"payload/weights/([a-z]+)/([a-z.]+)", f["path"])
                    if m is None:
                        raise IntegrityError(f"unexpected weights file {f['path']}")
                    (tmp / "weights" / m.group(1)).mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(vb.path(f["path"]), tmp / "weights" / m.group(1) / m.group(2))
                    if m.group(1) not in weights:
                        weights.append(m.group(1))
            else:
                raise IntegrityError(f"unknown bundle kind {kind!r}")
        index["bundles"][bundle_id] = {
            "site": site,
            "kind": kind,
            "manifest_sha256": vb.manifest_sha256,
            "folder": str(final.relative_to(workspace)),
            "imported": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "approvals": approvals.approved,
            "required_approvals": required,
        }
        atomic_write_json(imports_dir(workspace) / "index.json", index)
        record_head(workspace, site, head, created, source)
    return ImportResult(
        site,
        bundle_id,
        str(kind),
        final,
        n_cases,
        weights,
        approvals.approved,
        required,
        approvals.note,
    )
