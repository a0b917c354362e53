"""Is a synthetic set worth exporting? Three diagnostics on the site's own data (issue 12).

``synthetic_diagnostics(WS, synthetic)`` splits ``WS/cases/real`` into the generative model's
training cases and the cases it never saw (``WS/models/generative/holdout.json``) and measures:

1. **Label fidelity**: a classifier trained on the real training cases scores the synthetic
   cases against the label each was generated for (AUC, AP), beside its scores on the held-out
   real cases. Near 0.5 on synthetic while high on held-out real: the label signal was lost.
2. **TSTR** (train on synthetic, test on real; the classification accuracy score): the same
   classifier recipe trained only on the synthetic cases, scored on the held-out real cases,
   beside the recipe trained on the real training cases (the classifier of point 1).
3. **Precision and recall** per sequence (Kynkäänniemi et al. 2019, "Improved precision and
   recall metric for assessing generative models"): the real (or synthetic) manifold is the
   union of balls around each of its points with the radius of that point's k-th nearest
   neighbour. Precision = fraction of synthetic cases inside the real manifold (low: samples off
   the manifold); recall = fraction of real cases inside the synthetic manifold (low: mode
   collapse, too little diversity). Features: the site's own autoencoder encoder, as in the
   fidelity report, z-scored with the real training cases. Baseline: the held-out real cases in
   place of the synthetic ones, and the synthetic set cut to the held-out size (recall grows
   with the size of the compared set, so only equal sizes compare).

The classifier runs on the CPU (the training loop of ``shared.classifier`` is CPU code); the
encoder runs on ``device``. The real-trained classifier and the TSTR result are cached in
``WS/work/diagnostics`` under a digest of their inputs, so a sweep that calls this for many
synthetic sets trains the real classifier once. Deterministic given ``seed``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.atomic import atomic_write_json
from shared.case_format import SEQUENCES, list_cases, read_meta
from shared.errors import InputError

if TYPE_CHECKING:
    import torch

    from shared.classifier.data import CaseTensors
    from shared.classifier.training import TrainConfig

FORMAT = "synthetic-diagnostics/1"
DEFAULT_K = 3  # Kynkäänniemi et al. 2019 use k = 3
FALLBACK_HOLDOUT_FRACTION = 0.25  # only when the workspace has no holdout.json
MATCHED_DRAWS = 20  # synthetic subsets of the held-out size, for a like-for-like recall
ENCODE_BATCH = 8
SD_FLOOR = 1e-3  # as the fidelity report's z-scoring
CACHE_DIR = ("work", "diagnostics")

READING = {
    "label_fidelity": "A classifier trained on the site's real training cases scores the "
    "synthetic cases against the label they were generated for: near 0.5 while the held-out "
    "real AUC is high means the label signal was lost in generation.",
    "tstr": "Train on synthetic, test on real: the same classifier trained only on the synthetic "
    "cases and scored on the held-out real cases; far below the real-trained classifier means "
    "the synthetic cases carry little of what a classifier needs (little utility).",
    "recall": "Recall: the fraction of real cases that lie inside the synthetic set's manifold; "
    "low recall means mode collapse or too little diversity.",
    "precision": "Precision: the fraction of synthetic cases that lie inside the real cases' "
    "manifold; low precision means off-manifold (unrealistic) samples.",
}


# --- precision and recall (pure) ----------------------------------------------------------


def knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance of each row of (n, d) ``x`` to its k-th nearest *other* row (n > k)."""
    from scipy.spatial.distance import cdist

    x = np.asarray(x, np.float64)
    if len(x) <= k:
        raise ValueError(f"k-NN radii need more than k = {k} points, got {len(x)}")
    d = cdist(x, x)
    np.fill_diagonal(d, np.inf)
    return np.partition(d, k - 1, axis=1)[:, k - 1]


