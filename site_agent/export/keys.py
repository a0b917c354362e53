"""The site's Ed25519 signing key.

Layout (``WS/keys``, folder 0700)::

    site-key.pem   private key, PKCS#8 PEM encrypted with the passphrase (file 0600)
    site-key.pub   public key, PEM SubjectPublicKeyInfo: what the site sends the coordinator
    site.json      site id, fingerprint (SHA-256 of the raw public key), creation time
    retired/       <fingerprint>.pub and .json (validity period) of every key rotated out
    handovers/     the signed hand-over of each rotation (``shared.bundle.handover``)
    reviewers/     the privacy reviewers' own keys (``site_agent.export.reviewer_keys``)

The passphrase comes from ``SITE_AGENT_KEY_PASSPHRASE`` or, in the CLI, a prompt; it is never
stored. A key is never replaced by ``init``: ``site-agent keys rotate``
(``site_agent.export.key_rotation``) retires it, so past bundles and audit entries keep
verifying. Which keys verify what comes from the hand-overs alone (they are signed), never
from a public key file dropped into ``retired/``: ``key_history`` walks them back from the
current key and gives each key its period, in time and in audit-log positions.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.atomic import atomic_write_bytes, atomic_write_json
from shared.bundle.anchor import parse_time
from shared.bundle.handover import Handover, read_handover, verify_handover
from shared.bundle.signing import fingerprint, load_public_key, public_key_pem
from shared.errors import InputError, ToolkitError

PASSPHRASE_ENV = "SITE_AGENT_KEY_PASSPHRASE"
KEY_DIR = Path("keys")
PRIVATE = "site-key.pem"
PUBLIC = "site-key.pub"
IDENTITY = "site.json"
RETIRED = "retired"
HANDOVERS = "handovers"
REVIEWERS = "reviewers"
MIN_PASSPHRASE = 8
_SITE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,39}$")


@dataclass
class Signer:
    """The loaded site key: signs manifests and audit entries."""

    site: str
    private_key: Ed25519PrivateKey
    fingerprint: str

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)


def key_dir(workspace: Path) -> Path:
    return Path(workspace) / KEY_DIR


def check_site_id(site: str) -> str:
    if not _SITE_RE.match(site or ""):
        raise InputError(
            f"site id {site!r} is not valid",
            hint="use 2-40 lower-case letters, digits or '-' (e.g. aurora), never a hospital "
            "name you would not print on a bundle",
        )
    return site


def check_no_key(workspace: Path) -> None:
    """Raise ``InputError`` when any key file exists (``init`` must never replace a key)."""
    folder = key_dir(workspace)
    present = [n for n in (PRIVATE, PUBLIC, IDENTITY) if (folder / n).exists()]
    if present:
        lost = PRIVATE not in present
        raise InputError(
            f"a site key already exists in {folder} ({', '.join(present)})",
            hint="to replace it run `site-agent keys rotate`"
            + (" --lost-private-key" if lost else "")
            + "; a new key from `keys init` would make every past audit entry and bundle "
            "unverifiable",
        )


def init_keys(workspace: Path, site: str, passphrase: str) -> Signer:
    """Create the site key pair. Refuses when any key file exists: replacing a key in place
    would orphan every past bundle and audit entry (``keys rotate`` retires it instead)."""
    check_site_id(site)
    if len(passphrase) < MIN_PASSPHRASE:
        raise InputError(f"the key passphrase must have at least {MIN_PASSPHRASE} characters")
    check_no_key(workspace)
    folder = key_dir(workspace)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    key = Ed25519PrivateKey.generate()
    atomic_write_bytes(folder / PRIVATE, encrypted_pem(key, passphrase))
    os.chmod(folder / PRIVATE, 0o600)
    atomic_write_bytes(folder / PUBLIC, public_key_pem(key.public_key()))
    fp = fingerprint(key.public_key())
    atomic_write_json(
        folder / IDENTITY,
        {
            "site": site,
            "fingerprint": fp,
            "algorithm": "Ed25519",
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
    )
    return Signer(site, key, fp)


def encrypted_pem(key: Ed25519PrivateKey, passphrase: str) -> bytes:
    """PKCS#8 PEM encrypted with ``passphrase`` (the form every private key is stored in)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase.encode("utf-8")),
    )


def site_identity(workspace: Path) -> dict[str, str]:
    path = key_dir(workspace) / IDENTITY
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(
            f"no site key in {key_dir(workspace)}", hint="run `site-agent keys init` first"
        ) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None


def load_signer(workspace: Path, passphrase: str) -> Signer:
    """Decrypt the site key; a wrong passphrase or missing key is an ``InputError``."""
    ident = site_identity(workspace)
    path = key_dir(workspace) / PRIVATE
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        raise InputError(
            f"site private key missing: {path}",
            hint="if it is lost, run `site-agent keys rotate --lost-private-key` (it retires "
            "the old key so past entries still verify) and confirm the new fingerprint with "
            "the coordinator",
        ) from None
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase.encode("utf-8"))
    except (ValueError, TypeError):
        raise InputError(
            f"wrong passphrase for the site key {path}",
            hint=f"set {PASSPHRASE_ENV} or type the passphrase given at `site-agent keys init`",
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"{path} is not an Ed25519 private key")
    fp = fingerprint(key.public_key())
    if fp != ident.get("fingerprint"):
        raise InputError(f"{path} does not match the fingerprint recorded in {IDENTITY}")
    return Signer(ident["site"], key, fp)


