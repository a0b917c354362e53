"""Generative training cost: throughput and peak memory per training step, per profile.

For each profile, in a fresh subprocess (so peak memory is its own): parameter counts of the
autoencoder and the diffusion UNet, seconds per autoencoder step and per diffusion step at the
profile's batch size (latent volumes per second), and the peak resident memory. Inputs are
random tensors of the profile's shapes: the cost does not depend on the content. The ``paper``
profile runs one step per network at the largest batch that fits (tried from the profile's
batch downwards) — on a GPU when one is present, else on this CPU within its memory. On a GPU
the steps run under the same mixed precision as training (bf16 where supported) and the peak
is the GPU's allocated memory.

Run: ``python -m benchmarks.generative_training [--profiles tiny cpu paper] [--steps 5]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.host import cpus_line
from shared.atomic import atomic_write_json

MAX_GIB = 20.0  # set from --max-gib in main()


def measure(profile: str, steps: int, batch: int | None) -> dict[str, Any]:
    """One profile, in this process: parameter counts, s/step and peak RSS."""
    import torch
    import torch.nn.functional as F

    from shared.profiles import get_profile
    from site_agent.generative import autoencoder as ae
    from site_agent.generative import diffusion as dm
    from site_agent.generative.trainloop import (
        autocast,
        backward_step,
        make_scaler,
        precision_name,
    )

    prof = get_profile(profile)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model_ae = ae.build_autoencoder(prof.autoencoder).to(dev)
    c, x, y, z = ae.latent_shape(prof.autoencoder, prof.grid)
    den = dm.build_denoiser(prof.diffusion, c).to(dev)
    out: dict[str, Any] = {
        "profile": profile,
        "device": str(dev),
        "autoencoder_parameters": sum(p.numel() for p in model_ae.parameters()),
        "diffusion_parameters": sum(p.numel() for p in den.parameters()),
        "latent_shape": [c, x, y, z],
    }
    # --batch searches the diffusion batch; the autoencoder never exceeds its profile batch
    b_ae = min(batch, prof.autoencoder.batch_size) if batch else prof.autoencoder.batch_size
    b_dm = batch or prof.diffusion.batch_size
    scaler = make_scaler(dev)
    out["precision"] = precision_name(dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    opt = torch.optim.AdamW(model_ae.parameters(), lr=1e-4)
    img = torch.rand(b_ae * 3, 1, *prof.grid.size, device=dev)
    t0 = 0.0
    for i in range(steps + 1):  # step 0 warms up (allocator, cuDNN autotuning)
        if i == 1:
            sync()
            t0 = time.perf_counter()
        with autocast(dev):
            recon, _, _ = model_ae(img)
            loss = F.l1_loss(recon.float(), img)
        backward_step(loss, model_ae, opt, scaler, 0.0)
    sync()
    out["autoencoder_s_per_step"] = (time.perf_counter() - t0) / max(steps, 1)
    out["autoencoder_batch_cases"] = b_ae
    if dev.type == "cuda":  # each network's own peak: they never train at the same time
        out["autoencoder_peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
        del model_ae, opt, img, recon, loss
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    opt = torch.optim.AdamW(den.parameters(), lr=1e-4)
    sched = dm.make_train_scheduler(prof.diffusion.objective)
    lat = torch.randn(b_dm, c, x, y, z, device=dev)
    labels = torch.randint(0, 2, (b_dm,), device=dev)
    spacing = torch.tensor([list(prof.grid.spacing)] * b_dm, device=dev)
    for i in range(steps + 1):
        if i == 1:
            sync()
            t0 = time.perf_counter()
        with autocast(dev):
            loss = dm.diffusion_loss(den, sched, prof.diffusion.objective, lat, labels, spacing)
        backward_step(loss.float(), den, opt, scaler, 0.0)
    sync()
    out["diffusion_s_per_step"] = (time.perf_counter() - t0) / max(steps, 1)
    out["diffusion_batch"] = b_dm
    out["latent_volumes_per_s"] = b_dm / out["diffusion_s_per_step"]
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if dev.type == "cuda":
        out["diffusion_peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def run_child(profile: str, steps: int, batch: int | None) -> dict[str, Any] | str:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.generative_training",
        "--child",
        profile,
        "--steps",
        str(steps),
    ] + (["--batch", str(batch)] if batch else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["killed"])[-1]
        return f"failed (exit {proc.returncode}): {tail[:200]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpus_line()}, {gpu}, torch {torch.__version__}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profiles", nargs="+", default=["tiny", "cpu", "paper"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument(
        "--max-gib",
        type=float,
        default=20.0,
        help="address-space cap per measurement, so a batch that does not fit fails "
        "cleanly instead of calling the OOM killer (default 20 of 24 GiB)",
    )
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    if args.child:
        import torch

        if not torch.cuda.is_available():  # CUDA reserves far more address space than it uses
            cap = int(args.max_gib * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        print(json.dumps(measure(args.child, args.steps, args.batch)))
        return
    global MAX_GIB
    MAX_GIB = args.max_gib
    rows = []
    for p in args.profiles:
        if p != "paper":
            rows.append(run_child(p, args.steps, None))
            continue
        from shared.profiles import get_profile

        tried = []
        b = get_profile("paper").diffusion.batch_size
        while b >= 1:  # the largest batch that fits: halve until one step runs
            res = run_child(p, 1, b)
            tried.append({"batch": b, "result": res if isinstance(res, str) else "ok"})
            if not isinstance(res, str):
                rows.append(res | {"batches_tried": tried})
                break
            b //= 2
        else:
            rows.append({"profile": "paper", "batches_tried": tried})
    record = {
        "benchmark": "generative_training",
        "date": time.strftime("%Y-%m-%d"),
        "machine": _machine(),
        "rows": rows,
    }
    atomic_write_json(args.out / "generative_training.json", record)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
