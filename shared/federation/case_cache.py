"""A node's case tensors, cached in its workspace between messages.

Every message on a deployed node runs in a fresh ClientApp process, so without a cache each
train or evaluate request decodes every NIfTI of the case store again (and imports nibabel to
do it). The stacked arrays are kept in ``WORKSPACE/work/federation/`` under the case store's
content digest: SHA-256 over each case folder's name and the bytes of the files the tensors are
made of (``case.json`` and the three sequences), so any added, removed or rewritten case is a
different key and the entry is rebuilt; reading bytes to hash them costs far less than decoding
them. One entry per store is kept (older ones are removed when a new one is written), written
atomically, and only when the store did not change while it was being read. A process that
serves several messages (Flower's simulation reuses them) also keeps the last arrays it read
in memory, under the same digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from shared.classifier.data import BPMRI, CaseTensors

CACHE_DIR = Path("work") / "federation"
# What load_case_tensors reads of a case (the label lives in case.json).
CASE_FILES = ("case.json", *(f"{s}.nii.gz" for s in BPMRI))
FORMAT = 1
_IN_PROCESS: dict[tuple[str, str, str], CaseTensors] = {}


def store_digest(folders: list[Path]) -> str:
    """SHA-256 of the case folders' names and the bytes of their tensor files, in order."""
    h = hashlib.sha256(f"case-tensors/{FORMAT}".encode())
    for folder in folders:
        h.update(b"\0case\0" + folder.name.encode())
        for name in CASE_FILES:
            path = folder / name
            h.update(b"\0file\0" + name.encode() + b"\0")
            if path.is_file():
                with open(path, "rb") as fh:
                    h.update(hashlib.file_digest(fh, "sha256").digest())
    return h.hexdigest()


def _entry(workspace: Path, store: str, digest: str) -> Path:
    return workspace / CACHE_DIR / f"cases-{store}-{digest[:24]}.npz"


def _read(path: Path, digest: str) -> CaseTensors | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["digest"]) != digest:
                return None
            return CaseTensors(z["x"], z["y"], [str(i) for i in z["ids"]])
    except (OSError, ValueError, KeyError):
        return None  # missing, partial or foreign: rebuild


def _write(workspace: Path, store: str, digest: str, data: CaseTensors) -> None:
    path = _entry(workspace, store, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, x=data.x, y=data.y, ids=np.asarray(data.ids), digest=np.asarray(digest))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    for old in path.parent.glob(f"cases-{store}-*.npz"):  # one entry per store
        if old != path:
            with contextlib.suppress(OSError):
                old.unlink()


def cached_case_tensors(workspace: Path, store: str, folders: list[Path]) -> CaseTensors:
    """``load_case_tensors(folders)`` (all three sequences), from the workspace's cache when
    the store's content digest matches; ``store`` names the entry (synthetic, real, external).
    """
    from shared.classifier.data import load_case_tensors

    digest = store_digest(folders)
    key = (str(workspace), store, digest)
    if key in _IN_PROCESS:  # a process Flower reuses (simulation) reads the file once
        return _IN_PROCESS[key]
    data = _read(_entry(workspace, store, digest), digest)
    if data is None:
        data = load_case_tensors(folders)
        # A case replaced while it was read would leave arrays that match neither digest.
        if store_digest(folders) != digest:
            return data
        with contextlib.suppress(OSError):  # a full or read-only disk only costs the cache
            _write(workspace, store, digest, data)
    _IN_PROCESS.clear()  # one store's arrays at a time in memory
    _IN_PROCESS[key] = data
    return data
