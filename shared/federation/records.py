"""What travels in a federation message: record keys, message types, request keys.

A request (train or evaluate) carries ``arrays`` (the global classifier, torch state-dict
names), ``config`` (the keys below) and nothing else. A reply carries ``arrays`` (train only)
and ``metrics`` (numeric only, always with ``num-examples``, which FedAvg weights by).
"""

from __future__ import annotations

from typing import Any

import numpy as np

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
NODE = "node"  # ConfigRecord in a describe reply

MSG_TRAIN = "train"
MSG_EVALUATE = "evaluate"
MSG_DESCRIBE = "query.describe"

NUM_EXAMPLES = "num-examples"

# Request config keys (ConfigRecord); every one is checked against the node's policy.
K_ROUND = "server-round"
K_PHASE = "phase"  # "pretrain" (sites) or "adapt" (target nodes)
K_DATA = "data"  # which local case store: synthetic | real (site), external (target)
K_RETURNS = "returns"  # comma-separated: classifier-weights, metrics (others refused by default)
K_STEPS = "local-steps"
K_LR = "lr"
K_BATCH = "batch-size"
K_SEED = "seed"
K_NETWORK = "network"
K_SEQUENCES = "sequences"  # comma-separated subset of t2w,hbv,adc
K_FRACTION = "fraction"  # target: fraction of its external training split to fine-tune on
K_SPLIT = "split"  # target: "train,val,test,seed", e.g. "0.6,0.15,0.25,0"

RETURN_KINDS = ("classifier-weights", "metrics", "generative-weights", "images")
DATA_KINDS = ("synthetic", "real", "external")

ROLE_SITE = "site"
ROLE_TARGET = "target"
ROLES = (ROLE_SITE, ROLE_TARGET)


def split_list(value: Any) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]`` (config records hold strings, not lists of strings)."""
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in str(value).split(",") if v.strip()]


def state_to_numpy(state: dict[str, Any]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def arrays_to_state(record) -> dict[str, Any]:
    """ArrayRecord -> torch state dict (names kept)."""
    return record.to_torch_state_dict()


def update_norm(new: dict[str, np.ndarray], old: dict[str, np.ndarray]) -> float:
    """L2 norm of ``new - old`` over the floating-point tensors."""
    total = 0.0
    for k, v in new.items():
        if np.issubdtype(v.dtype, np.floating):
            d = v.astype(np.float64) - old[k].astype(np.float64)
            total += float(np.sum(d * d))
    return float(np.sqrt(total))
