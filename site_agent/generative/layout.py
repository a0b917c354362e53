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
