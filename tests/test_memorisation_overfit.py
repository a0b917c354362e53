"""The memorisation screen on a deliberately overfitted model and on an under-trained one.

Ten training cases with distinct patterns, a tiny latent diffusion model trained far too long on
them (400 autoencoder + 800 diffusion steps, no label dropout): some samples are near-copies of
one patient and must be flagged. The same pipeline stopped after 20 + 20 steps makes blurry
"average" samples, which must not be taken for copies. Slow (about two minutes on 2 cores).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.case_format import CaseMeta, Label, write_case
from shared.profiles import get_profile
from shared.volume import Volume
from site_agent.generative.pipeline import generate, train_generative
from site_agent.privacy import memorisation as mem

GRID, SPACING = (24, 24, 12), (2.5, 2.5, 4.5)


def distinct_cases(root: Path, n: int, seed: int) -> Path:
    """Cases whose sequences are each a distinct sum of smooth blobs (memorisable)."""
    rng = np.random.default_rng(seed)
    ii, jj, kk = np.meshgrid(*[np.arange(g) for g in GRID], indexing="ij")
    for i in range(n):
        vols = {}
        for s in ("t2w", "hbv", "adc"):
            v = np.zeros(GRID, np.float32)
            for _ in range(4):
                c = rng.uniform([3, 3, 2], [21, 21, 10])
                r = rng.uniform(2, 5)
                d2 = (ii - c[0]) ** 2 + (jj - c[1]) ** 2 + ((kk - c[2]) * 1.8) ** 2
                v += np.exp(-d2 / (2 * r * r)) * rng.uniform(0.3, 1.0)
            vols[s] = (v + 0.02 * rng.normal(size=GRID)).astype(np.float32)
        meta = CaseMeta(
            f"case-{i:03d}",
            "real",
            Label(cspca=i % 2, source="site"),
            list(GRID),
            list(SPACING),
            "tiny",
        )
        affine = np.diag([*SPACING, 1.0])
        write_case(
            root / "cases" / "real" / meta.case_id,
            meta,
            {k: Volume(v, affine) for k, v in vols.items()},
        )
    return root


def screened(ws: Path, ae_steps: int, dm_steps: int) -> list[mem.CaseScore]:
    base = get_profile("tiny")
    prof = dataclasses.replace(
        base,
        autoencoder=dataclasses.replace(
            base.autoencoder, steps=ae_steps, checkpoint_every=ae_steps
        ),
        diffusion=dataclasses.replace(
            base.diffusion,
            train_steps=dm_steps,
            checkpoint_every=dm_steps,
            holdout_fraction=0.3,
            min_per_class=2,
            label_dropout=0.0,
            sampling_steps=20,
        ),
    )
    train_generative(ws, prof, seed=0, device=torch.device("cpu"))
    folders = generate(ws, 8, 0.5, seed=1, guidance=1.0, device=torch.device("cpu"))
    ref = mem.build_reference(ws, mem.ScreenConfig())
    assert ref.calibration["method"] == "held-out real cases"
    return mem.screen(ref, mem.load_images(folders))


@pytest.mark.slow
def test_overfitted_model_is_caught_and_an_undertrained_one_is_not(tmp_path):
    over = screened(distinct_cases(tmp_path / "over", 14, 0), 400, 800)
    under = screened(distinct_cases(tmp_path / "under", 14, 0), 20, 20)
    assert sum(s.flagged for s in over) >= 2
    assert min(s.image_uniqueness for s in over) < 0.3  # a near-copy of one patient
    assert sum(s.flagged for s in under) == 0
