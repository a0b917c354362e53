"""The study configuration (TOML) checked into frozen dataclasses before any work starts.

Example (every key but ``external`` and the conditions has a default from the profile)::

    [study]
    profile = "cpu"
    external = "coord-ws/cases/external"   # the external institution's case store
    fractions = [0.0625, 0.125, 0.25, 0.5, 1.0]
    seeds = 10                 # paired seeds at fractions <= small_fraction_max (with 10
                               # condition pairs, 9+ let a seed-level test pass Holm at 0.05)
    seeds_large = 3            # paired seeds above it
    small_fraction_max = 0.125
    split = { train = 0.6, val = 0.15, test = 0.25, seed = 0 }
    operating_sensitivity = 0.9          # threshold chosen on validation data

    [conditions.none]
    kind = "none"                        # random initialisation
    [conditions.real-source]
    kind = "weights"                     # pretrained at a site, exported as weights
    weights = "imports/aurora/classifier-real"
    [conditions.synthetic-bpmri]
    kind = "pretrain"                    # pretrained here on (synthetic) cases
    cases = ["imports/aurora/synthetic", "imports/borealis/synthetic"]
    [conditions.synthetic-t2w]
    kind = "pretrain"
    cases = ["imports/aurora/synthetic"]
    sequences = ["t2w"]
    [conditions.fed-synthetic]
    kind = "federated"                   # pretrained by the federation's phase 1 (FedAvg
    federation = "fed.toml"              # over the sites), same vocabulary as `coordinator
                                         # federate --config fed.toml`

Relative paths are resolved against the config file's folder.

``kind = "federated"`` starts from the global model the federation described by its
``fed.toml`` writes at the end of its pretraining phase (``OUT/pretrained/``, see
``coordinator/federation/config.py``). If that folder does not exist yet, the study runs the
federation first (or resumes it) with its adaptation phase skipped: the study's own
fine-tuning cells are the adaptation. Its sequences, network and profile come from the
federation and must fit the study (a ``sequences`` key, if given, must match).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.classifier.networks import NETWORKS
from shared.errors import InputError
from shared.profiles import Profile, get_profile
from shared.toml_files import read_toml

CONDITION_KINDS = ("none", "weights", "pretrain", "federated")
SEQUENCE_SETS = {("t2w", "hbv", "adc"), ("t2w",)}


@dataclass(frozen=True)
class Condition:
    name: str
    kind: str
    sequences: tuple[str, ...] = ("t2w", "hbv", "adc")
    weights: Path | None = None
    cases: tuple[Path, ...] = ()
    federation: Path | None = None  # kind "federated": the federation's fed.toml


@dataclass(frozen=True)
class Training:
    steps: int
    batch_size: int
    lr: float
    eval_every: int
    patience: int


@dataclass(frozen=True)
class StudyConfig:
    path: Path
    profile: str
    external: Path
    fractions: tuple[float, ...]
    seeds: int
    seeds_large: int
    small_fraction_max: float
    split: dict[str, float]
    split_seed: int
    operating_sensitivity: float
    network: str
    pretrain: Training
    finetune: Training
    conditions: tuple[Condition, ...] = field(default_factory=tuple)

    def seeds_for(self, fraction: float) -> int:
        return self.seeds if fraction <= self.small_fraction_max + 1e-9 else self.seeds_large


def _get(d: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any, where: str):
    v = d.get(key, default)
    if v is None:
        raise InputError(f"{where}: missing required key {key!r}")
    if not isinstance(v, kind) or (isinstance(v, bool) and kind is not bool):
        raise InputError(f"{where}: {key} must be {_name(kind)}, not {v!r}")
    return v


def _name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _training(d: dict[str, Any], where: str, default_steps: int, lr: float, batch: int) -> Training:
    steps = _get(d, "steps", int, default_steps, where)
    t = Training(
        steps=steps,
        batch_size=_get(d, "batch_size", int, batch, where),
        lr=float(_get(d, "lr", (int, float), lr, where)),
        # from the configured length, so a longer run is not cut short by the default patience
        eval_every=_get(d, "eval_every", int, max(5, steps // 12), where),
        patience=_get(d, "patience", int, 6, where),
    )
    if t.steps < 1 or t.batch_size < 1 or t.lr <= 0:
        raise InputError(f"{where}: steps, batch_size and lr must be positive")
    return t


def load_study_config(path: Path) -> StudyConfig:
    """Parse and check ``path``; every problem is an ``InputError`` naming the key."""
    raw = read_toml(path, "study config")
    base = Path(path).resolve().parent
    study = raw.get("study")
    if not isinstance(study, dict):
        raise InputError(f"study config {path} needs a [study] table")
    where = "[study]"
    prof = get_profile(_get(study, "profile", str, "cpu", where))
    external = base / _get(study, "external", str, None, where)
    fractions = tuple(float(f) for f in _get(study, "fractions", list, list(prof.fractions), where))
    bad = [f for f in fractions if not 0.0 < f <= 1.0]
    if bad or not fractions:
        raise InputError(f"{where}: fractions must lie in (0, 1], not {bad or fractions}")
    split = _get(study, "split", dict, {"train": 0.6, "val": 0.15, "test": 0.25}, where)
    for k in ("train", "val", "test"):
        if k not in split:
            raise InputError(f"{where}: split is missing {k!r} (train, val and test are needed)")
    parts = {k: float(split[k]) for k in ("train", "val", "test")}
    if any(v <= 0 for v in parts.values()) or abs(sum(parts.values()) - 1.0) > 1e-6:
        raise InputError(
            f"{where}: split train/val/test must be positive and sum to 1, not {parts}"
        )
    network = _get(study, "network", str, prof.classifier.network, where)
    if network not in NETWORKS:
        raise InputError(
            f"{where}: unknown network {network!r}", hint=f"one of {', '.join(NETWORKS)}"
        )
    cond_raw = raw.get("conditions")
    if not isinstance(cond_raw, dict) or not cond_raw:
        raise InputError(f"study config {path} needs at least one [conditions.NAME] table")
    conditions = []
    for name, c in cond_raw.items():
        w = f"[conditions.{name}]"
        if not isinstance(c, dict):
            raise InputError(f"{w} must be a table")
        kind = _get(c, "kind", str, None, w)
        if kind not in CONDITION_KINDS:
            raise InputError(
                f"{w}: unknown condition kind {kind!r}", hint=f"one of {', '.join(CONDITION_KINDS)}"
            )
        seqs = tuple(_get(c, "sequences", list, ["t2w", "hbv", "adc"], w))
        if seqs not in SEQUENCE_SETS:
            raise InputError(f"{w}: sequences must be [t2w, hbv, adc] or [t2w], not {list(seqs)}")
        weights = base / c["weights"] if kind == "weights" and "weights" in c else None
        if kind == "weights" and weights is None:
            raise InputError(f"{w}: kind 'weights' needs weights = \"FOLDER\"")
        cases = tuple(base / p for p in _get(c, "cases", list, [], w))
        if kind == "pretrain" and not cases:
            raise InputError(f"{w}: kind 'pretrain' needs cases = [\"FOLDER\", ...]")
        fed = None
        if kind == "federated":
            fed, seqs = _federation(c, base, w, prof, network)
        conditions.append(Condition(name, kind, seqs, weights, cases, fed))
    pre = raw.get("pretrain", {})
    fin = raw.get("finetune", {})
    cfg = StudyConfig(
        path=Path(path),
        profile=prof.name,
        external=external,
        fractions=tuple(sorted(fractions)),
        seeds=_get(study, "seeds", int, 10, where),
        seeds_large=_get(study, "seeds_large", int, 3, where),
        small_fraction_max=float(_get(study, "small_fraction_max", (int, float), 0.125, where)),
        split=parts,
        split_seed=int(split.get("seed", 0)),
        operating_sensitivity=float(_get(study, "operating_sensitivity", (int, float), 0.9, where)),
        network=network,
        pretrain=_training(
            pre,
            "[pretrain]",
            prof.classifier.pretrain_steps,
            prof.classifier.lr_pretrain,
            prof.classifier.batch_size,
        ),
        finetune=_training(
            fin,
            "[finetune]",
            prof.classifier.finetune_steps,
            prof.classifier.lr_finetune,
            prof.classifier.batch_size,
        ),
        conditions=tuple(conditions),
    )
    if cfg.seeds < 1 or cfg.seeds_large < 1:
        raise InputError(f"{where}: seeds and seeds_large must be at least 1")
    return cfg


def _federation(
    c: dict[str, Any], base: Path, where: str, prof: Profile, network: str
) -> tuple[Path, tuple[str, ...]]:
    """A ``kind = "federated"`` condition's fed.toml, checked now (it must parse, pretrain
    at least one round and fit the study's grid and network), and its sequences."""
    from coordinator.federation.config import load_fed_toml

    path = (base / _get(c, "federation", str, None, where)).resolve()
    if not path.is_file():
        raise InputError(f"{where}: federation config {path} does not exist")
    try:
        rc = load_fed_toml(path).pretraining_only().run_config
        fed_grid = get_profile(rc.profile).grid.size
    except InputError as exc:
        raise InputError(f"{where}: {exc.message}", hint=exc.hint) from None
    if tuple(fed_grid) != tuple(prof.grid.size):
        raise InputError(
            f"{where}: the federation trains on the {rc.profile} profile's grid {fed_grid}, "
            f"the study uses {prof.name} ({prof.grid.size})"
        )
    if rc.network != network:
        raise InputError(
            f"{where}: the federation trains a {rc.network}, the study fine-tunes a {network}"
        )
    seqs = tuple(s for s in rc.sequences.split(",") if s)
    if "sequences" in c and tuple(c["sequences"]) != seqs:
        raise InputError(
            f"{where}: sequences {list(c['sequences'])} differ from the federation's {list(seqs)}"
        )
    return path, seqs
