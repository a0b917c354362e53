"""Real training cases for the generative model: validation before any training starts, and
class-balanced batch selection.

All checks raise ``InputError`` with a hint, so a hospital sees what is wrong with its case
store before minutes of training are spent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shared.case_format import SEQUENCES, list_cases, read_case, read_meta
from shared.errors import InputError
from shared.profiles import Profile


@dataclass
class TrainingSet:
    """Real cases loaded into memory (they are small at the tiny and cpu grids).

    ``images``: (N, 3, X, Y, Z) float32 in case-format intensities, channels t2w, hbv, adc;
    ``labels``: (N,) int, 1 csPCa, 0 none, -1 unlabelled; ``spacing``: (N, 3) mm;
    ``lesions``: per case a (X, Y, Z) bool mask or None; ``glands``: the prostate mask likewise
    (it keeps the lesion's comparison ring inside the gland).
    """

    case_ids: list[str]
    images: np.ndarray
    labels: np.ndarray
    spacing: np.ndarray
    lesions: list[np.ndarray | None]
    glands: list[np.ndarray | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.case_ids)

    @property
    def labelled(self) -> np.ndarray:
        """Indices of cases with a csPCa label."""
        return np.flatnonzero(self.labels >= 0)

    def subset(self, index: np.ndarray) -> TrainingSet:
        idx = [int(i) for i in index]
        return TrainingSet(
            [self.case_ids[i] for i in idx],
            self.images[idx],
            self.labels[idx],
            self.spacing[idx],
            [self.lesions[i] for i in idx],
            [self.glands[i] for i in idx] if self.glands else [],
        )


def holdout_split(
    labels: np.ndarray, fraction: float, seed: int, keep_at_least: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(training, held-out) indices: ``floor(fraction * n)`` cases of each class are kept out
    of generative training, so the privacy screen can calibrate "how close does a patient the
    model never saw come to the training set" (unlabelled cases always train); each class
    keeps at least ``keep_at_least`` training cases."""
    rng = np.random.default_rng([seed, 4099])
    held: list[int] = []
    for cls in (0, 1):
        idx = np.flatnonzero(labels == cls)
        k = max(0, min(int(np.floor(len(idx) * fraction)), len(idx) - keep_at_least))
        held += rng.permutation(idx)[:k].tolist()
    train = np.setdiff1d(np.arange(len(labels)), held)
    return train, np.sort(np.asarray(held, dtype=np.int64))


def real_store(workspace: Path) -> Path:
    return workspace / "cases" / "real"


def check_store(store: Path, profile: Profile, min_cases: int, min_per_class: int) -> None:
    """Validate a case store from its case.json files and file listing only (fast).

    Raises ``InputError`` for: too few cases, a single class (or too few of one), a missing
    sequence file, or a grid other than the profile's.
    """
    folders = list_cases(store)
    if not folders:
        raise InputError(
            f"no cases in {store}", hint="run `site-agent ingest` into this workspace first"
        )
    missing = {f.name: [s for s in SEQUENCES if not (f / f"{s}.nii.gz").is_file()] for f in folders}
    missing = {k: v for k, v in missing.items() if v}
    if missing:
        first = ", ".join(f"{k} lacks {'/'.join(v)}" for k, v in list(missing.items())[:3])
        raise InputError(
            f"{len(missing)} case(s) miss a sequence ({first})",
            hint="every case needs t2w, hbv and adc: re-run ingest or remove those case folders",
        )
    metas = [read_meta(f) for f in folders]
    grid = list(profile.grid.size)
    off_grid = [m.case_id for m in metas if list(m.grid_size) != grid]
    if off_grid:
        raise InputError(
            f"{len(off_grid)} case(s) are not on the {profile.name} grid {grid} "
            f"(e.g. {off_grid[0]})",
            hint=f"ingest again with --profile {profile.name}, or train with the cases' profile",
        )
    labels = [m.label.cspca for m in metas if m.label.cspca is not None]
    n_pos = sum(1 for y in labels if int(y) == 1)
    n_neg = len(labels) - n_pos
    if len(labels) < min_cases:
        raise InputError(
            f"only {len(labels)} labelled case(s) in {store}; the {profile.name} profile needs "
            f"at least {min_cases} to train a generative model",
            hint="ingest more studies with labels (--labels) before training",
        )
    if n_pos == 0 or n_neg == 0:
        only = "positive" if n_neg == 0 else "negative"
        raise InputError(
            f"all {len(labels)} labelled cases are {only} (csPCa={int(n_neg == 0)}); the model "
            "is conditioned on the label and needs both classes",
            hint="add cases of the other class, or check the labels CSV's cspca column",
        )
    if min(n_pos, n_neg) < min_per_class:
        raise InputError(
            f"only {min(n_pos, n_neg)} case(s) of the smaller class ({n_pos} positive, "
            f"{n_neg} negative); the {profile.name} profile needs {min_per_class} of each",
            hint="add labelled cases of the smaller class",
        )


def load_training_set(store: Path) -> TrainingSet:
    """Read every case of ``store`` (sequences, label, spacing, lesion mask if any)."""
    ids, images, labels, spacing, lesions, glands = [], [], [], [], [], []
    for folder in list_cases(store):
        case = read_case(folder, with_mask=True)
        ids.append(case.meta.case_id)
        images.append(case.stack())
        y = case.meta.label.cspca
        labels.append(-1 if y is None else int(y))
        spacing.append([float(v) for v in case.meta.grid_spacing])
        mask = case.volumes.get("lesion")
        lesions.append(None if mask is None else mask.array > 0)
        gland = case.volumes.get("prostate")
        glands.append(None if gland is None else gland.array > 0)
    return TrainingSet(
        ids,
        np.stack(images).astype(np.float32),
        np.asarray(labels, dtype=np.int64),
        np.asarray(spacing, dtype=np.float32),
        lesions,
        glands,
    )


def balanced_batch(rng: np.random.Generator, labels: np.ndarray, batch_size: int) -> np.ndarray:
    """Indices of a class-balanced batch: half positives, half negatives (with replacement
    when a class is smaller than its half). ``labels`` holds 0/1 only."""
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    n_pos = batch_size // 2 + (int(rng.integers(2)) if batch_size % 2 else 0)
    take_pos = rng.choice(pos, n_pos, replace=len(pos) < n_pos)
    take_neg = rng.choice(neg, batch_size - n_pos, replace=len(neg) < batch_size - n_pos)
    return rng.permutation(np.concatenate([take_pos, take_neg]))
