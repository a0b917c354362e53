"""The fidelity report: how close are a site's synthetic cases to its real ones, for t2w, hbv
and adc **separately** (the published work validated T2 only).

``write_fidelity_report(WS)`` reads ``WS/cases/real`` and ``WS/cases/synthetic`` and writes
``WS/reports/fidelity/{fidelity.json, fidelity.md, montage.png}``:

1. **Distribution distance** on features of an encoder trained on site (no pretrained feature
   network can be downloaded): the site's own single-channel autoencoder encoder, applied to
   each sequence of each case on its own. Features = spatial mean and standard deviation of the
   activations of the last encoder block before the latent head (the output of the deepest
   level's last residual block, before the closing GroupNorm + convolution), z-scored per
   dimension with the real cases' mean and sd. On them:

   * KID: unbiased MMD² with the cubic polynomial kernel k(x, y) = (x·y / d + 1)³ (Bińkowski
     et al. 2018), averaged over random equal-size subsets, with the std over subsets;
   * Fréchet distance between Gaussian fits (as FID, on these features);
   * a percentile bootstrap interval of each (cases resampled with replacement on both sides;
     for KID, the full-sample U-statistic over pairs of *distinct* resampled cases);
   * a real-vs-real split-half baseline (random halves of the real cases, averaged over
     splits) and the real-half vs an equally large synthetic subset, so the scale can be judged
     at one sample size.

2. **Intensity statistics** inside a foreground mask (t2w above ``FOREGROUND_T2W``, the same
   mask for the co-registered hbv and adc): per case mean, sd, p2, p50 and p98, averaged over
   cases.
3. **Lesion contrast**: a lesion-sensitive percentile in the central box where ingest centres
   the prostate (hbv p98: hyperintensity; adc p2: restriction; t2w p2), positives vs negatives:
   ROC AUC of the statistic against the csPCa label (sign chosen so that 1 = positives more
   lesion-like) and the mean difference, real vs synthetic; for real cases with lesion masks,
   mean(lesion) - mean(ring within 5 mm).
4. **Diversity**: mean pairwise MS-SSIM (MONAI ``MultiScaleSSIMMetric``) among synthetic cases
   and among real cases, per sequence; scales and kernel are chosen to fit the grid.
5. **Montage** of real and synthetic mid-slices. It shows real patients: it stays on site and
   is never part of an export.
6. **Is this synthetic set worth exporting?** Label fidelity, train-on-synthetic-test-on-real
   and per-sequence precision/recall (``site_agent.generative.diagnostics``), each with the
   real-data value it should be judged against.

Nothing here writes a case id: the report carries aggregates only (the montage excepted).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from shared.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from shared.case_format import SEQUENCES, CaseMeta, list_cases, read_case, read_meta
from shared.errors import InputError
from site_agent.generative.fidelity import (
    MIN_CONTRAST,
    PERCENTILE,
    central_box,
    lesion_contrast,
    lesion_ring,
)
from site_agent.generative.fidelity_inputs import inputs_digest, report_paths, stored_report

FORMAT = "fidelity-report/1"
MIN_CASES = 4  # per side
DATA_RANGE = {"t2w": 3.0, "hbv": 3.0, "adc": 1.0}  # case-format intensity ranges
FOREGROUND_T2W = 0.05  # case-format t2w units: 5 % of the p1-p99 range above p1
MIN_FOREGROUND = 0.01  # below this fraction of voxels the whole volume is used
SD_FLOOR = 1e-3  # z-scoring: a feature's sd is at least this fraction of the mean sd
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
BASELINE_SPLITS = 20
MAX_DIVERSITY_CASES = 32  # per side: at most 496 pairs
MONTAGE_PER_SIDE = 4
FEW_HELDOUT = 20  # below this many held-out real cases, say their AUC is coarse
MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003
# +1: positives should have the higher statistic (bright lesion), -1: the lower (dark lesion)
DIRECTION = {"t2w": -1, "hbv": 1, "adc": -1}
LESION_MEANING = {
    "t2w": "t2w p2 (dark lesion)",
    "hbv": "hbv p98 (hyperintensity)",
    "adc": "adc p2 (restriction)",
}
PHANTOM_SENTENCE = (
    "If these cases come from the phantom consortium, the figures check the machinery, not "
    "clinical truth."
)
STAYS_ON_SITE = (
    "The montage shows real patients' images: it stays on site and is never part of an export."
)


# --- distances ----------------------------------------------------------------------------


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x·y / d + 1)³ for every row pair; (n, d), (m, d) -> (n, m), float64."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _mmd2(
    kxx: np.ndarray,
    kyy: np.ndarray,
    kxy: np.ndarray,
    wx: np.ndarray | None = None,
    wy: np.ndarray | None = None,
) -> float:
    """Unbiased MMD² from kernel matrices. ``wx``/``wy`` are case multiplicities (bootstrap
    counts): within-set terms sum over pairs of distinct cases only, so a case drawn twice is
    never compared with itself. All-ones weights give the usual U-statistic."""
    wx = np.ones(len(kxx)) if wx is None else np.asarray(wx, np.float64)
    wy = np.ones(len(kyy)) if wy is None else np.asarray(wy, np.float64)

    def within(k: np.ndarray, w: np.ndarray) -> float:
        num = w @ k @ w - float((w * w * np.diag(k)).sum())
        den = w.sum() ** 2 - float((w * w).sum())
        return num / den

    cross = (wx @ kxy @ wy) / (wx.sum() * wy.sum())
    return float(within(kxx, wx) + within(kyy, wy) - 2.0 * cross)


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² (Gretton et al. 2012, eq. 3) with the cubic polynomial kernel; (n, d) and
    (m, d) features, n, m >= 2."""
    return _mmd2(polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y))


