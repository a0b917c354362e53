"""Sampling cost of a profile's networks, end to end, without a trained workspace.

Times one batch of synthetic cases from noise to decoded images (guidance passes and the
per-sequence autoencoder decode included, as ``site-agent generate`` runs them, under the same
mixed precision on a GPU) for the default fast sampler (rectified flow with the cpu profile's
25 steps) and the paper's 1000-step DDPM, with the *same* network architecture at random
initialisation: a step costs the same whatever the weights, so the ratio is the end-to-end
speed-up. Quality is not measured here; ``benchmarks.sampling_speed`` does that on a trained
workspace. This is how the ``paper`` profile (166M-parameter UNet, 256x256x32 grid) is timed on
a GPU, where training it to convergence is not possible within a benchmark.

Run: ``python -m benchmarks.sampling_cost [--profile paper] [--batch 2] [--guidance 2]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.host import cpus_line
from shared.atomic import atomic_write_json
from shared.profiles import get_profile
from site_agent.generative import autoencoder as ae
from site_agent.generative import diffusion as dm
from site_agent.generative.sampling import SamplerSettings, decode_scaled, sample_latents

FAST = ("rflow", 25)
BASELINE = ("ddpm", 1000)


def time_sampler(
    model_ae: torch.nn.Module,
    den: torch.nn.Module,
    settings: SamplerSettings,
    batch: int,
    latent: tuple[int, ...],
    spacing: list[float],
    dev: torch.device,
) -> dict[str, Any]:
    labels = torch.arange(batch, device=dev) % 2
    sp = torch.tensor([spacing] * batch, device=dev)
    gen = torch.Generator(device=dev)
    gen.manual_seed(0)
    scale = torch.ones(1, latent[0], 1, 1, 1)
    warm = SamplerSettings(settings.sampler, 2, settings.guidance)
    decode_scaled(model_ae, sample_latents(den, warm, labels, sp, latent, gen), scale)
    sync(dev)
    t0 = time.perf_counter()
    z = sample_latents(den, settings, labels, sp, latent, gen)
    sync(dev)
    t1 = time.perf_counter()
    images = decode_scaled(model_ae, z, scale)
    t2 = time.perf_counter()
    assert images.shape[:2] == (batch, 3)
    return {
        "sampler": settings.sampler,
        "steps": settings.steps,
        "guidance": settings.guidance,
        "cases": batch,
        "denoise_s_per_case": round((t1 - t0) / batch, 4),
        "decode_s_per_case": round((t2 - t1) / batch, 4),
        "seconds_per_case": round((t2 - t0) / batch, 4),
    }


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="paper" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=None, help="cases per batch (profile's)")
    ap.add_argument("--guidance", type=float, default=2.0, help="for both samplers")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    prof = get_profile(args.profile)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model_ae = ae.build_autoencoder(prof.autoencoder).to(dev).eval()
    latent = ae.latent_shape(prof.autoencoder, prof.grid)
    den = dm.build_denoiser(prof.diffusion, latent[0]).to(dev).eval()
    batch = args.batch or prof.diffusion.sample_batch_size
    rows = [
        time_sampler(
            model_ae,
            den,
            SamplerSettings(name, steps, args.guidance),
            batch,
            latent,
            list(prof.grid.spacing),
            dev,
        )
        for name, steps in (FAST, BASELINE)
    ]
    fast, base = rows
    gpu = torch.cuda.get_device_name(0) if dev.type == "cuda" else "no GPU"
    record = {
        "benchmark": "sampling_cost",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{cpus_line()}, {gpu}, torch {torch.__version__}",
        "profile": prof.name,
        "weights": "random initialisation (timing only; quality: benchmarks.sampling_speed)",
        "diffusion_parameters": sum(p.numel() for p in den.parameters()),
        "autoencoder_parameters": sum(p.numel() for p in model_ae.parameters()),
        "latent_shape": list(latent),
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if dev.type == "cuda"
        else None,
        "rows": rows,
        "speedup_end_to_end": round(base["seconds_per_case"] / fast["seconds_per_case"], 1),
        "speedup_denoising_only": round(base["denoise_s_per_case"] / fast["denoise_s_per_case"], 1),
        "target": "default >= 25x faster than DDPM-1000 end to end (issue 3)",
    }
    name = f"sampling_cost_{prof.name}_{'gpu' if dev.type == 'cuda' else 'cpu'}.json"
    atomic_write_json(args.out / name, record)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
