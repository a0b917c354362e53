"""The site-owned federation policy: what this node's ClientApp may train on and return.

``WORKSPACE/federation/policy.toml`` (written and owned by the site; the server cannot change
it)::

    [policy]
    allowed-data = ["synthetic"]              # add "real" to let the node train on real cases
    allowed-returns = ["classifier-weights", "metrics"]   # "generative-weights" only if enabled
    dp-clip-norm = 0.0                        # > 0: clip each update's L2 norm to this
    max-local-steps = 500                     # refuse requests asking for more
    audit-passphrase-file = ""                # file with the site-key passphrase (else the
                                              # SITE_AGENT_KEY_PASSPHRASE environment variable)

Without the file a node uses the defaults above (a target node: ``allowed-data =
["external"]``). Images can never be returned: a policy that lists them is itself refused.
Every request is checked here before any data is read; a refusal names the rule.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import InputError, PrivacyGateError
from shared.federation.records import (
    DATA_KINDS,
    K_DATA,
    K_RETURNS,
    K_STEPS,
    RETURN_KINDS,
    ROLE_TARGET,
    split_list,
)

POLICY_FILE = Path("federation") / "policy.toml"
NEVER_RETURNED = ("images",)


class PolicyRefusal(PrivacyGateError):
    """The node's policy forbids what the server asked for."""


@dataclass(frozen=True)
class Policy:
    allowed_data: tuple[str, ...] = ("synthetic",)
    allowed_returns: tuple[str, ...] = ("classifier-weights", "metrics")
    dp_clip_norm: float = 0.0
    max_local_steps: int = 500
    audit_passphrase_file: str = ""
    source: str = "default"  # the file it came from, or "default"

    def summary(self) -> dict[str, Any]:
        return {
            "allowed-data": ",".join(self.allowed_data),
            "allowed-returns": ",".join(self.allowed_returns),
            "dp-clip-norm": self.dp_clip_norm,
            "max-local-steps": self.max_local_steps,
            "policy-source": self.source,
        }


def default_policy(role: str) -> Policy:
    if role == ROLE_TARGET:
        return Policy(allowed_data=("external",))
    return Policy()


def load_policy(workspace: Path, role: str) -> Policy:
    """The node's policy from ``WORKSPACE/federation/policy.toml``, or the role's default."""
    path = Path(workspace) / POLICY_FILE
    if not path.is_file():
        return default_policy(role)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"cannot read federation policy {path}: {exc}") from None
    table = raw.get("policy", {})
    if not isinstance(table, dict):
        raise InputError(f"{path}: [policy] must be a table")
    known = {
        "allowed-data",
        "allowed-returns",
        "dp-clip-norm",
        "max-local-steps",
        "audit-passphrase-file",
    }
    unknown = sorted(set(table) - known)
    if unknown:  # a typo must not silently widen or narrow the scope
        raise InputError(f"{path}: unknown policy keys {unknown}", hint=f"known: {sorted(known)}")
    base = default_policy(role)
    data = tuple(split_list(table.get("allowed-data", list(base.allowed_data))))
    returns = tuple(split_list(table.get("allowed-returns", list(base.allowed_returns))))
    bad_data = [d for d in data if d not in DATA_KINDS]
    bad_ret = [r for r in returns if r not in RETURN_KINDS]
    if bad_data or bad_ret:
        raise InputError(f"{path}: unknown data kinds {bad_data} or return kinds {bad_ret}")
    never = [r for r in returns if r in NEVER_RETURNED]
    if never:
        raise InputError(
            f"{path}: {never} can never be returned by a federation node",
            hint="export synthetic images through `site-agent export synthetic` (privacy gate)",
        )
    clip = float(table.get("dp-clip-norm", base.dp_clip_norm))
    steps = int(table.get("max-local-steps", base.max_local_steps))
    if clip < 0 or steps < 1:
        raise InputError(f"{path}: dp-clip-norm must be >= 0 and max-local-steps >= 1")
    return Policy(
        allowed_data=data,
        allowed_returns=returns,
        dp_clip_norm=clip,
        max_local_steps=steps,
        audit_passphrase_file=str(table.get("audit-passphrase-file", "")),
        source=str(path),
    )


def check_request(policy: Policy, config: dict[str, Any], default_data: str) -> dict[str, Any]:
    """Check a train/evaluate request against ``policy``; return the normalised request
    (``data``, ``returns``, ``local-steps``) or raise ``PolicyRefusal`` naming the rule."""
    data = str(config.get(K_DATA, default_data) or default_data)
    if data not in policy.allowed_data:
        raise PolicyRefusal(
            f"policy refuses to train or evaluate on {data!r} data "
            f"(allowed: {', '.join(policy.allowed_data) or 'none'})",
            hint=f"the site may widen allowed-data in its {POLICY_FILE}",
        )
    returns = split_list(config.get(K_RETURNS)) or ["classifier-weights", "metrics"]
    unknown = [r for r in returns if r not in RETURN_KINDS]
    if unknown:
        raise PolicyRefusal(f"policy refuses unknown return kinds {unknown}")
    forbidden = [r for r in returns if r in NEVER_RETURNED or r not in policy.allowed_returns]
    if forbidden:
        raise PolicyRefusal(
            f"policy refuses to return {', '.join(forbidden)} "
            f"(allowed: {', '.join(policy.allowed_returns)})"
        )
    if "generative-weights" in returns:
        # Allowed by the site, but this ClientApp only trains the classifier.
        raise PolicyRefusal("this node serves classifier rounds only; no generative weights")
    steps = int(config.get(K_STEPS, 1))
    if not 1 <= steps <= policy.max_local_steps:
        raise PolicyRefusal(
            f"policy refuses {steps} local steps (max-local-steps {policy.max_local_steps})"
        )
    return {"data": data, "returns": returns, "local-steps": steps}
