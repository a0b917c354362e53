"""Named run configurations: one place for grid, phantom and model sizes.

``tiny`` keeps the test suite to seconds on 2 CPU cores, ``cpu`` runs the demo on 2 cores in
about half an hour, ``paper`` carries the published CCELLA++ settings for GPU sites. Every run
writes the profile it used (``Profile.to_dict``) next to its outputs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from shared.errors import InputError

Triplet = tuple[float, float, float]
ITriplet = tuple[int, int, int]


@dataclass(frozen=True)
class GridSpec:
    """The case grid every real and synthetic case is resampled to.

    ``size`` is (x, y, z) in voxels along the T2 series' row, column and slice directions;
    ``spacing`` is in mm along the same axes.
    """

    size: ITriplet
    spacing: Triplet

    @property
    def fov_mm(self) -> Triplet:
        return (
            self.size[0] * self.spacing[0],
            self.size[1] * self.spacing[1],
            self.size[2] * self.spacing[2],
        )


@dataclass(frozen=True)
class PhantomSpec:
    """How the phantom scanner acquires: field of view and matrix follow the profile."""

    fov_mm: float  # square in-plane field of view of the axial series
    t2_inplane_mm: float  # axial T2 pixel spacing (scanners: 0.5-0.7 mm)
    t2_slice_mm: float  # axial T2 slice spacing (3-3.6 mm)
    dwi_inplane_mm: float  # DWI/ADC pixel spacing (about 2 mm)
    dwi_slice_mm: float
    slab_mm: float  # extent of the axial stacks along the slice normal
    localizer_matrix: int
    dynamic_phases: int


@dataclass(frozen=True)
class AutoencoderSpec:
    channels: tuple[int, ...]
    latent_channels: int
    num_res_blocks: int
    steps: int
    batch_size: int
    lr: float


@dataclass(frozen=True)
class DiffusionSpec:
    channels: tuple[int, ...]
    attention_levels: tuple[bool, ...]
    num_head_channels: int
    train_steps: int
    batch_size: int
    lr: float
    sampler: str
    sampling_steps: int
    guidance_scale: float


@dataclass(frozen=True)
class ClassifierSpec:
    network: str  # "efficientnet-b0" or "small-cnn"
    batch_size: int
    lr_pretrain: float
    lr_finetune: float
    pretrain_steps: int
    finetune_steps: int


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    grid: GridSpec
    phantom: PhantomSpec
    autoencoder: AutoencoderSpec
    diffusion: DiffusionSpec
    classifier: ClassifierSpec
    fractions: tuple[float, ...] = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PROFILES: dict[str, Profile] = {
    "tiny": Profile(
        name="tiny",
        description="tests and the --quick demo: seconds per stage on 2 CPU cores",
        grid=GridSpec(size=(24, 24, 12), spacing=(2.5, 2.5, 4.5)),
        phantom=PhantomSpec(
            fov_mm=84.0,
            t2_inplane_mm=0.7,
            t2_slice_mm=3.6,
            dwi_inplane_mm=2.1,
            dwi_slice_mm=3.6,
            slab_mm=61.2,
            localizer_matrix=48,
            dynamic_phases=3,
        ),
        autoencoder=AutoencoderSpec((8, 16), 8, 1, 30, 4, 2e-3),
        diffusion=DiffusionSpec(
            (16, 32, 32), (False, False, True), 8, 30, 8, 1e-3, "rflow", 5, 2.0
        ),
        classifier=ClassifierSpec("small-cnn", 8, 1e-3, 5e-4, 30, 20),
    ),
    "cpu": Profile(
        name="cpu",
        description="the demo on 2 CPU cores (about 30 minutes end to end)",
        grid=GridSpec(size=(32, 32, 16), spacing=(2.0, 2.0, 3.6)),
        phantom=PhantomSpec(
            fov_mm=100.0,
            t2_inplane_mm=0.625,
            t2_slice_mm=3.6,
            dwi_inplane_mm=2.0,
            dwi_slice_mm=3.6,
            slab_mm=72.0,
            localizer_matrix=64,
            dynamic_phases=4,
        ),
        autoencoder=AutoencoderSpec((16, 32), 8, 1, 1000, 8, 1e-3),
        diffusion=DiffusionSpec(
            (32, 64, 64), (False, False, True), 16, 1400, 16, 5e-4, "rflow", 25, 2.0
        ),
        classifier=ClassifierSpec("small-cnn", 16, 1e-3, 3e-4, 400, 300),
    ),
    "paper": Profile(
        name="paper",
        description="the published CCELLA++ settings (GPU): 0.5 x 0.5 x 3 mm classifier grid",
        grid=GridSpec(size=(256, 256, 32), spacing=(0.5, 0.5, 3.0)),
        phantom=PhantomSpec(
            fov_mm=180.0,
            t2_inplane_mm=0.5625,
            t2_slice_mm=3.0,
            dwi_inplane_mm=2.0,
            dwi_slice_mm=3.0,
            slab_mm=96.0,
            localizer_matrix=256,
            dynamic_phases=8,
        ),
        # CCELLA++: single-channel autoencoder shared by the sequences, 4 latent channels each.
        autoencoder=AutoencoderSpec((64, 128, 256), 4, 2, 100_000, 2, 1e-4),
        # CCELLA++ UNet: (64,128,256,512), attention at the two deepest levels, 32 head
        # channels, AdamW 1e-4, batch 8 per GPU, 800 epochs, 1000-step DDPM at sampling.
        diffusion=DiffusionSpec(
            (64, 128, 256, 512), (False, False, True, True), 32, 800, 8, 1e-4, "ddpm", 1000, 1.0
        ),
        # EfficientNet-B0 (3D), batch 32, AdamW 1e-4 from scratch / 1e-5 fine-tuning,
        # 155 pretraining and 385 fine-tuning epochs (counted in epochs, not steps, here).
        classifier=ClassifierSpec("efficientnet-b0", 32, 1e-4, 1e-5, 155, 385),
        extra={"ldm_grid": {"size": [256, 256, 128], "spacing": [0.5, 0.5, 0.5625]}},
    ),
}


def get_profile(name: str) -> Profile:
    """Return the named profile, or raise an ``InputError`` listing the valid names."""
    try:
        return PROFILES[name]
    except KeyError:
        raise InputError(
            f"unknown profile {name!r}", hint=f"choose one of: {', '.join(PROFILES)}"
        ) from None
