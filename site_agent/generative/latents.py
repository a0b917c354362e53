"""The latent cache: posterior-mean latents of every training case, one safetensors file per
case, plus ``index.json`` with per-sequence scale factors (1 / std over the WHOLE training set,
not a first batch), the autoencoder hash they came from, and the reconstruction-fidelity
report measured in the same pass."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.atomic import atomic_write_bytes, atomic_write_json
from shared.case_format import SEQUENCES
from site_agent.generative.autoencoder import decode_latents, encode_mean
from site_agent.generative.data import TrainingSet
from site_agent.generative.fidelity import RetentionReport, measure_case, summarise
from site_agent.generative.trainloop import Progress

INDEX = "index.json"


@dataclass
class LatentCache:
    case_ids: list[str]
    latents: torch.Tensor  # (N, 3C, x, y, z), unscaled posterior means
    scale_factors: dict[str, float]  # per sequence: 1 / std of its channel group
    fidelity: RetentionReport
    index: dict[str, Any]

    def channel_scale(self) -> torch.Tensor:
        """(1, 3C, 1, 1, 1) multiplier that brings each sequence's channels to unit std."""
        per = self.latents.shape[1] // len(SEQUENCES)
        s = torch.tensor([self.scale_factors[q] for q in SEQUENCES for _ in range(per)])
        return s.reshape(1, -1, 1, 1, 1)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def scale_factors(latents: torch.Tensor) -> dict[str, float]:
    """1 / std per sequence's channel group over all cases and voxels."""
    per = latents.shape[1] // len(SEQUENCES)
    out = {}
    for i, s in enumerate(SEQUENCES):
        std = float(latents[:, i * per : (i + 1) * per].double().std())
        out[s] = 1.0 / max(std, 1e-8)
    return out


def _save_latent(path: Path, latent: torch.Tensor) -> None:
    from safetensors.torch import save

    atomic_write_bytes(path, save({"latent": latent.contiguous()}))


def build_cache(
    model: torch.nn.Module,
    data: TrainingSet,
    folder: Path,
    autoencoder_sha256: str,
    progress: Progress | None = None,
    batch_size: int = 4,
    device: torch.device | None = None,
) -> LatentCache:
    """Encode every case (posterior mean), write one file per case, measure reconstruction
    fidelity from the decoded means, then write ``index.json`` last (its presence marks a
    complete cache)."""
    device = device or torch.device("cpu")
    model = model.eval().to(device)
    parts, measures = [], []
    n = len(data)
    for start in range(0, n, batch_size):
        x = torch.from_numpy(data.images[start : start + batch_size]).to(device)
        z = encode_mean(model, x)
        recon = decode_latents(model, z).float().cpu().numpy()
        for j in range(z.shape[0]):
            k = start + j
            _save_latent(folder / f"{data.case_ids[k]}.safetensors", z[j].float().cpu())
            measures.append(
                measure_case(
                    data.images[k],
                    recon[j],
                    int(data.labels[k]),
                    data.lesions[k],
                    data.spacing[k],
                    gland=data.glands[k] if data.glands else None,
                )
            )
        parts.append(z.float().cpu())
        if progress:
            progress("latents", min(start + batch_size, n), n, None)
    latents = torch.cat(parts)
    fidelity = summarise(measures)
    index = {
        "autoencoder_sha256": autoencoder_sha256,
        "cases": data.case_ids,
        "latent_shape": list(latents.shape[1:]),
        "scale_factors": scale_factors(latents),
        "fidelity": fidelity.to_dict(),
    }
    atomic_write_json(folder / INDEX, index)
    return LatentCache(data.case_ids, latents, index["scale_factors"], fidelity, index)


def load_cache(
    folder: Path, autoencoder_sha256: str, case_ids: list[str] | None = None
) -> LatentCache | None:
    """The cache in ``folder`` if it is complete and was made by this autoencoder (and for
    these cases, when given); else None."""
    import json

    from safetensors.torch import load_file

    try:
        index = json.loads((folder / INDEX).read_text())
    except (OSError, ValueError):
        return None
    if index.get("autoencoder_sha256") != autoencoder_sha256:
        return None
    if case_ids is not None and index.get("cases") != case_ids:
        return None
    try:
        latents = torch.stack(
            [load_file(str(folder / f"{c}.safetensors"))["latent"] for c in index["cases"]]
        )
    except (OSError, KeyError, RuntimeError):
        return None
    fidelity = RetentionReport.from_dict(index["fidelity"])
    return LatentCache(index["cases"], latents, index["scale_factors"], fidelity, index)


def cache_array(cache: LatentCache) -> np.ndarray:
    """Scaled latents (unit std per sequence) as float32 numpy, ready for diffusion training."""
    return (cache.latents * cache.channel_scale()).float().numpy()
