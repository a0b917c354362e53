"""Memorisation screen: is a synthetic case closer to a training case than real new cases are?

For each synthetic case the nearest training case is found twice:

* **image**: per sequence the Pearson correlation r_s with every training case (volumes
  standardised to zero mean, unit norm); a training case's similarity is the mean over t2w,
  hbv and adc, and the image distance is ``1 - max similarity``;
* **latent** (when the site's autoencoder is there): RMS Euclidean distance between
  posterior-mean latents (scaled per sequence as in the latent cache), to the nearest training
  latent (from the cache when it was made by the same autoencoder).

Calibration (the published 3D memorisation studies' rule): the same distances are measured
from **held-out real cases** (real cases the generative model did not train on: in the
workspace but not in the latent cache's case list) to the training set, and a synthetic case is
flagged when it is closer than the ``quantile`` (default 5 %) of those distances on either
measure, i.e. more similar to its nearest training case than 95 % of held-out real cases are to
theirs (``numpy.quantile(..., method="lower")``, flag when strictly below). When fewer than
``min_holdout`` held-out cases exist, each training case's distance to its nearest *other*
training case stands in (leave-one-out), and the manifest says so.

Uniqueness (Carlini et al. 2023, "extracting training data from diffusion models"): a sample
is a copy *of a patient* only if it is distinctly nearer to that patient than to the other
training cases. A blurry, "average" sample from an under-trained model is near to all of them
at once and would otherwise be flagged by the calibrated threshold alone; so a case is flagged
on a measure when it is below the threshold **and** its nearest distance is below ``alpha``
(default 0.5) times the mean distance to its ``k`` nearest training cases (default 5).

Only counts, thresholds and distances leave the site (the manifest): summaries, the sorted
held-out reference distances and each screened synthetic sample's distances (for the review
page's histogram); never case ids.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.case_format import SEQUENCES, list_cases, read_case
from site_agent.generative.layout import latent_index_path, model_dir

Encoder = Callable[[np.ndarray], np.ndarray]  # (B, 3, X, Y, Z) -> (B, D)


@dataclass(frozen=True)
class ScreenConfig:
    quantile: float = 0.05  # flag when closer than this quantile of held-out distances
    min_holdout: int = 3  # fewer held-out cases: leave-one-out calibration on training cases
    use_latents: bool = True
    alpha: float = 0.5  # uniqueness: nearest < alpha * mean of the k nearest (Carlini 2023)
    k_nearest: int = 5


@dataclass
class CaseScore:
    image_distance: float
    latent_distance: float | None
    per_sequence: dict[str, float]
    flagged: bool
    reasons: list[str] = field(default_factory=list)
    image_uniqueness: float = 0.0  # nearest / mean of the k nearest (small: a copy of one case)
    latent_uniqueness: float | None = None


@dataclass
class Reference:
    train: np.ndarray  # (N, 3, V) standardised
    image_threshold: float
    train_latents: np.ndarray | None
    latent_threshold: float | None
    encoder: Encoder | None
    calibration: dict[str, Any]
    alpha: float = 0.5
    k_nearest: int = 5

    def summary(self) -> dict[str, Any]:
        return dict(self.calibration) | {
            "image_threshold": round(float(self.image_threshold), 6),
            "latent_threshold": None
            if self.latent_threshold is None
            else round(float(self.latent_threshold), 6),
        }


def standardise(images: np.ndarray) -> np.ndarray:
    """(N, 3, X, Y, Z) -> (N, 3, V) with zero mean and unit norm per case and sequence."""
    x = images.reshape(images.shape[0], images.shape[1], -1).astype(np.float64)
    x = x - x.mean(axis=2, keepdims=True)
    norm = np.linalg.norm(x, axis=2, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def image_similarity(train: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Pearson r per sequence: (M, N, 3) for standardised query (M, 3, V), train (N, 3, V)."""
    return np.einsum("msv,nsv->mns", query, train)


def nearest_image(train: np.ndarray, query: np.ndarray, exclude_self: bool = False):
    """(distance (M,), per-sequence distance at the nearest case (M, 3))."""
    r = image_similarity(train, query)
    score = r.mean(axis=2)
    if exclude_self:
        np.fill_diagonal(score, -np.inf)
    idx = score.argmax(axis=1)
    best = score[np.arange(len(idx)), idx]
    return 1.0 - best, 1.0 - r[np.arange(len(idx)), idx]


def nearest_latent(train: np.ndarray, query: np.ndarray, exclude_self: bool = False):
    d = np.sqrt(((query[:, None, :] - train[None, :, :]) ** 2).mean(axis=2))
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    return d.min(axis=1)


