"""Bundle format: canonical manifest, signature, hashes, verification, safe tar packing.

Verification order (nothing from the payload is parsed before step 4 passes):

1. ``manifest.json`` and ``manifest.sig`` exist as regular files (not links);
2. the signature verifies, over the exact bytes of ``manifest.json``, against one of the keys
   the caller trusts (no JSON is parsed before this; when it fails, ``unverified_claims`` may
   read the site and key fingerprint the manifest names, only to name them in the error);
3. the manifest is canonical JSON of a known format whose version this tool reads;
4. every listed path is a safe relative path, every file on disk is listed (extra ones are
   rejected), none is missing, links are refused, and each size and SHA-256 matches.

One folder is outside the manifest by design: ``approvals/``, where reviewers add their signed
decisions after export (``shared.bundle.approval``, checked separately against the reviewers'
keys). A manifest may not list a path in it, and nothing in it is payload.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared.errors import InputError, IntegrityError

FORMAT = "bpmri-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
PAYLOAD = "payload"
APPROVALS = "approvals"  # reviewers' sign-offs: the one folder the manifest does not cover
MAX_MANIFEST_BYTES = 256 << 20
MAX_TAR_BYTES = 64 << 30
# Bundle paths: relative POSIX, plain characters only (no spaces, no backslashes, no "..").
_PATH_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def canonical_json(obj: Any) -> bytes:
    """The one byte form of a manifest: sorted keys, no whitespace, ASCII only."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_relpath(rel: str) -> PurePosixPath:
    """A bundle path: relative, POSIX, plain characters, no '..'; raise IntegrityError else."""
    if not isinstance(rel, str) or not rel or len(rel) > 1024:
        raise IntegrityError(f"bundle lists an invalid path {rel!r}")
    p = PurePosixPath(rel)
    if p.is_absolute() or "\\" in rel or any(not _PATH_PART.match(part) for part in p.parts):
        raise IntegrityError(f"bundle lists an unsafe path {rel!r} (absolute, '..' or odd name)")
    if str(p) != rel:
        raise IntegrityError(f"bundle lists a non-normalised path {rel!r}")
    return p


