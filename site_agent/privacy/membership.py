"""Loss-based membership inference on the site's generative model (for weights export).

Attack: a case with lower loss is guessed to be a training member. Per real case:
autoencoder reconstruction MSE of the posterior mean, and the diffusion model's denoising loss
averaged over ``draws`` fixed (noise, timestep) draws of its latent. AUC of ``-loss`` for
training (1) vs held-out (0) cases: 0.5 = the weights reveal nothing about membership by this
attack; 1.0 = training cases are perfectly recognisable. Held-out cases are real cases the
model did not train on (see ``memorisation.split_real_cases``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from shared.case_format import read_meta
from shared.errors import PrivacyGateError
from site_agent.privacy.memorisation import load_images, split_real_cases

MIN_PER_SIDE = 2


def _auc(member_loss: np.ndarray, holdout_loss: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.ones(len(member_loss)), np.zeros(len(holdout_loss))]
    return float(roc_auc_score(y, -np.r_[member_loss, holdout_loss]))


def membership_inference(workspace: Path, draws: int = 8, seed: int = 0) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from site_agent.generative import autoencoder as ae
    from site_agent.generative import diffusion as dm
    from site_agent.generative.pipeline import load_models

    train_f, hold_f, source = split_real_cases(workspace)
    if len(hold_f) < MIN_PER_SIDE or len(train_f) < MIN_PER_SIDE:
        raise PrivacyGateError(
            f"membership inference needs real cases the model did not train on (found "
            f"{len(hold_f)} held out, {len(train_f)} training; training set from {source})",
            hint="ingest cases after training or retrain with a held-out split, then export again",
        )
    device = torch.device("cpu")
    model_ae, den, cfg, _ = load_models(workspace, device)
    per = int(cfg["in_channels"]) // 3
    scale = torch.tensor(
        [cfg["scale_factors"][s] for s in ("t2w", "hbv", "adc") for _ in range(per)]
    ).reshape(1, -1, 1, 1, 1)
    sched = dm.make_train_scheduler(cfg["objective"])

    def losses(folders: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(load_images(folders))
        rec, den_loss = [], []
        for i in range(len(folders)):
            xi = x[i : i + 1]
            z = ae.encode_mean(model_ae, xi)
            rec.append(float(F.mse_loss(ae.decode_latents(model_ae, z), xi)))
            meta = read_meta(folders[i])
            y = torch.tensor([dm.NULL_CLASS if meta.label.cspca is None else int(meta.label.cspca)])
            sp = torch.tensor([meta.grid_spacing], dtype=torch.float32)
            z0 = z * scale
            g = torch.Generator().manual_seed(seed)
            vals = []
            with torch.no_grad():
                for _ in range(draws):
                    noise = torch.randn(z0.shape, generator=g)
                    if cfg["objective"] == "rflow":
                        t = torch.rand(1, generator=g) * dm.NUM_TRAIN_TIMESTEPS
                        target = z0 - noise
                    else:
                        t = torch.randint(0, dm.NUM_TRAIN_TIMESTEPS, (1,), generator=g)
                        target = noise
                    xt = sched.add_noise(original_samples=z0, noise=noise, timesteps=t)
                    vals.append(float(F.mse_loss(den(xt, t, y, sp).float(), target)))
            den_loss.append(float(np.mean(vals)))
        return np.array(rec), np.array(den_loss)

    tr_rec, tr_den = losses(train_f)
    ho_rec, ho_den = losses(hold_f)
    return {
        "attack": "loss threshold (lower loss = member), ROC AUC training vs held-out",
        "training_cases": len(train_f),
        "held_out_cases": len(hold_f),
        "autoencoder_reconstruction_auc": round(_auc(tr_rec, ho_rec), 4),
        "diffusion_denoising_auc": round(_auc(tr_den, ho_den), 4),
        "draws_per_case": draws,
    }
