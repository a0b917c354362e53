"""The demo's ``fed.toml`` and ``study.toml``, written the way a coordinator would write them
by hand (relative paths, every key visible), so they double as worked examples."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from coordinator.demo.plan import DemoPlan
from shared.atomic import atomic_write_text
from shared.profiles import get_profile

CONDITIONS = (
    "none",
    "real-source",
    "reconstructed-source",
    "synthetic-bpmri",
    "synthetic-t2w",
    "federated-synthetic",
)
FEDERATED = "federated-synthetic"  # the condition that waits for the federation's model
SPLIT = "{ train = 0.6, val = 0.15, test = 0.25, seed = 0 }"


def _rel(path: Path, base: Path) -> str:
    return json.dumps(os.path.relpath(Path(path).resolve(), base.resolve()))


def write_fed_toml(plan: DemoPlan, coord: Path, sites: dict[str, Path]) -> Path:
    """Phase 1: FedAvg over the site nodes on their own synthetic cases (their policy allows
    nothing else); phase 2: adaptation on the coordinator's external data node."""
    nodes = [f'  {{ role = "site", workspace = {_rel(ws, coord)} }},' for ws in sites.values()]
    nodes.append('  { role = "target", workspace = "." },')
    text = f"""# Written by `coordinator demo` ({plan.name}): phantom consortium, simulation engine.
[federation]
out = "fed-out"
mode = "simulation"
profile = "{plan.profile}"
network = "{get_profile(plan.profile).classifier.network}"
sequences = ["t2w", "hbv", "adc"]
seed = 0
round-timeout = 600
min-sites = {len(sites)}
min-targets = 1

[pretrain]
rounds = {plan.fed_pretrain_rounds}
local-steps = {plan.fed_local_steps}
data = "synthetic"

[adapt]
rounds = {plan.fed_adapt_rounds}
local-steps = {plan.fed_local_steps}
fraction = {plan.fed_adapt_fraction}
split = {SPLIT}

[simulation]
nodes = [
{chr(10).join(nodes)}
]
"""
    path = coord / "fed.toml"
    atomic_write_text(path, text)
    return path


def write_study_toml(
    plan: DemoPlan,
    coord: Path,
    source: str,
    real_weights: Path,
    reconstructed_weights: Path,
    synthetic_cases: Sequence[Path],
    federation: Path,
) -> Path:
    """The paper's conditions from one source site (``source``), plus the model that the
    federation in ``federation`` (fed.toml) pretrained over every site's synthetic cases.
    The synthetic conditions pool ``synthetic_cases`` (every site's imported cases): pooling
    two sites beat one on validation in ``benchmarks/synthetic_value.py`` (issue 12)."""
    syn = ", ".join(_rel(p, coord) for p in synthetic_cases)
    text = f"""# Written by `coordinator demo` ({plan.name}). Phantom data: checks the machinery,
# not clinical truth. Source site for the single-site conditions: {source}.
[study]
profile = "{plan.profile}"
external = "cases/external"
fractions = {list(plan.study_fractions)}
seeds = {plan.study_seeds}
seeds_large = {plan.study_seeds_large}
small_fraction_max = {min(plan.study_fractions)}
split = {SPLIT}

[pretrain]
steps = {plan.study_pretrain_steps}

[finetune]
steps = {plan.study_finetune_steps}

[conditions.none]
kind = "none"

[conditions.real-source]
kind = "weights"
weights = {_rel(real_weights, coord)}

[conditions.reconstructed-source]
kind = "weights"
weights = {_rel(reconstructed_weights, coord)}

[conditions.synthetic-bpmri]
kind = "pretrain"
cases = [{syn}]

[conditions.synthetic-t2w]
kind = "pretrain"
cases = [{syn}]
sequences = ["t2w"]

[conditions.federated-synthetic]
kind = "federated"
federation = {_rel(federation, coord)}
"""
    path = coord / "study.toml"
    atomic_write_text(path, text)
    return path
