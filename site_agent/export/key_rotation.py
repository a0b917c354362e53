"""``site-agent keys rotate``: pass from the site key to a new one without orphaning the past.

With the old private key at hand, the hand-over (``shared.bundle.handover``) is signed by the
old and the new key, so a coordinator that pinned the old key can pin the new one from it.
With ``lost_private_key`` only the new key signs and the record says so: the coordinator then
needs the new fingerprint confirmed out of band.

Either way, under the audit log's lock:

1. the log's head is taken: the old key's last valid entry;
2. a new ``keys/`` folder is assembled beside the old one (retired public key and its
   validity period in ``retired/``, the hand-over in ``handovers/``, the new key pair and
   ``site.json``) and swapped in with one rename, so a crash leaves either the old or the new
   key set, never a mix. The old private key is not kept: a retired key that can still sign
   could backdate entries and bundles;
3. a ``key-rotated`` entry signed by the new key opens its period in the log.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.atomic import atomic_directory
from shared.bundle.handover import MODE_LOST, MODE_ROTATE, handover_body, sign_handover
from shared.bundle.signing import fingerprint, load_public_key, public_key_pem
from shared.errors import InputError
from site_agent.export import audit
from site_agent.export.keys import (
    HANDOVERS,
    IDENTITY,
    MIN_PASSPHRASE,
    PRIVATE,
    PUBLIC,
    RETIRED,
    REVIEWERS,
    Signer,
    encrypted_pem,
    key_dir,
    load_signer,
    site_identity,
)

NEW_PASSPHRASE_ENV = "SITE_AGENT_NEW_KEY_PASSPHRASE"  # else the new key keeps the old passphrase


@dataclass
class RotationResult:
    site: str
    mode: str
    old_fingerprint: str
    new_fingerprint: str
    handover: Path
    public_key: Path
    audit_seq: int  # the old key's last valid audit entry


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)


def rotate_keys(
    workspace: Path,
    old_passphrase: str | None,
    new_passphrase: str,
    lost_private_key: bool = False,
) -> RotationResult:
    """Retire the site key and make a new one (see module); returns where things went."""
    workspace = Path(workspace)
    ident = site_identity(workspace)  # "no site key": nothing to rotate, run keys init
    folder = key_dir(workspace)
    site, old_fp = str(ident.get("site")), str(ident.get("fingerprint"))
    old_key = load_public_key(folder / PUBLIC)
    if fingerprint(old_key) != old_fp:
        raise InputError(f"{folder / PUBLIC} does not match the fingerprint in {IDENTITY}")
    if len(new_passphrase) < MIN_PASSPHRASE:
        raise InputError(f"the key passphrase must have at least {MIN_PASSPHRASE} characters")
    old_signer: Signer | None = None
    if not lost_private_key:
        if not (folder / PRIVATE).is_file():
            raise InputError(
                f"the site private key {folder / PRIVATE} is missing",
                hint="rotate with --lost-private-key: the hand-over is then signed by the new "
                "key only and the coordinator must confirm its fingerprint out of band",
            )
        old_signer = load_signer(workspace, old_passphrase or "")
    new_key = Ed25519PrivateKey.generate()
    new_fp = fingerprint(new_key.public_key())
    mode = MODE_LOST if lost_private_key else MODE_ROTATE
    with audit.locked(workspace):
        head = audit.head_unlocked(workspace)
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        body = handover_body(
            site,
            mode,
            now,
            old_key,
            str(ident.get("created", now)),
            new_key.public_key(),
            head,
        )
        record = sign_handover(body, new_key.sign, old_signer.sign if old_signer else None)
        stamp = now.replace(":", "").replace("-", "").split("+")[0]
        name = f"{stamp}-{old_fp[:12]}-to-{new_fp[:12]}.json"
        with atomic_directory(folder) as tmp:
            for sub in (RETIRED, HANDOVERS, REVIEWERS):  # earlier rotations, reviewers stay
                if (folder / sub).is_dir():
                    shutil.copytree(folder / sub, tmp / sub)
            _write(tmp / RETIRED / f"{old_fp}.pub", public_key_pem(old_key))
            period = {
                "fingerprint": old_fp,
                "site": site,
                "not_before": body["old"]["not_before"],
                "not_after": now,
                "last_audit_seq": head.seq,
                "retired_because": mode,
                "successor": new_fp,
                "handover": f"{HANDOVERS}/{name}",
            }
            _write(tmp / RETIRED / f"{old_fp}.json", json.dumps(period, indent=2).encode())
            _write(tmp / HANDOVERS / name, json.dumps(record, indent=2).encode())
            _write(tmp / PRIVATE, encrypted_pem(new_key, new_passphrase), 0o600)
            _write(tmp / PUBLIC, public_key_pem(new_key.public_key()))
            identity = {
                "site": site,
                "fingerprint": new_fp,
                "algorithm": "Ed25519",
                "created": now,
            }
            _write(tmp / IDENTITY, (json.dumps(identity, indent=2) + "\n").encode())
            os.chmod(tmp, 0o700)
        audit.append_unlocked(
            workspace,
            Signer(site, new_key, new_fp),
            "key-rotated",
            {
                "mode": mode,
                "old_fingerprint": old_fp,
                "new_fingerprint": new_fp,
                "handover": f"{HANDOVERS}/{name}",
                "old_key_last_entry": head.seq,
            },
        )
    return RotationResult(
        site, mode, old_fp, new_fp, folder / HANDOVERS / name, folder / PUBLIC, head.seq
    )
