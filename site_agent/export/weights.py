"""``export weights``: classifier or latent-diffusion weights as a signed bundle.

* ``classifier`` (``WS/models/classifier-real-bpmri`` or ``--model-dir``): a discriminative
  network; it passes with a note (white-box weights still allow membership attacks on the
  site's cases; this check is not run for classifiers).
* ``ldm`` (autoencoder + diffusion model): refused unless ``allow_generative`` is set, and then
  only with a loss-based membership-inference AUC (``privacy.membership``) in the manifest; an
  AUC above ``max_mia_auc`` refuses the export.

Payload: ``payload/weights/<model>/model.safetensors`` + ``config.json`` (enough to rebuild
the network), copied byte for byte and PHI-scanned like everything else.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from shared.bundle.format import sha256_file
from shared.errors import InputError
from site_agent.export.common import (
    ExportResult,
    bundle_path,
    finish,
    header,
    new_bundle_id,
    refuse,
)
from site_agent.export.keys import Signer
from site_agent.privacy.identifiers import DenyList

CLASSIFIER_NOTE = (
    "classifier weights: discriminative model, no images; passed without a membership-inference "
    "check (white-box weights can still leak membership of the site's training cases)"
)


def _model_files(folder: Path) -> tuple[Path, Path]:
    w, c = folder / "model.safetensors", folder / "config.json"
    if not w.is_file() or not c.is_file():
        raise InputError(f"no weights in {folder} (expected model.safetensors and config.json)")
    return w, c


def export_weights(
    workspace: Path,
    model: str,
    signer: Signer,
    *,
    allow_generative: bool = False,
    model_dir: Path | None = None,
    out: Path | None = None,
    tar: bool = False,
    max_mia_auc: float = 0.75,
    mia_draws: int = 8,
) -> ExportResult:
    workspace = Path(workspace)
    if model not in ("classifier", "ldm"):
        raise InputError(f"--model must be classifier or ldm, not {model!r}")
    bundle_id = new_bundle_id()
    out = bundle_path(workspace, signer.site, f"weights-{model}", bundle_id, out, tar)
    deny = DenyList.load(workspace)
    privacy: dict[str, Any] = {"deny_list": {"entries": len(deny), "sources": deny.sources}}
    if model == "classifier":
        folders = {"classifier": model_dir or workspace / "models" / "classifier-real-bpmri"}
        privacy["weights"] = {"model": "classifier", "note": CLASSIFIER_NOTE}
    else:
        gen = workspace / "models" / "generative"
        folders = {"autoencoder": gen / "autoencoder", "diffusion": gen / "diffusion"}
        if not allow_generative:
            raise refuse(
                workspace,
                signer,
                "weights",
                "exporting generative-model weights needs --allow-generative-weights: they can "
                "reproduce training images and allow white-box membership attacks",
                {"bundle_id": bundle_id, "model": model},
                hint="export synthetic cases instead, or confirm with --allow-generative-weights",
            )
        for f in folders.values():
            _model_files(f)
        from site_agent.privacy.membership import membership_inference

        mia = membership_inference(workspace, draws=mia_draws)
        worst = max(mia["autoencoder_reconstruction_auc"], mia["diffusion_denoising_auc"])
        privacy["weights"] = {"model": "ldm", "membership_inference": mia, "max_auc": max_mia_auc}
        if worst > max_mia_auc:
            raise refuse(
                workspace,
                signer,
                "weights",
                f"membership inference AUC {worst:.2f} exceeds {max_mia_auc:.2f}: the weights "
                "let an attacker tell the site's training cases from others",
                {"bundle_id": bundle_id, "membership_inference": mia},
                hint="train on more cases or stop earlier; export synthetic cases instead",
            )
    files = {name: _model_files(Path(f)) for name, f in folders.items()}
    configs = {name: json.loads(c.read_text()) for name, (_, c) in files.items()}
    provenance = {
        "models": {name: {"sha256": sha256_file(w)} for name, (w, _) in files.items()},
        "training_cases": next(
            (c.get("cases") for c in configs.values() if isinstance(c.get("cases"), int)), None
        ),
    }
    profile = next((c.get("profile") for c in configs.values() if c.get("profile")), None)

    def write_payload(tmp: Path) -> None:
        for name, (w, c) in files.items():
            d = tmp / "payload" / "weights" / name
            d.mkdir(parents=True)
            shutil.copyfile(w, d / "model.safetensors")
            shutil.copyfile(c, d / "config.json")

    manifest = header(signer, "weights", bundle_id, profile) | {
        "counts": {"models": len(files)},
        "provenance": provenance,
        "payload": {"weights": sorted(files), "format": "safetensors + config.json"},
        "privacy": privacy,
    }
    return finish(
        workspace,
        signer,
        "weights",
        out,
        tar,
        manifest,
        write_payload,
        [],
        deny,
        {"model": model, "weights": privacy["weights"]},
    )
