"""Shared fixtures: one small phantom consortium covering every export style."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from shared.phantom.consortium import StudyTruth, generate_study, write_labels
from shared.phantom.institutions import get_institution
from shared.profiles import get_profile
from shared.volume import Volume

# (institution, index, forced export choices): every vendor convention and file style once.
STYLES = [
    ("aurora", 0, {"enhanced": True, "multi_b": True, "positive": True}),
    ("aurora", 1, {"syntax": "implicit", "multi_b": True, "angulated": True}),
    ("borealis", 0, {"syntax": "jpeg-lossless", "multi_b": False, "positive": True}),
    ("cascade", 0, {"syntax": "j2k", "multi_b": True, "angulated": True, "positive": True}),
    ("external", 0, {"syntax": "explicit", "multi_b": False, "positive": False}),
]


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tests run two at a time on two cores: one compute thread each (torch, BLAS, OpenMP)
    avoids oversubscription (measured 10x slower tiny training with two threads per worker
    under load)."""
    import torch
    from threadpoolctl import threadpool_limits

    old = torch.get_num_threads()
    with threadpool_limits(1):
        torch.set_num_threads(1)
        yield
    torch.set_num_threads(old)


@pytest.fixture(autouse=True)
def _no_thread_leak(request: pytest.FixtureRequest):
    """A test that leaves this process on more torch threads slows every test after it in the
    same worker (the memorisation test went from 56 to 360 s behind one such leak)."""
    import torch

    yield
    n = torch.get_num_threads()
    if n != 1:
        torch.set_num_threads(1)
        pytest.fail(f"{request.node.nodeid} left torch on {n} threads (the suite runs on 1)")


@dataclass
class PhantomSite:
    root: Path
    institution: str
    truths: list[StudyTruth]
    styles: list[dict[str, object]]

    @property
    def dicom(self) -> Path:
        return self.root / "dicom"


@pytest.fixture(scope="session")
def phantom_sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, PhantomSite]:
    base = tmp_path_factory.mktemp("phantoms")
    profile = get_profile("tiny")
    sites: dict[str, PhantomSite] = {}
    for inst_name, index, force in STYLES:
        inst = get_institution(inst_name)
        site = sites.setdefault(inst_name, PhantomSite(base / inst_name, inst_name, [], []))
        site.truths.append(generate_study(site.root, inst, profile, 0, index, force=force))
        site.styles.append(force)
    for site in sites.values():
        write_labels(site.root / "labels.csv", get_institution(site.institution), site.truths)
    return sites


def world_positions(vol: Volume) -> np.ndarray:
    ni, nj, nk = vol.shape
    idx = np.stack(np.meshgrid(np.arange(ni), np.arange(nj), np.arange(nk), indexing="ij"), -1)
    return idx.reshape(-1, 3) @ vol.affine[:3, :3].T + vol.affine[:3, 3]


def assert_same_volume(ours: Volume, ref: Volume, atol_mm: float = 1e-3) -> None:
    """Every voxel centre of ``ours`` must coincide (within ``atol_mm``) with a voxel centre of
    ``ref`` carrying the same value, and both must have the same number of voxels."""
    assert int(np.prod(ours.shape)) == int(np.prod(ref.shape)), (ours.shape, ref.shape)
    pos = world_positions(ours)
    inv = np.linalg.inv(ref.affine)
    idx = pos @ inv[:3, :3].T + inv[:3, 3]
    rounded = np.round(idx)
    back = rounded @ ref.affine[:3, :3].T + ref.affine[:3, 3]
    err = np.abs(back - pos).max()
    assert err < atol_mm, f"voxel centres differ by up to {err:.4g} mm"
    r = rounded.astype(int)
    assert (r >= 0).all() and (r < np.array(ref.shape)).all()
    ref_vals = ref.array[r[:, 0], r[:, 1], r[:, 2]]
    np.testing.assert_allclose(ours.array.reshape(-1), ref_vals, rtol=0, atol=1e-3)
