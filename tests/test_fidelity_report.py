"""The fidelity report (issue 3, point 5) on the tiny profile: the distances against naive and
scipy computations, the lesion-contrast AUC against sklearn, MS-SSIM on a tiny grid, the files
written, the CLI command and the input errors."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from shared.case_format import CaseMeta, Label, list_cases, read_case, write_case
from shared.errors import InputError
from shared.profiles import get_profile
from shared.volume import Volume
from shared.weights import save_weights
from site_agent.generative import autoencoder as ae
from site_agent.generative import fidelity_report as fr
from site_agent.generative.data import load_training_set
from site_agent.generative.pipeline import model_dir

TINY = get_profile("tiny")
GRID = TINY.grid.size
SPACING = TINY.grid.spacing
AFFINE = np.diag([*SPACING, 1.0])


def _write(root: Path, cid: str, origin: str, y: int, vols: dict, lesion=None) -> None:
    meta = CaseMeta(
        cid,
        origin,
        Label(cspca=y, source="site" if origin == "real" else "generated"),
        list(GRID),
        list(SPACING),
        "tiny",
        provenance={"sampler": "copy", "steps": 0} if origin == "synthetic" else {},
        has_lesion_mask=lesion is not None,
    )
    volumes = {k: Volume(v, AFFINE) for k, v in vols.items()}
    if lesion is not None:
        volumes["lesion"] = Volume(lesion, AFFINE)
    write_case(root / cid, meta, volumes)


def make_real(ws: Path, n: int = 8, seed: int = 0) -> None:
    """Real cases; positives carry a bright hbv / dark adc / dark t2w blob in the central box,
    the first two positives with a lesion mask."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        y = int(i % 2 == 0)
        vols = {s: rng.normal(0.5, 0.1, GRID).astype(np.float32) for s in ("t2w", "hbv", "adc")}
        lesion = None
        if y:
            c = rng.integers(9, 14, 2)
            sl = (slice(c[0] - 2, c[0] + 2), slice(c[1] - 2, c[1] + 2), slice(4, 8))
            vols["hbv"][sl] += 0.8
            vols["adc"][sl] -= 0.3
            vols["t2w"][sl] -= 0.2
            if i < 4:
                lesion = np.zeros(GRID, np.uint8)
                lesion[sl] = 1
        _write(ws / "cases" / "real", f"case-{i:03d}", "real", y, vols, lesion)


def make_synthetic(ws: Path, shift: float = 0.0, n: int = 6, seed: int = 1) -> None:
    """'Synthetic' cases: noisy copies of real ones, optionally intensity-shifted."""
    rng = np.random.default_rng(seed)
    real = list_cases(ws / "cases" / "real")
    for i in range(n):
        case = read_case(real[i % len(real)])
        vols = {
            s: np.clip(case.volumes[s].array + rng.normal(shift, 0.05, GRID), 0, 3).astype(
                np.float32
            )
            for s in ("t2w", "hbv", "adc")
        }
        _write(ws / "cases" / "synthetic", f"syn-{i:05d}", "synthetic", case.meta.label.cspca, vols)


