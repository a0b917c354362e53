"""``export synthetic``: screened synthetic cases as a signed bundle of DICOM + NIfTI.

Where the cases come from (``source``):

* ``"generate"`` (default): N **new** cases are sampled for this export with
  ``site_agent.generative.pipeline.generate`` (seeded; replacement rounds use new seeds and
  keep the label of each dropped case), so no synthetic case is ever exported twice by
  accident and the manifest's provenance describes exactly these samples;
* ``"store"``: cases already in ``WS/cases/synthetic`` (sorted by id; replacements are the next
  unused ones): for sites that generate in a separate, reviewed step.

Order of the gate: deny-list present → memorisation screen with bounded replacement → payload
written to a staging folder → default-deny PHI scan of every file, the file names and the
manifest → signed manifest → one rename to the bundle path (or one tar) → audit entry. Any
refusal is audited and leaves no bundle behind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.case_format import list_cases, read_case, read_meta
from shared.errors import InputError
from site_agent.export.common import (
    ExportResult,
    bundle_path,
    finish,
    header,
    new_bundle_id,
    refuse,
)
from site_agent.export.dicom_writer import UidMinter, physical_values, write_case_dicom
from site_agent.export.keys import Signer
from site_agent.export.nifti_writer import nifti_gz_bytes
from site_agent.privacy import memorisation as mem
from site_agent.privacy.identifiers import DenyList, harvest_dicom_dir

SEQ = ("t2w", "hbv", "adc")


class StoreSource:
    """Existing synthetic cases, handed out once each in sorted order."""

    def __init__(self, workspace: Path) -> None:
        self.pool = list_cases(Path(workspace) / "cases" / "synthetic")
        self.used: set[Path] = set()

    def take(self, n_pos: int, n_neg: int, round_: int) -> list[Path]:
        out = []
        want = {1: n_pos, 0: n_neg}
        for f in self.pool:
            if f in self.used:
                continue
            y = int(read_meta(f).label.cspca or 0)
            if want.get(y, 0) > 0:
                want[y] -= 1
                out.append(f)
                self.used.add(f)
        return out


@dataclass
class GenerateSource:
    """New samples from the site's diffusion model, one seed per round and label."""

    workspace: Path
    seed: int
    generate_kwargs: dict[str, Any] = field(default_factory=dict)

    def take(self, n_pos: int, n_neg: int, round_: int) -> list[Path]:
        from site_agent.generative.pipeline import generate

        out: list[Path] = []
        for y, k in ((1, n_pos), (0, n_neg)):
            if k > 0:
                seed = self.seed + 1_000_003 * round_ + 17 * y
                out += generate(self.workspace, k, float(y), seed=seed, **self.generate_kwargs)
        return out


def load_denylist(workspace: Path, dicom_dir: Path | None) -> DenyList:
    deny = DenyList.load(workspace)
    if dicom_dir is not None:
        deny.add(harvest_dicom_dir(dicom_dir))
        deny.sources.append("harvested from --dicom-dir at export")
    return deny


