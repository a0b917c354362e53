"""Local work on a node: a few classifier steps from the global weights, evaluation, clipping.

Both roles use it (a site on its synthetic or allowed real cases, a target node on its external
fraction); it only sees arrays it is handed, never paths.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.classifier.data import CaseTensors
from shared.classifier.training import TrainConfig, predict, train_classifier
from shared.errors import InputError
from shared.federation.records import (
    K_BATCH,
    K_LR,
    K_NETWORK,
    K_ROUND,
    K_SEED,
    K_SEQUENCES,
    split_list,
    update_norm,
)


@dataclass
class LocalResult:
    state: dict[str, Any]  # torch tensors
    loss: float
    steps: int
    update_norm: float
    clipped: bool


def preload() -> None:
    """Import what every train or evaluate request needs (torch): a fresh ClientApp process
    pays this once, and it is start-up, not compute. MONAI is left out: the small CNN is plain
    torch, and ``efficientnet-b0`` imports it when it is built."""
    import torch  # noqa: F401


def request_train_config(config: dict[str, Any], steps: int, in_channels: int) -> TrainConfig:
    """The TrainConfig a request asks for (seed varied by round so rounds differ)."""
    seed = int(config.get(K_SEED, 0)) * 1000 + int(config.get(K_ROUND, 0))
    return TrainConfig(
        network=str(config.get(K_NETWORK, "small-cnn")),
        in_channels=in_channels,
        steps=steps,
        batch_size=int(config.get(K_BATCH, 8)),
        lr=float(config.get(K_LR, 1e-3)),
        eval_every=max(steps, 1),
        augment=True,
        seed=seed,
    )


def requested_sequences(config: dict[str, Any]) -> list[str]:
    seqs = split_list(config.get(K_SEQUENCES)) or ["t2w", "hbv", "adc"]
    if seqs not in (["t2w", "hbv", "adc"], ["t2w"]):
        raise InputError(f"sequences must be t2w,hbv,adc or t2w, not {seqs}")
    return seqs


def train_local(
    global_state: dict[str, Any], data: CaseTensors, cfg: TrainConfig, clip_norm: float = 0.0
) -> LocalResult:
    """``cfg.steps`` steps from ``global_state``; the update is clipped to ``clip_norm`` (L2,
    over floating-point tensors) when it is positive."""
    import torch

    losses: list[float] = []
    res = train_classifier(
        data, None, cfg, init_state=global_state, progress=lambda s, r: losses.append(r["loss"])
    )
    new = {k: v.detach().cpu().numpy() for k, v in res.state.items()}
    old = {k: v.detach().cpu().numpy() for k, v in global_state.items()}
    norm = update_norm(new, old)
    clipped = False
    if clip_norm > 0 and norm > clip_norm:
        scale = clip_norm / norm
        for k, v in new.items():
            if np.issubdtype(v.dtype, np.floating):
                new[k] = (old[k] + (v - old[k]) * scale).astype(v.dtype)
        clipped = True
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in new.items()}
    return LocalResult(
        state, float(losses[-1]) if losses else float("nan"), res.steps_run, norm, clipped
    )


def evaluate_local(
    global_state: dict[str, Any], data: CaseTensors, network: str
) -> dict[str, float]:
    """AUC, AP and BCE loss of the global model on ``data`` (scikit-learn's formulas, without
    its import: every evaluate message is a fresh process)."""
    from shared.classifier.networks import build_classifier
    from shared.metrics import average_precision, log_loss, roc_auc

    model = build_classifier(network, int(data.x.shape[1]), tuple(data.x.shape[2:]))
    model.load_state_dict(global_state)
    s = predict(model, data.x)
    y = data.y.astype(int)
    both = len(set(y.tolist())) == 2
    return {
        "auc": roc_auc(y, s) if both else float("nan"),
        "ap": average_precision(y, s) if both else float("nan"),
        "loss": log_loss(y, np.clip(s, 1e-6, 1 - 1e-6)),
    }


def arrays_digest(arrays: dict[str, np.ndarray]) -> tuple[str, int]:
    """SHA-256 over names and bytes of returned arrays (for the audit log), and the byte count."""
    h = hashlib.sha256()
    n = 0
    for k in sorted(arrays):
        b = np.ascontiguousarray(arrays[k]).tobytes()
        h.update(k.encode() + b"\0" + b)
        n += len(b)
    return h.hexdigest(), n