def precision_recall(
    real_feats: np.ndarray, syn_feats: np.ndarray, k: int = DEFAULT_K
) -> dict[str, Any]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of (m, d) synthetic features
    against (n, d) real ones: precision = fraction of synthetic points within the k-NN radius
    of some real point; recall = fraction of real points within the k-NN radius of some
    synthetic point (radii among each set's own points; "within" includes the boundary).
    Both sets need more than ``k`` points."""
    from scipy.spatial.distance import cdist

    real = np.asarray(real_feats, np.float64)
    syn = np.asarray(syn_feats, np.float64)
    d = cdist(syn, real)  # (m, n)
    inside_real = d <= knn_radii(real, k)[None, :]
    inside_syn = d <= knn_radii(syn, k)[:, None]
    return {
        "precision": float(inside_real.any(axis=1).mean()),
        "recall": float(inside_syn.any(axis=0).mean()),
        "k": int(k),
        "n_real": len(real),
        "n_synthetic": len(syn),
    }


def _pr_or_none(real: np.ndarray, other: np.ndarray, k: int) -> dict[str, Any] | None:
    """Precision/recall with k lowered to what the smaller set allows (recorded), or None
    when a set has fewer than 2 points."""
    k_used = min(k, len(real) - 1, len(other) - 1)
    return precision_recall(real, other, k_used) if k_used >= 1 else None


def _matched(
    real: np.ndarray, syn: np.ndarray, size: int, k: int, rng: np.random.Generator
) -> dict[str, Any] | None:
    """Mean precision/recall over random synthetic subsets of ``size`` cases."""
    if size < 2 or len(syn) <= size:
        return None
    runs = [
        _pr_or_none(real, syn[rng.choice(len(syn), size, replace=False)], k)
        for _ in range(MATCHED_DRAWS)
    ]
    ok = [r for r in runs if r is not None]
    if not ok:
        return None
    return {
        "precision": float(np.mean([r["precision"] for r in ok])),
        "recall": float(np.mean([r["recall"] for r in ok])),
        "k": ok[0]["k"],
        "n_synthetic": size,
        "draws": len(ok),
    }


# --- the site's real cases ----------------------------------------------------------------


@dataclass(frozen=True)
class RealSplit:
    """The site's labelled real cases, split as the generative model was trained."""

    train: list[Path]
    heldout: list[Path]
    source: str


def split_real(workspace: Path) -> RealSplit:
    """Training and held-out real cases (labelled ones only). The held-out ids come from
    ``WS/models/generative/holdout.json``; without it (a model trained before that file
    existed, or cases made by hand) a label-stratified split is made here, which the generator
    may have seen: the split's ``source`` says so."""
    from site_agent.generative.data import holdout_split
    from site_agent.generative.layout import holdout_path

    real = [f for f in list_cases(workspace / "cases" / "real") if _label(f) is not None]
    path = holdout_path(workspace)
    if path.is_file():
        try:
            held = set(json.loads(path.read_text())["held_out"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"cannot read {path}: {exc}") from None
        train = [f for f in real if f.name not in held]
        heldout = [f for f in real if f.name in held]
        return RealSplit(train, heldout, "models/generative/holdout.json")
    labels = np.array([_label(f) for f in real], dtype=int)
    tr, ho = holdout_split(labels, FALLBACK_HOLDOUT_FRACTION, 0, keep_at_least=2)
    return RealSplit(
        [real[i] for i in tr],
        [real[i] for i in ho],
        f"made here ({FALLBACK_HOLDOUT_FRACTION:.0%} per class, seed 0): no holdout.json, so "
        "the generator may have seen the held-out cases",
    )


def _label(folder: Path) -> int | None:
    y = read_meta(folder).label.cspca
    return None if y is None else int(y)


# --- classifiers --------------------------------------------------------------------------


def classifier_config(profile_name: str, steps: int | None, seed: int) -> TrainConfig:
    """The profile's pretraining recipe; fixed steps, no model selection (every case of the
    site is either training or test data here)."""
    from shared.classifier.training import TrainConfig
    from shared.profiles import get_profile

    c = get_profile(profile_name).classifier
    return TrainConfig(
        network=c.network,
        in_channels=len(SEQUENCES),
        steps=int(steps or c.pretrain_steps),
        batch_size=c.batch_size,
        lr=c.lr_pretrain,
        seed=seed,
    )


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else json.dumps(p, sort_keys=True).encode())
    return h.hexdigest()


def _data_digest(data: CaseTensors) -> str:
    return _digest(data.ids, np.ascontiguousarray(data.x).tobytes(), data.y.tobytes())


def _auc_ap(y: np.ndarray, scores: np.ndarray) -> tuple[float | None, float | None]:
    """ROC AUC and average precision; (None, None) unless both classes are present."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.asarray(y).astype(int)
    if len(set(y.tolist())) < 2:
        return None, None
    return float(roc_auc_score(y, scores)), float(average_precision_score(y, scores))


def _both_classes(data: CaseTensors) -> bool:
    return 0 < data.n_positive < len(data)


def _real_classifier(workspace: Path, train: CaseTensors, cfg: TrainConfig) -> Any:
    """The classifier trained on the real training cases, trained once per (cases, recipe) and
    kept in ``WS/work/diagnostics``."""
    from shared.classifier.training import load_model, train_classifier
    from shared.weights import load_weights, save_weights

    key = _digest(sorted(train.ids), cfg.to_dict(), _data_digest(train))
    folder = workspace.joinpath(*CACHE_DIR) / f"classifier-real-{key[:16]}"
    grid = tuple(int(v) for v in train.x.shape[2:])
    if (folder / "config.json").is_file():
        state, saved = load_weights(folder)
        if saved.get("key") == key:
            return load_model(cfg, grid, state)  # type: ignore[arg-type]
    res = train_classifier(train, None, cfg)
    save_weights(
        folder, res.state, {"key": key, "train_config": cfg.to_dict(), "cases": len(train)}
    )
    return load_model(cfg, grid, res.state)  # type: ignore[arg-type]


def _tstr(
    workspace: Path, syn: CaseTensors, heldout: CaseTensors, cfg: TrainConfig
) -> dict[str, Any]:
    """AUC/AP on the held-out real cases of the recipe trained on the synthetic cases; the
    result is cached by a digest of both sets and the recipe (weights are not kept)."""
    from shared.classifier.training import load_model, predict, train_classifier

    key = _digest(cfg.to_dict(), _data_digest(syn), _data_digest(heldout))
    path = workspace.joinpath(*CACHE_DIR) / f"tstr-{key[:16]}.json"
    if path.is_file():
        try:
            cached = json.loads(path.read_text())
            if cached.get("key") == key:
                return cached["result"]
        except (OSError, ValueError):
            pass  # recompute
    res = train_classifier(syn, None, cfg)
    model = load_model(cfg, tuple(int(v) for v in syn.x.shape[2:]), res.state)  # type: ignore[arg-type]
    auc, ap = _auc_ap(heldout.y, predict(model, heldout.x))
    result = {"auc": auc, "ap": ap}
    atomic_write_json(path, {"key": key, "result": result})
    return result


# --- features -----------------------------------------------------------------------------


def _features(body: list[Any], x: np.ndarray, device: Any) -> np.ndarray:
    from site_agent.generative.fidelity_report import encoder_features

    if len(x) == 0:
        return np.zeros((0, len(SEQUENCES), 0))
    return np.concatenate(
        [
            encoder_features(body, x[i : i + ENCODE_BATCH], device)
            for i in range(0, len(x), ENCODE_BATCH)
        ]
    )


def _precision_recall_block(
    train_f: np.ndarray, held_f: np.ndarray, syn_f: np.ndarray, k: int, rng: np.random.Generator
) -> dict[str, Any]:
    """Per sequence: synthetic vs real training cases, held-out real vs real training cases
    (baseline), and synthetic subsets of the held-out size (like-for-like with the baseline)."""
    out: dict[str, Any] = {}
    for j, s in enumerate(SEQUENCES):
        fr = train_f[:, j]
        mu, sd = fr.mean(0), fr.std(0)
        sd = np.maximum(sd, SD_FLOOR * max(float(sd.mean()), 1e-12))
        z_tr, z_syn = (fr - mu) / sd, (syn_f[:, j] - mu) / sd
        z_held = (held_f[:, j] - mu) / sd if len(held_f) else np.zeros((0, fr.shape[1]))
        out[s] = {
            "synthetic": _pr_or_none(z_tr, z_syn, k),
            "real_heldout_baseline": _pr_or_none(z_tr, z_held, k) if len(z_held) else None,
            "synthetic_at_heldout_size": _matched(z_tr, z_syn, len(z_held), k, rng),
        }
    return out


# --- the diagnostics ----------------------------------------------------------------------


def label_fidelity_scores(
    workspace: Path,
    synthetic: Sequence[Path],
    *,
    seed: int = 0,
    classifier_steps: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(labels the synthetic cases were generated for, the real-trained classifier's scores):
    the raw material of label fidelity, for a caller that wants its own interval. The
    classifier is the cached one ``synthetic_diagnostics`` uses for the same seed and steps."""
    from shared.classifier.data import load_case_tensors
    from shared.classifier.training import predict

    split = split_real(Path(workspace))
    train = load_case_tensors(split.train)
    if not _both_classes(train):
        raise InputError("the real training cases hold one class only: no classifier to judge")
    cfg = classifier_config(read_meta(split.train[0]).profile, classifier_steps, seed)
    syn = load_case_tensors(list(synthetic))
    return syn.y, predict(_real_classifier(Path(workspace), train, cfg), syn.x)


def synthetic_diagnostics(
    workspace: Path,
    synthetic: Sequence[Path],
    *,
    seed: int = 0,
    device: torch.device | None = None,
    classifier_steps: int | None = None,
) -> dict[str, Any]:
    """Label fidelity, TSTR and per-sequence precision/recall of the synthetic cases in
    ``synthetic`` (case folders, each with the cspca label it was generated for) against the
    site's real cases; see the module docstring. Returns a JSON-able dict with the keys
    ``format``, ``label_fidelity``, ``tstr``, ``precision_recall``, ``settings``, ``reading``.

    AUC/AP values are None where a set lacks one class. Raises ``InputError`` without a trained
    autoencoder, without labelled real training cases of both classes, or with synthetic cases
    on another grid than the real ones.
    """
    from shared.classifier.data import load_case_tensors
    from shared.classifier.training import predict
    from site_agent.generative.fidelity_report import _load_encoder
    from site_agent.generative.pipeline import default_device

    workspace = Path(workspace)
    device = device or default_device()
    body, _, _, enc_info = _load_encoder(workspace, device)  # fail before any training
    split = split_real(workspace)
    if not split.train:
        raise InputError(
            f"no labelled real cases in {workspace / 'cases' / 'real'}",
            hint="ingest with --labels before judging synthetic cases",
        )
    train = load_case_tensors(split.train)
    if not _both_classes(train):
        raise InputError(
            f"the {len(train)} real training cases hold one class only: no classifier can be "
            "trained to judge the synthetic labels"
        )
    heldout = load_case_tensors(split.heldout) if split.heldout else None
    syn = load_case_tensors(list(synthetic))
    if syn.x.shape[1:] != train.x.shape[1:]:
        raise InputError(
            f"synthetic cases are on grid {syn.x.shape[2:]} but the real ones on "
            f"{train.x.shape[2:]}",
            hint="generate with a model trained on this workspace's real cases",
        )
    profile = read_meta(split.train[0]).profile
    cfg = classifier_config(profile, classifier_steps, seed)

    real_model = _real_classifier(workspace, train, cfg)
    auc_s, ap_s = _auc_ap(syn.y, predict(real_model, syn.x))
    auc_h, ap_h = (
        _auc_ap(heldout.y, predict(real_model, heldout.x)) if heldout is not None else (None, None)
    )
    if heldout is not None and _both_classes(syn) and _both_classes(heldout):
        tstr = _tstr(workspace, syn, heldout, cfg)
    else:
        tstr = {"auc": None, "ap": None}

    train_f = _features(body, train.x, device)
    held_f = _features(body, heldout.x, device) if heldout is not None else np.zeros((0, 3, 0))
    syn_f = _features(body, syn.x, device)
    pr = _precision_recall_block(train_f, held_f, syn_f, DEFAULT_K, np.random.default_rng(seed))

    n_held = 0 if heldout is None else len(heldout)
    return {
        "format": FORMAT,
        "label_fidelity": {
            "auc_synthetic": auc_s,
            "ap_synthetic": ap_s,
            "auc_real_heldout": auc_h,
            "ap_real_heldout": ap_h,
            "n_synthetic": len(syn),
            "n_heldout": n_held,
        },
        "tstr": {
            "auc_train_synthetic": tstr["auc"],
            "ap_train_synthetic": tstr["ap"],
            "auc_train_real": auc_h,
            "ap_train_real": ap_h,
            "n_test_real_heldout": n_held,
        },
        "precision_recall": pr,
        "settings": {
            "seed": seed,
            "k": DEFAULT_K,
            "classifier": cfg.to_dict()
            | {
                "profile": profile,
                "device": "cpu",
                "selection": "last step (no validation split: every real case is training or "
                "test data here)",
            },
            "features": f"{enc_info['layer']}; z-scored with the real training cases",
            "split": split.source,
            "cases": {
                "real_train": len(train),
                "real_train_positive": train.n_positive,
                "real_heldout": n_held,
                "real_heldout_positive": 0 if heldout is None else heldout.n_positive,
                "synthetic": len(syn),
                "synthetic_positive": syn.n_positive,
            },
            "cache": "/".join(CACHE_DIR),
        },
        "reading": READING,
    }
