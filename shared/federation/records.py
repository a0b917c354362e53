"""What travels in a federation message: record keys, message types, request keys.

A request (train or evaluate) carries ``arrays`` and ``layout`` (the global classifier, packed:
see ``pack_state``), ``config`` (the keys below) and nothing else. A reply carries ``arrays``
and ``layout`` (train only) and ``metrics`` (numeric only, always with ``num-examples``, which
FedAvg weights by).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

ARRAYS = "arrays"
LAYOUT = "layout"  # ConfigRecord: how the packed ``arrays`` split into named tensors
CONFIG = "config"
METRICS = "metrics"
NODE = "node"  # ConfigRecord in a describe reply
PACKED = "packed-"  # ArrayRecord keys: PACKED + numpy dtype string ("packed-<f4")

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
# target train request: first score the received global model on the held-out split (the
# previous round's model, whose evaluation rides with this round's request)
K_EVALUATE_RECEIVED = "evaluate-received"
RECEIVED = "received-"  # prefix of those scores in the train reply's metrics

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


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def pack_state(state: Mapping[str, Any], order: Any = ()) -> tuple[Any, Any]:
    """A state dict (torch tensors or numpy arrays) as (ArrayRecord, layout ConfigRecord): one
    flat array per dtype, and the names, shapes and dtypes to split it again.

    Flower moves every Array of a message as objects of their own (the array and its chunks),
    each pulled or pushed in a round trip of its own between SuperLink, SuperNode and
    ClientApp: the small CNN's 21 tensors made over 40 of them each way, most of a deployed
    message's transfer time on a busy node; packed, they are two. FedAvg averages packed
    arrays element by element, which is the per-tensor average, so a reply is packed in its
    request's tensor order (``order``: those names first, any others after)."""
    from flwr.app import Array, ArrayRecord, ConfigRecord

    names, shapes, dtypes = [], [], []
    groups: dict[str, list[np.ndarray]] = {}
    first = [k for k in order if k in state]
    seen = set(first)
    for name in [*first, *(k for k in state if k not in seen)]:
        a = _as_numpy(state[name])
        names.append(str(name))
        shapes.append(list(a.shape))
        dtypes.append(a.dtype.str)
        groups.setdefault(a.dtype.str, []).append(a.reshape(-1))
    arrays = ArrayRecord({PACKED + dt: Array(np.concatenate(p)) for dt, p in groups.items()})
    layout = ConfigRecord({"names": names, "shapes": json.dumps(shapes), "dtypes": dtypes})
    return arrays, layout


def unpack_state(arrays: Any, layout: Any) -> dict[str, np.ndarray]:
    """``pack_state`` undone: name -> array, in the layout's order. Raises ``ValueError``
    saying what does not fit (no layout, a dtype without its array, sizes that differ)."""
    if layout is None:
        raise ValueError(f"no '{LAYOUT}' record beside the packed arrays")
    try:
        names = [str(n) for n in layout["names"]]
        shapes = [tuple(int(d) for d in s) for s in json.loads(str(layout["shapes"]))]
        dtypes = [np.dtype(str(d)) for d in layout["dtypes"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"unreadable '{LAYOUT}' record ({exc})") from None
    if not len(names) == len(shapes) == len(dtypes):
        raise ValueError(
            f"'{LAYOUT}' lists {len(names)} names, {len(shapes)} shapes and {len(dtypes)} dtypes"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"'{LAYOUT}' lists a tensor name twice")
    flat: dict[str, np.ndarray] = {}
    for key in arrays:
        if not key.startswith(PACKED):
            raise ValueError(f"unexpected array '{key}' (weights travel packed)")
        flat[key[len(PACKED) :]] = arrays[key].numpy().reshape(-1)
    wanted = sorted({d.str for d in dtypes})
    if sorted(flat) != wanted:
        raise ValueError(f"packed dtypes {sorted(flat)} do not match the layout's {wanted}")
    offset = dict.fromkeys(flat, 0)
    out: dict[str, np.ndarray] = {}
    for name, shape, dtype in zip(names, shapes, dtypes, strict=True):
        src, n = flat[dtype.str], math.prod(shape)
        if src.dtype != dtype:
            raise ValueError(f"packed array for {dtype.str} holds {src.dtype.str}")
        if offset[dtype.str] + n > src.size:
            raise ValueError(f"packed {dtype.str} array too short for tensor {name}")
        out[name] = src[offset[dtype.str] : offset[dtype.str] + n].reshape(shape).copy()
        offset[dtype.str] += n
    extra = {dt: flat[dt].size - k for dt, k in offset.items() if flat[dt].size != k}
    if extra:
        raise ValueError(f"packed arrays hold values the layout does not place: {extra}")
    return out


def unpack_torch(arrays: Any, layout: Any) -> dict[str, Any]:
    """``unpack_state`` as a torch state dict."""
    import torch

    return {k: torch.from_numpy(v) for k, v in unpack_state(arrays, layout).items()}


def request_state(content: Any) -> dict[str, Any]:
    """The global weights a train or evaluate request carries, as a torch state dict; a
    request without them, or with packed arrays that do not fit their layout, is an
    ``InputError``."""
    from shared.errors import InputError

    if ARRAYS not in content.array_records:
        raise InputError("request carries no global weights")
    try:
        return unpack_torch(content.array_records[ARRAYS], content.config_records.get(LAYOUT))
    except ValueError as exc:
        raise InputError(f"request's global weights are unreadable: {exc}") from None


def update_norm(new: dict[str, np.ndarray], old: dict[str, np.ndarray]) -> float:
    """L2 norm of ``new - old`` over the floating-point tensors."""
    total = 0.0
    for k, v in new.items():
        if np.issubdtype(v.dtype, np.floating):
            d = v.astype(np.float64) - old[k].astype(np.float64)
            total += float(np.sum(d * d))
    return float(np.sqrt(total))
