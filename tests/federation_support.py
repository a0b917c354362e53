"""Tiny workspaces for the federation tests: two sites (synthetic cases, site keys, policy
with a passphrase file) and one target node (external cases)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.case_format import CaseMeta, Label, write_case
from shared.volume import Volume

GRID = (24, 24, 12)
PASSPHRASE = "federation-test-passphrase"


def make_store(root: Path, n: int, seed: int, origin: str, prevalence: float = 0.4) -> Path:
    """Labelled cases whose positives carry a bright hbv / dark adc blob (machinery only)."""
    rng = np.random.default_rng(seed)
    affine = np.diag([2.5, 2.5, 4.5, 1.0])
    for i in range(n):
        y = int(i < round(n * prevalence))
        vols = {s: rng.normal(0.5, 0.15, GRID).astype(np.float32) for s in ("t2w", "hbv", "adc")}
        if y:
            c = rng.integers(6, 18, 3)
            c[2] = rng.integers(3, 9)
            sl = tuple(slice(int(v) - 2, int(v) + 2) for v in c)
            vols["hbv"][sl] += 0.8
            vols["adc"][sl] -= 0.3
        meta = CaseMeta(
            f"case-{seed}-{i:03d}",
            origin,
            Label(cspca=y, source="site"),
            list(GRID),
            [2.5, 2.5, 4.5],
            "tiny",
        )
        write_case(root / meta.case_id, meta, {k: Volume(v, affine) for k, v in vols.items()})
    return root


def make_site(ws: Path, site: str, seed: int, n: int = 10, policy: str | None = None) -> Path:
    from site_agent.export.keys import init_keys

    make_store(ws / "cases" / "synthetic", n, seed, "synthetic")
    make_store(ws / "cases" / "real", 6, seed + 100, "real")
    init_keys(ws, site, PASSPHRASE)
    (ws / "secrets").mkdir(parents=True, exist_ok=True)
    (ws / "secrets" / "audit-passphrase").write_text(PASSPHRASE)
    (ws / "federation").mkdir(parents=True, exist_ok=True)
    (ws / "federation" / "policy.toml").write_text(
        policy
        or (
            "[policy]\n"
            'allowed-data = ["synthetic"]\n'
            'allowed-returns = ["classifier-weights", "metrics"]\n'
            f'audit-passphrase-file = "{ws / "secrets" / "audit-passphrase"}"\n'
        )
    )
    return ws


def make_target(ws: Path, seed: int = 7, n: int = 24) -> Path:
    make_store(ws / "cases" / "external", n, seed, "real")
    return ws


def make_consortium(base: Path) -> dict[str, Path]:
    return {
        "aurora": make_site(base / "site-aurora", "aurora", 1),
        "borealis": make_site(base / "site-borealis", "borealis", 2),
        "target": make_target(base / "coord-ws"),
    }


def write_fed_toml(
    path: Path,
    ws: dict[str, Path],
    out: Path,
    faults: dict[str, str] | None = None,
    pretrain_rounds: int = 1,
    adapt_rounds: int = 1,
    extra: str = "",
) -> Path:
    faults = faults or {}
    nodes = []
    for name in ("aurora", "borealis"):
        f = f', test-fault = "{faults[name]}"' if name in faults else ""
        nodes.append(f'  {{ role = "site", workspace = "{ws[name]}", site = "{name}"{f} }},')
    nodes.append(f'  {{ role = "target", workspace = "{ws["target"]}" }},')
    path.write_text(f"""
[federation]
out = "{out}"
mode = "simulation"
profile = "tiny"
seed = 0
round-timeout = 120
node-wait-timeout = 60
min-sites = 1
{extra}

[pretrain]
rounds = {pretrain_rounds}
local-steps = 2
batch-size = 4

[adapt]
rounds = {adapt_rounds}
local-steps = 2
batch-size = 4
fraction = 0.5
split = {{ train = 0.5, val = 0.25, test = 0.25, seed = 0 }}

[simulation]
nodes = [
{chr(10).join(nodes)}
]
""")
    return path
