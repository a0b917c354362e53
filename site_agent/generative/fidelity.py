"""Does the autoencoder keep the lesions? Per-sequence lesion-contrast retention of
reconstructions, and the gate that stops before diffusion training when contrast is lost.

Two measures, chosen by what the case store holds:

* ``lesion-mask`` (cases with a lesion mask): contrast = mean(lesion) - mean(ring), the ring
  being the voxels outside the lesion within ``ring_mm`` of it (the surrounding gland; the
  case format has no gland mask); retention = mean contrast of reconstructions / mean contrast
  of originals, over cases.
* ``class-percentile`` (no masks): contrast = mean over positives - mean over negatives of a
  lesion-sensitive percentile per volume (hbv 98th: bright lesions; adc and t2w 2nd: dark
  lesions), taken in the central box (middle half of every axis) where ingest centres the
  prostate, so a small lesion is not diluted by the whole field of view; retention = that
  contrast in reconstructions / in originals.

A retention of 1 keeps the contrast, 0 erases it. Contrast too small to measure in the
originals gives ``None`` (not gated).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from shared.case_format import SEQUENCES
from shared.errors import InputError

PERCENTILE = {"t2w": 2.0, "hbv": 98.0, "adc": 2.0}
MIN_CONTRAST = 1e-3  # below this (case-format intensity units) the originals show no contrast


@dataclass
class CaseContrast:
    """Per-case measurements, one entry per sequence (t2w, hbv, adc)."""

    label: int  # 1, 0 or -1 (unlabelled)
    lesion_original: list[float] | None  # mean(lesion) - mean(ring), None without a mask
    lesion_reconstructed: list[float] | None
    pct_original: list[float] = field(default_factory=list)
    pct_reconstructed: list[float] = field(default_factory=list)


@dataclass
class SequenceRetention:
    original_contrast: float
    reconstructed_contrast: float
    retention: float | None  # None: no measurable contrast in the originals


@dataclass
class RetentionReport:
    method: str  # "lesion-mask" or "class-percentile" or "none"
    n_cases: int  # cases the measure used
    sequences: dict[str, SequenceRetention]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RetentionReport:
        seqs = {k: SequenceRetention(**v) for k, v in d["sequences"].items()}
        return cls(d["method"], int(d["n_cases"]), seqs)


def lesion_ring(mask: np.ndarray, spacing: np.ndarray, ring_mm: float = 5.0) -> np.ndarray:
    """Voxels outside ``mask`` within ``ring_mm`` (physical distance, anisotropic voxels)."""
    from scipy.ndimage import distance_transform_edt

    d = distance_transform_edt(~mask, sampling=[float(s) for s in spacing])
    return (d > 0) & (d <= ring_mm)


def central_box(shape: tuple[int, ...]) -> tuple[slice, ...]:
    """The middle half of every axis."""
    return tuple(slice(n // 4, n - n // 4) for n in shape)


def lesion_contrast(volume: np.ndarray, mask: np.ndarray, ring: np.ndarray) -> float:
    return float(volume[mask].mean() - volume[ring].mean())


def measure_case(
    original: np.ndarray,
    reconstructed: np.ndarray,
    label: int,
    mask: np.ndarray | None,
    spacing: np.ndarray,
    ring_mm: float = 5.0,
    gland: np.ndarray | None = None,
) -> CaseContrast:
    """Contrast measurements of one case; ``original``/``reconstructed`` are (3, X, Y, Z).

    With a prostate mask (``gland``) the ring is kept inside the gland: periprostatic fat
    (ADC near zero) would otherwise cancel the lesion's ADC restriction.
    """
    lo = lr = None
    if mask is not None and mask.any():
        ring = lesion_ring(mask, spacing, ring_mm)
        if gland is not None and (ring & gland).any():
            ring = ring & gland
        if ring.any():
            lo = [lesion_contrast(original[i], mask, ring) for i in range(len(SEQUENCES))]
            lr = [lesion_contrast(reconstructed[i], mask, ring) for i in range(len(SEQUENCES))]
    box = central_box(original.shape[1:])
    po = [float(np.percentile(original[i][box], PERCENTILE[s])) for i, s in enumerate(SEQUENCES)]
    pr = [
        float(np.percentile(reconstructed[i][box], PERCENTILE[s])) for i, s in enumerate(SEQUENCES)
    ]
    return CaseContrast(int(label), lo, lr, po, pr)


def _retention(orig: float, recon: float) -> SequenceRetention:
    ratio = None if abs(orig) < MIN_CONTRAST else recon / orig
    return SequenceRetention(orig, recon, ratio)


def summarise(cases: list[CaseContrast]) -> RetentionReport:
    """Aggregate per-case measurements; lesion masks win when any case has one."""
    with_mask = [c for c in cases if c.lesion_original is not None]
    if with_mask:
        o = np.mean([c.lesion_original for c in with_mask], axis=0)
        r = np.mean([c.lesion_reconstructed for c in with_mask], axis=0)
        seqs = {s: _retention(float(o[i]), float(r[i])) for i, s in enumerate(SEQUENCES)}
        return RetentionReport("lesion-mask", len(with_mask), seqs)
    pos = [c for c in cases if c.label == 1]
    neg = [c for c in cases if c.label == 0]
    if not pos or not neg:
        empty = SequenceRetention(0.0, 0.0, None)
        return RetentionReport("none", 0, {s: empty for s in SEQUENCES})
    seqs = {}
    for i, s in enumerate(SEQUENCES):
        o = np.mean([c.pct_original[i] for c in pos]) - np.mean([c.pct_original[i] for c in neg])
        r = np.mean([c.pct_reconstructed[i] for c in pos]) - np.mean(
            [c.pct_reconstructed[i] for c in neg]
        )
        seqs[s] = _retention(float(o), float(r))
    return RetentionReport("class-percentile", len(pos) + len(neg), seqs)


def describe(report: RetentionReport) -> str:
    """One line, e.g. ``lesion-mask on 12 cases: t2w 20%, hbv 73%, adc 82%``."""
    parts = [
        f"{s} {'n/a' if v.retention is None else f'{100 * v.retention:.0f}%'}"
        for s, v in report.sequences.items()
    ]
    return f"{report.method} on {report.n_cases} cases: " + ", ".join(parts)


def check_retention(
    report: RetentionReport, min_retention: float, sequences: tuple[str, ...] = SEQUENCES
) -> None:
    """Raise ``InputError`` when a gated sequence keeps less than ``min_retention`` of its
    lesion contrast. ``min_retention`` <= 0 turns the gate off."""
    if min_retention <= 0:
        return
    lost = {
        s: v.retention
        for s, v in report.sequences.items()
        if s in sequences and v.retention is not None and v.retention < min_retention
    }
    if not lost:
        return
    what = ", ".join(f"{s} keeps {100 * r:.0f}%" for s, r in lost.items())
    raise InputError(
        f"the autoencoder loses lesion contrast ({what} of the originals' contrast, measured "
        f"by {report.method} on {report.n_cases} cases; at least {100 * min_retention:.0f}% "
        "is required), so synthetic cases would not carry the lesions",
        hint="train the autoencoder longer or with more latent channels or a higher MSE "
        "weight (profile autoencoder settings), then delete models/generative/autoencoder to "
        "retrain it; or supply better weights with --autoencoder-weights",
    )
