"""Where the generative stage keeps its files in a site workspace.

Paths only, no torch: commands that just read what the stage wrote (the fidelity report's
up-to-date check, the memorisation screen) find its files without importing the models.
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS = "model.safetensors"


def model_dir(workspace: Path, stage: str) -> Path:
    return workspace / "models" / "generative" / stage


def work_dir(workspace: Path, stage: str) -> Path:
    return workspace / "work" / "generative" / stage


def synthetic_store(workspace: Path) -> Path:
    return workspace / "cases" / "synthetic"


def holdout_path(workspace: Path) -> Path:
    """The real cases ``train`` held out of generative training (the privacy screen and the
    fidelity diagnostics calibrate on them)."""
    return workspace / "models" / "generative" / "holdout.json"


def latent_index_path(workspace: Path) -> Path:
    """The latent cache's index: the real cases the generator trained on, its scale factors."""
    return work_dir(workspace, "latents") / "index.json"
