"""Sampling speed and fidelity: fast samplers against the paper's 1000-step DDPM (issue 15).

End-to-end time per synthetic case (model loading, guidance passes and the autoencoder decode
included, as ``site-agent generate`` runs it), each sequence's KID from the fidelity report with
its bootstrap interval, and label fidelity (the site's real-trained classifier scoring the
synthetic cases against their conditioning label, AUC with its DeLong interval), in one run on
one machine, for:

* the paper's baseline: a DDPM-objective network trained on the same latents for as many steps
  as the rflow network (same autoencoder), sampled with 1000-step ancestral DDPM, and with DDIM
  at 25 steps;
* the rectified-flow network with Euler steps (25: the default until 2026-12; 10) and with
  Heun's second-order steps (``rflow-heun``: n steps cost 2n - 1 network passes);
* optionally (``--with-rflow-1000``) the same rflow network with 1000 Euler steps.

A sampler passes when every sequence's KID lies within DDPM-1000's 95 % bootstrap interval (or
below it) and its label-fidelity AUC is not below DDPM-1000's interval. The fastest passing
sampler is named ``recommended``; the profile default is the ``default`` row. Target: default
>= 50x faster than DDPM-1000 end to end, passing. The runner's table also holds the default to
the same network's rflow-25 intervals (``figures.same_network_gate``): a DDPM peer trained on a
small site can be poor enough to pass anything. Phantom data checks the machinery.

Run: ``python -m benchmarks.sampling_speed --workspace WS [--n 24]`` on a workspace where
``site-agent train`` has finished (rflow objective).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.figures import SPEEDUP_TARGET
from benchmarks.host import cpus_line
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
    "work/diagnostics",  # the real-trained judge classifier, trained once
]
# (sampler, steps) of the rflow network; the profile default is added when it is not listed
RFLOW_ROWS = [("rflow", 25), ("rflow", 10), ("rflow-heun", 3), ("rflow-heun", 5), ("rflow-heun", 8)]


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


def auc_interval(y: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """AUC with its 95 % DeLong interval (the study's own statistics), clipped to [0, 1]."""
    from coordinator.study.stats import auc, delong_variance

    a, half = auc(y, scores), 1.96 * math.sqrt(delong_variance(y, scores))
    return {"auc": a, "ci": [max(0.0, a - half), min(1.0, a + half)]}


def timed_generate(
    ws: Path, judge_ws: Path, n: int, sampler: str, steps: int, seed: int
) -> dict[str, Any]:
    from site_agent.generative.diagnostics import label_fidelity_scores
    from site_agent.generative.sampling import SamplerSettings

    t0 = time.perf_counter()
    folders = generate(ws, n, 0.5, seed=seed, sampler=sampler, steps=steps)
    seconds = time.perf_counter() - t0
    rep = write_fidelity_report(ws, seed=seed)
    dist = {s: rep["sequences"][s]["distance"] for s in ("t2w", "hbv", "adc")}
    kid = {s: {"kid": d["kid"], "ci": d["kid_ci95"]} for s, d in dist.items()}
    y, scores = label_fidelity_scores(judge_ws, folders, seed=0)
    return {
        "sampler": sampler,
        "steps": steps,
        "network_passes": SamplerSettings(sampler, steps, 1.0).network_passes,
        "cases": n,
        "seconds": round(seconds, 2),
        "seconds_per_case": round(seconds / n, 3),
        "kid": kid,
        "label_fidelity": auc_interval(y, scores),
    }


def judge(rows: list[dict[str, Any]], base: dict[str, Any]) -> None:
    """Speed-up and the quality gates of every row against DDPM-1000, in place."""
    lf_low = base["label_fidelity"]["ci"][0]
    for r in rows:
        r["speedup_vs_ddpm1000"] = round(base["seconds_per_case"] / r["seconds_per_case"], 2)
        r["kid_within_ddpm1000_interval"] = {
            s: bool(r["kid"][s]["kid"] <= base["kid"][s]["ci"][1]) for s in r["kid"]
        }
        r["label_fidelity_within_ddpm1000_interval"] = bool(r["label_fidelity"]["auc"] >= lf_low)
        r["passes"] = all(r["kid_within_ddpm1000_interval"].values()) and bool(
            r["label_fidelity_within_ddpm1000_interval"]
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", type=Path, required=True)
    ap.add_argument("--n", type=int, default=24, help="cases per sampler")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--with-rflow-1000", action="store_true", help="also 1000 Euler steps")
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
    default = (prof.diffusion.sampler, prof.diffusion.sampling_steps)
    plan = list(RFLOW_ROWS) + ([default] if default not in RFLOW_ROWS else [])
    if args.with_rflow_1000:
        plan.append(("rflow", 1000))
    torch.manual_seed(args.seed)
    # One untimed case first: the process's one-time costs (imports, first kernel runs) would
    # otherwise land on whichever row is timed first.
    generate(variant(ws, args.work, "warm-up", share_diffusion=True), 1, 0.5, seed=args.seed)
    rows = []
    for sampler, steps in plan:
        v = variant(ws, args.work, f"{sampler}-{steps}", share_diffusion=True)
        role = "default" if (sampler, steps) == default else "rflow network"
        rows.append(timed_generate(v, ws, args.n, sampler, steps, args.seed) | {
            "network": "rflow", "role": role})  # fmt: skip
    dd = variant(ws, args.work, "ddpm-net", share_diffusion=False)
    train_steps = int(cfg.get("train_steps") or _trained_steps(ws) or prof.diffusion.train_steps)
    ddpm_prof = dataclasses.replace(
        prof,
        diffusion=dataclasses.replace(
            prof.diffusion,
            objective="ddpm",
            sampler="ddpm",
            sampling_steps=1000,
            train_steps=train_steps,
        ),
    )
    t0 = time.perf_counter()
    # The site's autoencoder as is: only the diffusion objective differs between the networks.
    train_generative(
        dd,
        ddpm_prof,
        seed=0,
        autoencoder_weights=model_dir(ws, "autoencoder"),
        freeze_autoencoder=True,
    )
    t_train = time.perf_counter() - t0
    ddim = variant(dd, args.work, "ddim", share_diffusion=True)
    rows.append(
        timed_generate(ddim, ws, args.n, "ddim", 25, args.seed)
        | {"network": "ddpm", "role": "DDIM, 25 steps"}
    )
    ddpm = variant(dd, args.work, "ddpm-1000", share_diffusion=True)
    rows.append(
        timed_generate(ddpm, ws, args.n, "ddpm", 1000, args.seed)
        | {"network": "ddpm", "role": "paper baseline: DDPM 1000 steps"}
    )
    judge(rows, rows[-1])
    passing = [r for r in rows if r["passes"] and r["network"] == "rflow"]
    fastest = min(passing, key=lambda r: r["seconds_per_case"]) if passing else None
    if fastest:
        fastest["recommended"] = True
    record = {
        "benchmark": "sampling_speed",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{cpus_line()}, " + ("CUDA" if torch.cuda.is_available() else "no GPU"),
        "load_average_at_end": round(os.getloadavg()[0], 2),
        "profile": prof.name,
        "diffusion_train_steps": train_steps,
        "ddpm_network_training_seconds": round(t_train, 1),
        "target": f"default >= {SPEEDUP_TARGET:g}x faster than DDPM-1000 end to end; every "
        "sequence's KID within DDPM-1000's interval; label-fidelity AUC not below "
        "DDPM-1000's interval",
        "recommended": None if fastest is None else f"{fastest['sampler']}-{fastest['steps']}",
        "rows": rows,
    }
    atomic_write_json(args.out / "sampling_speed.json", record)
    print(json.dumps(record, indent=2))


def _trained_steps(ws: Path) -> int | None:
    """Diffusion steps the workspace's model was trained for (its training checkpoint)."""
    path = ws / "work" / "generative" / "diffusion" / "checkpoint.pt"
    if not path.is_file():
        return None
    step = torch.load(path, map_location="cpu", weights_only=False).get("step")
    return int(step) if step else None


if __name__ == "__main__":
    try:
        main()
    except InputError as exc:
        raise SystemExit(f"error: {exc}") from None
