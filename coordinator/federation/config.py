"""The federation's settings: Flower run config keys (``[tool.flwr.app.config]``) and the
``fed.toml`` that ``coordinator federate`` reads and turns into them.

``fed.toml`` (relative paths resolve against its folder)::

    [federation]
    out = "fed-out"              # checkpoints, metrics.csv, metrics.png, final model
    mode = "simulation"          # or "deployment"
    profile = "tiny"             # case grid (the study's profiles)
    network = "small-cnn"        # default: the profile's classifier network
    sequences = ["t2w", "hbv", "adc"]
    seed = 0
    round-timeout = 300          # seconds to wait for each exchange of a round, never more
    node-wait-timeout = 120      # seconds to wait for nodes to connect and describe themselves
    min-sites = 1                # valid site replies a pretraining round needs
    min-targets = 1              # valid target replies an adaptation round needs
    norm-factor = 10.0           # reject an update whose norm exceeds this x the others' median
    initial-weights = ""         # optional classifier weights folder (safetensors + config)

    [pretrain]                   # phase 1: FedAvg over the site nodes
    rounds = 2
    local-steps = 5
    lr = 0.001
    batch-size = 8
    data = "synthetic"           # what sites are asked to train on (their policy decides)

    [adapt]                      # phase 2: source-free adaptation on the target node(s)
    rounds = 2
    local-steps = 5
    lr = 0.0005
    batch-size = 8
    fraction = 0.25              # the study's fractions of the external training split
    split = { train = 0.6, val = 0.15, test = 0.25, seed = 0 }

    [simulation]                 # mode = "simulation": one virtual SuperNode per entry
    nodes = [
      { role = "site", workspace = "site-aurora" },
      { role = "site", workspace = "site-borealis" },
      { role = "target", workspace = "coord-ws" },
    ]

    [deployment]                 # mode = "deployment": a SuperLink connection
    superlink = "127.0.0.1:8000"
    root-certificates = "certs/ca.crt"   # or insecure = true (warned)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from shared.classifier.networks import NETWORKS
from shared.errors import InputError
from shared.profiles import get_profile
from shared.toml_files import read_toml

# Keys whose change does not change what a completed round computed (resume may differ).
NON_TRAJECTORY_KEYS = (
    "out-dir",
    "pretrain-rounds",
    "adapt-rounds",
    "round-timeout",
    "node-wait-timeout",
    "expected-nodes",
    "stop-after-round",
    "min-sites",
    "min-targets",
    "norm-factor",
    "sim-nodes",
)


@dataclass(frozen=True)
class FederationConfig:
    out_dir: str
    profile: str = "tiny"
    network: str = "small-cnn"  # the tiny profile's
    sequences: str = "t2w,hbv,adc"
    seed: int = 0
    pretrain_rounds: int = 2
    pretrain_steps: int = 5
    pretrain_lr: float = 1e-3
    pretrain_batch: int = 8
    pretrain_data: str = "synthetic"
    adapt_rounds: int = 1
    adapt_steps: int = 5
    adapt_lr: float = 5e-4
    adapt_batch: int = 8
    adapt_fraction: float = 1.0
    split: str = "0.6,0.15,0.25,0"
    returns: str = "classifier-weights,metrics"
    min_sites: int = 1
    min_targets: int = 1
    expected_nodes: int = 0
    node_wait_timeout: float = 120.0
    round_timeout: float = 300.0
    norm_factor: float = 10.0
    initial_weights: str = ""
    stop_after_round: int = 0
    sim_nodes: str = ""

    @classmethod
    def from_run_config(cls, rc: dict[str, Any]) -> FederationConfig:
        fields = cls.__dataclass_fields__
        kw: dict[str, Any] = {}
        for key, value in rc.items():
            name = key.replace("-", "_")
            if name in fields:
                typ = fields[name].type
                kw[name] = {"int": int, "float": float, "str": str}.get(str(typ), str)(value)
        if not kw.get("out_dir"):
            raise InputError("run config needs out-dir (where checkpoints and metrics go)")
        cfg = cls(**kw)
        cfg.check()
        return cfg

    def check(self) -> None:
        if self.pretrain_rounds < 0 or self.adapt_rounds < 0:
            raise InputError("pretrain-rounds and adapt-rounds must be >= 0")
        if self.pretrain_rounds + self.adapt_rounds < 1:
            raise InputError("nothing to do: pretrain-rounds + adapt-rounds is 0")
        if min(self.pretrain_steps, self.adapt_steps, self.pretrain_batch, self.adapt_batch) < 1:
            raise InputError("local steps and batch sizes must be >= 1")
        if self.round_timeout <= 0 or self.node_wait_timeout <= 0:
            raise InputError("round-timeout and node-wait-timeout must be positive")
        if self.norm_factor <= 1:
            raise InputError("norm-factor must be > 1")
        if not 0 < self.adapt_fraction <= 1:
            raise InputError("adapt fraction must lie in (0, 1]")

    def to_run_config(self) -> dict[str, Any]:
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}

    def fingerprint(self) -> str:
        rc = {k: v for k, v in self.to_run_config().items() if k not in NON_TRAJECTORY_KEYS}
        return hashlib.sha256(json.dumps(rc, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def total_rounds(self) -> int:
        return self.pretrain_rounds + self.adapt_rounds

    def phase_of(self, server_round: int) -> str:
        return "pretrain" if server_round <= self.pretrain_rounds else "adapt"


@dataclass(frozen=True)
class FedToml:
    """``fed.toml`` parsed: the run config plus how to run it."""

    run_config: FederationConfig
    mode: str
    sim_nodes: list[dict[str, Any]]
    superlink: str
    root_certificates: str
    insecure: bool
    source: str = "fed.toml"  # the file it was read from, for messages

    def check_sim_nodes(self) -> None:
        """Every simulated node's role and workspace, checked before a run starts: a node at a
        missing path would otherwise fail deep inside a round, with a misleading reason, and
        create folders there. Not part of parsing: a study that only reads a finished
        federation's model needs none of its nodes."""
        for i, node in enumerate(self.sim_nodes if self.mode == "simulation" else []):
            _check_sim_node(self.source, i, node)

    @property
    def pretrained_dir(self) -> Path:
        """Where the run writes phase 1's global model (``OUT/pretrained``)."""
        return Path(self.run_config.out_dir) / "pretrained"

    def pretraining_only(self) -> FedToml:
        """The same federation with its adaptation phase skipped (adapt rounds 0): round
        counts are not part of the fingerprint, so it resumes, and is resumed by, the full
        run in the same output folder."""
        if self.run_config.pretrain_rounds < 1:
            raise InputError("this federation has no pretraining rounds ([pretrain] rounds = 0)")
        return replace(self, run_config=replace(self.run_config, adapt_rounds=0))