@dataclass
class KeyPeriod:
    """When a site key was valid: in time and as positions of the audit log.

    ``last_seq`` is None (and ``not_after`` too) while the key is current."""

    fingerprint: str
    key: Ed25519PublicKey
    not_before: str
    not_after: str | None = None
    first_seq: int = 1
    last_seq: int | None = None
    handover: str | None = None  # the hand-over file that retired it

    def problem(self, seq: int, time: str) -> str | None:
        """Why an entry at ``seq`` stamped ``time`` cannot carry this key's signature."""
        short = self.fingerprint[:16]
        if self.last_seq is not None and seq > self.last_seq:
            return (
                f"signed by key {short}... after it was retired at entry {self.last_seq} "
                f"({self.handover}): added with a retired key"
            )
        if seq < self.first_seq:
            return f"signed by key {short}... which was only created after entry {seq}"
        t, start = parse_time(time), parse_time(self.not_before)
        end = parse_time(self.not_after)
        if t is None:
            return "its time is unreadable"
        if (start is not None and t < start) or (end is not None and t > end):
            until = self.not_after or "now"
            return (
                f"dated {time}, outside the validity of key {short}... "
                f"({self.not_before} to {until})"
            )
        return None


@dataclass
class KeyHistory:
    """Every key of the site, from the first to the current one, and what did not add up."""

    periods: dict[str, KeyPeriod] = field(default_factory=dict)
    handovers: list[tuple[str, Handover]] = field(default_factory=list)  # oldest first
    problems: list[str] = field(default_factory=list)
    current: str | None = None

    def keys(self) -> dict[str, Ed25519PublicKey]:
        return {fp: p.key for fp, p in self.periods.items()}


def _load_handovers(folder: Path, history: KeyHistory) -> dict[str, tuple[str, Handover]]:
    """{new fingerprint: (file name, verified Handover)}; bad files become problems."""
    by_new: dict[str, tuple[str, Handover]] = {}
    for path in sorted((folder / HANDOVERS).glob("*.json")):
        name = f"{KEY_DIR / HANDOVERS / path.name}"
        try:
            ho = verify_handover(read_handover(path))
        except ToolkitError as exc:
            history.problems.append(f"{name}: {exc.message}")
            continue
        if ho.new_fingerprint in by_new:
            history.problems.append(f"{name}: a second hand-over to the same key")
            continue
        by_new[ho.new_fingerprint] = (name, ho)
    return by_new


def key_history(workspace: Path) -> KeyHistory:
    """The site's keys with their periods, walked back from the current key through the
    signed hand-overs. Never raises: what is missing or broken is in ``problems``."""
    history = KeyHistory()
    folder = key_dir(workspace)
    try:
        ident = json.loads((folder / IDENTITY).read_text())
        current = load_public_key(folder / PUBLIC)
    except FileNotFoundError:
        history.problems.append(f"no site key in {folder}")
        return history
    except (OSError, ValueError, ToolkitError) as exc:
        history.problems.append(f"the site key in {folder} is unreadable: {exc}")
        return history
    fp = fingerprint(current)
    if not isinstance(ident, dict) or ident.get("fingerprint") != fp:
        history.problems.append(f"{PUBLIC} does not match the fingerprint in {IDENTITY}")
        return history
    history.current = fp
    by_new = _load_handovers(folder, history)
    period = KeyPeriod(fp, current, str(ident.get("created", "")))
    used: set[str] = set()
    while True:
        history.periods[period.fingerprint] = period
        step = by_new.get(period.fingerprint)
        if step is None:
            break
        name, ho = step
        used.add(period.fingerprint)
        history.handovers.insert(0, step)
        if ho.site != ident.get("site"):
            history.problems.append(f"{name}: hands over a key of site {ho.site!r}")
        # the new key's period starts at the hand-over, after the log's head at that moment
        period.not_before, period.first_seq = ho.time, ho.audit_head.seq + 1
        if ho.old_fingerprint in history.periods:
            history.problems.append(f"{name}: the key hand-overs form a loop")
            break
        period = KeyPeriod(
            ho.old_fingerprint,
            ho.old_key,
            ho.old_not_before,
            ho.old_not_after,
            last_seq=ho.audit_head.seq,
            handover=name,
        )
    for new_fp, (name, _) in by_new.items():
        if new_fp not in used:
            history.problems.append(f"{name}: not on the chain of hand-overs to the current key")
    return history


def public_keys(workspace: Path) -> dict[str, Ed25519PublicKey]:
    """{fingerprint: key} for the current key and every key it took over from (through signed
    hand-overs): the keys that may have signed this site's bundles and audit entries."""
    return key_history(workspace).keys()


def current_fingerprint(workspace: Path) -> str | None:
    """The current key's fingerprint per ``site.json`` (None when there is no key)."""
    try:
        return json.loads((key_dir(workspace) / IDENTITY).read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def passphrase_from_env() -> str | None:
    return os.environ.get(PASSPHRASE_ENV)
