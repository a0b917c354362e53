"""The case format shared by real and synthetic cases (see DESIGN.md, "Contracts").

One folder per case::

    <case_id>/t2w.nii.gz  hbv.nii.gz  adc.nii.gz   float32, one common grid (the profile's)
    <case_id>/lesion.nii.gz                         optional, uint8, evaluation only
    <case_id>/prostate.nii.gz                       optional, uint8, gland mask (evaluation)
    <case_id>/case.json                             labels, grid, provenance; no names/IDs/dates

Intensities: t2w and hbv are scaled per volume, (x - p1) / (p99 - p1) with the percentiles of
the acquired volume, clipped to [0, 3]; adc is value / 3000 µm²/s clipped to [0, 1], so its
physical meaning survives and can be written back in µm²/s.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.atomic import atomic_directory, atomic_write_json
from shared.errors import InputError
from shared.volume import Volume, load_nifti, save_nifti

FORMAT = "bpmri-case/1"
SEQUENCES = ("t2w", "hbv", "adc")
MASKS = ("lesion", "prostate")
ADC_MAX_UM2_S = 3000.0
SCALED_CLIP = (0.0, 3.0)


@dataclass
class Label:
    cspca: int | None = None  # 1 = clinically significant cancer
    isup: int | None = None
    pirads: int | None = None
    source: str | None = None  # "histopathology", "site", "pirads" or "generated"


@dataclass
class CaseMeta:
    case_id: str
    origin: str  # "real" or "synthetic"
    label: Label
    grid_size: list[int]
    grid_spacing: list[float]
    profile: str
    sequences: dict[str, dict[str, Any]] = field(default_factory=dict)
    intensity: dict[str, dict[str, Any]] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    has_lesion_mask: bool = False
    has_prostate_mask: bool = False
    format: str = FORMAT

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CaseMeta:
        d = dict(d)
        d["label"] = Label(**d.get("label", {}))
        return cls(**d)


@dataclass
class Case:
    meta: CaseMeta
    volumes: dict[str, Volume]  # t2w, hbv, adc (and optionally lesion)

    def stack(self, sequences: tuple[str, ...] = SEQUENCES) -> np.ndarray:
        """Channels-first array (C, X, Y, Z) float32, ready for a network."""
        return np.stack([self.volumes[s].array for s in sequences]).astype(np.float32)


def scale_percentile(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip((arr - lo) / max(hi - lo, 1e-6), *SCALED_CLIP).astype(np.float32)


def scale_adc(arr_um2_s: np.ndarray) -> np.ndarray:
    return np.clip(arr_um2_s / ADC_MAX_UM2_S, 0.0, 1.0).astype(np.float32)


def write_case(folder: Path, meta: CaseMeta, volumes: dict[str, Volume]) -> None:
    """Write a case atomically: a reader sees the old case, the new one, or none."""
    missing = [s for s in SEQUENCES if s not in volumes]
    if missing:
        raise ValueError(f"write_case needs volumes {SEQUENCES}, missing {missing}")
    with atomic_directory(folder) as tmp:
        for name, vol in volumes.items():
            dtype = np.uint8 if name in MASKS else np.float32
            save_nifti(vol, tmp / f"{name}.nii.gz", dtype)
        atomic_write_json(tmp / "case.json", meta.to_json())


def read_meta(folder: Path) -> CaseMeta:
    try:
        return CaseMeta.from_json(json.loads((folder / "case.json").read_text()))
    except (OSError, json.JSONDecodeError, TypeError) as exc:
        raise InputError(f"not a readable case folder: {folder} ({exc})") from None


def read_case(folder: Path, with_mask: bool = False) -> Case:
    meta = read_meta(folder)
    names = list(SEQUENCES)
    if with_mask:
        names += ["lesion"] if meta.has_lesion_mask else []
        names += ["prostate"] if meta.has_prostate_mask else []
    return Case(meta, {n: load_nifti(folder / f"{n}.nii.gz") for n in names})


def list_cases(store: Path) -> list[Path]:
    """Complete case folders in ``store`` (those with a case.json), sorted."""
    if not store.is_dir():
        return []
    return sorted(
        p for p in store.iterdir() if not p.name.startswith(".") and (p / "case.json").is_file()
    )
