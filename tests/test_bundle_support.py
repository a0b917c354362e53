"""Helpers for the export-gate tests: tiny site workspaces built with write_case (no DICOM
phantoms, no training). Holds no tests of its own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from shared.case_format import CaseMeta, Label, write_case
from shared.volume import Volume

GRID = (24, 24, 12)
SPACING = (2.5, 2.5, 4.5)
PASSPHRASE = "correct horse battery"
SOURCE_IDS = ["PAT-778812", "DOE^JOHNATHAN", "ACC99887766", "1.2.826.0.1.3680043.2.1143.77"]


def affine() -> np.ndarray:
    aff = np.diag([*SPACING, 1.0])
    aff[:3, 3] = -np.asarray(SPACING) * (np.asarray(GRID) - 1) / 2
    return aff


def random_case(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Smooth random anatomy-like volumes in case-format ranges."""
    out = {}
    for s in ("t2w", "hbv", "adc"):
        v = gaussian_filter(rng.normal(0, 1, GRID), 2.0) * 3 + 0.5 + 0.05 * rng.normal(0, 1, GRID)
        out[s] = np.clip(v, 0, 1).astype(np.float32)
    return out


def put_case(store: Path, cid: str, origin: str, y: int, arrays: dict, prov=None) -> Path:
    meta = CaseMeta(
        cid,
        origin,
        Label(cspca=y, source="site" if origin == "real" else "generated"),
        list(GRID),
        list(SPACING),
        "tiny",
        provenance=prov or {},
    )
    write_case(store / cid, meta, {k: Volume(v, affine()) for k, v in arrays.items()})
    return store / cid


def make_site(
    root: Path,
    n_train: int = 8,
    n_hold: int = 6,
    seed: int = 0,
    novel: int = 4,
    copies: int = 0,
    keys: bool = True,
) -> dict:
    """A workspace with training cases (listed in the latent index), held-out real cases,
    synthetic cases that are held-out lookalikes (``novel``) or noisy training copies
    (``copies``), recorded identifiers and (optionally) a site key."""
    from site_agent.export.keys import init_keys
    from site_agent.privacy.identifiers import record_identifiers

    rng = np.random.default_rng(seed)
    ws = root / "ws"
    real, syn = ws / "cases" / "real", ws / "cases" / "synthetic"
    train = [random_case(rng) for _ in range(n_train)]
    hold = [random_case(rng) for _ in range(n_hold)]
    for i, a in enumerate(train):
        put_case(real, f"case-t{i:03d}", "real", i % 2, a)
    for i, a in enumerate(hold):
        put_case(real, f"case-h{i:03d}", "real", i % 2, a)
    lat = ws / "work" / "generative" / "latents"
    lat.mkdir(parents=True)
    (lat / "index.json").write_text(
        json.dumps({"cases": [f"case-t{i:03d}" for i in range(n_train)]})
    )
    prov = {"generator": "latent-diffusion", "diffusion_sha256": "d" * 64, "seed": 3}
    for i in range(novel):  # real cases the model never saw: a stand-in for novel samples
        put_case(syn, f"syn-a{i:03d}", "synthetic", i % 2, hold[i % n_hold], prov)
    for i in range(copies):  # a memorising model: training cases plus tiny noise
        noisy = {
            k: v + 0.002 * rng.normal(0, 1, GRID).astype(np.float32) for k, v in train[i].items()
        }
        put_case(syn, f"syn-0{i:03d}", "synthetic", i % 2, noisy, prov)
    record_identifiers(ws, SOURCE_IDS)
    signer = init_keys(ws, "aurora", PASSPHRASE) if keys else None
    return {"ws": ws, "signer": signer, "train": train, "hold": hold}
