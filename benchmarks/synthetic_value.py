"""How much is generation worth here, and which lever moves it? (issue 12)

On the phantom consortium, with the study's own code, this benchmark compares classifiers
pretrained on a site's **synthetic** bpMRI with the same site's **reconstructed-source** control
(its real cases through its own autoencoder), its **real-source** weights and **none** (random
init), fine-tuned at small fractions of the external institution's training split with paired
seeds and scored on one fixed external test split. It sweeps one lever at a time from a stated
baseline (the `coordinator demo` setting of 2026-12: 48 studies per site, 500 autoencoder and 600
diffusion steps, guidance 2.0, as many synthetic cases as the site has real training cases, at
the site's prevalence):

* ``count``: synthetic cases ×1, ×4, ×16 the site's real training count;
* ``positives``: the positive fraction of generated cases (site prevalence vs 0.5);
* ``diffusion``: diffusion training length (600 vs 3000 steps, EMA 0.999 either way);
* ``guidance``: the classifier-free guidance scale;
* ``pooling``: synthetic cases of two sites (×1 each) vs one;
* ``generator``: generator changes tried to close the gap (see ``GENERATOR_VARIANTS``);
* ``sampler``: a few-step sampler (issue 15: Heun on the rectified flow) instead of the
  baseline's Euler steps, on the same trained network. The combined setting is measured with
  each such sampler as well (``combined-SAMPLER-STEPS``), so a faster default is adopted only
  if it keeps generation's value where it matters.

Each setting gets: AUC and AP per condition and fraction (mean ± sd over paired seeds), the
seed-level paired test (Wilcoxon on per-seed differences) with Holm correction over the six
pairs of its four conditions, the diagnostics of the site's fidelity report (label fidelity,
train-on-synthetic-test-on-real, precision/recall), and whether the issue's goal is met:
synthetic >= reconstructed-source (mean AUC, and the seed-level test does not find synthetic
worse) and synthetic > none with Holm-adjusted p < 0.05, at both fractions. The "best" setting
is chosen on the external **validation** split (mean validation AUC of the synthetic condition),
never on the test split.

Sites are built with the real commands (``site-agent phantom``, ``ingest``, ``pretrain``;
``coordinator ingest``), each in its own process; generative training (with the baseline's
diffusion settings pinned in ``BASELINE_DIFFUSION``, not the profile's current defaults),
generation, diagnostics and the study run in-process through the same Python API those
commands use. Every stage is cached under
``--work``: a rerun continues where a killed run stopped and never redoes a finished setting.
Phantom data: the figures check the machinery, not clinical truth.

Run: ``python -m benchmarks.synthetic_value [--size full|smallest] [--only SETTING ...]``
(full: hours on 2 CPU cores; smallest: the test's size, minutes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.host import cpus_line
from shared.atomic import atomic_write_json
from shared.errors import InputError, NothingProducedError, ToolkitError

# A --synthetic-only generator that trained its own autoencoder (see ensure_generator).
OWN_AE = "-own-ae"
SOURCE = "aurora"  # the single-site conditions' site (Siemens 3 T)
SECOND = "borealis"  # the second site, for pooling (GE 1.5 T)
PHANTOM_SEEDS = {SOURCE: 1, SECOND: 2, "external": 3}
BASE_CONDITIONS = ("none", "real-source", "reconstructed-source")
SYNTHETIC = "synthetic-bpmri"


@dataclass(frozen=True)
class Size:
    """How big the consortium, the training runs and the study grid are."""

    profile: str
    site_cases: int
    external_cases: int
    autoencoder_steps: int | None  # None: the profile's
    diffusion_steps: int
    long_diffusion_steps: int
    site_pretrain_steps: int
    study_pretrain_steps: int
    study_finetune_steps: int
    seeds: int
    fractions: tuple[float, ...]
    multipliers: tuple[int, ...]
    guidance: tuple[float, ...]  # besides the model's default
    samplers: tuple[tuple[str, int], ...]  # (sampler, steps) besides the baseline's


SIZES = {
    "full": Size(
        profile="cpu",
        site_cases=48,
        external_cases=280,
        autoencoder_steps=500,
        diffusion_steps=600,
        long_diffusion_steps=3000,
        site_pretrain_steps=300,
        study_pretrain_steps=300,
        study_finetune_steps=150,
        seeds=10,
        fractions=(0.0625, 0.125),
        multipliers=(4, 16),
        guidance=(1.0, 3.5),
        samplers=(("rflow-heun", 3),),
    ),
    # The test's size: every stage and lever runs, nothing is learned.
    "smallest": Size(
        profile="tiny",
        site_cases=12,
        external_cases=40,
        autoencoder_steps=None,
        diffusion_steps=10,
        long_diffusion_steps=20,
        site_pretrain_steps=10,
        study_pretrain_steps=10,
        study_finetune_steps=5,
        seeds=2,
        fractions=(0.25, 0.5),
        multipliers=(2,),
        guidance=(1.0,),
        samplers=(("rflow-heun", 2),),
    ),
}


@dataclass(frozen=True)
class Generator:
    """One trained diffusion model: a site's, at a training length, with a variant's changes."""

    site: str
    diffusion_steps: int
    variant: str = "base"

    @property
    def name(self) -> str:
        return f"{self.site}-d{self.diffusion_steps}-{self.variant}"


@dataclass(frozen=True)
class Setting:
    name: str
    lever: str
    value: str  # the lever's value as shown on the plot's x axis
    generators: tuple[Generator, ...]
    multiplier: int = 1
    positive_fraction: float | None = None  # None: the site's prevalence
    guidance: float | None = None  # None: the model's default
    sampler: str | None = None  # None: the model's default (the baseline's, pinned below)
    sampling_steps: int | None = None

    def record(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"generators": [g.name for g in self.generators]}


# The baseline's diffusion settings (the demo's before this benchmark changed them), pinned so
# that a later change of the profile defaults does not move the baseline. The sampler is part
# of the trained model's config (its default at generation time).
BASELINE_DIFFUSION: dict[str, Any] = {
    "guidance_scale": 2.0,
    "flip_augment": False,
    "sampler": "rflow",
    "sampling_steps": 25,
}

# Generator changes tried for issue 12 point 3: name -> (diffusion spec overrides, why).
GENERATOR_VARIANTS: dict[str, tuple[dict[str, Any], str]] = {
    "flip-augment": (
        {"flip_augment": True},
        "left-right flips of the training latents: a small site's cases count twice",
    ),
}


def settings_for(size: Size) -> list[Setting]:
    """Every setting, in the order the sweep runs them: the levers expected to move most
    come first, so a sweep cut short has measured those."""
    base = Generator(SOURCE, size.diffusion_steps)
    out = [Setting("baseline", "baseline", "demo", (base,))]
    out += [
        Setting(f"count-x{m}", "count", f"x{m}", (base,), multiplier=m) for m in size.multipliers
    ]
    out.append(
        Setting(
            f"diffusion-{size.long_diffusion_steps}",
            "diffusion",
            str(size.long_diffusion_steps),
            (Generator(SOURCE, size.long_diffusion_steps),),
        )
    )
    out += [
        Setting(f"generator-{v}", "generator", v, (Generator(SOURCE, size.diffusion_steps, v),))
        for v in GENERATOR_VARIANTS
    ]
    out += [
        Setting(f"guidance-{g:g}", "guidance", f"{g:g}", (base,), guidance=g) for g in size.guidance
    ]
    out += [
        Setting(
            f"sampler-{name}-{steps}",
            "sampler",
            f"{name} {steps}",
            (base,),
            sampler=name,
            sampling_steps=steps,
        )
        for name, steps in size.samplers
    ]
    out.append(Setting("positives-0.5", "positives", "0.5", (base,), positive_fraction=0.5))
    out.append(
        Setting(
            "pooled-2-sites", "pooling", "2 sites", (base, Generator(SECOND, size.diffusion_steps))
        )
    )
    return out


# Levers combined by ``combined_setting``; the two generator levers are one choice (a model
# trained longer and a changed model are alternatives, each a trained network of its own).
COMBINED_CHOICES = (
    ("count",),
    ("positives",),
    ("guidance",),
    ("diffusion", "generator"),
    ("pooling",),
    ("sampler",),
)


def combined_setting(size: Size, results: dict[str, Any]) -> tuple[Setting | None, dict[str, Any]]:
    """Each lever's best value on the external validation split, combined into one setting.

    A lever keeps the baseline where no measured value beats the baseline's mean validation
    AUC. A setting whose memorisation screen flagged cases is not eligible: the export gate
    would refuse its cases. Returns (None, why) when the combination is the baseline or one
    measured setting."""
    from benchmarks.synthetic_value_report import exportable

    settings = {s.name: s for s in settings_for(size)}
    base_val = (results.get("baseline") or {}).get("synthetic_val_auc_mean")
    if base_val is None:
        return None, {"why": "the baseline is not measured yet"}
    chosen: dict[str, str] = {}
    for levers in COMBINED_CHOICES:
        best, best_val = None, base_val
        for name, rec in results.items():
            v = rec.get("synthetic_val_auc_mean")
            lever = settings[name].lever if name in settings else None
            if lever in levers and v is not None and v > best_val and exportable(rec):
                best, best_val = name, v
        if best:
            chosen["/".join(levers)] = best
    record = {"chosen": chosen, "baseline_val_auc": base_val}
    if len(chosen) < 2:
        record["why"] = (
            "no lever beats the baseline on validation"
            if not chosen
            else f"only {next(iter(chosen.values()))} beats the baseline on validation"
        )
        return None, record
    return build_combined(size, chosen), record


def build_combined(size: Size, chosen: dict[str, str]) -> Setting:
    """The setting that combines the chosen lever values (lever group -> setting name)."""
    settings = {s.name: s for s in settings_for(size)}
    unknown = sorted(set(chosen.values()) - set(settings))
    if unknown:
        raise InputError(f"combined setting names unknown settings {unknown}")
    picks = [settings[n] for n in chosen.values()]
    generators = next((p.generators for p in picks if p.lever in ("diffusion", "generator")), None)
    first = generators[0] if generators else Generator(SOURCE, size.diffusion_steps)
    gens: tuple[Generator, ...] = (first,)
    if any(p.lever == "pooling" for p in picks):
        gens = (first, Generator(SECOND, size.diffusion_steps))
    mult = next((p.multiplier for p in picks if p.lever == "count"), 1)
    pos = next((p.positive_fraction for p in picks if p.lever == "positives"), None)
    guid = next((p.guidance for p in picks if p.lever == "guidance"), None)
    samp = next((p for p in picks if p.lever == "sampler"), None)
    value = "+".join(p.value for p in picks)
    return Setting(
        "combined",
        "combined",
        value,
        gens,
        mult,
        pos,
        guid,
        samp.sampler if samp else None,
        samp.sampling_steps if samp else None,
    )


def combined_with_samplers(size: Size, combined: Setting) -> list[Setting]:
    """The combined setting again with each of the size's few-step samplers (the same
    generators, cases drawn with the same seed): what a faster default sampler costs where
    generation's value is decided."""
    return [
        dataclasses.replace(
            combined,
            name=f"combined-{name}-{steps}",
            value=f"{combined.value}+{name} {steps}",
            sampler=name,
            sampling_steps=steps,
        )
        for name, steps in size.samplers
        if (name, steps) != (combined.sampler, combined.sampling_steps)
    ]