def uniqueness(distances: np.ndarray, k: int) -> np.ndarray:
    """Per row of a (M, N) distance matrix: nearest / mean of the ``k`` nearest."""
    k = max(1, min(k, distances.shape[1]))
    part = np.sort(distances, axis=1)[:, :k]
    return part[:, 0] / np.maximum(part.mean(axis=1), 1e-12)


def _threshold(distances: np.ndarray, q: float) -> float:
    return float(np.quantile(distances, q, method="lower"))


def _values(d: Any) -> list[float]:
    """Distances as a plain rounded list (the manifest's per-case record; no case ids)."""
    return [round(float(x), 6) for x in d]


def _stats(d: np.ndarray) -> dict[str, float]:
    return {
        "min": round(float(d.min()), 6),
        "p05": round(float(np.quantile(d, 0.05)), 6),
        "median": round(float(np.median(d)), 6),
    }


def split_real_cases(workspace: Path) -> tuple[list[Path], list[Path], str]:
    """(training folders, held-out folders, how the training set was determined)."""
    real = list_cases(Path(workspace) / "cases" / "real")
    index = latent_index_path(Path(workspace))
    try:
        trained = set(json.loads(index.read_text())["cases"])
    except (OSError, ValueError, KeyError):
        return real, [], "all real cases (no latent cache index)"
    train = [p for p in real if p.name in trained]
    hold = [p for p in real if p.name not in trained]
    return train, hold, "latent cache index"


def load_images(folders: list[Path]) -> np.ndarray:
    return np.stack([read_case(f).stack(SEQUENCES) for f in folders]).astype(np.float32)


def autoencoder_encoder(workspace: Path) -> tuple[Encoder, str, dict[str, float] | None] | None:
    """An encoder from the site's autoencoder (posterior means, scaled like the latent cache)
    and the autoencoder's SHA-256; None when there is no autoencoder."""
    from shared.bundle.format import sha256_file

    folder = model_dir(Path(workspace), "autoencoder")
    if not (folder / "model.safetensors").is_file():
        return None
    import torch

    from shared.profiles import get_profile
    from shared.weights import load_weights
    from site_agent.generative import autoencoder as ae

    state, cfg = load_weights(folder)
    spec = dataclasses.replace(
        get_profile(cfg.get("profile", "tiny")).autoencoder,
        channels=tuple(cfg["channels"]),
        latent_channels=int(cfg["latent_channels"]),
        num_res_blocks=int(cfg["num_res_blocks"]),
        norm_num_groups=int(cfg["norm_num_groups"]),
    )
    model = ae.build_autoencoder(spec)
    model.load_state_dict(state)
    model.eval()
    sha = sha256_file(folder / "model.safetensors")
    scales = None
    index = latent_index_path(Path(workspace))
    try:
        idx = json.loads(index.read_text())
        if idx.get("autoencoder_sha256") == sha:
            scales = idx["scale_factors"]
    except (OSError, ValueError, KeyError):
        pass  # no usable cache index: latents stay unscaled (same for both sides compared)

    def encode(images: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(images), 4):
            z = ae.encode_mean(model, torch.from_numpy(images[i : i + 4]))
            if scales is not None:
                per = z.shape[1] // len(SEQUENCES)
                s = torch.tensor([scales[q] for q in SEQUENCES for _ in range(per)])
                z = z * s.reshape(1, -1, 1, 1, 1)
            out.append(z.reshape(z.shape[0], -1).double().numpy())
        return np.concatenate(out)

    return encode, sha, scales


