"""Latent diffusion model: MONAI's MAISI ``DiffusionModelUNetMaisi`` conditioned on the csPCa
label (class embedding with a null class for classifier-free guidance) and on the voxel
spacing (its spacing MLP, added to the timestep embedding as in CCELLA++).

Objectives: rectified flow (``rflow``, default; MONAI ``RFlowScheduler``, velocity target
x0 - noise, logit-normal timesteps) or DDPM (``ddpm``, the paper's; epsilon target, scaled
linear betas 0.0015-0.0195, 1000 steps).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from shared.errors import InputError
from shared.profiles import DiffusionSpec
from site_agent.generative import distributed
from site_agent.generative.checkpoint import TrainState, training_fields
from site_agent.generative.data import balanced_batch
from site_agent.generative.trainloop import (
    Progress,
    autocast,
    backward_step,
    ensure_finite,
    init_ema,
    make_scaler,
    run_training,
    update_ema,
    warmup_scheduler,
)

NUM_TRAIN_TIMESTEPS = 1000
NULL_CLASS = 2  # label index meaning "no label" (classifier-free guidance)
OBJECTIVES = ("rflow", "ddpm")
# Spec fields that do not change the trained weights (sampling defaults, data minimums).
NOT_TRAINING = (
    "sampler",
    "sampling_steps",
    "guidance_scale",
    "min_cases",
    "min_per_class",
    "sample_batch_size",
    "checkpoint_every",
)


class LatentDenoiser(torch.nn.Module):
    """The UNet plus zero-cost padding: latents are padded (replicate) to a multiple of the
    UNet's downsampling factor and the output cropped back, so any latent grid works."""

    def __init__(self, unet: torch.nn.Module, levels: int) -> None:
        super().__init__()
        self.unet = unet
        self.factor = 2 ** (levels - 1)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        labels: torch.Tensor,
        spacing: torch.Tensor,
    ) -> torch.Tensor:
        size = x.shape[2:]
        pad: list[int] = []
        for s in reversed(size):
            pad += [0, (-s) % self.factor]
        xp = F.pad(x, pad, mode="replicate") if any(pad) else x
        out = self.unet(x=xp, timesteps=timesteps, class_labels=labels, spacing_tensor=spacing)
        return out[..., : size[0], : size[1], : size[2]]


def diffusion_config(spec: DiffusionSpec, latent_channels: int) -> dict[str, Any]:
    return {
        "kind": "diffusion",
        "network": "monai.apps.generation.maisi.networks.diffusion_model_unet_maisi."
        "DiffusionModelUNetMaisi",
        "in_channels": latent_channels,
        "channels": list(spec.channels),
        "attention_levels": list(spec.attention_levels),
        "num_head_channels": spec.num_head_channels,
        "num_res_blocks": spec.num_res_blocks,
        "norm_num_groups": spec.norm_num_groups,
        "num_class_embeds": 3,
        "null_class": NULL_CLASS,
        "objective": spec.objective,
        "num_train_timesteps": NUM_TRAIN_TIMESTEPS,
    }


def build_denoiser(spec: DiffusionSpec, latent_channels: int) -> LatentDenoiser:
    from monai.apps.generation.maisi.networks.diffusion_model_unet_maisi import (
        DiffusionModelUNetMaisi,
    )

    if spec.objective not in OBJECTIVES:
        raise InputError(f"diffusion objective must be one of {OBJECTIVES}, not {spec.objective}")
    unet = DiffusionModelUNetMaisi(
        spatial_dims=3,
        in_channels=latent_channels,
        out_channels=latent_channels,
        num_res_blocks=spec.num_res_blocks,
        num_channels=tuple(spec.channels),
        attention_levels=tuple(spec.attention_levels),
        norm_num_groups=spec.norm_num_groups,
        num_head_channels=spec.num_head_channels,
        num_class_embeds=3,
        include_spacing_input=True,
    )
    return LatentDenoiser(unet, len(spec.channels))


def make_train_scheduler(objective: str) -> Any:
    if objective == "rflow":
        from monai.networks.schedulers import RFlowScheduler

        return RFlowScheduler(
            num_train_timesteps=NUM_TRAIN_TIMESTEPS,
            use_discrete_timesteps=False,
            sample_method="logit-normal",
            use_timestep_transform=False,
        )
    return ddpm_scheduler()


