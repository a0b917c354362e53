"""Train, select and apply the classifier (used for pretraining and for fine-tuning).

Model selection follows the paper: validation AP every ``eval_every`` steps, the best state kept,
early stopping after ``patience`` evaluations without improvement. Batches are class-balanced
(half positives where possible), so a 10-case fraction with 3 positives still trains.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from shared.classifier.data import CaseTensors, augment
from shared.classifier.networks import build_classifier
from shared.errors import InputError


@dataclass(frozen=True)
class TrainConfig:
    network: str = "small-cnn"
    in_channels: int = 3
    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    loss: str = "bce"  # "bce" or "focal"
    focal_gamma: float = 2.0
    eval_every: int = 25
    patience: int = 6  # evaluations without improvement before stopping
    augment: bool = True
    balanced: bool = True
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    state: dict[str, Any]  # best weights (by validation AP, else the last)
    best_step: int
    best_val_ap: float | None
    best_val_auc: float | None
    steps_run: int
    history: list[dict[str, float]] = field(default_factory=list)


def _loss_fn(cfg: TrainConfig):
    import torch
    import torch.nn.functional as F

    if cfg.loss == "bce":
        return F.binary_cross_entropy_with_logits
    if cfg.loss == "focal":

        def focal(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            p_t = torch.exp(-bce)
            return ((1 - p_t) ** cfg.focal_gamma * bce).mean()

        return focal
    raise InputError(f"loss must be bce or focal, not {cfg.loss!r}")


def predict(model, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Probabilities of csPCa for (N, C, X, Y, Z) arrays."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            logits = model(torch.from_numpy(x[i : i + batch_size]))
            out.append(torch.sigmoid(logits.reshape(-1)).numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def _val_metrics(model, val: CaseTensors) -> tuple[float, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    s = predict(model, val.x)
    return float(average_precision_score(val.y, s)), float(roc_auc_score(val.y, s))


def _batches(train: CaseTensors, cfg: TrainConfig, rng: np.random.Generator):
    pos = np.flatnonzero(train.y > 0.5)
    neg = np.flatnonzero(train.y <= 0.5)
    n = len(train)
    while True:
        if cfg.balanced and len(pos) and len(neg):
            k = cfg.batch_size // 2
            idx = np.concatenate([rng.choice(pos, k), rng.choice(neg, cfg.batch_size - k)])
        else:
            idx = rng.choice(n, min(cfg.batch_size, n), replace=n < cfg.batch_size)
        yield idx


def train_classifier(
    train: CaseTensors,
    val: CaseTensors | None,
    cfg: TrainConfig,
    init_state: dict[str, Any] | None = None,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train from ``init_state`` (or random init) and return the best state by validation AP."""
    import torch

    from shared.classifier.optim import AdamW

    if len(train) == 0:
        raise InputError("no training cases")
    if val is not None and len(set(val.y.tolist())) < 2:
        raise InputError("the validation split needs both classes for AP-based selection")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = build_classifier(cfg.network, cfg.in_channels, tuple(train.x.shape[2:]))  # type: ignore[arg-type]
    if init_state is not None:
        model.load_state_dict(init_state)
    # torch.optim.AdamW's update, without torch.optim's import of torch._dynamo (seconds per
    # fresh process: every federated train message is one)
    opt = AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = _loss_fn(cfg)
    best_state = copy.deepcopy(model.state_dict())
    best = (-math.inf, 0, None, None)  # (ap, step, ap, auc)
    history: list[dict[str, float]] = []
    stale = 0
    batches = _batches(train, cfg, rng)
    step = 0
    for step in range(1, cfg.steps + 1):
        model.train()
        idx = next(batches)
        xb = torch.from_numpy(train.x[idx])
        if cfg.augment:
            xb = augment(xb, gen)
        yb = torch.from_numpy(train.y[idx])
        loss = loss_fn(model(xb).reshape(-1), yb)
        if not torch.isfinite(loss):
            raise InputError(
                f"classifier loss became {loss.item()} at step {step}",
                hint="lower the learning rate",
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        record = {"step": float(step), "loss": float(loss.item())}
        if val is not None and (step % cfg.eval_every == 0 or step == cfg.steps):
            ap, auc = _val_metrics(model, val)
            record.update(val_ap=ap, val_auc=auc)
            if ap > best[0] + 1e-6:
                best = (ap, step, ap, auc)
                best_state = copy.deepcopy(model.state_dict())
                stale = 0
            else:
                stale += 1
            history.append(record)
            if progress:
                progress(step, record)
            if stale >= cfg.patience:
                break
        elif progress:
            progress(step, record)
    if val is None:
        best_state = copy.deepcopy(model.state_dict())
        best = (-math.inf, step, None, None)
    return TrainResult(best_state, best[1], best[2], best[3], step, history)


def load_model(cfg: TrainConfig, grid_size: tuple[int, int, int], state: dict[str, Any]):
    model = build_classifier(cfg.network, cfg.in_channels, grid_size)
    model.load_state_dict(state)
    return model