def _table(raw: dict[str, Any], name: str) -> dict[str, Any]:
    t = raw.get(name, {})
    if not isinstance(t, dict):
        raise InputError(f"[{name}] must be a table")
    return t


def _check_sim_node(path: Path | str, i: int, node: dict[str, Any]) -> None:
    from shared.federation.records import ROLES

    role, ws = str(node["role"]), Path(node["workspace"])
    where = f"{path}: [simulation] nodes[{i}]"
    if role not in ROLES:
        raise InputError(f"{where}: role must be one of {', '.join(ROLES)}, not {role!r}")
    if not ws.exists():
        raise InputError(
            f"{where} ({role}): workspace {ws} does not exist",
            hint="fix the path (relative paths resolve against the config's folder) or "
            "prepare that workspace first",
        )
    if not ws.is_dir():
        raise InputError(f"{where} ({role}): workspace {ws} is not a folder")


def load_fed_toml(path: Path) -> FedToml:
    raw = read_toml(path, "federation config")
    base = Path(path).resolve().parent
    fed, pre, ada = _table(raw, "federation"), _table(raw, "pretrain"), _table(raw, "adapt")
    sim, dep = _table(raw, "simulation"), _table(raw, "deployment")
    known = {
        "federation": {
            "out",
            "mode",
            "profile",
            "network",
            "sequences",
            "seed",
            "round-timeout",
            "node-wait-timeout",
            "min-sites",
            "min-targets",
            "norm-factor",
            "initial-weights",
            "expected-nodes",
            "stop-after-round",
            "returns",
        },
        "pretrain": {"rounds", "local-steps", "lr", "batch-size", "data"},
        "adapt": {"rounds", "local-steps", "lr", "batch-size", "fraction", "split"},
        "simulation": {"nodes"},
        "deployment": {"superlink", "root-certificates", "insecure"},
    }
    for name, table in (
        ("federation", fed),
        ("pretrain", pre),
        ("adapt", ada),
        ("simulation", sim),
        ("deployment", dep),
    ):
        unknown = sorted(set(table) - known[name])
        if unknown:
            raise InputError(
                f"{path}: unknown keys in [{name}]: {unknown}", hint=f"known: {sorted(known[name])}"
            )
    mode = str(fed.get("mode", "simulation"))
    if mode not in ("simulation", "deployment"):
        raise InputError(f"{path}: mode must be simulation or deployment, not {mode!r}")
    split = ada.get("split", {"train": 0.6, "val": 0.15, "test": 0.25, "seed": 0})
    try:
        split_s = ",".join(str(split[k]) for k in ("train", "val", "test")) + (
            f",{int(split.get('seed', 0))}"
        )
    except (KeyError, TypeError):
        raise InputError(f"{path}: [adapt] split needs train, val and test") from None
    profile = str(fed.get("profile", "tiny"))
    try:
        prof = get_profile(profile)
    except InputError as exc:
        raise InputError(f"{path}: [federation] profile: {exc.message}", hint=exc.hint) from None
    network = str(fed.get("network", prof.classifier.network))
    if network not in NETWORKS:
        raise InputError(
            f"{path}: [federation] unknown network {network!r}",
            hint=f"one of {', '.join(NETWORKS)}",
        )
    seqs = fed.get("sequences", ["t2w", "hbv", "adc"])
    weights = str(fed.get("initial-weights", "") or "")
    cfg = FederationConfig(
        out_dir=str((base / str(fed.get("out", "fed-out"))).resolve()),
        profile=profile,
        network=network,
        sequences=",".join(seqs) if isinstance(seqs, list) else str(seqs),
        seed=int(fed.get("seed", 0)),
        pretrain_rounds=int(pre.get("rounds", 2)),
        pretrain_steps=int(pre.get("local-steps", 5)),
        pretrain_lr=float(pre.get("lr", 1e-3)),
        pretrain_batch=int(pre.get("batch-size", 8)),
        pretrain_data=str(pre.get("data", "synthetic")),
        adapt_rounds=int(ada.get("rounds", 1)),
        adapt_steps=int(ada.get("local-steps", 5)),
        adapt_lr=float(ada.get("lr", 5e-4)),
        adapt_batch=int(ada.get("batch-size", 8)),
        adapt_fraction=float(ada.get("fraction", 1.0)),
        split=split_s,
        returns=str(fed.get("returns", "classifier-weights,metrics")),
        min_sites=int(fed.get("min-sites", 1)),
        min_targets=int(fed.get("min-targets", 1)),
        expected_nodes=int(fed.get("expected-nodes", 0)),
        node_wait_timeout=float(fed.get("node-wait-timeout", 120)),
        round_timeout=float(fed.get("round-timeout", 300)),
        norm_factor=float(fed.get("norm-factor", 10.0)),
        initial_weights=str((base / weights).resolve()) if weights else "",
        stop_after_round=int(fed.get("stop-after-round", 0)),
    )
    nodes = []
    for i, n in enumerate(sim.get("nodes", [])):
        if not isinstance(n, dict) or "role" not in n or "workspace" not in n:
            raise InputError(f"{path}: [simulation] nodes[{i}] needs role and workspace")
        nodes.append(n | {"workspace": str((base / str(n["workspace"])).resolve())})
    if mode == "simulation":
        if not nodes:
            raise InputError(f"{path}: [simulation] nodes is empty")
        cfg = FederationConfig(
            **{
                **asdict(cfg),
                "sim_nodes": json.dumps(nodes),
                "expected_nodes": cfg.expected_nodes or len(nodes),
            }
        )
    cfg.check()
    certs = str(dep.get("root-certificates", "") or "")
    return FedToml(
        run_config=cfg,
        mode=mode,
        sim_nodes=nodes,
        superlink=str(dep.get("superlink", "127.0.0.1:8000")),
        root_certificates=str((base / certs).resolve()) if certs else "",
        insecure=bool(dep.get("insecure", False)),
        source=str(path),
    )