def build_reference(
    workspace: Path, config: ScreenConfig = ScreenConfig(), encoder: Encoder | None = None
) -> Reference:
    """Training set, held-out set and thresholds of the site (see the module docstring)."""
    from shared.errors import PrivacyGateError

    train_f, hold_f, source = split_real_cases(workspace)
    if len(train_f) < 2:
        raise PrivacyGateError(
            "the memorisation screen needs the site's real training cases (found "
            f"{len(train_f)} in {Path(workspace) / 'cases' / 'real'})",
            hint="export from the workspace the generative model was trained in",
        )
    train_img = load_images(train_f)
    train = standardise(train_img)
    loo = len(hold_f) < config.min_holdout
    if loo:
        d_img = nearest_image(train, train, exclude_self=True)[0]
        hold_img = None
    else:
        hold_img = load_images(hold_f)
        d_img = nearest_image(train, standardise(hold_img))[0]
    calibration: dict[str, Any] = {
        "method": "leave-one-out on training cases" if loo else "held-out real cases",
        "training_set": source,
        "training_cases": len(train_f),
        "held_out_cases": 0 if loo else len(hold_f),
        "quantile": config.quantile,
        "rule": "flag when nearer than the quantile of held-out nearest-training distances "
        f"and nearer than {config.alpha} x the mean distance to the {config.k_nearest} nearest "
        "training cases (uniqueness)",
        "image_measure": "1 - mean over t2w/hbv/adc of Pearson r to the nearest training case",
        "held_out_image_distance": _stats(d_img),
        # the whole reference distribution, sorted so that no order links it to a patient:
        # the review page draws the screened samples against it
        "held_out_image_distances": _values(np.sort(d_img)),
        "alpha": config.alpha,
        "k_nearest": config.k_nearest,
    }
    train_lat, lat_thr = None, None
    if config.use_latents and encoder is None:
        found = autoencoder_encoder(workspace)
        if found is not None:
            encoder = found[0]
            calibration["autoencoder_sha256"] = found[1]
    if config.use_latents and encoder is not None:
        train_lat = encoder(train_img)
        d_lat = (
            nearest_latent(train_lat, train_lat, exclude_self=True)
            if loo
            else nearest_latent(train_lat, encoder(hold_img))
        )
        lat_thr = _threshold(d_lat, config.quantile)
        calibration["latent_measure"] = "RMS distance of scaled posterior-mean latents"
        calibration["held_out_latent_distance"] = _stats(d_lat)
        calibration["held_out_latent_distances"] = _values(np.sort(d_lat))
    else:
        calibration["latent_measure"] = "unavailable (no site autoencoder)"
        encoder = None
    return Reference(
        train,
        _threshold(d_img, config.quantile),
        train_lat,
        lat_thr,
        encoder,
        calibration,
        config.alpha,
        config.k_nearest,
    )


def screen(reference: Reference, images: np.ndarray) -> list[CaseScore]:
    """Score synthetic cases (N, 3, X, Y, Z) in case-format intensities."""
    query = standardise(images)
    d_img, d_seq = nearest_image(reference.train, query)
    u_img = uniqueness(
        1.0 - image_similarity(reference.train, query).mean(axis=2), reference.k_nearest
    )
    d_lat = u_lat = None
    if reference.encoder is not None and reference.train_latents is not None:
        q_lat = reference.encoder(images)
        d_lat = nearest_latent(reference.train_latents, q_lat)
        full = np.sqrt(((q_lat[:, None, :] - reference.train_latents[None]) ** 2).mean(axis=2))
        u_lat = uniqueness(full, reference.k_nearest)
    scores = []
    for i in range(len(images)):
        reasons = []
        if d_img[i] < reference.image_threshold and u_img[i] < reference.alpha:
            reasons.append("image")
        lat = None if d_lat is None else float(d_lat[i])
        thr = reference.latent_threshold
        unique_lat = u_lat is not None and u_lat[i] < reference.alpha
        if lat is not None and thr is not None and lat < thr and unique_lat:
            reasons.append("latent")
        scores.append(
            CaseScore(
                float(d_img[i]),
                lat,
                {s: float(d_seq[i, j]) for j, s in enumerate(SEQUENCES)},
                bool(reasons),
                reasons,
                float(u_img[i]),
                None if u_lat is None else float(u_lat[i]),
            )
        )
    return scores


def summarise(reference: Reference, scores: list[CaseScore], screened: int) -> dict[str, Any]:
    """The manifest's memorisation block: thresholds, counts, flagged fraction, distances."""
    flagged = sum(s.flagged for s in scores)
    kept = [s for s in scores if not s.flagged]
    out = reference.summary() | {
        "screened": screened,
        "flagged": flagged,
        "flagged_fraction": round(flagged / max(screened, 1), 4),
        "flagged_by": {
            "image": sum("image" in s.reasons for s in scores),
            "latent": sum("latent" in s.reasons for s in scores),
        },
    }
    # Every screened sample's distances in screening order, flagged ones included, so a
    # reviewer can see the whole distribution against the threshold; synthetic samples only.
    out["per_case"] = {
        "image_distance": _values(s.image_distance for s in scores),
        "image_uniqueness": _values(s.image_uniqueness for s in scores),
        "latent_distance": None
        if any(s.latent_distance is None for s in scores)
        else _values(s.latent_distance for s in scores),
        "latent_uniqueness": None
        if any(s.latent_uniqueness is None for s in scores)
        else _values(s.latent_uniqueness for s in scores),
        "flagged": [int(s.flagged) for s in scores],
    }
    if kept:
        out["exported_image_distance"] = _stats(np.array([s.image_distance for s in kept]))
        lat = [s.latent_distance for s in kept if s.latent_distance is not None]
        if lat:
            out["exported_latent_distance"] = _stats(np.array(lat))
    return out
