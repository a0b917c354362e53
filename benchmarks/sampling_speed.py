"""Sampling speed and fidelity: the default fast sampler against 1000-step sampling.

End-to-end time per synthetic case (guidance passes and the autoencoder decode included, as
``site-agent generate`` runs it), and each sequence's KID from the fidelity report with its
bootstrap interval, in one run on one machine:

* the default: rectified flow (``rflow``) with the profile's steps, on the rflow-trained model;
* the same rflow network with 1000 Euler steps (same trained network, 1000 steps);
* a DDPM-objective network trained on the same latents (same autoencoder, same steps), sampled
  with DDIM at the default's step count and with the paper's 1000-step ancestral DDPM.

Target (issue 3): default at least 25x faster than DDPM-1000 end to end, with per-sequence KID
no worse than DDPM-1000's within its bootstrap interval. Phantom data checks the machinery.

Run: ``python -m benchmarks.sampling_speed --workspace WS [--n 24]`` on a workspace where
``site-agent train`` has finished (rflow objective).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from shared.atomic import atomic_write_json
from shared.errors import InputError
from shared.weights import load_weights
from site_agent.generative.fidelity_report import write_fidelity_report
from site_agent.generative.pipeline import generate, model_dir, train_generative

SHARED = [
    "cases/real",
    "models/generative/autoencoder",
    "models/generative/holdout.json",
    "work/generative/autoencoder",
    "work/generative/latents",
]


def variant(ws: Path, root: Path, name: str, share_diffusion: bool) -> Path:
    """A workspace sharing ``ws``'s real cases and autoencoder (symlinks), with its own
    synthetic store (and its own diffusion model unless ``share_diffusion``)."""
    v = root / name
    shutil.rmtree(v, ignore_errors=True)
    links = SHARED + (
        ["models/generative/diffusion", "work/generative/diffusion"] if share_diffusion else []
    )
    for rel in links:
        src = ws / rel
        if src.exists():
            (v / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(src.resolve(), v / rel)
    return v


def timed_generate(ws: Path, n: int, sampler: str, steps: int, seed: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    generate(ws, n, 0.4, seed=seed, sampler=sampler, steps=steps)
    seconds = time.perf_counter() - t0
    rep = write_fidelity_report(ws, seed=seed)
    dist = {s: rep["sequences"][s]["distance"] for s in ("t2w", "hbv", "adc")}
    kid = {s: {"kid": d["kid"], "ci": d["kid_ci95"]} for s, d in dist.items()}
    return {
        "sampler": sampler,
        "steps": steps,
        "cases": n,
        "seconds": round(seconds, 2),
        "seconds_per_case": round(seconds / n, 3),
        "kid": kid,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", type=Path, required=True)
    ap.add_argument("--n", type=int, default=24, help="cases per sampler")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--work", type=Path, default=Path("benchmarks/work/sampling"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    ws = args.workspace
    if not (model_dir(ws, "diffusion") / "model.safetensors").is_file():
        raise SystemExit(f"error: no trained diffusion model in {ws} (run site-agent train)")
    _, cfg = load_weights(model_dir(ws, "diffusion"))
    if cfg.get("objective", "rflow") != "rflow":
        raise SystemExit("error: the workspace's model must use the rflow objective")
    from shared.profiles import get_profile

    prof = get_profile(cfg["profile"])
    default_steps = int(cfg.get("sampling_steps", prof.diffusion.sampling_steps))
    torch.manual_seed(args.seed)
    rows = []
    rf = variant(ws, args.work, "rflow", share_diffusion=True)
    rows.append(
        timed_generate(rf, args.n, "rflow", default_steps, args.seed)
        | {"network": "rflow", "role": "default"}
    )
    rf1000 = variant(ws, args.work, "rflow-1000", share_diffusion=True)
    rows.append(
        timed_generate(rf1000, args.n, "rflow", 1000, args.seed)
        | {"network": "rflow", "role": "same network, 1000 steps"}
    )
    dd = variant(ws, args.work, "ddpm-net", share_diffusion=False)
    ddpm_prof = dataclasses.replace(
        prof,
        diffusion=dataclasses.replace(
            prof.diffusion, objective="ddpm", sampler="ddpm", sampling_steps=1000
        ),
    )
    t0 = time.perf_counter()
    train_generative(dd, ddpm_prof, seed=0)
    t_train = time.perf_counter() - t0
    ddim = variant(dd, args.work, "ddim", share_diffusion=True)
    rows.append(
        timed_generate(ddim, args.n, "ddim", default_steps, args.seed)
        | {"network": "ddpm", "role": "DDIM, default step count"}
    )
    ddpm = variant(dd, args.work, "ddpm-1000", share_diffusion=True)
    rows.append(
        timed_generate(ddpm, args.n, "ddpm", 1000, args.seed)
        | {"network": "ddpm", "role": "paper baseline: DDPM 1000 steps"}
    )
    base = rows[-1]
    for r in rows:
        r["speedup_vs_ddpm1000"] = round(base["seconds_per_case"] / r["seconds_per_case"], 2)
        r["kid_within_ddpm1000_interval"] = {
            s: bool(r["kid"][s]["kid"] <= base["kid"][s]["ci"][1]) for s in r["kid"]
        }
    record = {
        "benchmark": "sampling_speed",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPU cores, "
        + ("CUDA" if torch.cuda.is_available() else "no GPU"),
        "profile": prof.name,
        "ddpm_network_training_seconds": round(t_train, 1),
        "target": "default >= 25x faster than DDPM-1000; KID within DDPM-1000's interval",
        "rows": rows,
    }
    atomic_write_json(args.out / "sampling_speed.json", record)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    try:
        main()
    except InputError as exc:
        raise SystemExit(f"error: {exc}") from None
