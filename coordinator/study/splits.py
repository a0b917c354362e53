"""External-data splits: one fixed train/val/test split, and nested, label-stratified fraction
subsets of the training split drawn anew for every seed.

Every condition uses the same subset for a given (seed, fraction), so conditions are compared on
paired data; each smaller subset is contained in the larger one of the same seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shared.errors import InputError


@dataclass(frozen=True)
class Split:
    train: tuple[int, ...]
    val: tuple[int, ...]
    test: tuple[int, ...]


def stratified_split(labels: Sequence[int], fractions: dict[str, float], seed: int) -> Split:
    """Split case indices into train/val/test keeping the positive rate in each part."""
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for cls in (0, 1):
        idx = rng.permutation(np.flatnonzero(y == cls))
        n = len(idx)
        n_val = round(n * fractions["val"])
        n_test = round(n * fractions["test"])
        parts["val"] += idx[:n_val].tolist()
        parts["test"] += idx[n_val : n_val + n_test].tolist()
        parts["train"] += idx[n_val + n_test :].tolist()
    for name, idx in parts.items():
        if len({int(y[i]) for i in idx}) < 2:
            raise InputError(
                f"the external {name} split has only one class ({len(idx)} cases)",
                hint="the external institution needs more cases of each class",
            )
    return Split(*(tuple(sorted(parts[k])) for k in ("train", "val", "test")))


def fraction_subsets(
    labels: Sequence[int], train: Sequence[int], fractions: Sequence[float], seed: int
) -> dict[float, tuple[int, ...]]:
    """Nested, label-stratified subsets of ``train`` for one seed: the first
    ``round(f * n_class)`` cases (at least one) of a per-seed shuffle of each class."""
    y = np.asarray(labels)
    rng = np.random.default_rng([seed, 7919])
    train = np.asarray(train)
    order = {cls: rng.permutation(train[y[train] == cls]) for cls in (0, 1)}
    out = {}
    for f in sorted(fractions):
        chosen: list[int] = []
        for cls in (0, 1):
            n = len(order[cls])
            k = min(n, max(1, round(f * n)))
            chosen += order[cls][:k].tolist()
        out[f] = tuple(sorted(int(i) for i in chosen))
    return out