def train_tiny_autoencoder(ws: Path) -> None:
    """A few steps of the real training API, saved where the pipeline saves it."""
    spec = dataclasses.replace(TINY.autoencoder, steps=2, checkpoint_every=2)
    data = load_training_set(ws / "cases" / "real")
    model = ae.train_autoencoder(data, spec, ws / "work" / "ae", seed=0)
    save_weights(
        model_dir(ws, "autoencoder"),
        model.state_dict(),
        ae.autoencoder_config(spec) | {"profile": "tiny"},
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("fidelity") / "ws"
    make_real(ws)
    train_tiny_autoencoder(ws)
    make_synthetic(ws)
    return ws


@pytest.fixture(scope="module")
def report(workspace):
    return fr.write_fidelity_report(workspace, seed=0, n_boot=20)


# --- the estimators ------------------------------------------------------------------------


def naive_mmd2(x: np.ndarray, y: np.ndarray, ix=None, iy=None) -> float:
    """O(n²) unbiased MMD² with k = (x.y/d + 1)^3. With ``ix``/``iy`` (original indices of a
    bootstrap resample) pairs of the same original case are skipped."""
    d = x.shape[1]
    ix = list(range(len(x))) if ix is None else list(ix)
    iy = list(range(len(y))) if iy is None else list(iy)

    def k(a, b):
        return (float(np.dot(a, b)) / d + 1.0) ** 3

    def within(z, idx):
        s = n = 0.0
        for a in range(len(z)):
            for b in range(len(z)):
                if idx[a] != idx[b]:
                    s += k(z[a], z[b])
                    n += 1
        return s / n

    cross = sum(k(a, b) for a in x for b in y) / (len(x) * len(y))
    return within(x, ix) + within(y, iy) - 2 * cross


def test_mmd2_and_kid_equal_a_naive_implementation():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(9, 5)), rng.normal(0.3, 1.2, size=(7, 5))
    assert fr.mmd2_unbiased(x, y) == pytest.approx(naive_mmd2(x, y), abs=1e-8, rel=0)
    # subsets as large as the smaller set, every subset of x is all of x (permuted)
    xs = x[:7]
    mean, std = fr.kid(xs, y, np.random.default_rng(1), n_subsets=5)
    assert mean == pytest.approx(naive_mmd2(xs, y), abs=1e-8, rel=0) and std < 1e-10
    # bootstrap counts: pairs of distinct original cases only
    ir, iy = rng.integers(0, 9, 9), rng.integers(0, 7, 7)
    kxx, kyy, kxy = (fr.polynomial_kernel(a, b) for a, b in ((x, x), (y, y), (x, y)))
    weighted = fr._mmd2(kxx, kyy, kxy, np.bincount(ir, minlength=9), np.bincount(iy, minlength=7))
    assert weighted == pytest.approx(naive_mmd2(x[ir], y[iy], ir, iy), abs=1e-8, rel=0)


def test_kid_is_near_zero_for_the_same_set_and_grows_with_a_shift():
    rng = np.random.default_rng(2)
    x, other = rng.normal(size=(200, 8)), rng.normal(size=(200, 8))
    shifted, _ = fr.kid(x, x + 1.0, np.random.default_rng(0))
    assert shifted > 1.0
    same, _ = fr.kid(x, x.copy(), np.random.default_rng(0))
    fresh, _ = fr.kid(x, other, np.random.default_rng(0))
    # identical sets: the U-statistic is -2 (mean k(x, x) - mean k(x, x')) / n, O(1/n)
    k = fr.polynomial_kernel(x, x)
    bias = -2 * (np.diag(k).mean() - k[~np.eye(200, dtype=bool)].mean()) / 200
    assert same == pytest.approx(bias, rel=1e-9) and abs(same) < 0.02 * shifted
    assert abs(fresh) < 0.02 * shifted  # a new sample of the same distribution


def test_frechet_distance_equals_scipy_sqrtm():
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 6))
    y = rng.normal(0.5, 1.0, size=(50, 6)) @ rng.normal(size=(6, 6)) * 0.5
    m1, m2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    ref = float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * np.real(sqrtm(s1 @ s2))))
    assert fr.frechet_distance(x, y) == pytest.approx(ref, rel=1e-8, abs=1e-8)
    assert fr.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    # fewer cases than features: finite and non-negative (covariances rank-deficient)
    assert 0 <= fr.frechet_distance(x[:4], y[:5]) < np.inf


def test_lesion_auc_equals_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(4)
    stat, y = rng.normal(size=12), np.array([1, 0] * 5 + [-1, -1])
    stat[y == 1] += 0.7
    keep = y >= 0
    assert fr.lesion_auc(stat, y, 1) == pytest.approx(roc_auc_score(y[keep], stat[keep]))
    assert fr.lesion_auc(stat, y, -1) == pytest.approx(roc_auc_score(y[keep], -stat[keep]))
    assert fr.lesion_auc(stat, np.ones(12), 1) is None


def test_msssim_fits_the_tiny_grid():
    cfg = fr.msssim_settings(GRID)
    assert cfg["metric"] == "ms-ssim" and cfg["scales"] == 3 and cfg["kernel_size"] == 3
    assert sum(cfg["weights"]) == pytest.approx(1.0)
    assert fr.msssim_settings((64, 64, 32))["scales"] == 4
    assert fr.msssim_settings((6, 6, 4))["metric"] == "ssim"
    rng = np.random.default_rng(5)
    vol = rng.random(GRID).astype(np.float32)
    same = fr.pairwise_similarity(np.stack([vol, vol, vol]), 1.0, cfg)
    assert same["mean"] == pytest.approx(1.0, abs=1e-5) and same["n_pairs"] == 3
    noise = fr.pairwise_similarity(rng.random((4, *GRID)).astype(np.float32), 1.0, cfg)
    assert noise["mean"] < 0.5 and noise["n_pairs"] == 6


