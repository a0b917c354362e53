"""The two entry points a CLI or the Python API calls:

* ``train_generative``: autoencoder -> latent cache -> lesion-contrast gate -> diffusion model;
  each stage resumes from its checkpoint and is skipped when its output is already there.
* ``generate``: synthetic cases with a chosen positive fraction into ``WS/cases/synthetic``.

Workspace layout::

    WS/models/generative/autoencoder/   model.safetensors + config.json (may be exported)
    WS/models/generative/diffusion/     EMA weights + config (scale factors, sampler defaults)
    WS/work/generative/{autoencoder,diffusion}/checkpoint.pt   resumable training state
    WS/work/generative/latents/         <case>.safetensors + index.json (never exported)
    WS/reports/generative-training.json summary, including the fidelity report
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.atomic import atomic_write_json
from shared.errors import InputError
from shared.profiles import Profile, get_profile
from shared.weights import load_weights, save_weights
from site_agent.generative import autoencoder as ae
from site_agent.generative import diffusion as dm
from site_agent.generative import distributed
from site_agent.generative.checkpoint import training_fields
from site_agent.generative.data import check_store, holdout_split, load_training_set, real_store
from site_agent.generative.fidelity import check_retention, describe
from site_agent.generative.latents import (
    LatentCache,
    build_cache,
    cache_array,
    load_cache,
    sha256_file,
)
from site_agent.generative.layout import (
    WEIGHTS,
    holdout_path,
    model_dir,
    synthetic_store,
    work_dir,
)
from site_agent.generative.sampling import (
    SamplerSettings,
    decode_scaled,
    plan_labels,
    sample_latents,
    write_batch,
)
from site_agent.generative.trainloop import Progress, precision_name


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _profile(profile: Profile | str) -> Profile:
    return get_profile(profile) if isinstance(profile, str) else profile


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _saved_config(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None


def _last_loss(progress: Progress | None, record: dict[str, float]) -> Progress:
    def cb(stage: str, step: int, total: int, loss: float | None) -> None:
        if loss is not None:
            record[stage] = loss
        if progress:
            progress(stage, step, total, loss)

    return cb


def train_generative(
    workspace: Path,
    profile: Profile | str,
    seed: int = 0,
    progress: Progress | None = None,
    autoencoder_weights: Path | None = None,
    *,
    freeze_autoencoder: bool = False,
    min_retention: float | None = None,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Train the site's generative model on ``WS/cases/real``; returns a summary dict.

    ``autoencoder_weights``: a local weights folder or file to start the autoencoder from
    (fine-tuned for the profile's steps, or used as is with ``freeze_autoencoder``).
    ``min_retention`` overrides the profile's lesion-contrast gate (0 turns it off).
    Re-running continues where a killed run stopped and skips finished stages.
    """
    prof = _profile(profile)
    if freeze_autoencoder and autoencoder_weights is None:
        raise InputError("freeze_autoencoder needs autoencoder_weights (a local weights path)")
    dist = distributed.setup()  # a no-op unless started by torchrun
    device = device or (distributed.device_for(dist) if dist.active else default_device())
    spec_ae, spec_dm = prof.autoencoder, prof.diffusion
    store = real_store(workspace)
    check_store(store, prof, spec_dm.min_cases, spec_dm.min_per_class)
    ae.latent_shape(spec_ae, prof.grid)  # the grid must suit the autoencoder
    if spec_dm.objective not in dm.OBJECTIVES:
        raise InputError(f"diffusion objective must be one of {dm.OBJECTIVES}")
    everything = load_training_set(store)
    train_idx, held_idx = holdout_split(
        everything.labels, spec_dm.holdout_fraction, seed, keep_at_least=spec_dm.min_per_class
    )
    data = everything.subset(train_idx)
    if dist.is_main:  # the privacy screen calibrates on these; they never train anything
        atomic_write_json(
            holdout_path(workspace),
            {"held_out": [everything.case_ids[i] for i in held_idx]},
        )
    losses: dict[str, float] = {}
    cb = _last_loss(progress, losses)
    summary: dict[str, Any] = {
        "profile": prof.name,
        "seed": seed,
        "device": str(device),
        "precision": precision_name(device),
        "processes": dist.world,
    }
    n_pos, n_neg = int((data.labels == 1).sum()), int((data.labels == 0).sum())
    summary["cases"] = {
        "total": len(data),
        "positive": n_pos,
        "negative": n_neg,
        "held_out": len(held_idx),
    }
    timings: dict[str, float] = {}

    # 1. autoencoder
    t0 = time.perf_counter()
    ae_dir = model_dir(workspace, "autoencoder")
    ae_cfg = ae.autoencoder_config(spec_ae) | {
        "profile": prof.name,
        "train": _digest(
            {
                "seed": seed,
                "cases": data.case_ids,
                "spec": training_fields(spec_ae, ae.NOT_TRAINING),
                "pretrained": None if autoencoder_weights is None else str(autoencoder_weights),
                "frozen": freeze_autoencoder,
            }
        ),
    }
    if _saved_config(ae_dir) == ae_cfg:
        model_ae = ae.build_autoencoder(spec_ae)
        model_ae.load_state_dict(load_weights(ae_dir)[0])
        status = "reused"
    elif freeze_autoencoder and autoencoder_weights is not None:
        model_ae = ae.build_autoencoder(spec_ae)
        ae.load_pretrained(model_ae, autoencoder_weights)
        _save_on_main(ae_dir, model_ae.state_dict(), ae_cfg)
        status = "frozen"
    else:
        model_ae = ae.train_autoencoder(
            data,
            spec_ae,
            work_dir(workspace, "autoencoder"),
            seed,
            cb,
            autoencoder_weights,
            device,
        )
        _save_on_main(ae_dir, model_ae.state_dict(), ae_cfg)
        status = "trained"
    model_ae = model_ae.to(device).eval()
    ae_sha = sha256_file(ae_dir / WEIGHTS)
    timings["autoencoder"] = time.perf_counter() - t0
    summary["autoencoder"] = {
        "status": status,
        "sha256": ae_sha,
        "final_loss": losses.get("autoencoder"),
    }

    # 2. latent cache (+ fidelity measured on the decoded means)
    t0 = time.perf_counter()
    lat_dir = work_dir(workspace, "latents")
    cache = load_cache(lat_dir, ae_sha, data.case_ids)
    reused = cache is not None
    if cache is None:
        if dist.is_main:  # one writer; the other ranks read what it wrote
            cache = build_cache(model_ae, data, lat_dir, ae_sha, cb, device=device)
        distributed.barrier()
        if not dist.is_main:
            cache = load_cache(lat_dir, ae_sha, data.case_ids)
    assert cache is not None
    timings["latents"] = time.perf_counter() - t0
    summary["latents"] = {
        "status": "reused" if reused else "encoded",
        "shape": cache.index["latent_shape"],
        "scale_factors": cache.scale_factors,
    }

    # 3. lesion-contrast gate
    gate = spec_ae.min_contrast_retention if min_retention is None else min_retention
    summary["fidelity"] = cache.fidelity.to_dict() | {
        "summary": describe(cache.fidelity),
        "min_retention": gate,
        "gated_sequences": list(spec_ae.gated_sequences),
    }
    _write_report(workspace, summary, timings)
    check_retention(cache.fidelity, gate, spec_ae.gated_sequences)

    # 4. diffusion model
    t0 = time.perf_counter()
    summary["diffusion"] = _train_or_reuse_diffusion(
        workspace, prof, cache, data.labels, data.spacing, seed, ae_sha, cb, device
    )
    summary["diffusion"]["final_loss"] = losses.get("diffusion")
    timings["diffusion"] = time.perf_counter() - t0
    _write_report(workspace, summary, timings)
    return summary | {"seconds": timings}