def screen_with_replacement(
    reference: mem.Reference,
    source: Any,
    n: int,
    positive_fraction: float,
    max_rounds: int,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[list[Path], list[mem.CaseScore], int]:
    """(accepted folders, all scores, rounds used). Round 0 draws N; each of at most
    ``max_rounds`` replacement rounds draws as many as were dropped, with the same labels."""
    need = {1: round(n * positive_fraction), 0: n - round(n * positive_fraction)}
    accepted: list[Path] = []
    scores: list[mem.CaseScore] = []
    rounds = 0
    for r in range(max_rounds + 1):
        if need[0] + need[1] == 0:
            break
        folders = source.take(need[1], need[0], r)
        rounds = r
        if not folders:
            break
        sc = mem.screen(reference, mem.load_images(folders))
        for f, s in zip(folders, sc, strict=True):
            scores.append(s)
            y = int(read_meta(f).label.cspca or 0)
            if not s.flagged and need.get(y, 0) > 0:
                accepted.append(f)
                need[y] -= 1
        if progress:
            progress("screen", len(accepted), n)
    return accepted, scores, rounds


def export_synthetic(
    workspace: Path,
    n: int,
    signer: Signer,
    *,
    out: Path | None = None,
    tar: bool = False,
    source: str = "generate",
    seed: int = 0,
    positive_fraction: float = 0.4,
    max_rounds: int = 3,
    screen_config: mem.ScreenConfig = mem.ScreenConfig(),
    dicom_dir: Path | None = None,
    generate_kwargs: dict[str, Any] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> ExportResult:
    """Screen, write, scan, sign and record a bundle of ``n`` synthetic cases (see module)."""
    workspace = Path(workspace)
    if n < 1:
        raise InputError("--n must be at least 1")
    if source not in ("generate", "store"):
        raise InputError(f"unknown source {source!r}", hint="generate or store")
    bundle_id = new_bundle_id()
    out = bundle_path(workspace, signer.site, "synthetic", bundle_id, out, tar)
    deny = load_denylist(workspace, dicom_dir)
    if not len(deny):
        raise refuse(
            workspace,
            signer,
            "synthetic",
            "no source identifiers recorded for this workspace: the PHI scan cannot check "
            "exported bytes against the site's names, IDs, dates and UIDs",
            {"bundle_id": bundle_id},
            hint="re-run `site-agent ingest` (it records them) or pass --dicom-dir PACS_EXPORT",
        )
    reference = mem.build_reference(workspace, screen_config)
    src = (
        StoreSource(workspace)
        if source == "store"
        else GenerateSource(workspace, seed, generate_kwargs or {})
    )
    accepted, scores, rounds = screen_with_replacement(
        reference, src, n, positive_fraction, max_rounds, progress
    )
    memo = mem.summarise(reference, scores, len(scores)) | {
        "replacement_rounds": rounds,
        "max_replacement_rounds": max_rounds,
    }
    if len(accepted) < n:
        frac = memo["flagged_fraction"]
        why = (
            f"{memo['flagged']} of {memo['screened']} synthetic cases ({frac:.0%}) were closer "
            f"to a training case than {1 - screen_config.quantile:.0%} of held-out real cases"
        )
        raise refuse(
            workspace,
            signer,
            "synthetic",
            f"memorisation screen refused the export: {why}; after {rounds} replacement "
            f"round(s) only {len(accepted)} of {n} cases passed",
            {"bundle_id": bundle_id, "memorisation": memo},
            hint="the model reproduces training cases: train on more cases, stop diffusion "
            "training earlier, use stronger augmentation, or raise --max-rounds"
            + (" (or generate more cases for --source store)" if source == "store" else ""),
        )
    cases = [read_case(f) for f in accepted]
    labels = [int(c.meta.label.cspca or 0) for c in cases]
    ids = [f"SYN-{i + 1:04d}" for i in range(len(cases))]
    mint = UidMinter(reject=deny.contains)

    def write_payload(tmp: Path) -> None:
        root = tmp / "payload"
        for i, (cid, case) in enumerate(zip(ids, cases, strict=True)):
            write_case_dicom(
                root / "cases" / cid / "dicom", case.volumes, f"SYNTH-{i + 1:04d}", mint
            )
            nd = root / "cases" / cid / "nifti"
            nd.mkdir(parents=True, exist_ok=True)
            for s in SEQ:
                vol = case.volumes[s]
                (nd / f"{s}.nii.gz").write_bytes(
                    nifti_gz_bytes(vol, physical_values(s, np.asarray(vol.array)))
                )
            if progress:
                progress("write", i + 1, len(cases))
        rows = ["case_id,cspca"] + [f"{c},{y}" for c, y in zip(ids, labels, strict=True)]
        (root / "labels.csv").write_text("\n".join(rows) + "\n")
        manifest["uids"] = sorted(mint.minted)

    prov = _provenance(cases, reference)
    manifest = header(signer, "synthetic", bundle_id, cases[0].meta.profile) | {
        "counts": {
            "cases": len(cases),
            "positive": sum(labels),
            "negative": len(labels) - sum(labels),
            "series_per_case": 3,
            "slices_per_series": int(cases[0].volumes["t2w"].shape[2]),
        },
        "provenance": prov,
        "payload": {
            "cases": [{"id": c, "cspca": y} for c, y in zip(ids, labels, strict=True)],
            "labels": "payload/labels.csv",
            "dicom": "MR Image Storage, one series per sequence: payload/cases/ID/dicom/SEQ/",
            "nifti": "payload/cases/ID/nifti/SEQ.nii.gz (RAS, float32)",
            "units": {
                "t2w": "case-format scaled (percentile, 0-3)",
                "hbv": "case-format scaled (percentile, 0-3)",
                "adc": "um2/s",
            },
            "source": source,
        },
        "privacy": {
            "memorisation": memo,
            "deny_list": {"entries": len(deny), "sources": deny.sources},
        },
    }
    return finish(
        workspace,
        signer,
        "synthetic",
        out,
        tar,
        manifest,
        write_payload,
        mint.minted,
        deny,
        {
            "counts": manifest["counts"],
            "memorisation": {
                k: memo[k] for k in ("screened", "flagged", "flagged_fraction", "image_threshold")
            },
        },
    )


def _provenance(cases: list[Any], reference: mem.Reference) -> dict[str, Any]:
    keys = (
        "generator",
        "autoencoder_sha256",
        "diffusion_sha256",
        "sampler",
        "steps",
        "guidance",
        "profile",
    )
    models: dict[str, list[Any]] = {}
    for c in cases:
        for k in keys:
            v = c.meta.provenance.get(k)
            if v is not None and v not in models.setdefault(k, []):
                models[k].append(v)
    return {
        "models": {k: v[0] if len(v) == 1 else v for k, v in models.items()},
        "training_cases": reference.calibration["training_cases"],
        "seeds": sorted(
            {int(c.meta.provenance["seed"]) for c in cases if "seed" in c.meta.provenance}
        ),
    }