def chosen_in(path: Path) -> dict[str, str]:
    """The combined setting's lever choices recorded by an earlier run's results JSON."""
    try:
        chosen = json.loads(path.read_text())["combined"]["chosen"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: no combined choice recorded ({exc})") from None
    if not isinstance(chosen, dict) or len(chosen) < 2:
        raise InputError(f"{path}: its combined choice is not a combination ({chosen})")
    return {str(k): str(v) for k, v in chosen.items()}


def baseline_values(size: Size) -> dict[str, str]:
    """What the baseline is on each lever's axis."""
    return {
        "count": "x1",
        "positives": "prevalence",
        "diffusion": str(size.diffusion_steps),
        "guidance": f"{BASELINE_DIFFUSION['guidance_scale']:g}",
        "pooling": "1 site",
        "generator": "base",
        "sampler": f"{BASELINE_DIFFUSION['sampler']} {BASELINE_DIFFUSION['sampling_steps']}",
    }


# ---------------------------------------------------------------------------------------------
# running the real commands
# ---------------------------------------------------------------------------------------------


def _tool(name: str) -> list[str]:
    script = Path(sys.executable).parent / name
    if script.is_file():
        return [str(script)]
    module = {"site-agent": "site_agent.cli.main", "coordinator": "coordinator.cli.main"}[name]
    return [sys.executable, "-m", module]


@dataclass
class Bench:
    work: Path
    size: Size
    log: list[str] = field(default_factory=list)
    # Only the synthetic condition's cells: for comparing settings with each other (e.g. two
    # samplers on the same generators) where the controls' cells cost too much to run again.
    synthetic_only: bool = False

    def say(self, text: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {text}"
        print(line, flush=True)
        self.log.append(line)

    def stage(self, name: str, fn: Any) -> dict[str, Any]:
        """Run ``fn()`` once: its JSON record and seconds are kept in ``work/stages/``."""
        path = self.work / "stages" / f"{name}.json"
        if path.is_file():
            return json.loads(path.read_text())["result"]
        self.say(f"{name} ...")
        t0 = time.perf_counter()
        result = fn() or {}
        rec = {"seconds": round(time.perf_counter() - t0, 1), "result": result}
        atomic_write_json(path, rec)
        self.say(f"{name} done in {rec['seconds']} s")
        return rec["result"]

    def run(self, name: str, cmd: list[str]) -> dict[str, Any]:
        """A real command in its own process; its output goes to ``work/logs/NAME.log``."""
        logf = self.work / "logs" / f"{name}.log"
        logf.parent.mkdir(parents=True, exist_ok=True)
        with logf.open("w") as fh:
            rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=False).returncode
        if rc != 0:
            tail = logf.read_text().strip().splitlines()[-1:] or [""]
            raise InputError(f"{name}: `{' '.join(cmd[:3])} ...` exited {rc}: {tail[0]}")
        text = logf.read_text()
        start = text.find("{")
        try:
            return json.loads(text[start:]) if start >= 0 else {}
        except ValueError:
            return {}

    # -- paths ----------------------------------------------------------------------------
    def phantom(self, site: str) -> Path:
        return self.work / "phantom" / site

    def site_ws(self, site: str) -> Path:
        return self.work / "sites" / site

    @property
    def coord(self) -> Path:
        return self.work / "coordinator"

    def generator_ws(self, g: Generator) -> Path:
        if g.diffusion_steps == self.size.diffusion_steps and g.variant == "base":
            return self.site_ws(g.site)
        if self.own_autoencoder(g):
            return self.work / "generators" / f"{g.name}{OWN_AE}"
        return self.work / "generators" / g.name

    def own_autoencoder(self, g: Generator) -> bool:
        """Whether ``g`` (not a site's baseline) trains its own autoencoder: only in
        ``--synthetic-only`` runs, once it has or while its site has no baseline generator.
        A full run never uses such a generator: its controls share the site's autoencoder."""
        if not self.synthetic_only:
            return False
        stages = self.work / "stages"
        return (stages / f"generator-{g.name}{OWN_AE}.json").is_file() or not (
            stages / f"train-{g.site}.json"
        ).is_file()


def build_consortium(b: Bench) -> None:
    """Phantoms, the two sites' generative training, the source site's real-source and
    reconstructed-source weights, the external institution's case store."""
    sz = b.size
    site_agent, coordinator = _tool("site-agent"), _tool("coordinator")
    for site, n in (
        (SOURCE, sz.site_cases),
        (SECOND, sz.site_cases),
        ("external", sz.external_cases),
    ):
        b.stage(
            f"phantom-{site}",
            lambda site=site, n=n: b.run(
                f"phantom-{site}",
                [*site_agent, "phantom", "--out", str(b.phantom(site)), "--cases", str(n),
                 "--institution", site, "--seed", str(PHANTOM_SEEDS[site]), "--profile",
                 sz.profile, "--json"],
            ),
        )  # fmt: skip
    if not b.synthetic_only:  # the controls' weights; --synthetic-only studies none of them
        _source_weights(b)
    ph = b.phantom("external")
    b.stage(
        "ingest-external",
        lambda: b.run(
            "ingest-external",
            [*coordinator, "ingest", "--dicom-dir", str(ph / "dicom"), "--labels",
             str(ph / "labels.csv"), "-w", str(b.coord), "--profile", sz.profile, "--json"],
        ),
    )  # fmt: skip


def _source_weights(b: Bench) -> None:
    """The source site's generator and its real-source and reconstructed-source weights."""
    sz, site_agent = b.size, _tool("site-agent")
    train_site(b, SOURCE)  # the second site trains when a pooled setting first needs it
    for source in ("real", "reconstructed"):
        b.stage(
            f"pretrain-{source}",
            lambda source=source: b.run(
                f"pretrain-{source}",
                [*site_agent, "pretrain", "-w", str(b.site_ws(SOURCE)), "--source", source,
                 "--profile", sz.profile, "--steps", str(sz.site_pretrain_steps), "--json"],
            ),
        )  # fmt: skip


def _ingest_site(b: Bench, site: str, ws: Path) -> None:
    """``site-agent ingest`` of the site's phantom DICOM export into ``ws``."""
    sz, ph = b.size, b.phantom(site)
    b.run(
        f"ingest-{site}" if ws == b.site_ws(site) else f"ingest-{ws.name}",
        [*_tool("site-agent"), "ingest", "--dicom-dir", str(ph / "dicom"), "--labels",
         str(ph / "labels.csv"), "--masks", str(ph / "masks"), "-w", str(ws),
         "--profile", sz.profile, "--json"],
    )  # fmt: skip


def train_site(b: Bench, site: str) -> None:
    """``site-agent ingest`` of the site's phantom DICOM export, then its generative model
    (autoencoder, latent diffusion) at the baseline length and with the baseline's settings."""
    ws = b.site_ws(site)

    def train() -> dict[str, Any]:
        _ingest_site(b, site, ws)
        return _train_generator(b, Generator(site, b.size.diffusion_steps), ws)

    b.stage(f"train-{site}", train)


def ensure_generator(b: Bench, g: Generator) -> Path:
    """The generator's workspace, trained. A longer or changed diffusion model gets its own
    copy of the site's workspace (real cases, autoencoder, latent cache, hold-out list), so the
    autoencoder and latents are reused and only the diffusion model is trained.

    With ``--synthetic-only`` and the site's baseline generator not trained yet, nothing needs
    that generator (it serves the controls and the baseline setting): the generator ingests
    the site's export itself and trains its own autoencoder with the same recipe and seed,
    instead of paying for a diffusion model no cell uses. Its ingest salts the case ids anew,
    so its hold-out draw differs from the site's; it lives under its own name (``-own-ae``),
    which a full run never reuses."""
    ws = b.generator_ws(g)
    if ws != b.site_ws(g.site) and b.own_autoencoder(g):

        def own() -> dict[str, Any]:
            _ingest_site(b, g.site, ws)
            return _train_generator(b, g, ws)

        b.stage(f"generator-{g.name}{OWN_AE}", own)
        return ws
    train_site(b, g.site)
    if ws == b.site_ws(g.site):
        return ws

    def train() -> dict[str, Any]:
        src = b.site_ws(g.site)
        for rel in (
            "cases/real",
            "secrets",
            "models/generative/autoencoder",
            "work/generative/latents",
        ):
            if not (ws / rel).exists() and (src / rel).exists():
                shutil.copytree(src / rel, ws / rel)
        hold = src / "models" / "generative" / "holdout.json"
        (ws / "models" / "generative").mkdir(parents=True, exist_ok=True)
        shutil.copy2(hold, ws / "models" / "generative" / "holdout.json")
        return _train_generator(b, g, ws)

    b.stage(f"generator-{g.name}", train)
    return ws


def _train_generator(b: Bench, g: Generator, ws: Path) -> dict[str, Any]:
    """Train ``g`` through the Python API: the baseline's diffusion settings pinned here (not
    the profile's current defaults, which this benchmark's findings changed), plus the
    variant's changes."""
    from shared.profiles import get_profile
    from site_agent.generative.pipeline import train_generative

    overrides = GENERATOR_VARIANTS[g.variant][0] if g.variant != "base" else {}
    prof = get_profile(b.size.profile)
    ae = prof.autoencoder
    if b.size.autoencoder_steps:
        ae = dataclasses.replace(ae, steps=b.size.autoencoder_steps)
    dm = dataclasses.replace(
        prof.diffusion, train_steps=g.diffusion_steps, **(BASELINE_DIFFUSION | overrides)
    )
    summary = train_generative(ws, dataclasses.replace(prof, autoencoder=ae, diffusion=dm))
    return {"diffusion": summary.get("diffusion"), "autoencoder": summary.get("autoencoder")}


# ---------------------------------------------------------------------------------------------
# one setting: generate, diagnose, study
# ---------------------------------------------------------------------------------------------


def _real_training_labels(ws: Path) -> list[int]:
    """Labels of the real cases the site's generator trained on (hold-out excluded)."""
    from shared.case_format import list_cases, read_meta

    held = set(json.loads((ws / "models" / "generative" / "holdout.json").read_text())["held_out"])
    labels = []
    for folder in list_cases(ws / "cases" / "real"):
        meta = read_meta(folder)
        if meta.case_id not in held and meta.label.cspca is not None and meta.label.cspca >= 0:
            labels.append(int(meta.label.cspca))
    return labels


def generate_setting(b: Bench, s: Setting) -> dict[str, Any]:
    from site_agent.generative.pipeline import generate

    record: dict[str, Any] = {}
    for g in s.generators:
        ws = ensure_generator(b, g)
        labels = _real_training_labels(ws)
        n = s.multiplier * len(labels)
        pf = sum(labels) / len(labels) if s.positive_fraction is None else s.positive_fraction
        out = b.work / "settings" / s.name / "cases" / g.site
        t0 = time.perf_counter()
        folders = generate(
            ws,
            n,
            pf,
            seed=0,
            sampler=s.sampler,
            guidance=s.guidance,
            steps=s.sampling_steps,
            out=out,
        )
        record[g.site] = {
            "generator": ws.name if ws != b.site_ws(g.site) else g.name,
            "autoencoder": "its own"
            if ws != b.site_ws(g.site) and b.own_autoencoder(g)
            else "the site's",
            "sampler": s.sampler or "model default",
            "sampling_steps": s.sampling_steps,
            "n": len(folders),
            "positive_fraction": round(pf, 4),
            "real_training_cases": len(labels),
            "seconds": round(time.perf_counter() - t0, 1),
        }
    return record


def diagnose_setting(b: Bench, s: Setting) -> dict[str, Any]:
    """The fidelity report's diagnostics of each generator's part of the setting."""
    from shared.case_format import list_cases

    try:
        from site_agent.generative.diagnostics import synthetic_diagnostics
    except ImportError:
        return {"status": "pending: site_agent.generative.diagnostics is not available"}
    out: dict[str, Any] = {"status": "done"}
    for g in s.generators:
        cases = list_cases(b.work / "settings" / s.name / "cases" / g.site)
        out[g.site] = synthetic_diagnostics(b.generator_ws(g), cases, seed=0)
    return out


def screen_setting(b: Bench, s: Setting) -> dict[str, Any]:
    """The export gate's memorisation screen on each generator's part: a setting that wins by
    copying patients would not be exportable (the benchmark pretrains on every generated case;
    an export replaces the flagged ones)."""
    from shared.case_format import list_cases
    from site_agent.privacy.memorisation import build_reference, load_images, screen

    out: dict[str, Any] = {}
    for g in s.generators:
        cases = list_cases(b.work / "settings" / s.name / "cases" / g.site)
        scores = screen(build_reference(b.generator_ws(g)), load_images(cases))
        flagged = sum(sc.flagged for sc in scores)
        out[g.site] = {
            "screened": len(scores),
            "flagged": flagged,
            "flagged_fraction": round(flagged / max(len(scores), 1), 4),
        }
    return out


def _study_toml(b: Bench, s: Setting) -> Path:
    sz = b.size

    def q(p: Path) -> str:
        return json.dumps(str(p.resolve()))

    models = b.site_ws(SOURCE) / "models"
    controls = (
        ""
        if b.synthetic_only
        else f"""[conditions.none]
kind = "none"
[conditions.real-source]
kind = "weights"
weights = {q(models / "classifier-real-bpmri")}
[conditions.reconstructed-source]
kind = "weights"
weights = {q(models / "classifier-reconstructed-bpmri")}
"""
    )
    cases = [q(b.work / "settings" / s.name / "cases" / g.site) for g in s.generators]
    text = f"""# benchmarks.synthetic_value, setting {s.name}. Phantom data: machinery, not truth.
[study]
profile = "{sz.profile}"
external = {q(b.coord / "cases" / "external")}
fractions = {list(sz.fractions)}
seeds = {sz.seeds}
seeds_large = {sz.seeds}
small_fraction_max = {max(sz.fractions)}

[pretrain]
steps = {sz.study_pretrain_steps}

[finetune]
steps = {sz.study_finetune_steps}

{controls}[conditions."syn-{s.name}"]
kind = "pretrain"
cases = [{", ".join(cases)}]
"""
    path = b.work / "settings" / s.name / "study.toml"
    path.write_text(text)
    return path


def study_setting(b: Bench, s: Setting) -> dict[str, Any]:
    """The four conditions' cells (the three shared ones run once for every setting, all in
    one study folder) and the setting's paired statistics."""
    from coordinator.study.config import load_study_config
    from coordinator.study.report import cell_metrics, comparisons, summarise
    from coordinator.study.run import run_study

    cfg = load_study_config(_study_toml(b, s))
    results = run_study(cfg, b.work / "study", log=b.say)
    mine = f"syn-{s.name}"
    keep = [
        r | {"condition": SYNTHETIC if r["condition"] == mine else r["condition"]}
        for r in results
        if r["condition"] in (*BASE_CONDITIONS, mine)
    ]
    summary = summarise([cell_metrics(r) for r in keep])
    comps = comparisons(keep)
    val = [r["val_auc"] for r in keep if r["condition"] == SYNTHETIC and r["val_auc"] is not None]
    per_seed = {
        f"{r['condition']}|{r['fraction']}|{r['seed']}": round(cell_metrics(r)["auc"], 4)
        for r in keep
    }
    return {
        "summary": summary,
        "comparisons": comps,
        "synthetic_val_auc_mean": sum(val) / len(val) if val else None,
        "per_seed_auc": per_seed,
        "goal": (
            {"met": None, "why": "controls not run (--synthetic-only)"}
            if b.synthetic_only
            else goal_check(summary, comps, b.size.fractions)
        ),
    }


def _pair(comps: list[dict[str, Any]], f: float, a: str, b: str) -> tuple[float, float]:
    """(mean AUC difference a - b, Holm-adjusted seed-level p) at fraction f."""
    for c in comps:
        if abs(c["fraction"] - f) < 1e-9 and {c["condition_a"], c["condition_b"]} == {a, b}:
            sign = 1.0 if c["condition_a"] == a else -1.0
            return sign * c["auc_diff_mean"], c["auc_p_seed_level_holm"]
    raise KeyError((f, a, b))


def goal_check(
    summary: list[dict[str, Any]], comps: list[dict[str, Any]], fractions: Sequence[float]
) -> dict[str, Any]:
    """Issue 12's goal at each fraction: synthetic >= reconstructed-source (mean AUC, and the
    seed-level test does not find synthetic worse) and synthetic > none (Holm p < 0.05)."""
    out: dict[str, Any] = {}
    for f in fractions:
        d_rec, p_rec = _pair(comps, f, SYNTHETIC, "reconstructed-source")
        d_none, p_none = _pair(comps, f, SYNTHETIC, "none")
        not_worse = d_rec >= 0 or p_rec >= 0.05
        out[f"{f:g}"] = {
            "vs_reconstructed_diff": d_rec,
            "vs_reconstructed_p_holm": p_rec,
            "vs_none_diff": d_none,
            "vs_none_p_holm": p_none,
            "met": bool(d_rec >= 0 and not_worse and d_none > 0 and p_none < 0.05),
        }
    out["met"] = all(v["met"] for k, v in out.items() if k != "met")
    return out


def run_setting(b: Bench, s: Setting) -> dict[str, Any]:
    folder = b.work / "settings" / s.name
    done = folder / "result.json"
    if done.is_file():
        rec = json.loads(done.read_text())
        changed = False
        if str(rec.get("diagnostics", {}).get("status", "")).startswith("pending"):
            rec["diagnostics"] = diagnose_setting(b, s)  # the module has arrived since
            changed = True
        if "memorisation" not in rec:  # a setting finished before the screen was added
            rec["memorisation"] = screen_setting(b, s)
            changed = True
        if rec.get("synthetic_only") and not b.synthetic_only:  # now with the controls
            rec |= study_setting(b, s) | {"synthetic_only": False}
            changed = True
        if changed:
            atomic_write_json(done, rec)
        return rec
    b.say(f"setting {s.name} ({s.lever} = {s.value})")
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    gen = b.stage(f"generate-{s.name}", lambda: generate_setting(b, s))
    t["generate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    diag = diagnose_setting(b, s)
    memo = screen_setting(b, s)
    t["diagnostics"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    study = study_setting(b, s)
    t["study"] = time.perf_counter() - t0
    rec = {
        "setting": s.record(),
        "generation": gen,
        "diagnostics": diag,
        "memorisation": memo,
        **study,
        "synthetic_only": b.synthetic_only,
        "seconds": {k: round(v, 1) for k, v in t.items()},
    }
    atomic_write_json(done, rec)
    return rec


# ---------------------------------------------------------------------------------------------
# the whole sweep
# ---------------------------------------------------------------------------------------------


def sweep(
    work: Path,
    size_name: str,
    only: Sequence[str] | None = None,
    on_setting: Callable[[dict[str, Any]], None] | None = None,
    report_only: bool = False,
    combined_from: Path | None = None,
    synthetic_only: bool = False,
) -> dict[str, Any]:
    """Run (or continue) the sweep; ``on_setting`` gets the record so far after each setting
    (so a killed run leaves a current report). ``report_only`` reads finished settings and
    trains or generates nothing. ``combined_from``: take the combined setting's lever choices
    from an earlier run's results JSON (chosen on validation there) instead of this run's
    measured levers, to re-measure that setting after a generator change without the sweep."""
    size = SIZES[size_name]
    pinned = chosen_in(combined_from) if combined_from else None
    work.mkdir(parents=True, exist_ok=True)
    marker = work / "size.json"
    if marker.is_file() and json.loads(marker.read_text()).get("size") != size_name:
        raise InputError(f"{work} holds a sweep of another size", hint="use another --work folder")
    atomic_write_json(marker, {"size": size_name, "record": dataclasses.asdict(size)})
    b = Bench(work, size, synthetic_only=synthetic_only)
    t0 = time.perf_counter()
    settings = settings_for(size)
    names = [s.name for s in settings]
    combos = ["combined", *(f"combined-{n}-{k}" for n, k in size.samplers)]
    unknown = sorted(set(only or ()) - {*names, *combos})
    if unknown:
        raise InputError(f"unknown setting(s) {unknown}", hint=f"choose from {[*names, *combos]}")
    if not report_only:
        build_consortium(b)
    results: dict[str, Any] = {}
    combined_record: dict[str, Any] = {}

    def record() -> dict[str, Any]:
        stages = {p.stem: json.loads(p.read_text()) for p in sorted(work.glob("stages/*.json"))}
        return {
            "benchmark": "synthetic_value",
            "size": size_name,
            "size_record": dataclasses.asdict(size),
            "settings": dict(results),
            "variants": {
                k: {"overrides": v[0], "why": v[1]} for k, v in GENERATOR_VARIANTS.items()
            },
            "this_run_seconds": round(time.perf_counter() - t0, 1),
            "stage_seconds": {k: v.get("seconds") for k, v in stages.items()},
            "complete": all(n in results for n in names),
            "combined": combined_record,
            "baseline_values": baseline_values(size),
        }

    for s in settings:
        done = work / "settings" / s.name / "result.json"
        # A setting left out by --only still shows in the report when it was measured before.
        if report_only or (only and s.name not in only):
            if done.is_file():
                results[s.name] = json.loads(done.read_text())
            continue
        results[s.name] = run_setting(b, s)
        if on_setting:
            on_setting(record())
    if pinned:
        combined: Setting | None = build_combined(size, pinned)
        why: dict[str, Any] = {"chosen": pinned, "chosen_in": str(combined_from)}
        base_val = (results.get("baseline") or {}).get("synthetic_val_auc_mean")
        if base_val is not None:
            why["baseline_val_auc"] = base_val
    else:
        combined, why = combined_setting(size, results)
    combined_record.update(why)
    if combined is not None:
        # "combined" in --only runs its sampler variants too: they share its generators.
        runs = [combined, *combined_with_samplers(size, combined)]
        for s in runs:
            wanted = not only or s.name in only or "combined" in only
            done = work / "settings" / s.name / "result.json"
            if wanted and not report_only:
                results[s.name] = run_setting(b, s)
                if on_setting:
                    on_setting(record())
            elif done.is_file():
                results[s.name] = json.loads(done.read_text())
    else:
        for name in combos:  # measured by an earlier run whose choice differed
            done = work / "settings" / name / "result.json"
            if done.is_file():
                results[name] = json.loads(done.read_text())
    if report_only and not results:
        # Nothing to report: an empty report must not replace an earlier run's (e.g. the
        # committed benchmarks/results/synthetic_value.*).
        raise NothingProducedError(
            f"no finished setting in {work} to report (the sweep takes hours on 2 cores)",
            hint="run `python -m benchmarks.synthetic_value` without --report-only to measure "
            "them; the last committed result is benchmarks/results/synthetic_value.md",
        )
    return record()


def main(argv: Sequence[str] | None = None) -> None:
    from benchmarks.synthetic_value_report import write_report

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="full")
    ap.add_argument("--only", nargs="*", help="run only these settings (names in the table)")
    ap.add_argument("--work", type=Path, default=None, help="cache folder (resumable)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="write the report from the settings already finished in --work; train nothing",
    )
    ap.add_argument(
        "--combined-from",
        type=Path,
        default=None,
        help="results JSON of an earlier run: re-measure the combined setting it chose on "
        "validation (e.g. after a generator change) without sweeping every lever again",
    )
    ap.add_argument(
        "--synthetic-only",
        action="store_true",
        help="study only the synthetic condition (no none / real-source / reconstructed-source "
        "cells, so no goal check): compares settings with each other, e.g. the combined "
        "setting's samplers, at a third of the cost",
    )
    args = ap.parse_args(argv)
    work = args.work or Path("benchmarks/work") / f"synthetic_value-{args.size}"

    def report(rec: dict[str, Any]) -> list[Path]:
        rec["date"] = time.strftime("%Y-%m-%d")
        rec["machine"] = cpus_line()
        return write_report(rec, args.out)

    rec = sweep(
        work,
        args.size,
        args.only,
        on_setting=report,
        report_only=args.report_only,
        combined_from=args.combined_from,
        synthetic_only=args.synthetic_only,
    )
    paths = report(rec)
    print(
        json.dumps(
            {"figures": rec.get("figures", []), "outputs": [str(p) for p in paths]}, indent=2
        )
    )


if __name__ == "__main__":
    try:
        main()
    except ToolkitError as exc:  # bad input (3), a killed study worker (1), ...
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