def _write_report(workspace: Path, summary: dict[str, Any], timings: dict[str, float]) -> None:
    if distributed.current().is_main:
        atomic_write_json(
            workspace / "reports" / "generative-training.json", summary | {"seconds": timings}
        )


def _save_on_main(folder: Path, state: dict[str, Any], config: dict[str, Any]) -> None:
    """Write weights from rank 0 only; every rank continues once they are on disk."""
    if distributed.current().is_main:
        save_weights(folder, state, config)
    distributed.barrier()


def _train_or_reuse_diffusion(
    workspace: Path,
    prof: Profile,
    cache: LatentCache,
    labels: np.ndarray,
    spacing: np.ndarray,
    seed: int,
    ae_sha: str,
    progress: Progress,
    device: torch.device,
) -> dict[str, Any]:
    spec = prof.diffusion
    keep = labels >= 0  # unlabelled cases train the autoencoder only
    latents = cache_array(cache)[keep]
    y, sp = labels[keep], spacing[keep]
    dm_dir = model_dir(workspace, "diffusion")
    cfg = dm.diffusion_config(spec, latents.shape[1]) | {
        "profile": prof.name,
        "latent_shape": list(latents.shape[1:]),
        "scale_factors": cache.scale_factors,
        "autoencoder_sha256": ae_sha,
        "sampler": spec.sampler,
        "sampling_steps": spec.sampling_steps,
        "guidance_scale": spec.guidance_scale,
        "train": _digest(
            {
                "seed": seed,
                "spec": training_fields(spec, dm.NOT_TRAINING),
                "latents": cache.index,
            }
        ),
    }
    saved = _saved_config(dm_dir)
    if saved is not None and saved.get("train") == cfg["train"]:
        if saved != cfg:  # only the sampling defaults changed: keep the weights
            _save_on_main(dm_dir, load_weights(dm_dir)[0], cfg)
        return {"status": "reused", "sha256": sha256_file(dm_dir / WEIGHTS)}
    _, ema = dm.train_diffusion(
        latents, y, sp, spec, work_dir(workspace, "diffusion"), seed, progress, device
    )
    _save_on_main(dm_dir, ema, cfg)
    return {"status": "trained", "sha256": sha256_file(dm_dir / WEIGHTS), "cases": int(len(y))}


