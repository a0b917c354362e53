"""Pretrain the classifier on a set of cases and save the weights (safetensors + config).

Used at a site for the ``real-source`` (and later ``reconstructed-source``) condition, and at
the coordinator for conditions pretrained on synthetic cases.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shared.classifier.data import BPMRI, CaseTensors, load_case_tensors
from shared.classifier.training import TrainConfig, train_classifier
from shared.errors import InputError
from shared.weights import save_weights

SEQ_INDEX = {s: i for i, s in enumerate(BPMRI)}
MIN_CASES_PER_CLASS = 4


def select_channels(data: CaseTensors, sequences: Sequence[str]) -> CaseTensors:
    idx = [SEQ_INDEX[s] for s in sequences]
    return CaseTensors(data.x[:, idx], data.y, data.ids)


def holdout(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Label-stratified (train, validation) indices."""
    rng = np.random.default_rng(seed)
    tr, va = [], []
    for cls in (0, 1):
        idx = rng.permutation(np.flatnonzero(y == cls))
        k = max(1, round(len(idx) * fraction))
        va += idx[:k].tolist()
        tr += idx[k:].tolist()
    return np.sort(tr), np.sort(va)


def pretrain(
    folders: Sequence[Path],
    sequences: Sequence[str],
    cfg: TrainConfig,
    out: Path,
    meta: dict[str, Any],
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train on ``folders`` (15 % held out, stratified, for model selection by AP) and write
    the best weights to ``out``; returns the saved config."""
    data = select_channels(load_case_tensors(folders), sequences)
    n_pos = data.n_positive
    n_neg = len(data) - n_pos
    if min(n_pos, n_neg) < MIN_CASES_PER_CLASS:
        raise InputError(
            f"pretraining needs at least {MIN_CASES_PER_CLASS} cases of each class; "
            f"found {n_pos} positive and {n_neg} negative"
        )
    tr, va = holdout(data.y, 0.15, cfg.seed)
    t0 = time.time()
    res = train_classifier(data.subset(tr), data.subset(va), cfg, progress=progress)
    config = {
        **meta,
        "network": cfg.network,
        "in_channels": len(sequences),
        "sequences": list(sequences),
        "grid_size": list(data.x.shape[2:]),
        "cases": len(data),
        "positives": n_pos,
        "best_step": res.best_step,
        "val_ap": res.best_val_ap,
        "val_auc": res.best_val_auc,
        "train_config": cfg.to_dict(),
        "seconds": round(time.time() - t0, 1),
    }
    save_weights(out, res.state, config)
    return config
