"""The DDP path: two CPU processes on the gloo backend under torchrun follow the
single-process run (same seed) — each rank trains on its shard of the same batch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from site_agent.generative.autoencoder import decode_latents, encode_mean
from site_agent.generative.pipeline import load_models

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
from tests.test_generative import small_profile
from site_agent.generative import distributed
from site_agent.generative.pipeline import train_generative

summary = train_generative(Path(sys.argv[1]), small_profile(), seed=0,
                           device=torch.device("cpu"))
if distributed.current().is_main:
    print("PROCESSES", summary["processes"])
distributed.teardown()
"""


def _run(ws: Path, script: Path, processes: int) -> str:
    # float32: the check is that sharding the batch over ranks trains the same model; under
    # bf16 autocast (AMX CPUs) the two runs differ by bf16 rounding instead (measured 1.1e-3)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
        "SITE_AGENT_PRECISION": "fp32",
    }
    if processes == 1:
        cmd = [sys.executable, str(script), str(ws)]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={processes}",
            str(script),
            str(ws),
        ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_two_gloo_processes_match_one(tmp_path):
    from tests.test_generative import make_workspace

    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    single = make_workspace(tmp_path / "single", n=8, n_pos=4)
    shutil.copytree(single, tmp_path / "ddp")
    assert "PROCESSES 1" in _run(single, script, 1)
    assert "PROCESSES 2" in _run(tmp_path / "ddp", script, 2)
    # Compare what the networks compute, not raw weights: AdamW amplifies summation-order noise
    # in parameters whose true gradient is zero (conv biases right before a GroupNorm).
    ae_a, den_a, cfg_a, _ = load_models(single, torch.device("cpu"))
    ae_b, den_b, cfg_b, _ = load_models(tmp_path / "ddp", torch.device("cpu"))
    assert cfg_a["scale_factors"] == pytest.approx(cfg_b["scale_factors"], rel=1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, *cfg_a["grid_size"], generator=g) if "grid_size" in cfg_a else None
    x = torch.rand(2, 3, 24, 24, 12, generator=g) if x is None else x
    with torch.no_grad():
        rec_a = decode_latents(ae_a, encode_mean(ae_a, x))
        rec_b = decode_latents(ae_b, encode_mean(ae_b, x))
        z = torch.randn(2, *cfg_a["latent_shape"], generator=g)
        t = torch.tensor([0.3, 0.7]) * 1000
        y = torch.tensor([0, 1])
        sp = torch.tensor([[2.5, 2.5, 4.5]] * 2)
        pred_a, pred_b = den_a(z, t, y, sp), den_b(z, t, y, sp)
    scale = float(rec_a.abs().mean())
    assert float((rec_a - rec_b).abs().max()) < 1e-3 * max(scale, 1.0)
    assert float((pred_a - pred_b).abs().max()) < 1e-3 * max(float(pred_a.abs().mean()), 1.0)
    # Rank 0 alone wrote the outputs: one report, one latent index, no stray files.
    assert (tmp_path / "ddp" / "reports" / "generative-training.json").is_file()
