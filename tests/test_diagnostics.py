"""Synthetic-set diagnostics (issue 12, point 1) on constructed data where the answer is known:
label fidelity of label-shuffled vs faithful copies, TSTR of a copy of the training set,
precision/recall of a set against itself, a collapsed copy and off-manifold noise."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from shared.case_format import list_cases, read_case
from shared.profiles import get_profile
from site_agent.generative import diagnostics as dg
from site_agent.generative.pipeline import model_dir
from tests.test_fidelity_report import GRID, _write, make_real, train_tiny_autoencoder

N_REAL = 16
HELD_OUT = ("case-000", "case-001", "case-002", "case-003")  # 2 positive, 2 negative


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("diagnostics") / "ws"
    make_real(ws, n=N_REAL)
    train_tiny_autoencoder(ws)
    holdout = ws / "models" / "generative" / "holdout.json"
    holdout.write_text(json.dumps({"held_out": list(HELD_OUT)}))
    return ws


def training_cases(ws: Path) -> list[Path]:
    return [f for f in list_cases(ws / "cases" / "real") if f.name not in HELD_OUT]


def write_synthetic(root: Path, items: list[tuple[str, int, dict[str, np.ndarray]]]) -> list[Path]:
    for cid, y, vols in items:
        _write(root, cid, "synthetic", y, vols)
    return [root / cid for cid, _, _ in items]


def volumes(folder: Path) -> dict[str, np.ndarray]:
    case = read_case(folder)
    return {s: case.volumes[s].array for s in ("t2w", "hbv", "adc")}


def copies(ws: Path, root: Path, labels: str = "same") -> list[Path]:
    """Copies of the real training cases as synthetic ones. ``labels="same"``: each with its
    own label, in the same order; ``"both"``: each twice, once labelled 1 and once 0."""
    items = []
    for f in training_cases(ws):
        y = int(read_case(f).meta.label.cspca)
        if labels == "same":
            items.append((f"syn-{f.name}", y, volumes(f)))
        else:
            items += [(f"syn-{f.name}-{c}", c, volumes(f)) for c in (0, 1)]
    return write_synthetic(root, items)


# --- precision and recall: the pure function ------------------------------------------------


def test_knn_radii_equal_a_naive_computation():
    x = np.random.default_rng(0).normal(size=(9, 4))
    naive = [sorted(np.linalg.norm(x[i] - x[j]) for j in range(9) if j != i)[2] for i in range(9)]
    np.testing.assert_allclose(dg.knn_radii(x, 3), naive, rtol=1e-12)
    with pytest.raises(ValueError):
        dg.knn_radii(x[:3], 3)


def test_precision_recall_of_a_set_against_itself_and_a_fresh_sample():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 8))
    same = dg.precision_recall(x, x.copy())
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["k"] == 3
    fresh = dg.precision_recall(x, rng.normal(size=(200, 8)))
    assert fresh["precision"] > 0.75 and fresh["recall"] > 0.75


def test_collapsed_copy_has_low_recall_and_off_manifold_samples_low_precision():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 8))
    collapsed = dg.precision_recall(x, np.repeat(x[:1], 50, axis=0))
    # every synthetic point is a real point (precision 1) but covers only itself
    assert collapsed["precision"] == 1.0 and collapsed["recall"] == pytest.approx(1 / 200)
    far = dg.precision_recall(x, rng.normal(size=(200, 8)) + 6.0)
    assert far["precision"] < 0.05 and far["recall"] < 0.05
    # half off the manifold: precision near one half, recall unchanged by the far half
    half = np.concatenate([x[:100], rng.normal(size=(100, 8)) + 6.0])
    mixed = dg.precision_recall(x, half)
    assert 0.45 <= mixed["precision"] <= 0.55
    naive_precision = np.mean(
        [(cdist(half[i : i + 1], x)[0] <= dg.knn_radii(x, 3)).any() for i in range(200)]
    )
    assert mixed["precision"] == naive_precision


# --- the diagnostics on a workspace ----------------------------------------------------------


@pytest.fixture(scope="module")
def faithful(workspace, tmp_path_factory):
    """Diagnostics of an exact copy of the real training cases, labels kept."""
    syn = copies(workspace, tmp_path_factory.mktemp("faithful"))
    return dg.synthetic_diagnostics(workspace, syn, seed=0)


def test_faithful_copy_keeps_the_labels_and_covers_the_real_cases(faithful):
    lf = faithful["label_fidelity"]
    assert lf["n_synthetic"] == N_REAL - len(HELD_OUT) and lf["n_heldout"] == len(HELD_OUT)
    assert lf["auc_real_heldout"] >= 0.75  # the real-trained classifier learned the lesion
    assert lf["auc_synthetic"] >= 0.9 and lf["ap_synthetic"] >= 0.9
    # identical cases in the identical order: the synthetic-trained classifier is the
    # real-trained one, so TSTR equals train-real exactly
    t = faithful["tstr"]
    assert t["auc_train_synthetic"] == t["auc_train_real"] == lf["auc_real_heldout"]
    assert t["ap_train_synthetic"] == t["ap_train_real"]
    for s in ("t2w", "hbv", "adc"):
        pr = faithful["precision_recall"][s]
        assert pr["synthetic"]["precision"] == 1.0 and pr["synthetic"]["recall"] == 1.0, s
        assert pr["real_heldout_baseline"]["n_synthetic"] == len(HELD_OUT)
        assert pr["real_heldout_baseline"]["k"] == 3
        matched = pr["synthetic_at_heldout_size"]
        assert matched["n_synthetic"] == len(HELD_OUT) and matched["recall"] < 1.0
    st = faithful["settings"]
    assert st["k"] == 3 and st["classifier"]["network"] == get_profile("tiny").classifier.network
    assert st["classifier"]["steps"] == 30 and st["split"] == "models/generative/holdout.json"
    assert st["cases"]["real_train"] == N_REAL - len(HELD_OUT)
    json.dumps(faithful)  # JSON-able


def test_shuffled_labels_give_chance_label_fidelity(workspace, faithful, tmp_path):
    """Every real training case once as positive and once as negative: whatever the classifier
    scores, each score appears in both classes, so the AUC is exactly 0.5."""
    syn = copies(workspace, tmp_path / "shuffled", labels="both")
    res = dg.synthetic_diagnostics(workspace, syn, seed=0)
    assert res["label_fidelity"]["auc_synthetic"] == pytest.approx(0.5, abs=1e-12)
    assert res["label_fidelity"]["ap_synthetic"] == pytest.approx(0.5, abs=0.05)
    # the same real-trained classifier (cached) scored the held-out cases
    assert (
        res["label_fidelity"]["auc_real_heldout"] == faithful["label_fidelity"]["auc_real_heldout"]
    )
    cached = list((workspace / "work" / "diagnostics").glob("classifier-real-*"))
    assert len(cached) == 1


def test_collapsed_synthetic_set_has_low_recall(workspace, tmp_path):
    """One real training case repeated (labels alternating): every sample is on the manifold,
    but the set covers only one real case."""
    one = training_cases(workspace)[0]
    vols = volumes(one)
    syn = write_synthetic(
        tmp_path / "collapsed", [(f"syn-{i:03d}", i % 2, vols) for i in range(12)]
    )
    res = dg.synthetic_diagnostics(workspace, syn, seed=0)
    n_train = N_REAL - len(HELD_OUT)
    for s in ("t2w", "hbv", "adc"):
        pr = res["precision_recall"][s]
        assert pr["synthetic"]["precision"] == 1.0, s
        assert pr["synthetic"]["recall"] == pytest.approx(1 / n_train), s
        assert pr["real_heldout_baseline"]["recall"] > pr["synthetic_at_heldout_size"]["recall"], s


def test_noise_volumes_are_off_the_manifold(workspace, tmp_path):
    rng = np.random.default_rng(3)
    items = [
        (
            f"syn-{i:03d}",
            i % 2,
            {s: rng.uniform(0, 3, GRID).astype(np.float32) for s in ("t2w", "hbv", "adc")},
        )
        for i in range(12)
    ]
    res = dg.synthetic_diagnostics(workspace, write_synthetic(tmp_path / "noise", items), seed=0)
    for s in ("t2w", "hbv", "adc"):
        pr = res["precision_recall"][s]["synthetic"]
        assert pr["precision"] <= 0.1 and pr["recall"] <= 0.1, (s, pr)


def test_deterministic_and_cached(workspace, faithful, tmp_path):
    syn = copies(workspace, tmp_path / "again")
    before = {p.name: p.stat().st_mtime_ns for p in (workspace / "work" / "diagnostics").iterdir()}
    again = dg.synthetic_diagnostics(workspace, syn, seed=0)
    assert again == faithful
    after = {p.name: p.stat().st_mtime_ns for p in (workspace / "work" / "diagnostics").iterdir()}
    assert after == before  # nothing retrained, nothing rewritten


def test_unusable_inputs_are_input_errors(workspace, tmp_path):
    from shared.errors import InputError

    ws = tmp_path / "ws"
    make_real(ws, n=4)
    with pytest.raises(InputError, match="no trained autoencoder"):
        dg.synthetic_diagnostics(ws, list_cases(ws / "cases" / "real"))
    empty = tmp_path / "empty"
    shutil.copytree(model_dir(workspace, "autoencoder"), model_dir(empty, "autoencoder"))
    with pytest.raises(InputError, match="no labelled real cases"):
        dg.synthetic_diagnostics(empty, [])
    one_class = tmp_path / "one-class"
    shutil.copytree(model_dir(workspace, "autoencoder"), model_dir(one_class, "autoencoder"))
    make_real(one_class, n=1)
    with pytest.raises(InputError, match="one class only"):
        dg.synthetic_diagnostics(one_class, list_cases(one_class / "cases" / "real"))
