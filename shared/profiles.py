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
    """One single-channel 3D AutoencoderKL shared by t2w, hbv and adc (CCELLA++ style).

    ``latent_channels`` is per sequence: the diffusion latent has 3 x latent_channels channels.
    Each level after the first halves every axis, so the grid must divide by
    2 ** (len(channels) - 1). Loss: L1 + mse_weight * MSE + kl_weight * KL
    (+ adv_weight * patch-adversarial when > 0).
    """

    channels: tuple[int, ...]
    latent_channels: int
    num_res_blocks: int
    steps: int
    batch_size: int  # cases per step (each contributes its three sequences)
    lr: float
    norm_num_groups: int = 8
    # The learning rate falls from ``lr`` to ``lr * lr_final`` along a cosine over the run: at a
    # constant rate the weights keep wandering, and a 500-step cpu autoencoder's hbv lesion
    # contrast swung between 50 % and 71 % from one 100-step checkpoint to the next.
    lr_final: float = 0.1
    mse_weight: float = 5.0
    kl_weight: float = 1e-6
    adv_weight: float = 0.0  # patch-adversarial loss; 0 = off (no discriminator built)
    checkpoint_every: int = 100
    # Lesion-contrast gate before diffusion training: the run stops when a reconstruction keeps
    # less than this fraction of the originals' lesion contrast in a gated sequence.
    min_contrast_retention: float = 0.5
    gated_sequences: tuple[str, ...] = ("t2w", "hbv", "adc")


@dataclass(frozen=True)
class DiffusionSpec:
    """Latent diffusion UNet (MONAI's MAISI UNet: a class embedding with a null class for
    classifier-free guidance, plus a voxel-spacing embedding).

    ``objective`` is how the model is trained ("rflow": rectified flow, velocity target;
    "ddpm": epsilon prediction, the paper's); ``sampler`` is the default sampler and must suit
    it ("rflow" for rflow; "ddpm" or "ddim" for ddpm).
    """

    channels: tuple[int, ...]
    attention_levels: tuple[bool, ...]
    num_head_channels: int
    train_steps: int
    batch_size: int
    lr: float
    sampler: str
    sampling_steps: int
    guidance_scale: float
    objective: str = "rflow"
    num_res_blocks: int = 1
    norm_num_groups: int = 16
    label_dropout: float = 0.15  # probability of replacing the label by the null class
    # Left-right flips of the training latents (p = 0.5): the pelvis is close to mirror
    # symmetric and lesions occur on either side, so a small site's data counts twice.
    flip_augment: bool = False
    ema_decay: float = 0.999
    loss: str = "mse"  # "mse" or "l1"
    grad_clip: float = 1.0
    checkpoint_every: int = 100
    min_cases: int = 20  # labelled real cases needed before training starts
    min_per_class: int = 5
    sample_batch_size: int = 8
    # Real cases kept out of generative training (per class), for the privacy screen.
    holdout_fraction: float = 0.15


@dataclass(frozen=True)
class ClassifierSpec:
    network: str  # shared.classifier.networks.NETWORKS
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
        # Tiny trains for seconds, so its autoencoder cannot keep lesion contrast: the gate is
        # off here (0.0) and tested on its own.
        autoencoder=AutoencoderSpec(
            channels=(8, 16),
            latent_channels=4,
            num_res_blocks=1,
            steps=20,
            batch_size=2,
            lr=2e-3,
            norm_num_groups=4,
            checkpoint_every=10,
            min_contrast_retention=0.0,
        ),
        diffusion=DiffusionSpec(
            channels=(16, 32, 32),
            attention_levels=(False, False, True),
            num_head_channels=8,
            train_steps=20,
            batch_size=4,
            lr=1e-3,
            sampler="rflow",
            sampling_steps=3,
            guidance_scale=2.0,
            norm_num_groups=8,
            ema_decay=0.9,
            checkpoint_every=10,
            min_cases=6,
            min_per_class=2,
            sample_batch_size=4,
        ),
        # small-cnn-pool (global-pooling head) was no better from scratch on the quick demo's
        # external cases: validation AUC 0.75 / 0.82 / 0.82 against 0.73 / 0.80 / 0.83 on three
        # sets of splits (issue 15, phantom data, 2026-12-06); MONAI's layout stays.
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
        # Measured on 280 phantom cases of the external preset (lesion vs ring inside the
        # gland): this autoencoder keeps t2w 83 %, hbv 77 %, adc 81 % of lesion contrast, so
        # the gate checks all three sequences. Batch 3 cases (9 single-channel volumes), one
        # step on 2 cores (2026-12-06): 0.34 s in float32, 0.13 s in bfloat16 autocast where the
        # CPU has AMX (site_agent.generative.trainloop.amp_dtype).
        autoencoder=AutoencoderSpec(
            channels=(16, 32),
            latent_channels=4,
            num_res_blocks=1,
            steps=1000,
            batch_size=3,
            lr=1e-3,
            norm_num_groups=8,
            checkpoint_every=100,
        ),
        # One step at batch 16 on 2 cores (12 x 16 x 16 x 8 latents, 3.0 M parameters): 0.37 s
        # in float32, 0.18 s in bfloat16 autocast on an AMX CPU (2026-12-06).
        diffusion=DiffusionSpec(
            channels=(32, 64, 64),
            attention_levels=(False, False, True),
            num_head_channels=16,
            train_steps=1400,
            batch_size=16,
            lr=5e-4,
            # Heun's second-order steps on the rectified flow: 3 steps (5 network passes), 63x
            # faster than DDPM-1000 end to end with every sequence's KID and the label fidelity
            # inside 25 Euler steps' intervals (benchmarks/sampling_speed.py; issue 15).
            sampler="rflow-heun",
            sampling_steps=3,
            # Guidance 1.0 (conditional only) and left-right flips: with 4x cases at 0.5
            # positives, pooled over two sites, the setting chosen on validation by
            # benchmarks/synthetic_value.py (issue 12; phantom data).
            guidance_scale=1.0,
            flip_augment=True,
            norm_num_groups=16,
            ema_decay=0.999,
            checkpoint_every=100,
            min_cases=20,
            min_per_class=5,
            sample_batch_size=8,
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
        # One case (three full 256x256x32 volumes) per step: measured on an H200 in bf16, one
        # case peaks at 54 GiB and two at 107 GiB (benchmarks/results/h200), so two would not
        # fit an 80 GB GPU.
        autoencoder=AutoencoderSpec(
            channels=(64, 128, 256),
            latent_channels=4,
            num_res_blocks=2,
            steps=100_000,
            batch_size=1,
            lr=1e-4,
            norm_num_groups=32,
            mse_weight=1.0,
            kl_weight=1e-6,
            checkpoint_every=1000,
        ),
        # CCELLA++ UNet: (64,128,256,512), attention at the two deepest levels, 32 head
        # channels, AdamW 1e-4, batch 8 per GPU, 800 epochs, 1000-step DDPM at sampling.
        diffusion=DiffusionSpec(
            channels=(64, 128, 256, 512),
            attention_levels=(False, False, True, True),
            num_head_channels=32,
            train_steps=800,
            batch_size=8,
            lr=1e-4,
            sampler="ddpm",
            sampling_steps=1000,
            guidance_scale=1.0,
            objective="ddpm",
            num_res_blocks=2,
            norm_num_groups=32,
            label_dropout=0.1,
            ema_decay=0.9999,
            loss="l1",
            checkpoint_every=1000,
            min_cases=50,
            min_per_class=10,
            sample_batch_size=2,
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
