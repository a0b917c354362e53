"""Sampling: latents with classifier-free guidance (rectified flow with Euler or Heun steps,
DDPM ancestral or DDIM), decoding per sequence, and writing synthetic cases in the common case
format."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.case_format import SEQUENCES, CaseMeta, Label, write_case
from shared.errors import InputError
from shared.profiles import Profile
from shared.volume import Volume
from site_agent.generative.autoencoder import decode_latents
from site_agent.generative.diffusion import NULL_CLASS, NUM_TRAIN_TIMESTEPS, ddpm_scheduler
from site_agent.generative.trainloop import autocast

# sampler -> objective it needs
SAMPLERS = {"rflow": "rflow", "rflow-heun": "rflow", "ddpm": "ddpm", "ddim": "ddpm"}
CLIP = {"t2w": (0.0, 3.0), "hbv": (0.0, 3.0), "adc": (0.0, 1.0)}


@dataclass(frozen=True)
class SamplerSettings:
    sampler: str  # "rflow", "rflow-heun", "ddpm" or "ddim"
    steps: int  # solver steps (Heun: two network passes per step except the last)
    guidance: float  # 1.0 = conditional only, no guidance; > 1 stronger label

    def check(self, objective: str) -> None:
        if self.sampler not in SAMPLERS:
            raise InputError(f"unknown sampler {self.sampler!r}", hint=", ".join(SAMPLERS))
        if SAMPLERS[self.sampler] != objective:
            fits = [k for k, v in SAMPLERS.items() if v == objective]
            raise InputError(
                f"sampler {self.sampler} does not fit a model trained with {objective}",
                hint=f"use {' or '.join(fits)}",
            )
        if not 1 <= self.steps <= NUM_TRAIN_TIMESTEPS:
            raise InputError(f"steps must be 1..{NUM_TRAIN_TIMESTEPS}, not {self.steps}")

    @property
    def network_passes(self) -> int:
        """Network evaluations per case (a guided evaluation counts once; it is one batch)."""
        return 2 * self.steps - 1 if self.sampler == "rflow-heun" else self.steps


def _guided(model, x, t, labels, spacing, guidance: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + g * (cond - uncond), both in one batch."""
    b = x.shape[0]
    tt = torch.full((b,), float(t), device=x.device)
    if guidance == 1.0:
        with autocast(x.device):  # bf16/fp16 on CUDA; the state x stays float32
            return model(x, tt, labels, spacing).float()
    null = torch.full_like(labels, NULL_CLASS)
    with autocast(x.device):
        out = model(
            torch.cat([x, x]),
            torch.cat([tt, tt]),
            torch.cat([labels, null]),
            torch.cat([spacing] * 2),
        ).float()
    cond, uncond = out[:b], out[b:]
    return uncond + guidance * (cond - uncond)


@torch.no_grad()
def sample_latents(
    model: torch.nn.Module,
    settings: SamplerSettings,
    labels: torch.Tensor,
    spacing: torch.Tensor,
    shape: tuple[int, ...],
    generator: torch.Generator,
    on_step: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Scaled latents (B, *shape) for ``labels`` (B,) and ``spacing`` (B, 3) mm.

    Rectified flow integrates dx/dt on t = T, T(1 - 1/n), ..., 0 (the grid of
    ``RFlowScheduler.set_timesteps``, kept in float32: its float16 rounding and int cast of the
    next timestep would shorten steps), with Euler steps (``rflow``) or Heun's second-order
    steps (``rflow-heun``: the trapezoid of the velocity at both ends of a step, Euler on the
    last step as in Karras et al. 2022, so n steps cost 2n - 1 network passes). The guided
    velocity is what is integrated, so guidance enters both of Heun's evaluations.
    """
    model.eval()
    b = labels.shape[0]
    x = torch.randn((b, *shape), generator=generator, device=generator.device)
    if settings.sampler in ("rflow", "rflow-heun"):
        heun = settings.sampler == "rflow-heun"
        ts = torch.linspace(float(NUM_TRAIN_TIMESTEPS), 0.0, settings.steps + 1)
        for i in range(settings.steps):
            dt = float(ts[i] - ts[i + 1]) / NUM_TRAIN_TIMESTEPS
            v = _guided(model, x, ts[i], labels, spacing, settings.guidance)
            if heun and i < settings.steps - 1:
                v_end = _guided(model, x + v * dt, ts[i + 1], labels, spacing, settings.guidance)
                v = 0.5 * (v + v_end)
            x = x + v * dt
            if on_step:
                on_step(i + 1)
        return x
    sched = ddpm_scheduler(settings.sampler)
    sched.set_timesteps(settings.steps)
    for i, t in enumerate(sched.timesteps):
        eps = _guided(model, x, t, labels, spacing, settings.guidance)
        x, _ = sched.step(eps, int(t), x, generator=generator)
        if on_step:
            on_step(i + 1)
    return x


def synthetic_affine(profile: Profile) -> np.ndarray:
    """Axis-aligned LPS affine on the profile grid, centred on the origin."""
    sp = np.asarray(profile.grid.spacing, dtype=np.float64)
    size = np.asarray(profile.grid.size, dtype=np.float64)
    aff = np.diag([*sp, 1.0])
    aff[:3, 3] = -sp * (size - 1) / 2.0
    return aff


def plan_labels(n: int, positive_fraction: float, seed: int) -> np.ndarray:
    """round(n * positive_fraction) positives, shuffled with ``seed``."""
    if n < 1:
        raise InputError(f"number of cases must be at least 1, not {n}")
    if not 0.0 <= positive_fraction <= 1.0:
        raise InputError(f"positive fraction must be in [0, 1], not {positive_fraction}")
    n_pos = round(n * positive_fraction)
    y = np.array([1] * n_pos + [0] * (n - n_pos), dtype=np.int64)
    return np.random.default_rng(seed).permutation(y)


def write_batch(
    out: Path,
    images: np.ndarray,
    labels: np.ndarray,
    case_ids: list[str],
    profile: Profile,
    provenance: dict[str, Any],
) -> list[Path]:
    """Write decoded (B, 3, X, Y, Z) images as synthetic cases; returns their folders."""
    affine = synthetic_affine(profile)
    folders = []
    for (
        img,
        y,
        cid,
    ) in zip(images, labels, case_ids, strict=True):
        vols = {
            s: Volume(np.clip(img[i], *CLIP[s]).astype(np.float32), affine)
            for i, s in enumerate(SEQUENCES)
        }
        meta = CaseMeta(
            case_id=cid,
            origin="synthetic",
            label=Label(cspca=int(y), source="generated"),
            grid_size=list(profile.grid.size),
            grid_spacing=list(profile.grid.spacing),
            profile=profile.name,
            intensity={
                "t2w": {"method": "percentile", "clip": [0.0, 3.0]},
                "hbv": {"method": "percentile", "clip": [0.0, 3.0]},
                "adc": {"method": "fixed", "unit": "um2/s", "range": [0.0, 3000.0]},
            },
            provenance=dict(provenance),
        )
        write_case(out / cid, meta, vols)
        folders.append(out / cid)
    return folders


def decode_scaled(
    autoencoder: torch.nn.Module, latents: torch.Tensor, channel_scale: torch.Tensor
) -> np.ndarray:
    """Undo the per-sequence scale factors and decode each sequence: (B, 3, X, Y, Z)."""
    z = latents / channel_scale.to(latents.device)
    with torch.no_grad(), autocast(z.device):
        return decode_latents(autoencoder, z).float().cpu().numpy()
