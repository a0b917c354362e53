"""The export gate on a really trained (tiny) generative model: generated samples screened
against held-out patients, and diffusion weights with their membership-inference check."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from shared.errors import PrivacyGateError
from site_agent.export.keys import init_keys
from site_agent.export.synthetic import export_synthetic
from site_agent.export.weights import export_weights
from site_agent.generative.pipeline import train_generative
from site_agent.privacy.identifiers import record_identifiers
from tests.test_bundle_support import PASSPHRASE, SOURCE_IDS
from tests.test_generative import make_workspace, small_profile


@pytest.fixture(scope="module")
def trained_site(tmp_path_factory):
    ws = make_workspace(tmp_path_factory.mktemp("trained") / "ws", n=14, n_pos=7)
    base = small_profile()
    prof = dataclasses.replace(
        base,
        diffusion=dataclasses.replace(base.diffusion, holdout_fraction=0.3, min_per_class=2),
    )
    train_generative(ws, prof, seed=0, device=torch.device("cpu"))
    record_identifiers(ws, SOURCE_IDS)
    return ws, init_keys(ws, "aurora", PASSPHRASE)


def test_generated_samples_are_screened_against_held_out_patients(trained_site):
    ws, signer = trained_site
    res = export_synthetic(ws, 4, signer, source="generate", seed=5)
    screen = res.manifest["privacy"]["memorisation"]
    assert screen["method"] == "held-out real cases"
    assert screen["held_out_cases"] == 4
    assert res.manifest["counts"]["cases"] == 4
    held = json.loads((ws / "models" / "generative" / "holdout.json").read_text())["held_out"]
    text = (res.path / "manifest.json").read_text()
    assert not any(h in text for h in held)  # no case id of any kind leaves


def test_ldm_weights_carry_membership_inference(trained_site):
    ws, signer = trained_site
    with pytest.raises(PrivacyGateError, match="allow-generative-weights"):
        export_weights(ws, "ldm", signer)
    res = export_weights(ws, "ldm", signer, allow_generative=True, max_mia_auc=1.0)
    mia = res.manifest["privacy"]["weights"]["membership_inference"]
    for key in ("autoencoder_reconstruction_auc", "diffusion_denoising_auc"):
        assert 0.0 <= mia[key] <= 1.0
    assert sorted(res.manifest["payload"]["weights"]) == ["autoencoder", "diffusion"]
    with pytest.raises(PrivacyGateError, match="membership inference AUC"):
        export_weights(ws, "ldm", signer, allow_generative=True, max_mia_auc=-0.01)