def kid(
    x: np.ndarray,
    y: np.ndarray,
    rng: np.random.Generator,
    n_subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
) -> tuple[float, float]:
    """Kernel inception distance (Bińkowski et al. 2018) on given features: the mean and std
    (over ``n_subsets`` random subsets of ``min(subset_size, n, m)`` cases drawn without
    replacement on each side) of the unbiased polynomial-kernel MMD²."""
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise ValueError("KID needs at least 2 cases per side")
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    vals = []
    for _ in range(n_subsets):
        ix = rng.choice(len(x), m, replace=False)
        iy = rng.choice(len(y), m, replace=False)
        vals.append(_mmd2(kxx[np.ix_(ix, ix)], kyy[np.ix_(iy, iy)], kxy[np.ix_(ix, iy)]))
    return float(np.mean(vals)), float(np.std(vals))


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_from_moments(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """||mu1 - mu2||² + Tr(S1 + S2 - 2 (S1 S2)^½). Tr (S1 S2)^½ is taken as the sum of the
    square roots of the eigenvalues of S1^½ S2 S1^½ (same spectrum as S1 S2, symmetric), which
    stays real and stable when the covariances are rank-deficient (fewer cases than features)."""
    a = _psd_sqrt(s1)
    m = a @ s2 @ a
    ev = np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.sqrt(ev).sum())


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Fréchet distance between Gaussian fits of (n, d) and (m, d) features (unbiased
    covariances, as FID)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    sx, sy = np.atleast_2d(np.cov(x, rowvar=False)), np.atleast_2d(np.cov(y, rowvar=False))
    return frechet_from_moments(x.mean(0), sx, y.mean(0), sy)