def ddpm_scheduler(kind: str = "ddpm") -> Any:
    """The paper's DDPM noise schedule; ``kind="ddim"`` gives a DDIM sampler on the same one."""
    from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

    args = {
        "num_train_timesteps": NUM_TRAIN_TIMESTEPS,
        "schedule": "scaled_linear_beta",
        "beta_start": 0.0015,
        "beta_end": 0.0195,
        "clip_sample": False,
    }
    return DDIMScheduler(**args) if kind == "ddim" else DDPMScheduler(**args)


def diffusion_loss(
    model: torch.nn.Module,
    scheduler: Any,
    objective: str,
    x0: torch.Tensor,
    labels: torch.Tensor,
    spacing: torch.Tensor,
    loss: str = "mse",
    part: slice | None = None,
) -> torch.Tensor:
    """Training loss of one batch of scaled latents (noise and timesteps from torch's RNG).

    Noise and timesteps are drawn for the whole batch; only ``part`` of it goes through the
    model (a DDP rank's shard), so every rank consumes the random streams identically.
    """
    noise = torch.randn_like(x0)
    if objective == "rflow":
        t = scheduler.sample_timesteps(x0).float()
        target = x0 - noise
    else:
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (x0.shape[0],), device=x0.device)
        target = noise
    xt = scheduler.add_noise(original_samples=x0, noise=noise, timesteps=t)
    if part is not None:
        xt, t, target, labels, spacing = (
            xt[part],
            t[part],
            target[part],
            labels[part],
            spacing[part],
        )
    pred = model(xt, t, labels, spacing).float()
    return F.l1_loss(pred, target) if loss == "l1" else F.mse_loss(pred, target)


def train_diffusion(
    latents: np.ndarray,
    labels: np.ndarray,
    spacing: np.ndarray,
    spec: DiffusionSpec,
    folder: Path,
    seed: int,
    progress: Progress | None = None,
    device: torch.device | None = None,
) -> tuple[LatentDenoiser, dict[str, torch.Tensor]]:
    """Train (or resume) the denoiser on scaled latents (N, C, x, y, z) of labelled cases
    (labels 0/1, spacing (N, 3) mm). Class-balanced batches, label dropout to the null class,
    AdamW with warm-up, gradient clipping, EMA. Returns (model, EMA state dict)."""
    device = device or torch.device("cpu")
    torch.manual_seed(seed)
    model = build_denoiser(spec, latents.shape[1]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=1e-4)
    state = TrainState(
        {"model": model},
        {"model": opt},
        {"model": warmup_scheduler(opt, min(100, max(1, spec.train_steps // 10)))},
        rng=np.random.default_rng(seed),
        ema=init_ema(model),
        scaler=make_scaler(device),
    )
    sched = make_train_scheduler(spec.objective)

    net = distributed.wrap(model)

    def step(st: TrainState) -> float:
        idx = balanced_batch(st.rng, labels, spec.batch_size)
        part, weight = distributed.shard(len(idx))
        y = labels[idx].copy()
        y[st.rng.random(len(idx)) < spec.label_dropout] = NULL_CLASS
        x0 = torch.from_numpy(latents[idx]).to(device)
        if spec.flip_augment:  # axis 2 of (B, C, x, y, z) runs right to left (LPS)
            flip = torch.from_numpy(st.rng.random(len(idx)) < 0.5).to(device)
            x0 = torch.where(flip[:, None, None, None, None], x0.flip(2), x0)
        model.train()
        with autocast(device):
            loss = diffusion_loss(
                net,
                sched,
                spec.objective,
                x0,
                torch.from_numpy(y).to(device),
                torch.from_numpy(spacing[idx]).to(device),
                spec.loss,
                part,
            )
        ensure_finite(loss)
        backward_step(loss * weight, model, opt, st.scaler, spec.grad_clip)
        st.schedulers["model"].step()
        assert st.ema is not None
        update_ema(st.ema, model, spec.ema_decay, st.step)
        return float(loss.detach())

    config = {
        "stage": "diffusion",
        "seed": seed,
        "spec": training_fields(spec, NOT_TRAINING),
        "n": len(latents),
        "latents_sha256": _array_digest(latents, labels, spacing),
    }
    run_training(
        "diffusion", state, step, spec.train_steps, folder, config, spec.checkpoint_every, progress
    )
    assert state.ema is not None
    return model.eval(), state.ema


def _array_digest(*arrays: np.ndarray) -> str:
    import hashlib

    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()