def test_msssim_is_cached_by_volumes_and_settings(tmp_path):
    cfg = fr.msssim_settings(GRID)
    rng = np.random.default_rng(6)
    vols = rng.random((3, *GRID)).astype(np.float32)
    first = fr.cached_similarity(tmp_path, vols, 1.0, cfg)
    assert first == fr.pairwise_similarity(vols, 1.0, cfg)
    (path,) = tmp_path.glob("msssim-*.json")
    path.write_text(json.dumps(first | {"mean": 42.0}))
    assert fr.cached_similarity(tmp_path, vols, 1.0, cfg)["mean"] == 42.0  # read, not recomputed
    assert fr.cached_similarity(tmp_path, vols + 0.1, 1.0, cfg)["mean"] != 42.0
    assert fr.cached_similarity(tmp_path, vols, 3.0, cfg)["mean"] != 42.0
    assert len(list(tmp_path.glob("msssim-*.json"))) == 3


# --- the report ----------------------------------------------------------------------------


def test_report_files_and_content(workspace, report):
    out = workspace / "reports" / "fidelity"
    on_disk = json.loads((out / "fidelity.json").read_text())
    assert on_disk["sequences"].keys() == {"t2w", "hbv", "adc"}
    assert on_disk["cases"]["real"]["total"] == 8 and on_disk["cases"]["synthetic"]["total"] == 6
    ids = [p.name for p in list_cases(workspace / "cases" / "real")]
    assert not any(i in (out / "fidelity.json").read_text() for i in ids)
    for s, seq in report["sequences"].items():
        d = seq["distance"]
        assert np.isfinite(d["kid"]) and d["frechet"] >= 0
        lo, hi = d["frechet_ci95"]
        assert lo <= hi and d["kid_ci95"][0] <= d["kid_ci95"][1]
        assert d["baseline"]["half_size"] == 4 and d["n_features"] == 32
        assert seq["intensity"]["real"]["p2"] <= seq["intensity"]["real"]["p98"]
        assert 0 <= seq["diversity"]["synthetic"]["mean"] <= 1
        assert seq["diversity"]["real"]["n_pairs"] == 28
        assert seq["lesion_contrast"]["real_lesion_vs_ring"]["n_cases"] == 2, s
    hbv = report["sequences"]["hbv"]["lesion_contrast"]
    assert hbv["real"]["auc"] == 1.0 and hbv["real"]["mean_difference"] > 0.2
    assert report["sequences"]["adc"]["lesion_contrast"]["real"]["auc"] == 1.0
    assert hbv["real_lesion_vs_ring"]["mean"] > 0.5
    assert "encoder.blocks[" in report["encoder"]["layer"]

    md = (out / "fidelity.md").read_text()
    for s in ("t2w", "hbv", "adc"):
        assert f"## {s}" in md
    assert fr.PHANTOM_SENTENCE in md and "never part of an export" in md
    assert "real half vs real half" in md and "montage.png" in md

    import matplotlib.image as mpimg

    png = (out / "montage.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(out / "montage.png")
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 300
    assert not list(out.glob(".*"))  # no temporary files left


def test_report_says_whether_the_set_is_worth_exporting(workspace, report):
    """Issue 12: label fidelity, TSTR and precision/recall in the JSON and the markdown. The
    synthetic cases here are noisy copies of real ones, so they keep the lesion label."""
    on_disk = json.loads((workspace / "reports" / "fidelity" / "fidelity.json").read_text())
    d = on_disk["diagnostics"]
    assert d == json.loads(json.dumps(report["diagnostics"]))
    assert set(d["label_fidelity"]) == {
        "auc_synthetic", "ap_synthetic", "auc_real_heldout", "ap_real_heldout", "n_synthetic",
        "n_heldout",
    }  # fmt: skip
    assert {"auc_train_synthetic", "ap_train_synthetic", "auc_train_real", "ap_train_real"} <= set(
        d["tstr"]
    )
    assert d["label_fidelity"]["n_synthetic"] == 6 and d["label_fidelity"]["n_heldout"] == 2
    assert d["label_fidelity"]["auc_synthetic"] >= 0.9  # the blob survives the copy
    assert d["precision_recall"].keys() == {"t2w", "hbv", "adc"}
    for v in d["precision_recall"].values():
        assert 0 <= v["synthetic"]["precision"] <= 1 and 0 <= v["synthetic"]["recall"] <= 1
    st = d["settings"]
    assert (
        st["k"] == 3 and st["seed"] == 0 and st["classifier"]["network"] == TINY.classifier.network
    )
    assert st["split"].startswith("made here")  # this workspace has no holdout.json
    assert report["seconds"]["diagnostics"] < report["seconds"]["total"]

    md = (workspace / "reports" / "fidelity" / "fidelity.md").read_text()
    section = md.split("## Is this synthetic set worth exporting?")[1].split("\n## ")[0]
    for key in ("label_fidelity", "tstr", "precision", "recall"):
        assert d["reading"][key] in section, key
    assert "near 0.5" in section and "mode collapse" in section and "off-manifold" in section
    assert f"{d['label_fidelity']['auc_synthetic']:.3f}" in section
    assert fr.PHANTOM_SENTENCE in section
    for s in ("t2w", "hbv", "adc"):
        assert f"| {s} | " in section


def test_report_without_a_usable_split_says_why(workspace, tmp_path):
    """Real training cases of one class: the diagnostics cannot train a classifier, the rest of
    the report still stands and the section says why."""
    ws = tmp_path / "ws"
    for p in list_cases(workspace / "cases" / "real"):
        if read_case(p).meta.label.cspca == 1:
            shutil.copytree(p, ws / "cases" / "real" / p.name)
    shutil.copytree(model_dir(workspace, "autoencoder"), model_dir(ws, "autoencoder"))
    make_synthetic(ws)
    rep = fr.write_fidelity_report(ws, seed=0, n_boot=0)
    assert "one class only" in rep["diagnostics"]["error"]
    md = Path(rep["paths"]["markdown"]).read_text()
    assert "Not computed: " in md and rep["sequences"]["hbv"]["distance"]["kid"] is not None


def test_report_is_deterministic_and_sees_a_shift(workspace, report, tmp_path):
    again = fr.write_fidelity_report(workspace, tmp_path / "again", seed=0, n_boot=20)
    for s in ("t2w", "hbv", "adc"):
        a, b = report["sequences"][s]["distance"], again["sequences"][s]["distance"]
        assert a["kid"] == b["kid"] and a["frechet_ci95"] == b["frechet_ci95"]
    assert again["diagnostics"] == report["diagnostics"]
    ws = tmp_path / "ws"
    shutil.copytree(workspace / "cases" / "real", ws / "cases" / "real")
    shutil.copytree(model_dir(workspace, "autoencoder"), model_dir(ws, "autoencoder"))
    make_synthetic(ws, shift=0.5)
    shifted = fr.write_fidelity_report(ws, seed=0, n_boot=0)
    for s in ("t2w", "hbv"):
        assert shifted["sequences"][s]["distance"]["kid"] > 5 * max(
            report["sequences"][s]["distance"]["kid"], 1e-3
        )
        assert shifted["sequences"][s]["distance"]["kid_ci95"] is None


def test_missing_inputs_give_clear_errors(workspace, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(workspace / "cases" / "real", ws / "cases" / "real")
    with pytest.raises(InputError, match="no synthetic cases"):
        fr.write_fidelity_report(ws)
    make_synthetic(ws, n=3)
    with pytest.raises(InputError, match="only 3 synthetic case"):
        fr.write_fidelity_report(ws)
    make_synthetic(ws, n=4)
    with pytest.raises(InputError, match="no trained autoencoder"):
        fr.write_fidelity_report(ws)
    shutil.copytree(model_dir(workspace, "autoencoder"), model_dir(ws, "autoencoder"))
    for p in list_cases(ws / "cases" / "real")[3:]:
        shutil.rmtree(p)
    with pytest.raises(InputError, match="only 3 real case"):
        fr.write_fidelity_report(ws)
    assert not (ws / "reports").exists()


def test_cli_command_prints_where_the_report_is(workspace, tmp_path):
    import typer
    from typer.testing import CliRunner

    from site_agent.cli.fidelity_command import fidelity

    app = typer.Typer()
    app.command("fidelity")(fidelity)
    app.command("other")(lambda: None)  # keep a command group
    out = tmp_path / "cli"
    res = CliRunner().invoke(
        app, ["fidelity", "-w", str(workspace), "--out", str(out), "--n-boot", "5"]
    )
    assert res.exit_code == 0, res.output
    assert str(out / "fidelity.md") in res.output.replace("\n", "")
    assert "hbv" in res.output and (out / "montage.png").is_file()
    assert "worth exporting? label-fidelity AUC" in res.output
    res = CliRunner().invoke(
        app, ["fidelity", "-w", str(workspace), "--out", str(out), "--n-boot", "0", "--json"]
    )
    assert res.exit_code == 0, res.output
    rec = json.loads(res.output)
    assert rec["diagnostics"]["tstr"]["auc_train_real"] is not None
    assert rec["diagnostics"]["precision_recall"]["adc"]["synthetic"]["k"] == 3
    # the same inputs again: the stored report, said so; --recompute computes it again
    res = CliRunner().invoke(
        app, ["fidelity", "-w", str(workspace), "--out", str(out), "--n-boot", "0"]
    )
    assert res.exit_code == 0 and "up to date: computed" in res.output, res.output
    assert res.output.index(" t2w: KID") < res.output.index(" hbv: KID") < res.output.index(" adc")
    args = ["fidelity", "-w", str(workspace), "--out", str(out), "--n-boot", "0", "--json"]
    assert json.loads(CliRunner().invoke(app, args).output)["reused"] is True
    again = json.loads(CliRunner().invoke(app, [*args, "--recompute"]).output)
    assert again["reused"] is False and again["created"] >= rec["created"]
    (tmp_path / "empty").mkdir()  # a workspace that exists but holds no cases
    res = CliRunner().invoke(app, ["fidelity", "-w", str(tmp_path / "empty")])
    assert res.exit_code == 3 and "no synthetic cases" in res.output


def test_a_stored_report_is_reused_until_any_input_changes(workspace, tmp_path, monkeypatch):
    """``reuse``: the stored report comes back as it is, nothing read or encoded, while its
    cases, autoencoder, settings and code are the same; each change recomputes it, and so
    does a report file gone missing. Without ``reuse`` it is always computed."""
    from site_agent.generative import fidelity_inputs

    ws = tmp_path / "ws"
    shutil.copytree(workspace / "cases", ws / "cases")
    shutil.copytree(model_dir(workspace, "autoencoder"), model_dir(ws, "autoencoder"))
    first = fr.write_fidelity_report(ws, seed=0, n_boot=0)
    assert first["reused"] is False and len(first["inputs_sha256"]) == 64
    scanned: list[str] = []
    scan = fr._scan_side

    def counting_scan(name, *args, **kwargs):
        scanned.append(name)
        return scan(name, *args, **kwargs)

    monkeypatch.setattr(fr, "_scan_side", counting_scan)

    def computed(**kw) -> bool:
        """Whether the report was computed (its cases read and encoded) this time."""
        scanned.clear()
        rep = fr.write_fidelity_report(ws, seed=0, **({"n_boot": 0, "reuse": True} | kw))
        assert rep["reused"] == (not scanned)
        return bool(scanned)

    stored = fr.write_fidelity_report(ws, seed=0, n_boot=0, reuse=True)
    assert stored["reused"] and stored["created"] == first["created"]
    assert stored["sequences"] == json.loads(json.dumps(first["sequences"]))
    assert not computed()
    assert computed(reuse=False)  # without reuse: always computed
    assert computed(n_boot=3) and not computed(n_boot=3)  # a setting
    (model_dir(ws, "autoencoder") / "model.safetensors").write_bytes(
        (model_dir(workspace, "autoencoder") / "model.safetensors").read_bytes()
    )  # rewritten with the same bytes: the same inputs
    assert not computed(n_boot=3)
    make_synthetic(ws, shift=0.25)  # other synthetic cases
    assert computed(n_boot=3) and not computed(n_boot=3)
    (ws / "reports" / "fidelity" / "montage.png").unlink()
    assert computed(n_boot=3) and not computed(n_boot=3)
    monkeypatch.setattr(fidelity_inputs, "_code_digest", lambda: "another version")
    assert computed(n_boot=3)
    # the diagnostics' split of the real cases, the latent index and the weights count too
    digests = [fidelity_inputs.inputs_digest(ws, {"n_boot": 3})]
    holdout = model_dir(ws, "autoencoder").parent / "holdout.json"
    holdout.write_text('{"train": [], "heldout": []}')
    digests.append(fidelity_inputs.inputs_digest(ws, {"n_boot": 3}))
    index = ws / "work" / "generative" / "latents" / "index.json"
    index.parent.mkdir(parents=True, exist_ok=True)
    index.write_text('{"cases": []}')
    digests.append(fidelity_inputs.inputs_digest(ws, {"n_boot": 3}))
    weights = model_dir(ws, "autoencoder") / "model.safetensors"
    weights.write_bytes(weights.read_bytes() + b" ")
    digests.append(fidelity_inputs.inputs_digest(ws, {"n_boot": 3}))
    assert len(set(digests)) == 4
