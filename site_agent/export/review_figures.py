"""Figures of the HTML review page, as PNG bytes: the memorisation histogram and the montage of
what leaves. The montage reads the bundle's own payload, so only synthetic images can appear.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

SEQUENCES = ("t2w", "hbv", "adc")
SEQUENCE_NAMES = {"t2w": "T2-weighted", "hbv": "high-b DWI", "adc": "ADC (µm²/s)"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _panel(
    ax: Any,
    synthetic: np.ndarray,
    flagged: np.ndarray,
    held_out: np.ndarray,
    threshold: float,
    xlabel: str,
) -> None:
    """One measure: screened samples stacked by outcome, held-out reference as an outline,
    each as a share of its own group so groups of different sizes compare."""
    below = (synthetic < threshold) & ~flagged
    groups = [
        (synthetic[~flagged & ~below], "#3b7dd8", "synthetic, exported (above threshold)"),
        (synthetic[below], "#e0a526", "synthetic, below threshold but not unique (kept)"),
        (synthetic[flagged], "#c62828", "synthetic, flagged (replaced, not exported)"),
    ]
    everything = np.concatenate([synthetic, held_out, [threshold]])
    lo, hi = float(everything.min()), float(everything.max())
    pad = 0.05 * (hi - lo) or 0.01
    bins = np.linspace(lo - pad, hi + pad, int(np.clip(len(synthetic) // 2, 12, 40)) + 1)
    n = max(len(synthetic), 1)
    data = [g[0] for g in groups]
    ax.hist(
        data,
        bins=bins,
        stacked=True,
        weights=[np.full(len(d), 1.0 / n) for d in data],
        color=[g[1] for g in groups],
        edgecolor="white",  # adjacent bars stay apart
        linewidth=0.6,
        label=[f"{g[2]}: {len(g[0])}" for g in groups],
    )
    if len(held_out):
        ax.hist(
            held_out,
            bins=bins,
            weights=np.full(len(held_out), 1.0 / len(held_out)),
            histtype="step",
            linewidth=2,
            color="#333333",
            label=f"held-out real cases (reference): {len(held_out)}",
        )
    ax.axvline(threshold, color="#c62828", linestyle="--", linewidth=2)
    ax.annotate(
        f"threshold {threshold:.4f}",
        (threshold, 1),
        xycoords=("data", "axes fraction"),
        xytext=(0, 4),
        textcoords="offset points",
        ha="center",
        color="#c62828",
        fontsize=9,
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("share of each group")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    ax.grid(alpha=0.25)


def memorisation_histogram(memo: dict[str, Any]) -> bytes | None:
    """Nearest-training distances of every screened sample against the calibrated threshold and
    the held-out reference; None when the manifest predates per-case distances."""
    per = memo.get("per_case") or {}
    if not per.get("image_distance"):
        return None
    flagged = np.asarray(per["flagged"], dtype=bool)
    panels = [
        (
            np.asarray(per["image_distance"], dtype=float),
            np.asarray(memo.get("held_out_image_distances") or [], dtype=float),
            float(memo["image_threshold"]),
            "image distance: 1 − mean Pearson r to the nearest training case",
        )
    ]
    if per.get("latent_distance") and memo.get("latent_threshold") is not None:
        panels.append(
            (
                np.asarray(per["latent_distance"], dtype=float),
                np.asarray(memo.get("held_out_latent_distances") or [], dtype=float),
                float(memo["latent_threshold"]),
                "latent distance: RMS to the nearest training latent",
            )
        )
    plt = _pyplot()
    # one measure per row: side by side they would shrink below reading size on the page
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 4.6 * len(panels)), squeeze=False)
    for ax, (syn, ref, thr, label) in zip(axes[:, 0], panels, strict=True):
        _panel(ax, syn, flagged, ref, thr, label)
    fig.suptitle("Distance to the nearest training case: screened samples vs held-out real cases")
    fig.tight_layout()
    return _png(fig)


def _middle_slice(root: Path, case_id: str, seq: str) -> np.ndarray:
    import gzip

    import nibabel as nib

    data = gzip.decompress((root / f"payload/cases/{case_id}/nifti/{seq}.nii.gz").read_bytes())
    arr = np.asarray(nib.Nifti1Image.from_bytes(data).dataobj, dtype=np.float32)
    return arr[:, :, arr.shape[2] // 2].T


def montage_by_sequence(
    root: Path, cases: list[dict[str, Any]], per_row: int = 6
) -> dict[str, bytes]:
    """Per sequence one PNG: a row of csPCa-positive and a row of negative synthetic cases
    (middle axial slice, one grey scale per sequence), read from the bundle's payload."""
    pos = [c for c in cases if int(c.get("cspca", 0)) == 1][:per_row]
    neg = [c for c in cases if int(c.get("cspca", 0)) != 1][:per_row]
    if not pos and not neg:
        return {}
    plt = _pyplot()
    out = {}
    cols = max(len(pos), len(neg), 1)
    for seq in SEQUENCES:
        slices = {c["id"]: _middle_slice(root, c["id"], seq) for c in pos + neg}
        values = np.concatenate([s.ravel() for s in slices.values()])
        vmin, vmax = np.percentile(values, [1, 99])
        fig, axes = plt.subplots(2, cols, figsize=(1.7 * cols, 4.0), squeeze=False)
        for r, (row, label) in enumerate(((pos, "csPCa positive"), (neg, "csPCa negative"))):
            for j in range(cols):
                ax = axes[r][j]
                ax.set_xticks([])
                ax.set_yticks([])
                if j < len(row):
                    ax.imshow(
                        slices[row[j]["id"]], cmap="gray", origin="lower", vmin=vmin, vmax=vmax
                    )
                    ax.set_title(row[j]["id"], fontsize=8)
                else:
                    ax.set_axis_off()
            axes[r][0].set_ylabel(f"{label}\n({len(row)} shown)", fontsize=8)
            if not row:
                axes[r][0].set_axis_on()
                axes[r][0].text(0.5, 0.5, "none", ha="center", va="center", fontsize=9)
        fig.suptitle(f"{SEQUENCE_NAMES[seq]} — synthetic cases leaving the site", fontsize=10)
        fig.tight_layout()
        out[seq] = _png(fig)
    return out
