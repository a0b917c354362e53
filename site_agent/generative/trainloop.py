"""The resumable training loop shared by the autoencoder and the diffusion model: checkpoints
every N steps and at the end, resume after a kill, a clear stop on a non-finite loss, EMA,
gradient clipping, bf16/fp16 mixed precision on CUDA (and bf16 on AMX CPUs when asked for)."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch

from shared.errors import InputError
from site_agent.generative import distributed
from site_agent.generative.checkpoint import (
    CHECKPOINT_FILE,
    TrainState,
    checkpoint_step,
    load_checkpoint,
    save_checkpoint,
)


class Progress(Protocol):
    """Called after every step: (stage, step, total, loss); loss is None for non-training
    stages (encoding, sampling) and for the one call that announces a resumed training stage
    (step = the checkpoint's step), made before its first new step."""

    def __call__(self, stage: str, step: int, total: int, loss: float | None) -> None: ...


class NonFiniteLossError(Exception):
    """Raised by a step function before it updates any weight."""

    def __init__(self, value: float) -> None:
        super().__init__(f"loss is {value}")
        self.value = value


def ensure_finite(loss: torch.Tensor) -> None:
    ok = bool(torch.isfinite(loss.detach()).all())
    if not distributed.all_true(ok, loss.device):  # every DDP rank stops together
        raise NonFiniteLossError(float(loss.detach().float().mean()))


# "auto" (the default): bf16 autocast on CUDA (fp16 on cards without bf16) and on CPUs with
# native bf16 (AMX: 2x faster training there), float32 on other CPUs (emulated bf16 gains
# nothing); "bf16": the same; "fp32": float32 everywhere. CPU bf16 was opt-in from 2026-12-06
# on one synthetic-value draw per precision; paired over 3 generator seeds on the full demo's
# aurora site (benchmarks/results/precision-pairs-2026-12-07/) bf16 training stayed within
# float32's seed-to-seed spread on every measure comparable across runs (label fidelity 0.736
# vs 0.707, lesion-contrast retention 76/78/75 % vs 76/77/76 %), so it is the default again.
PRECISION_ENV = "SITE_AGENT_PRECISION"
PRECISIONS = ("auto", "fp32", "bf16")


def _precision_choice() -> str:
    choice = os.environ.get(PRECISION_ENV, "auto").strip().lower() or "auto"
    if choice not in PRECISIONS:
        raise InputError(f"${PRECISION_ENV} must be one of {', '.join(PRECISIONS)}, not {choice!r}")
    return choice


def cpu_native_bf16() -> bool:
    """True where the CPU has AMX bf16 tiles: oneDNN then runs this project's 3D networks
    2-2.6x faster in bf16 than in fp32 (cpu profile, 2 cores: autoencoder step 0.34 -> 0.13 s,
    diffusion step 0.37 -> 0.18 s). Without them bf16 is emulated and no faster."""
    try:
        return bool(torch.cpu.get_capabilities().get("amx_bf16", False))
    except (AttributeError, RuntimeError):  # older torch, or no cpuinfo
        return False


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the generative networks on ``device``: bf16 on GPUs that support
    it, else fp16; on CPU bf16 where the CPU has native bf16 (``cpu_native_bf16``), else None
    (full precision); None everywhere when ``$SITE_AGENT_PRECISION`` is fp32. Weights,
    optimiser state and losses stay float32 either way."""
    choice = _precision_choice()
    if choice == "fp32":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_native_bf16():
        return torch.bfloat16
    return None


def precision_name(device: torch.device) -> str:
    """What ``autocast`` runs on ``device``, for run records: bfloat16, float16 or float32."""
    return str(amp_dtype(device) or torch.float32).removeprefix("torch.")


@contextlib.contextmanager
def autocast(device: torch.device) -> Iterator[None]:
    dtype = amp_dtype(device)
    if dtype is None:
        yield
    else:
        with torch.autocast(device.type, dtype=dtype):
            yield


def make_scaler(device: torch.device) -> Any:
    """A GradScaler for CUDA fp16 only (bf16 and CPU need none)."""
    if device.type == "cuda" and amp_dtype(device) == torch.float16:
        return torch.amp.GradScaler("cuda")
    return None


def backward_step(
    loss: torch.Tensor,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: Any,
    grad_clip: float,
) -> None:
    """Backward, clip the gradient norm to ``grad_clip`` (0 = no clipping), optimizer step."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()


def init_ema(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().float() for k, v in module.state_dict().items()}


def update_ema(
    ema: dict[str, torch.Tensor], module: torch.nn.Module, decay: float, step: int
) -> None:
    """EMA with the usual warm-up: decay_t = min(decay, (1 + step) / (10 + step))."""
    d = min(decay, (1.0 + step) / (10.0 + step))
    with torch.no_grad():
        for k, v in module.state_dict().items():
            if v.dtype.is_floating_point:
                ema[k].mul_(d).add_(v.detach().float(), alpha=1.0 - d)
            else:
                ema[k].copy_(v)


def warmup_scheduler(optimizer: torch.optim.Optimizer, warmup: int) -> Any:
    """Linear warm-up over ``warmup`` steps, then the constant base learning rate."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(1, warmup))
    )


def cosine_scheduler(optimizer: torch.optim.Optimizer, total: int, final: float) -> Any:
    """Cosine decay of the learning rate from its base value to ``final`` x base at ``total``."""

    def factor(s: int) -> float:
        t = min(1.0, s / max(1, total))
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def run_training(
    stage: str,
    state: TrainState,
    step_fn: Callable[[TrainState], float],
    total_steps: int,
    folder: Path,
    config: dict[str, Any],
    checkpoint_every: int,
    progress: Progress | None = None,
) -> TrainState:
    """Run ``step_fn`` until ``total_steps``, resuming from ``folder/checkpoint.pt`` when it
    holds a checkpoint of the same ``config``.

    A checkpoint is written atomically every ``checkpoint_every`` steps and at the end. A
    non-finite loss stops the run with an ``InputError``; the last good checkpoint stays.
    """
    path = folder / CHECKPOINT_FILE
    load_checkpoint(path, state, config)
    if progress and state.step:
        progress(stage, state.step, total_steps, None)
    while state.step < total_steps:
        try:
            loss = step_fn(state)
        except NonFiniteLossError as exc:
            kept = checkpoint_step(path)
            where = f"the checkpoint of step {kept} is kept" if kept else "no checkpoint yet"
            raise InputError(
                f"{stage} training stopped at step {state.step + 1}: {exc} ({where})",
                hint="lower the learning rate or check the input intensities; a rerun resumes "
                "from the kept checkpoint",
            ) from None
        state.step += 1
        if progress:
            progress(stage, state.step, total_steps, loss)
        due = state.step % max(1, checkpoint_every) == 0 or state.step == total_steps
        if due and distributed.current().is_main:  # one writer; every rank holds the state
            save_checkpoint(path, state, config)
    distributed.barrier()
    return state
