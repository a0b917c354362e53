"""The reconstructed-source control: the site's real cases passed through its own autoencoder
(encode to the posterior mean, decode), with no diffusion model involved.

Pretraining on these and on synthetic cases separates what generation adds from what the
autoencoder's smoothing (denoising) alone does. Reconstructions stay on site: only classifier
weights trained on them may be exported.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from shared.case_format import SEQUENCES, list_cases, read_case, read_meta, write_case
from shared.errors import InputError
from shared.profiles import get_profile
from shared.volume import Volume
from shared.weights import load_weights
from site_agent.generative import autoencoder as ae
from site_agent.generative.latents import sha256_file
from site_agent.generative.pipeline import WEIGHTS, model_dir


def reconstructed_store(workspace: Path) -> Path:
    return workspace / "cases" / "reconstructed"


def reconstruct_cases(
    workspace: Path,
    batch_size: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Write ``WS/cases/reconstructed/<case-id>`` for every real case (reusing those already
    made with the same autoencoder); returns the case folders."""
    ae_dir = model_dir(workspace, "autoencoder")
    if not (ae_dir / WEIGHTS).is_file():
        raise InputError(
            f"no trained autoencoder in {workspace}", hint="run `site-agent train` first"
        )
    state, cfg = load_weights(ae_dir)
    prof = get_profile(cfg["profile"])
    model = ae.build_autoencoder(prof.autoencoder)
    model.load_state_dict(state)
    model.eval()
    ae_sha = sha256_file(ae_dir / WEIGHTS)
    real = list_cases(workspace / "cases" / "real")
    if not real:
        raise InputError(f"no real cases in {workspace / 'cases' / 'real'}")
    store = reconstructed_store(workspace)
    todo = []
    for folder in real:
        dest = store / folder.name
        if (dest / "case.json").is_file() and (
            read_meta(dest).provenance.get("autoencoder_sha256") == ae_sha
        ):
            continue
        todo.append(folder)
    for start in range(0, len(todo), batch_size):
        cases = [read_case(f, with_mask=True) for f in todo[start : start + batch_size]]
        x = torch.from_numpy(np.stack([c.stack(SEQUENCES) for c in cases]))
        with torch.no_grad():
            recon = ae.decode_latents(model, ae.encode_mean(model, x)).numpy()
        for case, rec in zip(cases, recon, strict=True):
            meta = case.meta
            meta.origin = "reconstructed"
            meta.provenance = {
                **meta.provenance,
                "autoencoder_sha256": ae_sha,
                "note": "real case passed through the site autoencoder",
            }
            vols = {s: Volume(rec[i], case.volumes[s].affine) for i, s in enumerate(SEQUENCES)}
            if "lesion" in case.volumes:
                vols["lesion"] = case.volumes["lesion"]
            write_case(store / meta.case_id, meta, vols)
        if progress:
            progress(min(start + batch_size, len(todo)), len(todo))
    return list_cases(store)