def load_models(
    workspace: Path, device: torch.device | None = None
) -> tuple[torch.nn.Module, torch.nn.Module, dict[str, Any], Profile]:
    """(autoencoder, denoiser with EMA weights, diffusion config, profile) from a workspace."""
    device = device or default_device()
    dm_dir = model_dir(workspace, "diffusion")
    ae_dir = model_dir(workspace, "autoencoder")
    if not (dm_dir / WEIGHTS).is_file() or not (ae_dir / WEIGHTS).is_file():
        raise InputError(
            f"no trained generative model in {workspace}",
            hint="run the generative training (train_generative / site-agent train) first",
        )
    dm_state, cfg = load_weights(dm_dir)
    ae_state, _ = load_weights(ae_dir)
    prof = get_profile(cfg["profile"])
    if sha256_file(ae_dir / WEIGHTS) != cfg["autoencoder_sha256"]:
        raise InputError(
            "the diffusion model was trained on another autoencoder's latents",
            hint="retrain the diffusion model (delete models/generative/diffusion)",
        )
    model_ae = ae.build_autoencoder(prof.autoencoder)
    model_ae.load_state_dict(ae_state)
    den = dm.build_denoiser(prof.diffusion, int(cfg["in_channels"]))
    den.load_state_dict(dm_state)
    return model_ae.to(device).eval(), den.to(device).eval(), cfg, prof


def generate(
    workspace: Path,
    n: int,
    positive_fraction: float,
    seed: int = 0,
    sampler: str | None = None,
    guidance: float | None = None,
    steps: int | None = None,
    progress: Progress | None = None,
    device: torch.device | None = None,
    out: Path | None = None,
) -> list[Path]:
    """Write ``n`` synthetic cases (round(n * positive_fraction) positive) into ``out``
    (default ``WS/cases/synthetic``); returns their folders.

    Defaults (sampler, steps, guidance) come from the profile the model was trained with;
    ``sampler="ddpm", steps=1000`` is the paper's baseline for a DDPM-trained model. Batches
    are seeded by (seed, batch index) and written atomically, so a rerun after a kill skips
    the finished batches and produces the same cases. Provenance records model hashes,
    sampler, steps, guidance and seed, never a training case id.
    """
    device = device or default_device()
    model_ae, den, cfg, prof = load_models(workspace, device)
    settings = SamplerSettings(
        sampler or cfg["sampler"],
        int(steps or (cfg["sampling_steps"] if sampler in (None, cfg["sampler"]) else 50)),
        float(cfg["guidance_scale"] if guidance is None else guidance),
    )
    settings.check(cfg["objective"])
    labels = plan_labels(n, positive_fraction, seed)
    dm_sha = sha256_file(model_dir(workspace, "diffusion") / WEIGHTS)
    provenance = {
        "generator": "latent-diffusion",
        "autoencoder_sha256": cfg["autoencoder_sha256"],
        "diffusion_sha256": dm_sha,
        "sampler": settings.sampler,
        "steps": settings.steps,
        "guidance": settings.guidance,
        "seed": seed,
        "profile": prof.name,
        "torch": torch.__version__,
    }
    per = int(cfg["in_channels"]) // 3
    scale = torch.tensor(
        [cfg["scale_factors"][s] for s in ("t2w", "hbv", "adc") for _ in range(per)]
    ).reshape(1, -1, 1, 1, 1)
    out = synthetic_store(workspace) if out is None else out
    # Ids depend on every choice that shapes the cases, so a rerun with other settings never
    # mistakes earlier cases for its own finished batches.
    run = _digest([seed, n, positive_fraction, settings.sampler, settings.steps, settings.guidance])
    run_tag = f"syn-{dm_sha[:8]}-{run[:8]}"
    bs = max(1, prof.diffusion.sample_batch_size)
    folders: list[Path] = []
    for b0 in range(0, n, bs):
        ids = [f"{run_tag}-{i:05d}" for i in range(b0, min(n, b0 + bs))]
        if all((out / c / "case.json").is_file() for c in ids):
            folders += [out / c for c in ids]
        else:
            y = labels[b0 : b0 + len(ids)]
            gen = torch.Generator(device=device)
            gen.manual_seed(int(np.random.SeedSequence([seed, b0]).generate_state(1)[0]))
            z = sample_latents(
                den,
                settings,
                torch.from_numpy(y).to(device),
                torch.tensor([list(prof.grid.spacing)] * len(ids), device=device),
                tuple(cfg["latent_shape"]),
                gen,
            )
            images = decode_scaled(model_ae, z, scale)
            folders += write_batch(out, images, y, ids, prof, provenance)
        if progress:
            progress("sampling", len(folders), n, None)
    return folders
