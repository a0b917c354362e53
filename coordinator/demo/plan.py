"""What the demo consortium is: its sites, sizes, training lengths and study grid.

Two plans: ``quick`` (the ``tiny`` profile, within 10 minutes on 2 cores, what CI runs) and
``full`` (the ``cpu`` profile, within 30). ``expected_seconds`` weighs each step for the
progress bar's ETA. The sizes are chosen so every step has enough cases
for its minimums (the external split's smallest fraction keeps both classes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class SitePlan:
    name: str  # the site id printed on its bundles
    institution: str  # phantom preset (vendor, field strength, export style)
    cases: int
    seed: int


@dataclass(frozen=True)
class DemoPlan:
    name: str
    profile: str
    sites: tuple[SitePlan, ...]
    external_cases: int
    synthetic_cases: int  # exported by each site (from its generated_cases)
    autoencoder_steps: int | None  # None: the profile's
    diffusion_steps: int | None
    site_pretrain_steps: int | None  # the real-source and reconstructed-source weights
    study_fractions: tuple[float, ...]
    study_seeds: int  # paired seeds at the small fractions
    study_seeds_large: int
    study_pretrain_steps: int
    study_finetune_steps: int
    fed_pretrain_rounds: int
    fed_adapt_rounds: int
    fed_local_steps: int
    fed_adapt_fraction: float
    budget_minutes: int
    expected_seconds: dict[str, float] = field(default_factory=dict)  # per step kind, for ETA

    @property
    def generated_cases(self) -> int:
        """Cases each site generates and reviews: the export takes its cases from these, and
        the margin replaces any the memorisation screen flags."""
        return self.synthetic_cases + max(2, self.synthetic_cases // 10)

    def record(self) -> dict[str, Any]:
        """What the run does (kept with its state: a rerun must match it); the ETA weights
        are not part of it, so a new release's timings never strand a half-finished demo."""
        rec = asdict(self)
        del rec["expected_seconds"]
        return rec


SITES = (
    SitePlan("aurora", "aurora", 0, 1),  # Siemens 3T
    SitePlan("borealis", "borealis", 0, 2),  # GE 1.5T
)


def _sites(cases: int) -> tuple[SitePlan, ...]:
    return tuple(SitePlan(s.name, s.institution, cases, s.seed) for s in SITES)


QUICK = DemoPlan(
    name="quick",
    profile="tiny",
    sites=_sites(20),
    # From scratch on 48 training cases (of 80) the small CNN's test AUC ranged 0.48-0.92 over
    # splits and seeds (mean 0.68-0.73 on four sets of them); on 96 (of 160) its mean was 0.81
    # over 5 splits x 2 seeds (issue 15: the first table a newcomer sees must show learning).
    external_cases=160,
    synthetic_cases=20,
    autoencoder_steps=None,
    diffusion_steps=None,
    site_pretrain_steps=None,
    study_fractions=(0.25, 0.5, 1.0),
    study_seeds=2,
    study_seeds_large=2,
    study_pretrain_steps=30,
    # From scratch on the 48 external training cases, 20 steps left the classifier at chance
    # (test AUC 0.52); with 200 (early-stopped on validation) it reached 0.64-0.83 in three
    # runs (issue 15: the first table a newcomer sees must show learning).
    study_finetune_steps=200,
    fed_pretrain_rounds=2,
    fed_adapt_rounds=2,
    fed_local_steps=5,
    fed_adapt_fraction=0.5,
    budget_minutes=10,
    # Step times of a run on 2 idle cores of the AMX Intel Xeon, 2026-12-07 (145 s in all): the
    # three lanes ran side by side, so these overlap; the progress bar needs their proportions
    expected_seconds={
        "phantom-site": 13,
        "phantom-external": 71,
        "keys": 1,
        "train": 17,
        "generate": 11,  # sampling + the first fidelity report (trains its two classifiers)
        "fidelity": 1,  # the report read again: its inputs unchanged, the stored one
        "export-synthetic": 10,
        "pretrain": 5,
        "export-weights": 1,
        "audit": 1,
        "ingest-external": 7,
        "trust": 1,
        "import": 1,
        "federate": 15,
        # 30 cells two at a time beside the federation, then its 6 and the report
        "study-ready": 40,
        "study": 12,
        "checks": 5,
    },
)

FULL = DemoPlan(
    name="full",
    profile="cpu",
    sites=_sites(48),
    external_cases=160,
    # 4x each site's studies, pooled over the sites: issue 12's setting chosen on validation
    synthetic_cases=192,
    autoencoder_steps=500,
    diffusion_steps=600,
    site_pretrain_steps=300,
    study_fractions=(0.125, 0.5, 1.0),
    study_seeds=3,
    study_seeds_large=2,
    study_pretrain_steps=300,
    study_finetune_steps=150,
    fed_pretrain_rounds=3,
    fed_adapt_rounds=2,
    fed_local_steps=30,
    fed_adapt_fraction=0.5,
    budget_minutes=30,
    expected_seconds={
        # Step times of a run on 2 idle cores of the AMX Intel Xeon, 2026-12-07 (671 s in all;
        # generators trained in bf16, the default there): the lanes ran side by side, so these
        # overlap (each training 320 s at one thread)
        "phantom-site": 47,
        "phantom-external": 130,
        "keys": 1,
        "train": 322,
        "generate": 61,
        "fidelity": 1,  # the report read again: its inputs unchanged, the stored one
        "export-synthetic": 35,  # the generated cases: no sampling of its own
        "pretrain": 13,
        "export-weights": 1,
        "audit": 1,
        "ingest-external": 19,
        "trust": 1,
        "import": 5,
        "federate": 20,
        "study-ready": 110,
        "study": 30,
        "checks": 10,
    },
)

PLANS = {"quick": QUICK, "full": FULL}