def _walk_files(root: Path) -> list[str]:
    """Every non-directory entry under ``root`` as a relative POSIX path; links are refused."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            st = os.lstat(full)
            rel = full.relative_to(root).as_posix()
            if stat.S_ISLNK(st.st_mode):
                raise IntegrityError(f"bundle contains a link: {rel}")
            if stat.S_ISDIR(st.st_mode):
                continue
            if not stat.S_ISREG(st.st_mode):
                raise IntegrityError(f"bundle contains a special file: {rel}")
            found.append(rel)
    return sorted(found)


def is_approval_path(rel: str) -> bool:
    return rel.startswith(APPROVALS + "/")


def file_entries(root: Path) -> list[dict[str, Any]]:
    """``[{path, size, sha256}]`` for every file under ``root`` except manifest, signature and
    approvals."""
    entries = []
    for rel in _walk_files(root):
        if rel in (MANIFEST, SIGNATURE) or is_approval_path(rel):
            continue
        check_relpath(rel)
        p = root / rel
        entries.append({"path": rel, "size": p.stat().st_size, "sha256": sha256_file(p)})
    return entries


def write_signed_manifest(
    root: Path, manifest: dict[str, Any], sign: Callable[[bytes], bytes]
) -> bytes:
    """Add ``files`` (every file now under ``root``), write canonical ``manifest.json`` and
    ``manifest.sig`` = ``sign(bytes)``; returns the manifest bytes."""
    manifest = dict(manifest)
    manifest["format"] = FORMAT
    manifest["format_version"] = FORMAT_VERSION
    manifest["files"] = file_entries(root)
    data = canonical_json(manifest)
    (root / MANIFEST).write_bytes(data)
    sig = sign(data)
    (root / SIGNATURE).write_bytes(sig)
    return data


class UnknownSigner(IntegrityError):
    """The manifest signature verifies against none of the keys given (altered, or signed by
    a key that is not trusted)."""


_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")
MAX_CLAIMS_BYTES = 1 << 20


def unverified_claims(root: Path) -> dict[str, str]:
    """``site``, ``key_fingerprint`` and ``bundle_id`` as an *unverified* manifest states them,
    to say which key or bundle a refused one names. Only these plain strings are read, from a
    small regular file; never act on them, only report them."""
    try:
        data = _read_small_regular(Path(root) / MANIFEST, MAX_CLAIMS_BYTES, MANIFEST)
        manifest = json.loads(data)
    except (IntegrityError, OSError, UnicodeDecodeError, ValueError):
        return {}
    if not isinstance(manifest, dict):
        return {}
    out: dict[str, str] = {}
    site, fp = manifest.get("site"), manifest.get("key_fingerprint")
    if isinstance(site, str) and re.fullmatch(r"[a-z0-9][a-z0-9-]{1,39}", site):
        out["site"] = site
    if isinstance(fp, str) and _FINGERPRINT.match(fp):
        out["key_fingerprint"] = fp
    bundle_id = manifest.get("bundle_id")
    if isinstance(bundle_id, str) and re.fullmatch(r"[0-9a-f]{32}", bundle_id):
        out["bundle_id"] = bundle_id
    return out


@dataclass
class VerifiedBundle:
    """A bundle whose signature and every file hash checked out."""

    root: Path
    manifest: dict[str, Any]
    key_fingerprint: str
    manifest_sha256: str

    def path(self, rel: str) -> Path:
        """A listed payload file (only listed, verified paths are handed out)."""
        if rel not in {f["path"] for f in self.manifest["files"]}:
            raise IntegrityError(f"{rel} is not listed in the bundle manifest")
        return self.root / rel


def _read_small_regular(path: Path, limit: int, what: str) -> bytes:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise IntegrityError(
            f"unsigned or incomplete bundle: {what} missing in {path.parent}"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise IntegrityError(f"{what} in {path.parent} is not a regular file")
    if st.st_size > limit:
        raise IntegrityError(f"{what} is implausibly large ({st.st_size} bytes)")
    return path.read_bytes()


def verify_bundle(
    root: Path,
    keys: Mapping[str, Ed25519PublicKey],
    *,
    key_description: str = "any trusted key",
) -> VerifiedBundle:
    """Verify an unpacked bundle folder against ``keys`` ({fingerprint: key}).

    Raises ``IntegrityError`` for an unsigned, tampered or unknown-key bundle, and
    ``InputError`` for a bundle written by a newer format version.
    """
    from shared.bundle.signing import SIGNATURE_BYTES, verify_signature

    root = Path(root)
    if root.is_symlink() or not root.is_dir():
        raise IntegrityError(f"not a bundle folder: {root}")
    data = _read_small_regular(root / MANIFEST, MAX_MANIFEST_BYTES, MANIFEST)
    sig = _read_small_regular(root / SIGNATURE, SIGNATURE_BYTES, SIGNATURE)
    signer = next((fp for fp, k in keys.items() if verify_signature(k, sig, data)), None)
    if signer is None:
        raise UnknownSigner(
            f"the manifest signature does not verify against {key_description}: the bundle "
            "was altered or signed by another key",
            hint="ask the site to re-export, or pin its current public key",
        )
    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        raise IntegrityError("signed manifest is not valid JSON") from None
    if not isinstance(manifest, dict) or canonical_json(manifest) != data:
        raise IntegrityError("signed manifest is not in canonical form")
    if manifest.get("format") != FORMAT:
        raise IntegrityError(f"not a {FORMAT} manifest (format {manifest.get('format')!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise IntegrityError(f"manifest has an invalid format version {version!r}")
    if version > FORMAT_VERSION:
        raise InputError(
            f"bundle format version {version} is newer than this tool reads ({FORMAT_VERSION})",
            hint="update the toolkit before importing this bundle",
        )
    listed = manifest.get("files")
    if not isinstance(listed, list):
        raise IntegrityError("manifest has no file list")
    expected: dict[str, dict[str, Any]] = {}
    for entry in listed:
        if not isinstance(entry, dict):
            raise IntegrityError("manifest file entry is not an object")
        rel = entry.get("path")
        check_relpath(rel)
        if rel in (MANIFEST, SIGNATURE) or rel in expected:
            raise IntegrityError(f"manifest lists {rel!r} twice or lists itself")
        if is_approval_path(rel):
            raise IntegrityError(f"manifest lists {rel!r} in {APPROVALS}/, kept for sign-offs")
        expected[rel] = entry
    present = [
        r for r in _walk_files(root) if r not in (MANIFEST, SIGNATURE) and not is_approval_path(r)
    ]
    extra = sorted(set(present) - set(expected))
    if extra:
        raise IntegrityError(
            f"bundle holds {len(extra)} file(s) not in its manifest (e.g. {extra[0]})"
        )
    missing = sorted(set(expected) - set(present))
    if missing:
        raise IntegrityError(f"bundle lacks {len(missing)} listed file(s) (e.g. {missing[0]})")
    for rel, entry in expected.items():
        p = root / rel
        if p.stat().st_size != entry.get("size"):
            raise IntegrityError(f"{rel}: size differs from the manifest (truncated or altered)")
        if sha256_file(p) != entry.get("sha256"):
            raise IntegrityError(f"{rel}: SHA-256 differs from the manifest (altered)")
    return VerifiedBundle(root, manifest, signer, hashlib.sha256(data).hexdigest())


# --- tar -------------------------------------------------------------------------------------
def pack_tar(bundle_dir: Path, tar_path: Path) -> Path:
    """Pack a bundle folder into one uncompressed tar (sorted, owner 0, mtime 0), atomically."""
    from shared.atomic import atomic_write_bytes

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in _walk_files(bundle_dir):
            info = tarfile.TarInfo(rel)
            info.size = (bundle_dir / rel).stat().st_size
            info.mode, info.mtime, info.uid, info.gid = 0o644, 0, 0, 0
            with open(bundle_dir / rel, "rb") as fh:
                tar.addfile(info, fh)
    atomic_write_bytes(tar_path, buf.getvalue())
    return tar_path


def _safe_extract(tar_path: Path, dest: Path) -> None:
    """Extract regular files only, each under ``dest``; anything else is an IntegrityError."""
    total = 0
    seen: set[str] = set()
    try:
        with tarfile.open(tar_path, mode="r:") as tar:
            for m in tar:
                name = m.name[2:] if m.name.startswith("./") else m.name
                if m.isdir():
                    check_relpath(name.rstrip("/"))
                    continue
                if not m.isreg():
                    raise IntegrityError(f"bundle tar holds a link or special file: {m.name!r}")
                if name not in (MANIFEST, SIGNATURE):
                    check_relpath(name)
                if name in seen:
                    raise IntegrityError(f"bundle tar holds {name!r} twice")
                seen.add(name)
                total += m.size
                if total > MAX_TAR_BYTES:
                    raise IntegrityError("bundle tar is implausibly large")
                target = dest / name
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                assert src is not None
                with open(target, "xb") as fh:
                    shutil.copyfileobj(src, fh)
    except tarfile.TarError as exc:
        raise IntegrityError(f"bundle tar is unreadable or truncated ({exc})") from None


@contextlib.contextmanager
def open_bundle(path: Path) -> Iterator[Path]:
    """Yield a folder holding the bundle at ``path`` (a folder, or a tar unpacked safely into
    a temporary folder that is removed afterwards). Verify it before reading anything."""
    path = Path(path)
    if path.is_dir():
        yield path
        return
    if not path.is_file():
        raise InputError(f"bundle not found: {path}")
    if not tarfile.is_tarfile(path):
        raise IntegrityError(f"{path} is neither a bundle folder nor a tar file")
    tmp = Path(tempfile.mkdtemp(prefix="bundle-"))
    try:
        _safe_extract(path, tmp)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