def _interval(values: list[float]) -> list[float] | None:
    v = [x for x in values if np.isfinite(x)]
    return [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v else None


def distance_block(
    real: np.ndarray, syn: np.ndarray, rng: np.random.Generator, n_boot: int
) -> dict[str, Any]:
    """KID and Fréchet distance between real and synthetic features (already z-scored), their
    bootstrap intervals and the split-half baselines."""
    nr, ns = len(real), len(syn)
    kxx, kyy, kxy = (
        polynomial_kernel(real, real),
        polynomial_kernel(syn, syn),
        polynomial_kernel(real, syn),
    )
    kid_mean, kid_std = kid(real, syn, rng)
    out: dict[str, Any] = {
        "kid": kid_mean,
        "kid_subset_std": kid_std,
        "kid_subset_size": min(KID_SUBSET_SIZE, nr, ns),
        "kid_full_sample": _mmd2(kxx, kyy, kxy),
        "frechet": frechet_distance(real, syn),
        "n_real": nr,
        "n_synthetic": ns,
        "n_features": int(real.shape[1]),
        "rank_deficient": bool(min(nr, ns) <= real.shape[1]),
    }
    boot_kid, boot_fd = [], []
    for _ in range(n_boot):
        ir, is_ = rng.integers(0, nr, nr), rng.integers(0, ns, ns)
        cr, cs = np.bincount(ir, minlength=nr), np.bincount(is_, minlength=ns)
        if (cr > 0).sum() < 2 or (cs > 0).sum() < 2:
            continue
        boot_kid.append(_mmd2(kxx, kyy, kxy, cr, cs))
        boot_fd.append(frechet_distance(real[ir], syn[is_]))
    out["kid_ci95"] = _interval(boot_kid)
    out["frechet_ci95"] = _interval(boot_fd)
    out["n_boot"] = len(boot_kid)

    # split-half: real half A vs real half B, and real half A vs as many synthetic cases
    h = nr // 2
    rr_kid, rr_fd, rs_kid, rs_fd = [], [], [], []
    for _ in range(BASELINE_SPLITS):
        perm = rng.permutation(nr)
        a, b = perm[:h], perm[h : 2 * h]
        c = rng.choice(ns, min(h, ns), replace=False)
        rr_kid.append(_mmd2(kxx[np.ix_(a, a)], kxx[np.ix_(b, b)], kxx[np.ix_(a, b)]))
        rs_kid.append(_mmd2(kxx[np.ix_(a, a)], kyy[np.ix_(c, c)], kxy[np.ix_(a, c)]))
        rr_fd.append(frechet_distance(real[a], real[b]))
        rs_fd.append(frechet_distance(real[a], syn[c]))
    out["baseline"] = {
        "half_size": h,
        "splits": BASELINE_SPLITS,
        "kid_real_vs_real": float(np.mean(rr_kid)),
        "kid_real_vs_synthetic": float(np.mean(rs_kid)),
        "frechet_real_vs_real": float(np.mean(rr_fd)),
        "frechet_real_vs_synthetic": float(np.mean(rs_fd)),
    }
    return out


# --- lesion contrast, intensities, diversity -----------------------------------------------


def lesion_auc(stat: np.ndarray, labels: np.ndarray, direction: int) -> float | None:
    """ROC AUC of ``direction * stat`` against csPCa labels (1/0; other values ignored); None
    unless both classes are present. (numpy's AUC: the bootstrap calls it a thousand times,
    and scikit-learn's input checks cost 3 ms a call.)"""
    from shared.metrics import roc_auc

    stat, labels = np.asarray(stat, float), np.asarray(labels)
    keep = (labels == 0) | (labels == 1)
    y = labels[keep].astype(int)
    if len(set(y.tolist())) < 2:
        return None
    return roc_auc(y, direction * stat[keep])


def _contrast_side(
    stat: np.ndarray, labels: np.ndarray, direction: int, rng: np.random.Generator, n_boot: int
) -> dict[str, Any]:
    pos, neg = stat[labels == 1], stat[labels == 0]
    out: dict[str, Any] = {
        "n_positive": len(pos),
        "n_negative": len(neg),
        "mean_positive": float(pos.mean()) if len(pos) else None,
        "mean_negative": float(neg.mean()) if len(neg) else None,
        "mean_difference": float(pos.mean() - neg.mean()) if len(pos) and len(neg) else None,
        "auc": lesion_auc(stat, labels, direction),
        "auc_ci95": None,
    }
    if out["auc"] is not None and n_boot > 0:
        idx = np.flatnonzero((labels == 0) | (labels == 1))
        boots = []
        for _ in range(n_boot):
            b = rng.choice(idx, len(idx), replace=True)
            a = lesion_auc(stat[b], labels[b], direction)
            if a is not None:
                boots.append(a)
        out["auc_ci95"] = _interval(boots)
    return out


def msssim_settings(shape: tuple[int, ...]) -> dict[str, Any]:
    """The most scales (<= 5) and then the largest odd kernel (<= 11, >= 3) that MONAI's
    ``MultiScaleSSIMMetric`` accepts on ``shape`` and that still fit the coarsest scale
    (size / 2^(scales-1) >= kernel). MONAI requires size // (scales-1)² > kernel - 1. With
    no fit, plain SSIM (one scale) with the largest kernel that fits."""
    for scales in (5, 4, 3, 2):
        div = (scales - 1) ** 2
        k = min(11, *(min(s // div, s // 2 ** (scales - 1)) for s in shape))
        k -= 1 - k % 2  # largest odd <= k
        if k >= 3:
            w = np.asarray(MSSSIM_WEIGHTS[:scales])
            return {
                "metric": "ms-ssim",
                "scales": scales,
                "kernel_size": int(k),
                "kernel_sigma": 1.5,
                "weights": [float(v) for v in w / w.sum()],
                "reason": f"largest scale count whose coarsest level ({scales - 1} halvings) "
                f"still holds a {k}-voxel kernel on the {tuple(shape)} grid; weights: the first "
                f"{scales} of Wang et al.'s five, renormalised",
            }
    k = min(11, *shape)
    k -= 1 - k % 2
    return {
        "metric": "ssim",
        "scales": 1,
        "kernel_size": int(max(k, 1)),
        "kernel_sigma": 1.5,
        "weights": [1.0],
        "reason": f"grid {tuple(shape)} too small for two MS-SSIM scales with a 3-voxel kernel",
    }


def pairwise_similarity(
    volumes: np.ndarray,
    data_range: float,
    settings: dict[str, Any],
    batch: int = 32,
    device: Any = None,
) -> dict[str, Any]:
    """Mean (and sd) of MS-SSIM over all pairs of (N, X, Y, Z) volumes."""
    import torch
    from monai.metrics import MultiScaleSSIMMetric, SSIMMetric

    n = len(volumes)
    if n < 2:
        return {"mean": None, "sd": None, "n_cases": n, "n_pairs": 0}
    kw = {
        "spatial_dims": 3,
        "data_range": data_range,
        "kernel_size": settings["kernel_size"],
        "kernel_sigma": settings["kernel_sigma"],
    }
    if settings["metric"] == "ms-ssim":
        metric = MultiScaleSSIMMetric(weights=settings["weights"], **kw)
    else:
        metric = SSIMMetric(**kw)
    i, j = np.triu_indices(n, 1)
    t = torch.from_numpy(np.ascontiguousarray(volumes, dtype=np.float32))[:, None].to(device)
    vals = []
    with torch.no_grad():
        for s in range(0, len(i), batch):
            a, b = t[i[s : s + batch]], t[j[s : s + batch]]
            vals.append(metric(a, b).reshape(-1).double().cpu().numpy())
    metric.reset()
    v = np.concatenate(vals)
    return {"mean": float(v.mean()), "sd": float(v.std()), "n_cases": n, "n_pairs": int(len(v))}


def cached_similarity(
    cache: Path,
    volumes: np.ndarray,
    data_range: float,
    settings: dict[str, Any],
    device: Any = None,
) -> dict[str, Any]:
    """``pairwise_similarity``, kept in ``cache`` under a digest of the volumes and settings:
    the real side's MS-SSIM is the report's slowest part and the same in every report of a
    workspace (and a report rerun on the same synthetic set repeats the other side too)."""
    import hashlib
    import json

    h = hashlib.sha256(np.ascontiguousarray(volumes, dtype=np.float32).tobytes())
    h.update(json.dumps([volumes.shape, data_range, settings], sort_keys=True).encode())
    path = cache / f"msssim-{h.hexdigest()[:24]}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass  # not cached yet (or unreadable): compute
    result = pairwise_similarity(volumes, data_range, settings, device=device)
    atomic_write_json(path, result)
    return result


def foreground(case_t2w: np.ndarray) -> np.ndarray:
    """Body/foreground mask: t2w above ``FOREGROUND_T2W`` (whole volume if nearly empty)."""
    mask = case_t2w > FOREGROUND_T2W
    return mask if mask.mean() >= MIN_FOREGROUND else np.ones_like(mask, dtype=bool)


def intensity_stats(volume: np.ndarray, mask: np.ndarray) -> list[float]:
    v = volume[mask].astype(np.float64)
    p2, p50, p98 = np.percentile(v, [2, 50, 98])
    return [float(v.mean()), float(v.std()), float(p2), float(p50), float(p98)]


# --- reading the two case stores ----------------------------------------------------------


@dataclass
class Side:
    """What one pass over a case store keeps (volumes only for the diversity subset)."""

    name: str
    labels: np.ndarray
    features: np.ndarray  # (N, 3, F)
    intensity: np.ndarray  # (N, 3, 5)
    fg_fraction: np.ndarray  # (N,)
    lesion_stat: np.ndarray  # (N, 3) central-box percentile per sequence
    ring_contrast: list[list[float]]  # per case with a lesion mask: (3,) lesion - ring
    kept: dict[int, np.ndarray] = field(default_factory=dict)  # index -> (3, X, Y, Z)
    montage: list[int] = field(default_factory=list)
    shape: tuple[int, ...] = ()


def _layer(model: Any) -> tuple[list[Any], str, int]:
    import torch

    blocks = list(model.encoder.blocks)
    if len(blocks) < 3 or not isinstance(blocks[-2], torch.nn.GroupNorm):
        raise InputError("the autoencoder's encoder does not have the expected MONAI layout")
    body = blocks[:-2]
    channels = int(blocks[-2].num_channels)
    name = (
        f"encoder.blocks[{len(body) - 1}] ({type(body[-1]).__name__}, {channels} channels): the "
        "last encoder block before the latent head (GroupNorm + conv -> quant_conv_mu)"
    )
    return body, name, channels


def encoder_features(body: list[Any], volumes: np.ndarray, device: Any) -> np.ndarray:
    """(B, 3, X, Y, Z) volumes -> (B, 3, 2C) features: spatial mean and sd of the activations
    after ``body`` (the encoder blocks before its latent head), each sequence on its own."""
    import torch

    b = volumes.shape[0]
    x = torch.from_numpy(np.ascontiguousarray(volumes, dtype=np.float32)).to(device)
    h = x.reshape(b * len(SEQUENCES), 1, *volumes.shape[2:])
    with torch.no_grad():
        for block in body:
            h = block(h)
        flat = h.float().flatten(2)
        feat = torch.cat([flat.mean(2), flat.std(2, correction=0)], 1)
    return feat.reshape(b, len(SEQUENCES), -1).double().cpu().numpy()


def _pick_montage(labels: np.ndarray, rng: np.random.Generator) -> list[int]:
    pos = list(rng.permutation(np.flatnonzero(labels == 1)))
    rest = list(rng.permutation(np.flatnonzero(labels != 1)))
    half = MONTAGE_PER_SIDE // 2
    pick = pos[:half] + rest[: MONTAGE_PER_SIDE - min(half, len(pos))]
    pick += [i for i in pos[half:] if len(pick) < MONTAGE_PER_SIDE]
    return sorted(int(i) for i in pick)


def _scan_side(
    name: str,
    folders: list[Path],
    metas: list[CaseMeta],
    body: list[Any],
    device: Any,
    rng: np.random.Generator,
    batch: int = 4,
) -> Side:
    labels = np.array(
        [-1 if m.label.cspca is None else int(m.label.cspca) for m in metas], dtype=int
    )
    montage = _pick_montage(labels, rng)
    others = [i for i in rng.permutation(len(folders)) if i not in montage]
    keep = set(montage) | {int(i) for i in others[: max(0, MAX_DIVERSITY_CASES - len(montage))]}
    feats, inten, fgf, lstat, ring = [], [], [], [], []
    kept: dict[int, np.ndarray] = {}
    shape: tuple[int, ...] = ()
    for s0 in range(0, len(folders), batch):
        arrays = []
        for i in range(s0, min(len(folders), s0 + batch)):
            case = read_case(folders[i], with_mask=True)
            img = case.stack()
            if shape and img.shape[1:] != shape:
                raise InputError(
                    f"{name} cases are on different grids ({shape} and {img.shape[1:]})",
                    hint="ingest and generate every case with one profile",
                )
            shape = img.shape[1:]
            arrays.append(img)
            fg = foreground(img[0])
            fgf.append(float(fg.mean()))
            inten.append([intensity_stats(img[k], fg) for k in range(len(SEQUENCES))])
            box = central_box(shape)
            lstat.append(
                [float(np.percentile(img[k][box], PERCENTILE[s])) for k, s in enumerate(SEQUENCES)]
            )
            if "lesion" in case.volumes:
                mask = case.volumes["lesion"].array > 0
                if mask.any():
                    rg = lesion_ring(mask, np.asarray(case.meta.grid_spacing, float))
                    if rg.any():
                        ring.append([lesion_contrast(img[k], mask, rg) for k in range(3)])
            if i in keep:
                kept[i] = img
        feats.append(encoder_features(body, np.stack(arrays), device))
    return Side(
        name,
        labels,
        np.concatenate(feats),
        np.asarray(inten),
        np.asarray(fgf),
        np.asarray(lstat),
        ring,
        kept,
        montage,
        shape,
    )


def _load_encoder(workspace: Path, device: Any) -> tuple[list[Any], str, int, dict[str, Any]]:
    import dataclasses

    from shared.profiles import get_profile
    from shared.weights import load_weights
    from site_agent.generative import autoencoder as ae
    from site_agent.generative.latents import sha256_file
    from site_agent.generative.pipeline import WEIGHTS, model_dir

    folder = model_dir(workspace, "autoencoder")
    if not (folder / WEIGHTS).is_file():
        raise InputError(
            f"no trained autoencoder in {folder}",
            hint="train the generative model first (site-agent train): its encoder provides "
            "the features of the distribution distances",
        )
    state, cfg = load_weights(folder)
    try:
        base = get_profile(str(cfg.get("profile", "tiny"))).autoencoder
        spec = dataclasses.replace(
            base,
            channels=tuple(cfg["channels"]),
            latent_channels=int(cfg["latent_channels"]),
            num_res_blocks=int(cfg["num_res_blocks"]),
            norm_num_groups=int(cfg["norm_num_groups"]),
        )
    except (KeyError, TypeError, ValueError, InputError) as exc:
        raise InputError(f"unreadable autoencoder config in {folder} ({exc})") from None
    model = ae.build_autoencoder(spec)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(
            f"the autoencoder weights in {folder} do not match their config "
            f"({str(exc).splitlines()[0][:160]})"
        ) from None
    model = model.to(device).eval()
    body, layer, channels = _layer(model)
    info = {
        "autoencoder_sha256": sha256_file(folder / WEIGHTS),
        "profile": cfg.get("profile"),
        "channels": list(spec.channels),
        "layer": layer,
        "pooling": "spatial mean and sd per channel (2 x channels features per sequence)",
        "n_features": 2 * channels,
        "standardisation": "z-score per feature with the real cases' mean and sd (sd floored "
        f"at {SD_FLOOR:g} x the mean sd); distances compare across reports only with the same "
        "real cases and autoencoder",
        "shared_by_sequences": True,
        "note": "the encoder was trained on these real cases, which may favour them",
    }
    return body, layer, channels, info


def _stores(workspace: Path) -> tuple[list[Path], list[Path], list[CaseMeta], list[CaseMeta]]:
    from site_agent.generative.data import real_store
    from site_agent.generative.layout import synthetic_store

    syn_store, real_dir = synthetic_store(workspace), real_store(workspace)
    syn = list_cases(syn_store)
    syn_meta = [read_meta(f) for f in syn]
    keep = [i for i, m in enumerate(syn_meta) if m.origin == "synthetic"]
    syn, syn_meta = [syn[i] for i in keep], [syn_meta[i] for i in keep]
    if not syn:
        raise InputError(
            f"no synthetic cases in {syn_store}",
            hint="generate some first (site-agent generate --n 200)",
        )
    real = list_cases(real_dir)
    real_meta = [read_meta(f) for f in real]
    for name, folders, where in (("real", real, real_dir), ("synthetic", syn, syn_store)):
        if len(folders) < MIN_CASES:
            raise InputError(
                f"only {len(folders)} {name} case(s) in {where}: the fidelity report needs at "
                f"least {MIN_CASES} real and {MIN_CASES} synthetic cases",
                hint="ingest more real cases" if name == "real" else "generate more cases",
            )
    return real, syn, real_meta, syn_meta


def _provenance_summary(metas: list[CaseMeta]) -> dict[str, Any]:
    keys = ("generator", "sampler", "steps", "guidance", "profile", "diffusion_sha256")
    out: dict[str, Any] = {}
    for k in keys:
        vals = sorted({str(m.provenance.get(k)) for m in metas if k in m.provenance})
        if vals:
            out[k] = vals[0] if len(vals) == 1 else vals
    return out


def _label_counts(labels: np.ndarray) -> dict[str, int]:
    return {
        "total": len(labels),
        "positive": int((labels == 1).sum()),
        "negative": int((labels == 0).sum()),
        "unlabelled": int(((labels != 0) & (labels != 1)).sum()),
    }


INTENSITY_KEYS = ("mean", "sd", "p2", "p50", "p98")


def _intensity_summary(side: Side, k: int) -> dict[str, Any]:
    stats = {key: float(side.intensity[:, k, j].mean()) for j, key in enumerate(INTENSITY_KEYS)}
    return stats | {
        "between_case_sd_of_mean": float(side.intensity[:, k, 0].std()),
        "foreground_fraction": float(side.fg_fraction.mean()),
        "n": len(side.labels),
    }


# --- the report ---------------------------------------------------------------------------


def write_fidelity_report(
    workspace: Path,
    out_dir: Path | None = None,
    seed: int = 0,
    n_boot: int = 200,
    *,
    classifier_steps: int | None = None,
    reuse: bool = False,
) -> dict[str, Any]:
    """Compare ``WS/cases/synthetic`` with ``WS/cases/real`` per sequence and write
    ``fidelity.json``, ``fidelity.md`` and ``montage.png`` to ``out_dir`` (default
    ``WS/reports/fidelity``); returns the JSON content (plus the file paths, and ``reused``).

    With ``reuse``, a report already in ``out_dir`` that was computed from the same inputs
    (``fidelity_inputs.inputs_digest``: cases, autoencoder, settings, code) is returned as it
    is, without computing anything.

    The diagnostics section (``synthetic_diagnostics``; ``classifier_steps`` defaults to the
    profile's pretraining steps) is replaced by ``{"error": why}`` when the site's data cannot
    support it (e.g. real training cases of one class only), so the rest of the report stands.

    Raises ``InputError`` without synthetic cases, without a trained autoencoder, or with fewer
    than ``MIN_CASES`` cases on either side. Deterministic for a given ``seed``.
    """
    t_start = time.perf_counter()
    workspace = Path(workspace)
    out_dir = Path(out_dir) if out_dir is not None else workspace / "reports" / "fidelity"
    if n_boot < 0:
        raise InputError("n_boot must be >= 0")
    real_f, syn_f, real_m, syn_m = _stores(workspace)
    settings = {"format": FORMAT, "seed": seed, "n_boot": n_boot, "steps": classifier_steps}
    digest = inputs_digest(workspace, settings)
    files = report_paths(out_dir)
    paths = {k: str(v) for k, v in files.items()}
    if reuse and (stored := stored_report(out_dir, digest)) is not None:
        return stored | {"paths": paths, "reused": True}

    from site_agent.generative.pipeline import default_device  # torch: after the checks

    device = default_device()
    body, _, _, enc_info = _load_encoder(workspace, device)
    rng = np.random.default_rng(seed)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    real = _scan_side("real", real_f, real_m, body, device, rng)
    syn = _scan_side("synthetic", syn_f, syn_m, body, device, rng)
    timings["read_and_encode"] = time.perf_counter() - t0
    if real.shape != syn.shape:
        raise InputError(
            f"real cases are on grid {real.shape} but synthetic ones on {syn.shape}",
            hint="generate with a model trained on this workspace's real cases",
        )

    ssim_cfg = msssim_settings(real.shape)
    sequences: dict[str, Any] = {}
    t_dist = t_int = t_div = 0.0
    for k, s in enumerate(SEQUENCES):
        t0 = time.perf_counter()
        fr, fs = real.features[:, k], syn.features[:, k]
        mu, sd = fr.mean(0), fr.std(0)
        sd = np.maximum(sd, SD_FLOOR * max(float(sd.mean()), 1e-12))
        dist = distance_block((fr - mu) / sd, (fs - mu) / sd, rng, n_boot)
        t_dist += time.perf_counter() - t0

        t0 = time.perf_counter()
        inten = {side.name: _intensity_summary(side, k) for side in (real, syn)}
        contrast: dict[str, Any] = {
            "statistic": f"p{PERCENTILE[s]:g} in the central box (middle half of each axis)",
            "meaning": LESION_MEANING[s],
            "direction": "higher in positives" if DIRECTION[s] > 0 else "lower in positives",
            "real": _contrast_side(real.lesion_stat[:, k], real.labels, DIRECTION[s], rng, n_boot),
            "synthetic": _contrast_side(
                syn.lesion_stat[:, k], syn.labels, DIRECTION[s], rng, n_boot
            ),
        }
        dr, ds = contrast["real"]["mean_difference"], contrast["synthetic"]["mean_difference"]
        contrast["synthetic_over_real"] = (
            ds / dr if dr is not None and ds is not None and abs(dr) >= MIN_CONTRAST else None
        )
        ring = np.asarray(real.ring_contrast)
        contrast["real_lesion_vs_ring"] = (
            {"mean": float(ring[:, k].mean()), "n_cases": len(ring), "ring_mm": 5.0}
            if len(ring)
            else None
        )
        t_int += time.perf_counter() - t0

        t0 = time.perf_counter()
        diversity = {
            side.name: cached_similarity(
                workspace / "work" / "fidelity",
                np.stack([v[k] for _, v in sorted(side.kept.items())]),
                DATA_RANGE[s],
                ssim_cfg,
                device=device,
            )
            for side in (real, syn)
        }
        t_div += time.perf_counter() - t0
        sequences[s] = {
            "distance": dist,
            "intensity": inten,
            "lesion_contrast": contrast,
            "diversity": diversity,
        }
    timings |= {"distances": t_dist, "intensity_and_contrast": t_int, "diversity": t_div}

    t0 = time.perf_counter()
    png = _montage_png(real, syn)
    timings["montage"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    diagnostics = _diagnostics(workspace, syn_f, seed, device, classifier_steps)
    timings["diagnostics"] = time.perf_counter() - t0

    report: dict[str, Any] = {
        "format": FORMAT,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seed": seed,
        "n_boot": n_boot,
        "stays_on_site": True,
        "cases": {"real": _label_counts(real.labels), "synthetic": _label_counts(syn.labels)},
        "real_with_lesion_mask": len(real.ring_contrast),
        "grid": list(real.shape),
        "synthetic_provenance": _provenance_summary(syn_m),
        "encoder": enc_info,
        "settings": {
            "kid": {
                "kernel": "(x.y/d + 1)^3",
                "estimator": "unbiased MMD^2 (U-statistic)",
                "subsets": KID_SUBSETS,
                "max_subset_size": KID_SUBSET_SIZE,
                "bootstrap": "cases resampled on both sides; pairs of distinct cases only",
            },
            "frechet": "Gaussian fits, unbiased covariances; Tr sqrt via eigenvalues",
            "baseline": f"{BASELINE_SPLITS} random splits of the real cases into halves",
            "intervals": "95 % percentile bootstrap",
            "foreground": f"t2w > {FOREGROUND_T2W} (case-format units), all sequences",
            "diversity": ssim_cfg
            | {
                "data_range": DATA_RANGE,
                "max_cases_per_side": MAX_DIVERSITY_CASES,
            },
        },
        "sequences": sequences,
        "diagnostics": diagnostics,
        "notes": [STAYS_ON_SITE, PHANTOM_SENTENCE],
    }
    timings["total"] = time.perf_counter() - t_start
    report["seconds"] = timings
    report["inputs_sha256"] = digest
    report["files"] = {k: v.name for k, v in files.items()}
    # fidelity.json marks a complete report (its digest allows reuse): gone until the other
    # two files are written, so a stop in between cannot pair it with newer ones
    files["json"].unlink(missing_ok=True)
    atomic_write_bytes(files["montage"], png)
    atomic_write_text(files["markdown"], render_markdown(report, workspace))
    atomic_write_json(files["json"], report)  # last: it marks the report complete
    return report | {"paths": paths, "reused": False}


def _diagnostics(
    workspace: Path, syn: list[Path], seed: int, device: Any, classifier_steps: int | None
) -> dict[str, Any]:
    """The worth-exporting diagnostics, or why they could not be computed."""
    from site_agent.generative.diagnostics import synthetic_diagnostics

    try:
        return synthetic_diagnostics(
            workspace, syn, seed=seed, device=device, classifier_steps=classifier_steps
        )
    except InputError as exc:
        return {"error": exc.message}


# --- montage and markdown -----------------------------------------------------------------


def _montage_png(real: Side, syn: Side) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [
        (f"{side.name} {n + 1}", side.kept[i], int(side.labels[i]))
        for side in (real, syn)
        for n, i in enumerate(side.montage)
    ]
    n_rows, n_cols = len(SEQUENCES), len(cols)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(1.9 * n_cols, 2.0 * n_rows + 0.6), squeeze=False
    )
    z = real.shape[2] // 2
    for r, s in enumerate(SEQUENCES):
        ref = np.stack([real.kept[i][r][:, :, z] for i in real.montage])
        vmax = float(np.percentile(ref, 99.5)) or DATA_RANGE[s]
        for c, (title, img, y) in enumerate(cols):
            ax = axes[r, c]
            ax.imshow(img[r][:, :, z].T, cmap="gray", vmin=0.0, vmax=vmax, origin="upper")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                tag = {1: "csPCa+", 0: "csPCa-"}.get(y, "unlabelled")
                ax.set_title(f"{title}\n{tag}", fontsize=8)
            if c == 0:
                ax.set_ylabel(s, fontsize=10)
    fig.suptitle(
        f"Mid-slice z={z}: real (left) vs synthetic (right). Real patients: stays on site.",
        fontsize=9,
    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _f(v: float | None, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    return f"{v:.{digits}g}" if abs(v) < 1e-2 and v != 0 else f"{v:.{digits}f}"


def _ci(ci: list[float] | None, digits: int = 3) -> str:
    return "" if not ci else f" [{_f(ci[0], digits)}, {_f(ci[1], digits)}]"


def _pair(auc: float | None, ap: float | None) -> str:
    return f"{_f(auc)} ({_f(ap)})"


def _pr_cell(v: dict[str, Any] | None) -> str:
    return (
        "n/a"
        if not v
        else f"{_f(v['precision'], 2)} / {_f(v['recall'], 2)} (n={v['n_synthetic']}, k={v['k']})"
    )


def _diagnostics_markdown(d: dict[str, Any]) -> list[str]:
    """The "worth exporting?" section: values beside their real-data references, and how to
    read each."""
    lines = ["## Is this synthetic set worth exporting?", ""]
    if "error" in d:
        return [*lines, f"Not computed: {d['error']}", ""]
    lf, t, st, rd = d["label_fidelity"], d["tstr"], d["settings"], d["reading"]
    c, clf = st["cases"], st["classifier"]
    lines += [
        f"Classifier `{clf['network']}`, {clf['steps']} steps, seed {st['seed']}, trained on "
        f"{c['real_train']} real training cases ({c['real_train_positive']} csPCa+); "
        f"{c['real_heldout']} held-out real cases ({c['real_heldout_positive']} csPCa+; split: "
        f"{st['split']}); {c['synthetic']} synthetic cases ({c['synthetic_positive']} csPCa+). "
        + (
            f"With {c['real_heldout']} held-out cases the real references are coarse. "
            if c["real_heldout"] < FEW_HELDOUT
            else ""
        )
        + PHANTOM_SENTENCE,
        "",
        "| diagnostic | synthetic: AUC (AP) | real reference: AUC (AP) |",
        "|---|---|---|",
        f"| label fidelity: real-trained classifier on the synthetic cases, against their "
        f"generated labels | {_pair(lf['auc_synthetic'], lf['ap_synthetic'])} | on the held-out "
        f"real cases: {_pair(lf['auc_real_heldout'], lf['ap_real_heldout'])} |",
        f"| TSTR: classifier trained on synthetic, tested on the held-out real cases | "
        f"{_pair(t['auc_train_synthetic'], t['ap_train_synthetic'])} | trained on the real "
        f"training cases: {_pair(t['auc_train_real'], t['ap_train_real'])} |",
        "",
        f"- {rd['label_fidelity']}",
        f"- {rd['tstr']}",
        "",
        f"Precision / recall (Kynkäänniemi et al. 2019, k-NN manifolds with k = {st['k']}, "
        "features of the site's autoencoder z-scored with the real training cases), each "
        "against the real training cases:",
        "",
        "| sequence | synthetic | synthetic cut to the held-out size | held-out real (baseline) |",
        "|---|---|---|---|",
    ]
    for s, v in d["precision_recall"].items():
        lines.append(
            f"| {s} | {_pr_cell(v['synthetic'])} | {_pr_cell(v['synthetic_at_heldout_size'])} "
            f"| {_pr_cell(v['real_heldout_baseline'])} |"
        )
    lines += [
        "",
        f"- {rd['precision']}",
        f"- {rd['recall']} Recall grows with the size of the compared set, so compare the "
        "synthetic set cut to the held-out size with the held-out baseline (same n).",
        "",
    ]
    return lines


def render_markdown(report: dict[str, Any], workspace: Path) -> str:
    """The readable page of a report dict."""
    c = report["cases"]
    enc = report["encoder"]
    st = report["settings"]
    prov = report["synthetic_provenance"]
    lines = [
        "# Fidelity report: synthetic vs real cases",
        "",
        f"Workspace `{workspace}` · created {report['created']} · seed {report['seed']} · "
        f"{report['n_boot']} bootstrap resamples · grid {tuple(report['grid'])}",
        "",
        f"> **Stays on site.** {STAYS_ON_SITE} This page and `fidelity.json` hold aggregates "
        "only (no case ids).",
        ">",
        f"> {PHANTOM_SENTENCE}",
        "",
        "## Cases",
        "",
        "| | cases | csPCa+ | csPCa- | unlabelled |",
        "|---|---|---|---|---|",
    ]
    for side in ("real", "synthetic"):
        v = c[side]
        lines.append(
            f"| {side} | {v['total']} | {v['positive']} | {v['negative']} | {v['unlabelled']} |"
        )
    lines += [
        "",
        f"Real cases with a lesion mask: {report['real_with_lesion_mask']}. Synthetic "
        "provenance: "
        + (", ".join(f"{k} {v}" for k, v in prov.items() if k != "diffusion_sha256") or "n/a")
        + ".",
        "",
        *_diagnostics_markdown(report["diagnostics"]),
        "## How it is measured",
        "",
        f"- **Features**: the site's own autoencoder encoder (sha256 "
        f"`{enc['autoencoder_sha256'][:12]}`, channels {enc['channels']}), shared by the three "
        f"sequences and applied to each on its own; layer {enc['layer']}; "
        f"{enc['pooling']} = {enc['n_features']} features; {enc['standardisation']}. "
        "No pretrained network is involved. The encoder was trained on these real cases, which "
        "may favour them.",
        f"- **KID**: {st['kid']['estimator']} with kernel {st['kid']['kernel']}, mean and std "
        f"over {st['kid']['subsets']} random subsets (Bińkowski et al. 2018). **FD**: Fréchet "
        "distance of Gaussian fits. Both unitless (z-scored features); lower is closer. "
        "Brackets: 95 % bootstrap interval (cases resampled on both sides). Two reports "
        "(e.g. two samplers) compare only when they share the real cases and the autoencoder, "
        "since both fix the feature scale.",
        f"- **Baseline**: the same distances between two random halves of the real cases "
        f"({st['baseline']}), and between a real half and as many synthetic cases: at equal "
        "size, real-vs-synthetic near real-vs-real means the encoder cannot tell them apart.",
        f"- **Intensities**: inside the foreground ({st['foreground']}), per-case statistics "
        "averaged over cases.",
        "- **Lesion contrast**: lesion-sensitive percentile in the central box where ingest "
        "centres the prostate; AUC of that statistic against the csPCa label (1 = positives "
        "always more lesion-like, 0.5 = no separation) and mean difference positives - "
        "negatives.",
        f"- **Diversity**: mean pairwise {st['diversity']['metric'].upper()} within each set "
        f"(up to {st['diversity']['max_cases_per_side']} cases per set; "
        f"{st['diversity']['scales']} scale(s), kernel {st['diversity']['kernel_size']}: "
        f"{st['diversity']['reason']}). Lower = more diverse; synthetic far above real suggests "
        "mode collapse or memorisation.",
        "",
    ]
    for s, seq in report["sequences"].items():
        d, b = seq["distance"], seq["distance"]["baseline"]
        lines += [
            f"## {s}",
            "",
            "### Distribution distance",
            "",
            "| comparison | KID | FD |",
            "|---|---|---|",
            f"| real ({d['n_real']}) vs synthetic ({d['n_synthetic']}) | "
            f"{_f(d['kid'])} ± {_f(d['kid_subset_std'])}{_ci(d['kid_ci95'])} | "
            f"{_f(d['frechet'])}{_ci(d['frechet_ci95'])} |",
            f"| real half vs real half ({b['half_size']} each, baseline) | "
            f"{_f(b['kid_real_vs_real'])} | {_f(b['frechet_real_vs_real'])} |",
            f"| real half vs synthetic ({b['half_size']} each) | "
            f"{_f(b['kid_real_vs_synthetic'])} | {_f(b['frechet_real_vs_synthetic'])} |",
            "",
        ]
        if d["rank_deficient"]:
            lines += [
                f"FD caveat: {min(d['n_real'], d['n_synthetic'])} cases for {d['n_features']} "
                "features, so the covariances are rank-deficient; prefer KID at this size.",
                "",
            ]
        lines += [
            "### Intensities (foreground)",
            "",
            "| | mean | sd | p2 | p50 | p98 |",
            "|---|---|---|---|---|---|",
        ]
        for side in ("real", "synthetic"):
            v = seq["intensity"][side]
            lines.append(f"| {side} | " + " | ".join(_f(v[k]) for k in INTENSITY_KEYS) + " |")
        lc = seq["lesion_contrast"]
        lines += [
            "",
            f"### Lesion contrast: {lc['meaning']}, {lc['direction']}",
            "",
            "| | AUC vs csPCa label | mean difference (pos - neg) | positives / negatives |",
            "|---|---|---|---|",
        ]
        for side in ("real", "synthetic"):
            v = lc[side]
            lines.append(
                f"| {side} | {_f(v['auc'])}{_ci(v['auc_ci95'])} | {_f(v['mean_difference'])} "
                f"| {v['n_positive']} / {v['n_negative']} |"
            )
        lines.append("")
        if lc["synthetic_over_real"] is not None:
            lines.append(
                f"Synthetic keeps {100 * lc['synthetic_over_real']:.0f} % of the real "
                "positive-negative difference."
            )
        if lc["real_lesion_vs_ring"]:
            r = lc["real_lesion_vs_ring"]
            lines.append(
                f"Real lesion vs 5 mm ring (lesion masks, {r['n_cases']} cases): "
                f"{_f(r['mean'])} (mean(lesion) - mean(ring))."
            )
        dv = seq["diversity"]
        lines += [
            "",
            "### Diversity",
            "",
            f"| | mean pairwise {st['diversity']['metric'].upper()} | sd | cases | pairs |",
            "|---|---|---|---|---|",
        ]
        for side in ("synthetic", "real"):
            v = dv[side]
            lines.append(
                f"| {side} | {_f(v['mean'])} | {_f(v['sd'])} | {v['n_cases']} | {v['n_pairs']} |"
            )
        lines.append("")
    lines += [
        "## Montage",
        "",
        f"Rows t2w, hbv, adc; columns a few real then synthetic mid-slices (same grey window "
        f"per row). {STAYS_ON_SITE}",
        "",
        "![montage of real and synthetic mid-slices](montage.png)",
        "",
        f"{PHANTOM_SENTENCE}",
        "",
    ]
    return "\n".join(lines)
