"""``coordinator import``: verify a bundle against the pinned keys, then import it.

Nothing in the payload is opened before ``shared.bundle.verify_bundle`` has checked the
signature (against every pinned key, on the raw manifest bytes) and every file's hash. The
manifest's site must be the one the key was pinned for. Synthetic cases land in the case
format (origin ``synthetic``) under ``WS/imports/<site>/<bundle-id>/cases/<case-id>/``,
weights under ``.../weights/<model>/``; the import is one atomic folder, and
``WS/imports/index.json`` refuses a bundle imported before.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.trust.store import trusted_keys
from shared.atomic import atomic_directory, atomic_write_json
from shared.bundle.format import MANIFEST, SIGNATURE, VerifiedBundle, open_bundle, verify_bundle
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


def imports_dir(workspace: Path) -> Path:
    return Path(workspace) / "imports"


def _index(workspace: Path) -> dict[str, Any]:
    path = imports_dir(workspace) / "index.json"
    return json.loads(path.read_text()) if path.is_file() else {"bundles": {}}


def verify_against_trust(root: Path, workspace: Path) -> tuple[VerifiedBundle, str]:
    keys = trusted_keys(workspace)
    if not keys:
        raise IntegrityError(
            "no site key is pinned in this coordinator workspace",
            hint="pin the site key first: coordinator trust add --site NAME --public-key FILE",
        )
    vb = verify_bundle(
        root, {fp: k for fp, (_, k) in keys.items()}, key_description="any pinned site key"
    )
    site = keys[vb.key_fingerprint][0]
    if vb.manifest.get("site") != site:
        raise IntegrityError(
            f"bundle claims site {vb.manifest.get('site')!r} but is signed with the key pinned "
            f"for {site!r}"
        )
    if vb.manifest.get("key_fingerprint") != vb.key_fingerprint:
        raise IntegrityError("manifest names another signing key than the one that signed it")
    return vb, site


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


def import_bundle(workspace: Path, bundle: Path) -> ImportResult:
    """Verify ``bundle`` (folder or tar) against the pinned keys and import its payload."""
    workspace = Path(workspace)
    with open_bundle(bundle) as root:
        vb, site = verify_against_trust(root, workspace)
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
        kind = vb.manifest.get("kind")
        final = imports_dir(workspace) / site / bundle_id
        n_cases, weights = 0, []
        with atomic_directory(final) as tmp:
            shutil.copyfile(root / MANIFEST, tmp / MANIFEST)
            shutil.copyfile(root / SIGNATURE, tmp / SIGNATURE)
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
        }
        atomic_write_json(imports_dir(workspace) / "index.json", index)
    return ImportResult(site, bundle_id, str(kind), final, n_cases, weights)
