"""The on-premises generative model on the tiny profile: shapes, scale factors, lesion-contrast
retention and its gate, diffusion training, resume, NaN handling, input checks, sampling."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.case_format import CaseMeta, Label, list_cases, read_case, write_case
from shared.errors import InputError
from shared.profiles import get_profile
from shared.volume import Volume
from shared.weights import save_weights
from site_agent.generative import autoencoder as ae
from site_agent.generative import diffusion as dm
from site_agent.generative import fidelity
from site_agent.generative.checkpoint import CHECKPOINT_FILE, checkpoint_step
from site_agent.generative.data import load_training_set
from site_agent.generative.latents import build_cache, scale_factors
from site_agent.generative.pipeline import generate, train_generative, work_dir

TINY = get_profile("tiny")
GRID = TINY.grid.size
SPACING = TINY.grid.spacing


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny 3D convolutions on a shared 2-core machine run ~10x slower with 2 threads than with
    one (oversubscription when other jobs run); restore the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_profile(**diffusion: object):
    """Tiny with even fewer steps, so each stage takes about a second."""
    return dataclasses.replace(
        TINY,
        autoencoder=dataclasses.replace(TINY.autoencoder, steps=4, checkpoint_every=2),
        diffusion=dataclasses.replace(
            TINY.diffusion, train_steps=6, checkpoint_every=2, **diffusion
        ),
    )


def make_workspace(root: Path, n: int = 8, n_pos: int = 4, masks: bool = True, seed: int = 0):
    """Real cases whose positives carry a bright hbv / dark adc / dark t2w blob."""
    rng = np.random.default_rng(seed)
    affine = np.diag([*SPACING, 1.0])
    for i in range(n):
        y = int(i < n_pos)
        vols = {s: rng.normal(0.5, 0.05, GRID).astype(np.float32) for s in ("t2w", "hbv", "adc")}
        lesion = np.zeros(GRID, dtype=np.uint8)
        if y:
            lesion[9:14, 9:14, 4:8] = 1
            vols["hbv"][lesion > 0] += 0.8
            vols["adc"][lesion > 0] -= 0.3
            vols["t2w"][lesion > 0] -= 0.3
        meta = CaseMeta(
            f"case-{i:03d}",
            "real",
            Label(cspca=y, source="site"),
            list(GRID),
            list(SPACING),
            "tiny",
            has_lesion_mask=masks and bool(y),
        )
        volumes = {k: Volume(v, affine) for k, v in vols.items()}
        if masks and y:
            volumes["lesion"] = Volume(lesion, affine)
        write_case(root / "cases" / "real" / meta.case_id, meta, volumes)
    return root


# --- autoencoder and latents --------------------------------------------------------------


def test_autoencoder_concatenates_per_sequence_latents():
    spec = dataclasses.replace(TINY.autoencoder, latent_channels=4)
    torch.manual_seed(0)
    model = ae.build_autoencoder(spec).eval()
    x = torch.rand(2, 3, *GRID)
    z = ae.encode_mean(model, x)
    assert z.shape == (2, 12, 12, 12, 6) == (2, *ae.latent_shape(spec, TINY.grid))
    # channel group k is sequence k encoded on its own, as the posterior mean (deterministic)
    mu_hbv, _ = model.encode(x[:, 1:2])
    torch.testing.assert_close(z[:, 4:8], mu_hbv)
    torch.testing.assert_close(ae.encode_mean(model, x), z)
    assert ae.decode_latents(model, z).shape == (2, 3, *GRID)


def test_grid_must_divide_by_autoencoder_factor():
    spec = dataclasses.replace(TINY.autoencoder, channels=(8, 16, 16, 16))  # factor 8
    with pytest.raises(InputError, match="does not divide"):
        ae.latent_shape(spec, TINY.grid)  # z = 12


def test_scale_factors_use_the_whole_set(tmp_path):
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(10, 12, 3, 3, 2, generator=g)
    lat[:, 4:8] *= 3.0  # hbv spread out
    lat[5:, 8:] *= 5.0  # adc: second half of the cases much wider than a "first batch"
    sf = scale_factors(lat)
    assert sf["hbv"] == pytest.approx(1 / float(lat[:, 4:8].double().std()))
    assert sf["adc"] == pytest.approx(1 / float(lat[:, 8:].double().std()))
    assert sf["adc"] < 1 / float(lat[:5, 8:].double().std())

    ws = make_workspace(tmp_path / "ws", n=6, n_pos=3)
    data = load_training_set(ws / "cases" / "real")
    torch.manual_seed(0)
    model = ae.build_autoencoder(TINY.autoencoder).eval()
    cache = build_cache(model, data, tmp_path / "lat", "sha", batch_size=4)
    assert len(list((tmp_path / "lat").glob("*.safetensors"))) == 6
    index = json.loads((tmp_path / "lat" / "index.json").read_text())
    assert index["scale_factors"] == pytest.approx(scale_factors(cache.latents))
    assert index["fidelity"]["method"] == "lesion-mask"


def test_pretrained_autoencoder_weights(tmp_path):
    torch.manual_seed(1)
    src = ae.build_autoencoder(TINY.autoencoder)
    save_weights(tmp_path / "w", src.state_dict(), ae.autoencoder_config(TINY.autoencoder))
    dst = ae.build_autoencoder(TINY.autoencoder)
    ae.load_pretrained(dst, tmp_path / "w")
    for k, v in src.state_dict().items():
        torch.testing.assert_close(dst.state_dict()[k], v)
    other = ae.build_autoencoder(dataclasses.replace(TINY.autoencoder, latent_channels=2))
    with pytest.raises(InputError, match="do not fit"):
        ae.load_pretrained(other, tmp_path / "w")
    with pytest.raises(InputError, match="no autoencoder weights"):
        ae.load_pretrained(dst, tmp_path / "missing")


# --- fidelity ------------------------------------------------------------------------------


def _lesion_case(rng):
    img = rng.normal(0.5, 0.02, (3, *GRID)).astype(np.float32)
    mask = np.zeros(GRID, dtype=bool)
    mask[10:14, 10:14, 5:8] = True
    img[1][mask] += 0.8  # hbv bright
    img[2][mask] -= 0.3  # adc dark
    img[0][mask] -= 0.2  # t2w dark
    return img, mask


def test_retention_identity_is_one_and_blur_loses_contrast():
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    img, mask = _lesion_case(rng)
    sp = np.asarray(SPACING)
    same = fidelity.summarise([fidelity.measure_case(img, img, 1, mask, sp)])
    assert same.method == "lesion-mask"
    for s in ("t2w", "hbv", "adc"):
        assert same.sequences[s].retention == pytest.approx(1.0)
    blurred = np.stack([gaussian_filter(v, 1.5) for v in img])
    rep = fidelity.summarise([fidelity.measure_case(img, blurred, 1, mask, sp)])
    for s in ("t2w", "hbv", "adc"):
        assert 0.0 < rep.sequences[s].retention < 0.9
    flat = np.full_like(img, 0.5)
    assert fidelity.summarise([fidelity.measure_case(img, flat, 1, mask, sp)]).sequences[
        "hbv"
    ].retention == pytest.approx(0.0, abs=1e-6)


def test_retention_falls_back_to_class_percentiles():
    rng = np.random.default_rng(1)
    cases = []
    for y in (1, 1, 0, 0):
        img, _ = _lesion_case(rng) if y else (rng.normal(0.5, 0.02, (3, *GRID)), None)
        cases.append(fidelity.measure_case(img, img, y, None, np.asarray(SPACING)))
    rep = fidelity.summarise(cases)
    assert rep.method == "class-percentile" and rep.n_cases == 4
    assert rep.sequences["hbv"].retention == pytest.approx(1.0)
    assert rep.sequences["hbv"].original_contrast > 0.5
    assert "class-percentile on 4 cases" in fidelity.describe(rep)


def test_gate_names_the_sequence_and_what_to_do():
    S = fidelity.SequenceRetention
    rep = fidelity.RetentionReport(
        "lesion-mask",
        7,
        {"t2w": S(-0.2, -0.04, 0.2), "hbv": S(0.8, 0.24, 0.3), "adc": S(-0.3, -0.27, 0.9)},
    )
    with pytest.raises(InputError) as err:
        fidelity.check_retention(rep, 0.5, ("hbv", "adc"))
    assert "hbv keeps 30%" in err.value.message and "t2w" not in err.value.message
    assert "lesion-mask on 7 cases" in err.value.message
    assert "autoencoder" in (err.value.hint or "")
    fidelity.check_retention(rep, 0.25, ("hbv", "adc"))  # above threshold: passes
    fidelity.check_retention(rep, 0.0)  # gate off


# --- diffusion training, checkpoints -------------------------------------------------------


def _latent_data(n: int = 6):
    rng = np.random.default_rng(0)
    lat = rng.normal(size=(n, 12, 12, 12, 6)).astype(np.float32)
    y = np.array([1, 0] * (n // 2))
    sp = np.tile(np.asarray(SPACING, dtype=np.float32), (n, 1))
    return lat, y, sp


@pytest.mark.parametrize("objective", ["rflow", "ddpm"])
def test_diffusion_trains_with_finite_loss(tmp_path, objective):
    lat, y, sp = _latent_data()
    spec = small_profile(objective=objective).diffusion
    losses: list[float] = []
    model, ema = dm.train_diffusion(
        lat, y, sp, spec, tmp_path, seed=0, progress=lambda s, i, t, loss: losses.append(loss)
    )
    assert len(losses) == spec.train_steps and all(np.isfinite(losses))
    assert set(ema) == set(model.state_dict())
    assert checkpoint_step(tmp_path / CHECKPOINT_FILE) == spec.train_steps


def test_flip_augment_shows_mirrored_latents(tmp_path, monkeypatch):
    """With flip_augment the denoiser also trains on left-right mirrored latents (axis x),
    never on anything else; without it, only on the latents as cached."""
    import dataclasses

    lat, y, sp = _latent_data()
    seen: list[np.ndarray] = []
    real_loss = dm.diffusion_loss

    def spy(model, sched, objective, x0, *args, **kwargs):
        seen.extend(x0.numpy())
        return real_loss(model, sched, objective, x0, *args, **kwargs)

    monkeypatch.setattr(dm, "diffusion_loss", spy)

    def kinds(flip: bool) -> set[str]:
        seen.clear()
        spec = dataclasses.replace(small_profile().diffusion, flip_augment=flip)
        dm.train_diffusion(lat, y, sp, spec, tmp_path / str(flip), seed=0)
        out = set()
        for x in seen:
            if any(np.array_equal(x, a) for a in lat):
                out.add("as cached")
            elif any(np.array_equal(x, a[:, ::-1]) for a in lat):
                out.add("mirrored")
            else:
                out.add("other")
        return out

    assert kinds(False) == {"as cached"}
    assert kinds(True) == {"as cached", "mirrored"}


def test_cosine_schedule_falls_from_base_to_final_fraction():
    from site_agent.generative.trainloop import cosine_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = cosine_scheduler(opt, total=10, final=0.1)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-3)
    assert lrs[5] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # halfway: mean of the ends
    assert lrs[10] == pytest.approx(1e-4) and lrs[11] == pytest.approx(1e-4)  # holds after
    assert all(a > b for a, b in itertools.pairwise(lrs[:11]))


def test_precision_follows_the_hardware_and_the_override(monkeypatch):
    from site_agent.generative import trainloop

    cpu = torch.device("cpu")
    monkeypatch.setattr(trainloop, "cpu_native_bf16", lambda: True)
    monkeypatch.delenv(trainloop.PRECISION_ENV, raising=False)
    assert trainloop.amp_dtype(cpu) == torch.bfloat16  # the default where the CPU has AMX
    monkeypatch.setenv(trainloop.PRECISION_ENV, "bf16")
    assert trainloop.amp_dtype(cpu) == torch.bfloat16
    conv = torch.nn.Conv3d(1, 2, 3)
    with trainloop.autocast(cpu):
        assert conv(torch.rand(1, 1, 4, 4, 4)).dtype == torch.bfloat16
    assert trainloop.make_scaler(cpu) is None  # bf16 needs no gradient scaler
    monkeypatch.setenv(trainloop.PRECISION_ENV, "FP32")
    assert trainloop.amp_dtype(cpu) is None and trainloop.precision_name(cpu) == "float32"
    with trainloop.autocast(cpu):
        assert conv(torch.rand(1, 1, 4, 4, 4)).dtype == torch.float32
    monkeypatch.setenv(trainloop.PRECISION_ENV, "half")
    with pytest.raises(InputError, match="SITE_AGENT_PRECISION"):
        trainloop.amp_dtype(cpu)
    monkeypatch.setattr(trainloop, "cpu_native_bf16", lambda: False)  # emulated bf16: no gain
    for choice in ("bf16", "auto"):
        monkeypatch.setenv(trainloop.PRECISION_ENV, choice)
        assert trainloop.amp_dtype(cpu) is None and trainloop.precision_name(cpu) == "float32"


def test_cpu_native_bf16_reads_the_cpu_capabilities(monkeypatch):
    from site_agent.generative import trainloop

    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True})
    assert trainloop.cpu_native_bf16() is True
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True})
    assert trainloop.cpu_native_bf16() is False


class Killed(Exception):
    pass


def _kill_at(step_to_die: int):
    def cb(stage, step, total, loss):
        if step == step_to_die:
            raise Killed

    return cb


@pytest.mark.parametrize("stage", ["autoencoder", "diffusion"])
def test_resumed_run_equals_uninterrupted(tmp_path, stage):
    prof = small_profile()
    if stage == "diffusion":
        lat, y, sp = _latent_data()

        def run(folder, progress=None):
            m, ema = dm.train_diffusion(lat, y, sp, prof.diffusion, folder, 3, progress)
            return m.state_dict() | {f"ema.{k}": v for k, v in ema.items()}
    else:
        data = load_training_set(make_workspace(tmp_path / "ws", n=4, n_pos=2) / "cases" / "real")

        def run(folder, progress=None):
            return ae.train_autoencoder(data, prof.autoencoder, folder, 3, progress).state_dict()

    full = run(tmp_path / "full")
    with pytest.raises(Killed):
        run(tmp_path / "killed", _kill_at(3))  # dies after step 3; last checkpoint: step 2
    assert checkpoint_step(tmp_path / "killed" / CHECKPOINT_FILE) == 2
    resumed = run(tmp_path / "killed")
    assert full.keys() == resumed.keys()
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], rtol=0, atol=1e-6)


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    lat, y, sp = _latent_data()
    real_loss, calls = dm.diffusion_loss, {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 4 else loss

    monkeypatch.setattr(dm, "diffusion_loss", flaky)
    with pytest.raises(InputError, match=r"stopped at step 4: loss is nan .*step 2 is kept"):
        dm.train_diffusion(lat, y, sp, small_profile().diffusion, tmp_path, seed=0)
    assert checkpoint_step(tmp_path / CHECKPOINT_FILE) == 2


# --- the pipeline --------------------------------------------------------------------------


def _drop_adc(ws: Path) -> None:
    (list_cases(ws / "cases" / "real")[0] / "adc.nii.gz").unlink()


@pytest.mark.parametrize(
    ("n", "n_pos", "mutate", "match"),
    [
        (8, 0, None, "all 8 labelled cases are negative"),
        (8, 8, None, "all 8 labelled cases are positive"),
        (4, 2, None, "only 4 labelled case"),
        (8, 1, None, "only 1 case\\(s\\) of the smaller class"),
        (8, 4, _drop_adc, "miss a sequence .*adc"),
    ],
)
def test_bad_inputs_raise_before_training(tmp_path, n, n_pos, mutate, match):
    ws = make_workspace(tmp_path, n=n, n_pos=n_pos)
    if mutate:
        mutate(ws)
    with pytest.raises(InputError, match=match):
        train_generative(ws, small_profile(), seed=0)
    assert not (ws / "work").exists() and not (ws / "models").exists()


def test_empty_workspace_and_other_grid(tmp_path):
    with pytest.raises(InputError, match="no cases"):
        train_generative(tmp_path, small_profile())
    make_workspace(tmp_path)
    with pytest.raises(InputError, match="not on the cpu grid"):
        train_generative(tmp_path, get_profile("cpu"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    ws = make_workspace(tmp_path_factory.mktemp("gen") / "ws", n=8, n_pos=4)
    events: list[tuple[str, int, int, float | None]] = []
    summary = train_generative(
        ws,
        small_profile(),
        seed=0,
        progress=lambda *e: events.append(e),
        device=torch.device("cpu"),
    )
    return ws, summary, events


def test_train_generative_runs_every_stage_then_reuses(trained):
    ws, summary, events = trained
    stages = {e[0] for e in events}
    assert stages == {"autoencoder", "latents", "diffusion"}
    assert summary["autoencoder"]["status"] == "trained"
    assert summary["latents"]["shape"] == [12, 12, 12, 6]
    assert set(summary["latents"]["scale_factors"]) == {"t2w", "hbv", "adc"}
    assert summary["fidelity"]["method"] == "lesion-mask"
    assert np.isfinite(summary["diffusion"]["final_loss"])
    report = json.loads((ws / "reports" / "generative-training.json").read_text())
    assert report["diffusion"]["status"] == "trained"
    again = train_generative(ws, small_profile(), seed=0, device=torch.device("cpu"))
    assert again["autoencoder"]["status"] == "reused"
    assert again["latents"]["status"] == "reused"
    assert again["diffusion"]["status"] == "reused"


def test_gate_stops_before_diffusion(trained, tmp_path):
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(trained[0], ws)
    shutil.rmtree(ws / "models" / "generative" / "diffusion")
    shutil.rmtree(work_dir(ws, "diffusion"))
    with pytest.raises(InputError, match="loses lesion contrast"):
        train_generative(ws, small_profile(), seed=0, min_retention=5.0)
    assert not (ws / "models" / "generative" / "diffusion").exists()
    assert not work_dir(ws, "diffusion").exists()
    report = json.loads((ws / "reports" / "generative-training.json").read_text())
    assert report["fidelity"]["min_retention"] == 5.0 and "diffusion" not in report


def test_generate_writes_labelled_cases(trained):
    ws, _, _ = trained
    folders = generate(ws, n=5, positive_fraction=0.4, seed=7, device=torch.device("cpu"))
    assert len(folders) == 5 and all(f.parent == ws / "cases" / "synthetic" for f in folders)
    cases = [read_case(f) for f in folders]
    assert sum(c.meta.label.cspca for c in cases) == 2
    train_ids = {p.name for p in list_cases(ws / "cases" / "real")}
    for c in cases:
        assert c.meta.origin == "synthetic" and c.meta.label.source == "generated"
        assert c.stack().shape == (3, *GRID) and np.isfinite(c.stack()).all()
        assert c.meta.grid_spacing == list(SPACING)
        prov = c.meta.provenance
        assert prov["sampler"] == "rflow" and prov["steps"] == TINY.diffusion.sampling_steps
        assert prov["seed"] == 7 and len(prov["diffusion_sha256"]) == 64
        assert not any(t in json.dumps(c.meta.to_json()) for t in train_ids)
    # a rerun (e.g. after a kill) reuses the finished batches: same folders, same content
    stamp = [(f / "case.json").stat().st_mtime_ns for f in folders]
    assert generate(ws, n=5, positive_fraction=0.4, seed=7, device=torch.device("cpu")) == folders
    assert [(f / "case.json").stat().st_mtime_ns for f in folders] == stamp


def test_generate_rejects_a_sampler_the_model_was_not_trained_for(trained):
    with pytest.raises(InputError, match="sampler ddpm does not fit a model trained with rflow"):
        generate(trained[0], n=1, positive_fraction=0.0, sampler="ddpm")
    with pytest.raises(InputError, match="positive fraction"):
        generate(trained[0], n=2, positive_fraction=1.5)


def test_adversarial_option_trains_a_discriminator(tmp_path):
    data = load_training_set(make_workspace(tmp_path / "ws", n=4, n_pos=2) / "cases" / "real")
    spec = dataclasses.replace(TINY.autoencoder, steps=2, adv_weight=0.1)
    losses: list[float] = []
    ae.train_autoencoder(data, spec, tmp_path / "ck", 0, lambda s, i, t, v: losses.append(v))
    assert len(losses) == 2 and all(np.isfinite(losses))
    saved = torch.load(tmp_path / "ck" / CHECKPOINT_FILE, weights_only=True)
    assert set(saved["modules"]) == {"model", "discriminator"}


@pytest.mark.parametrize(("sampler", "steps"), [("ddpm", 3), ("ddim", 2)])
def test_ddpm_family_samplers(sampler, steps):
    from site_agent.generative.sampling import SamplerSettings, sample_latents

    spec = small_profile(objective="ddpm").diffusion
    torch.manual_seed(0)
    model = dm.build_denoiser(spec, 12)
    settings = SamplerSettings(sampler, steps, guidance=2.0)
    settings.check("ddpm")
    done: list[int] = []
    z = sample_latents(
        model,
        settings,
        torch.tensor([1, 0]),
        torch.tensor([SPACING] * 2),
        (12, 12, 12, 6),
        torch.Generator().manual_seed(0),
        on_step=done.append,
    )
    assert z.shape == (2, 12, 12, 12, 6) and torch.isfinite(z).all() and done[-1] == steps
    with pytest.raises(InputError, match="does not fit"):
        SamplerSettings("rflow", 5, 1.0).check("ddpm")


def test_frozen_pretrained_autoencoder_is_used_as_is(trained, tmp_path):
    ws = make_workspace(tmp_path / "ws2", n=8, n_pos=4, seed=5)
    weights = trained[0] / "models" / "generative" / "autoencoder"
    with pytest.raises(InputError, match="needs autoencoder_weights"):
        train_generative(ws, small_profile(), freeze_autoencoder=True)
    s = train_generative(
        ws,
        small_profile(),
        seed=1,
        autoencoder_weights=weights,
        freeze_autoencoder=True,
        device=torch.device("cpu"),
    )
    assert s["autoencoder"]["status"] == "frozen"
    assert s["autoencoder"]["sha256"] == trained[1]["autoencoder"]["sha256"]
    assert s["diffusion"]["status"] == "trained"
    # a new sampling default does not retrain the diffusion model
    prof = small_profile(sampling_steps=2)
    again = train_generative(
        ws,
        prof,
        seed=1,
        autoencoder_weights=weights,
        freeze_autoencoder=True,
        device=torch.device("cpu"),
    )
    assert again["diffusion"]["status"] == "reused"
    folders = generate(ws, n=1, positive_fraction=1.0, seed=0, device=torch.device("cpu"))
    assert read_case(folders[0]).meta.provenance["steps"] == 2


def test_reconstructed_source_cases(trained):
    from shared.case_format import list_cases, read_case
    from site_agent.generative.reconstruct import reconstruct_cases

    ws = trained[0]
    real = list_cases(ws / "cases" / "real")
    made = reconstruct_cases(ws)
    assert [p.name for p in made] == [p.name for p in real]
    a, b = read_case(real[0]), read_case(made[0])
    assert b.meta.origin == "reconstructed" and b.meta.label == a.meta.label
    assert b.meta.provenance["autoencoder_sha256"]
    for s in ("t2w", "hbv", "adc"):
        assert b.volumes[s].shape == a.volumes[s].shape
        assert not np.array_equal(b.volumes[s].array, a.volumes[s].array)
        np.testing.assert_allclose(b.volumes[s].affine, a.volumes[s].affine)
    stamp = (made[0] / "case.json").stat().st_mtime_ns
    reconstruct_cases(ws)  # same autoencoder: nothing is redone
    assert (made[0] / "case.json").stat().st_mtime_ns == stamp


def test_holdout_split_is_stratified_capped_and_deterministic():
    from site_agent.generative.data import holdout_split

    labels = np.array([1] * 20 + [0] * 30 + [-1] * 3)
    train, held = holdout_split(labels, 0.15, seed=3)
    assert (labels[held] == 1).sum() == 3 and (labels[held] == 0).sum() == 4
    assert set(train) | set(held) == set(range(len(labels))) and not set(train) & set(held)
    assert all(labels[i] != -1 for i in held)  # unlabelled cases always train
    _, held2 = holdout_split(labels, 0.15, seed=3)
    assert np.array_equal(held, held2)
    _, capped = holdout_split(np.array([1] * 6 + [0] * 6), 0.5, seed=0, keep_at_least=5)
    assert len(capped) == 2  # one per class, so five of each still train


def test_held_out_cases_never_reach_the_latent_cache(tmp_path):
    ws = make_workspace(tmp_path / "ws", n=14, n_pos=7)
    prof = dataclasses.replace(
        small_profile(),
        diffusion=dataclasses.replace(
            small_profile().diffusion, holdout_fraction=0.3, min_per_class=2
        ),
    )
    summary = train_generative(ws, prof, seed=0, device=torch.device("cpu"))
    held = json.loads((ws / "models" / "generative" / "holdout.json").read_text())["held_out"]
    assert len(held) == 4 and summary["cases"]["held_out"] == 4
    index = json.loads((ws / "work" / "generative" / "latents" / "index.json").read_text())
    assert not set(held) & set(json.dumps(index).split('"'))


def test_lesion_ring_stays_inside_the_gland():
    from site_agent.generative.fidelity import measure_case

    shape = (24, 24, 12)
    gland = np.zeros(shape, bool)
    gland[4:16, 4:20, 2:10] = True
    lesion = np.zeros(shape, bool)
    lesion[12:15, 9:13, 5:8] = True  # at the gland's edge: the ring reaches outside
    adc = np.where(gland, 0.55, 0.1).astype(np.float32)  # fat outside: ADC near zero
    adc[lesion] = 0.3
    img = np.stack([adc, adc, adc])
    sp = np.array([2.5, 2.5, 4.5])
    loose = measure_case(img, img, 1, lesion, sp)
    tight = measure_case(img, img, 1, lesion, sp, gland=gland)
    assert tight.lesion_original[2] == pytest.approx(0.3 - 0.55)
    assert loose.lesion_original[2] > tight.lesion_original[2] + 0.03  # fat dilutes it


class _LinearFlow(torch.nn.Module):
    """v(x, t, label) = k * x for a class label and 0 for the null class: the guided flow of
    scale g integrates to x0 * exp(g * k) from t = T to 0, whatever the step count."""

    def __init__(self, k: float) -> None:
        super().__init__()
        self.k, self.calls = k, 0

    def forward(self, x, t, labels, spacing):
        self.calls += 1
        on = (labels != dm.NULL_CLASS).to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return self.k * x * on


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_rflow_heun_is_second_order_against_the_exact_flow(guidance):
    from site_agent.generative.sampling import SamplerSettings, sample_latents

    model, k = _LinearFlow(-0.7), -0.7

    def error(sampler: str, steps: int) -> float:
        gen = torch.Generator().manual_seed(0)
        x0 = torch.randn((2, 3, 2, 2, 2), generator=torch.Generator().manual_seed(0))
        model.calls = 0
        z = sample_latents(
            model,
            SamplerSettings(sampler, steps, guidance),
            torch.tensor([1, 0]),
            torch.tensor([SPACING] * 2),
            (3, 2, 2, 2),
            gen,
        )
        assert model.calls == SamplerSettings(sampler, steps, guidance).network_passes
        exact = x0 * float(np.exp(guidance * k))
        return float((z - exact).abs().max() / exact.abs().max())

    for n in (4, 8):
        assert error("rflow-heun", n) < error("rflow", n) / 4
    # halving the step halves Euler's error and quarters Heun's (first vs second order)
    assert 1.6 < error("rflow", 8) / error("rflow", 16) < 2.4
    assert 3.0 < error("rflow-heun", 8) / error("rflow-heun", 16) < 5.0
    with pytest.raises(InputError, match="does not fit"):
        SamplerSettings("rflow-heun", 5, 1.0).check("ddpm")
