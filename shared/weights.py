"""Model weights on disk: safetensors (no pickle, nothing executable) plus a JSON config that
is enough to rebuild the network. Written atomically as one folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shared.atomic import atomic_directory, atomic_write_json
from shared.errors import InputError

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def save_weights(folder: Path, state: dict[str, Any], config: dict[str, Any]) -> None:
    """Write ``state`` (a torch state dict) and ``config`` to ``folder`` atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with atomic_directory(folder) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE))
        atomic_write_json(tmp / CONFIG_FILE, config)


def load_weights(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read (state dict, config) written by ``save_weights``."""
    from safetensors.torch import load_file

    wf, cf = folder / WEIGHTS_FILE, folder / CONFIG_FILE
    if not wf.is_file() or not cf.is_file():
        raise InputError(f"no weights in {folder} (expected {WEIGHTS_FILE} and {CONFIG_FILE})")
    try:
        return load_file(str(wf)), json.loads(cf.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read weights in {folder}: {exc}") from None
