"""Atomic, resumable training checkpoints: model(s), EMA, optimizer(s), LR scheduler(s), grad
scaler, RNG states (torch CPU and CUDA, the numpy generator that draws batches) and the step.

A checkpoint is internal to the site (``torch.save`` format, loaded with ``weights_only=True``);
weights that may leave the site are written separately with ``shared.weights.save_weights``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.atomic import atomic_write_bytes
from shared.errors import InputError

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class TrainState:
    """Everything a training run needs to continue bit-for-bit after a kill."""

    modules: dict[str, torch.nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, Any] = field(default_factory=dict)  # torch LR schedulers
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    ema: dict[str, torch.Tensor] | None = None  # EMA of modules["model"]'s state
    scaler: Any = None  # torch.amp.GradScaler on CUDA fp16, else None
    step: int = 0


def training_fields(spec: Any, ignore: tuple[str, ...]) -> dict[str, Any]:
    """The fields of a spec dataclass that shape the trained weights (tuples as lists), for
    checkpoint and "already trained" comparisons; ``ignore`` lists the others."""
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in vars(spec).items() if k not in ignore
    }


def save_checkpoint(path: Path, state: TrainState, config: dict[str, Any]) -> None:
    """Write ``state`` and the run's ``config`` to ``path`` atomically."""
    payload = {
        "step": state.step,
        "config": config,
        "modules": {k: m.state_dict() for k, m in state.modules.items()},
        "optimizers": {k: o.state_dict() for k, o in state.optimizers.items()},
        "schedulers": {k: s.state_dict() for k, s in state.schedulers.items()},
        "ema": state.ema,
        "scaler": None if state.scaler is None else state.scaler.state_dict(),
        "rng_torch": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "rng_numpy": state.rng.bit_generator.state,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def checkpoint_step(path: Path) -> int | None:
    """The step stored at ``path``, or None when there is no readable checkpoint."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["step"])
    except (OSError, RuntimeError, KeyError, EOFError):
        return None


def load_checkpoint(path: Path, state: TrainState, config: dict[str, Any]) -> bool:
    """Restore ``state`` in place from ``path``; return False (state untouched) when there is
    no checkpoint or it belongs to another configuration (then training starts over)."""
    if not path.is_file():
        return False
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise InputError(
            f"cannot read checkpoint {path}: {exc}",
            hint="delete it to start this training stage over",
        ) from None
    if payload.get("config") != config:
        return False
    for k, m in state.modules.items():
        m.load_state_dict(payload["modules"][k])
    for k, o in state.optimizers.items():
        o.load_state_dict(payload["optimizers"][k])
    for k, s in state.schedulers.items():
        s.load_state_dict(payload["schedulers"][k])
    state.ema = payload["ema"]
    if state.scaler is not None and payload["scaler"] is not None:
        state.scaler.load_state_dict(payload["scaler"])
    torch.set_rng_state(payload["rng_torch"])
    if torch.cuda.is_available() and payload["rng_cuda"]:
        torch.cuda.set_rng_state_all(payload["rng_cuda"])
    state.rng.bit_generator.state = payload["rng_numpy"]
    state.step = int(payload["step"])
    return True
