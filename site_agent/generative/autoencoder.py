"""One single-channel 3D ``AutoencoderKL`` shared by t2w, hbv and adc (as in CCELLA++).

Each sequence is encoded on its own; the latents are concatenated on channels in the order
t2w, hbv, adc, so a case's latent has 3 x ``latent_channels`` channels at the grid divided by
2 ** (levels - 1). Training loss: L1 + mse_weight * MSE + kl_weight * KL, plus an optional
patch-adversarial term (off unless ``adv_weight`` > 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from shared.case_format import SEQUENCES
from shared.errors import InputError
from shared.profiles import AutoencoderSpec, GridSpec
from site_agent.generative import distributed
from site_agent.generative.checkpoint import TrainState, training_fields
from site_agent.generative.data import TrainingSet
from site_agent.generative.trainloop import (
    Progress,
    autocast,
    backward_step,
    cosine_scheduler,
    ensure_finite,
    make_scaler,
    run_training,
)

N_SEQ = len(SEQUENCES)
# Spec fields that do not change the trained weights (a new gate threshold retrains nothing).
NOT_TRAINING = ("min_contrast_retention", "gated_sequences", "checkpoint_every")


def downsample_factor(spec: AutoencoderSpec) -> int:
    return 2 ** (len(spec.channels) - 1)


def latent_shape(spec: AutoencoderSpec, grid: GridSpec) -> tuple[int, int, int, int]:
    """(channels, x, y, z) of a case's concatenated latent; raises if the grid does not divide."""
    f = downsample_factor(spec)
    if any(s % f for s in grid.size):
        raise InputError(
            f"grid {grid.size} does not divide by the autoencoder's downsampling factor {f}",
            hint="choose a profile whose grid size is a multiple of that factor on every axis",
        )
    x, y, z = (s // f for s in grid.size)
    return (N_SEQ * spec.latent_channels, x, y, z)


def autoencoder_config(spec: AutoencoderSpec) -> dict[str, Any]:
    """Everything needed to rebuild the network (stored next to its weights)."""
    return {
        "kind": "autoencoder",
        "network": "monai.networks.nets.AutoencoderKL",
        "spatial_dims": 3,
        "in_channels": 1,
        "channels": list(spec.channels),
        "latent_channels": spec.latent_channels,
        "num_res_blocks": spec.num_res_blocks,
        "norm_num_groups": spec.norm_num_groups,
        "sequences": list(SEQUENCES),
    }


def build_autoencoder(spec: AutoencoderSpec) -> torch.nn.Module:
    from monai.networks.nets import AutoencoderKL

    n = len(spec.channels)
    return AutoencoderKL(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        channels=tuple(spec.channels),
        latent_channels=spec.latent_channels,
        num_res_blocks=spec.num_res_blocks,
        norm_num_groups=spec.norm_num_groups,
        attention_levels=(False,) * n,
        with_encoder_nonlocal_attn=False,
        with_decoder_nonlocal_attn=False,
    )


def load_pretrained(model: torch.nn.Module, path: Path) -> None:
    """Load weights from a local ``save_weights`` folder, a ``.safetensors`` file or a
    ``.pt``/``.pth`` state dict (optionally under a ``state_dict`` key). Nothing is
    downloaded. The architecture must match the profile's autoencoder."""
    path = Path(path)
    state: dict[str, Any]
    if path.is_dir():
        from shared.weights import load_weights

        state, _ = load_weights(path)
    elif path.suffix == ".safetensors" and path.is_file():
        from safetensors.torch import load_file

        state = load_file(str(path))
    elif path.suffix in (".pt", ".pth") and path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    else:
        raise InputError(
            f"no autoencoder weights at {path}",
            hint="give a weights folder (model.safetensors + config.json), a .safetensors or a "
            ".pt file",
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0][:200]
        raise InputError(
            f"the weights in {path} do not fit this profile's autoencoder ({first})",
            hint="they must come from a single-channel AutoencoderKL with the profile's "
            "channels, latent channels and residual blocks",
        ) from None


def kl_loss(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma) || N(0, 1)) summed over latent voxels, averaged over the batch."""
    kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2) + 1e-12) - 1.0)
    return kl.flatten(1).sum(1).mean()


def _sequence_batch(images: np.ndarray, idx: np.ndarray, flips: np.ndarray) -> torch.Tensor:
    """(B * 3, 1, X, Y, Z): every sequence of every chosen case as its own sample; cases in
    ``flips`` are mirrored left-right (axis x)."""
    x = images[idx].copy()
    x[flips] = x[flips][:, :, ::-1]
    return torch.from_numpy(np.ascontiguousarray(x)).reshape(-1, 1, *x.shape[2:])


def train_autoencoder(
    data: TrainingSet,
    spec: AutoencoderSpec,
    folder: Path,
    seed: int,
    progress: Progress | None = None,
    pretrained: Path | None = None,
    device: torch.device | None = None,
) -> torch.nn.Module:
    """Train (or resume training) the autoencoder on all sequences of ``data``; checkpoints
    go to ``folder``. Returns the trained model in eval mode."""
    device = device or torch.device("cpu")
    torch.manual_seed(seed)
    model = build_autoencoder(spec).to(device)
    if pretrained is not None:
        load_pretrained(model, pretrained)
    modules: dict[str, torch.nn.Module] = {"model": model}
    optimizers: dict[str, torch.optim.Optimizer] = {
        "model": torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=1e-5)
    }
    adv = None
    if spec.adv_weight > 0:
        from monai.losses import PatchAdversarialLoss
        from monai.networks.nets import PatchDiscriminator

        disc = PatchDiscriminator(
            spatial_dims=3,
            channels=spec.channels[0],
            in_channels=1,
            out_channels=1,
            num_layers_d=2,
            norm="INSTANCE",
        ).to(device)
        modules["discriminator"] = disc
        optimizers["discriminator"] = torch.optim.AdamW(disc.parameters(), lr=spec.lr)
        adv = PatchAdversarialLoss(criterion="least_squares")
    schedulers = {"model": cosine_scheduler(optimizers["model"], spec.steps, spec.lr_final)}
    state = TrainState(
        modules,
        optimizers,
        schedulers,
        rng=np.random.default_rng(seed),
        scaler=make_scaler(device),
    )
    n = len(data)

    net = distributed.wrap(_SampledForward(model))
    disc_net = distributed.wrap(modules["discriminator"]) if adv is not None else None
    grid = data.images.shape[2:]
    f = downsample_factor(spec)
    eps_shape = (spec.batch_size * N_SEQ, spec.latent_channels, *(g // f for g in grid))

    def step(st: TrainState) -> float:
        idx = st.rng.choice(n, spec.batch_size, replace=n < spec.batch_size)
        flips = st.rng.random(len(idx)) < 0.5
        # Every rank draws the same batch and posterior noise; each trains on its shard.
        eps = torch.randn(eps_shape)
        part, weight = distributed.shard(len(idx))
        rows = slice(part.start * N_SEQ, part.stop * N_SEQ)
        x = _sequence_batch(data.images, idx[part], flips[part]).to(device)
        model.train()
        with autocast(device):
            recon, z_mu, z_sigma = net(x, eps[rows].to(device))
            recon = recon.float()
            loss = F.l1_loss(recon, x) + spec.mse_weight * F.mse_loss(recon, x)
            loss = loss + spec.kl_weight * kl_loss(z_mu.float(), z_sigma.float())
            if adv is not None:
                logits = modules["discriminator"](recon)[-1]
                loss = loss + spec.adv_weight * adv(
                    logits, target_is_real=True, for_discriminator=False
                )
        ensure_finite(loss)
        backward_step(loss * weight, model, optimizers["model"], st.scaler, grad_clip=1.0)
        st.schedulers["model"].step()
        if adv is not None:
            assert disc_net is not None
            disc = disc_net
            with autocast(device):
                d_loss = 0.5 * (
                    adv(disc(recon.detach())[-1], target_is_real=False, for_discriminator=True)
                    + adv(disc(x)[-1], target_is_real=True, for_discriminator=True)
                )
            ensure_finite(d_loss)
            backward_step(
                d_loss * weight, disc, optimizers["discriminator"], st.scaler, grad_clip=1.0
            )
        return float(loss.detach())

    config = {
        "stage": "autoencoder",
        "seed": seed,
        "spec": training_fields(spec, NOT_TRAINING),
        "cases": data.case_ids,
        "pretrained": None if pretrained is None else str(pretrained),
    }
    run_training(
        "autoencoder", state, step, spec.steps, folder, config, spec.checkpoint_every, progress
    )
    return model.eval()


class _SampledForward(torch.nn.Module):
    """AutoencoderKL's forward with the posterior noise passed in, so that DDP ranks can use
    their slice of one full-batch draw (MONAI's forward draws its own)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, x: torch.Tensor, eps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z_mu, z_sigma = self.model.encode(x)
        return self.model.decode(z_mu + eps * z_sigma), z_mu, z_sigma


@torch.no_grad()
def encode_mean(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Posterior means of (B, 3, X, Y, Z) images, concatenated per sequence on channels:
    (B, 3 * latent_channels, x, y, z). The mean, not a sample: cached latents must not carry
    the posterior noise (it is an irreducible floor for the diffusion loss)."""
    b = images.shape[0]
    z_mu, _ = model.encode(images.reshape(b * N_SEQ, 1, *images.shape[2:]))
    return z_mu.reshape(b, N_SEQ * z_mu.shape[1], *z_mu.shape[2:])


@torch.no_grad()
def decode_latents(model: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """(B, 3 * C, x, y, z) unscaled latents -> (B, 3, X, Y, Z) images, one decode per
    sequence's channel group."""
    b, c = latents.shape[:2]
    per = c // N_SEQ
    z = latents.reshape(b, N_SEQ, per, *latents.shape[2:]).reshape(
        b * N_SEQ, per, *latents.shape[2:]
    )
    out = model.decode(z)
    return out.reshape(b, N_SEQ, *out.shape[2:])
