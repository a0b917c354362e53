"""``WORKSPACE/incoming/``: where pulled or received instances land, one file per instance.

Layout: ``incoming/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``. Paths are
built from UIDs only, after checking each is a well-formed UID (digits and dots, at most 64
characters), so no header string can steer a write outside the folder. Every file is written
atomically (a hidden temporary file, fsync, rename): a reader, the scan or a resumed pull never
sees half an instance, and the scan ignores hidden leftovers of a killed run.

An instance is checked before it is written: it must parse as DICOM, carry the UIDs it was
asked for, and hold all of its pixel data. A SOP Instance UID already stored elsewhere with
different content is refused (a PACS that reuses a UID must not silently replace a slice).
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from shared.errors import InputError

INCOMING = "incoming"
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class InstanceProblem(Exception):
    """One instance could not be stored (corrupt, mismatched UIDs, a conflicting duplicate)."""

    def __init__(self, message: str, kind: str = "corrupt") -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind  # "corrupt", "mismatch", "duplicate" or "quota"


def valid_uid(uid: str) -> bool:
    return 0 < len(uid) <= 64 and bool(_UID.match(uid))


@dataclass(frozen=True)
class InstanceIds:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class: str


def inspect_instance(data: bytes) -> InstanceIds:
    """Parse ``data`` fully and check its pixel data is complete; raise ``InstanceProblem``."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        ids = InstanceIds(
            str(ds.get("StudyInstanceUID", "")),
            str(ds.get("SeriesInstanceUID", "")),
            str(ds.get("SOPInstanceUID", "")),
            str(ds.get("SOPClassUID", "")),
        )
        _check_pixels(ds)
    except InstanceProblem:
        raise
    except InvalidDicomError:
        raise InstanceProblem("not a DICOM instance") from None
    except Exception as exc:  # pydicom raises many types on damaged input; one reason for all
        raise InstanceProblem(f"corrupt instance ({type(exc).__name__})") from None
    for name, uid in (("study", ids.study_uid), ("series", ids.series_uid), ("SOP", ids.sop_uid)):
        if not valid_uid(uid):
            raise InstanceProblem(f"malformed {name} UID", kind="mismatch")
    return ids


def _check_pixels(ds: object) -> None:
    import pydicom.encaps

    pixel = ds.get("PixelData")  # type: ignore[attr-defined]
    if pixel is None:
        return  # no pixels to check (ingest reports such files itself)
    frames = int(ds.get("NumberOfFrames", 1) or 1)  # type: ignore[attr-defined]
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:  # type: ignore[attr-defined]
        got = sum(1 for _ in pydicom.encaps.generate_frames(pixel, number_of_frames=frames))
        if got < frames:
            raise InstanceProblem(f"corrupt instance (pixel data holds {got} of {frames} frames)")
        return
    need = (
        int(ds.Rows)  # type: ignore[attr-defined]
        * int(ds.Columns)  # type: ignore[attr-defined]
        * frames
        * int(ds.get("SamplesPerPixel", 1) or 1)  # type: ignore[attr-defined]
        * int(ds.BitsAllocated)  # type: ignore[attr-defined]
        // 8
    )
    if len(pixel) < need:
        raise InstanceProblem(f"corrupt instance (pixel data {len(pixel)} of {need} bytes)")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class IncomingStore:
    """The instances under ``WORKSPACE/incoming``, indexed by SOP Instance UID (thread-safe).

    ``quota_bytes`` bounds what the folder may hold in all (None: no bound besides the disk).
    """

    def __init__(
        self, workspace: Path, quota_bytes: int | None = None, create: bool = True
    ) -> None:
        self.root = Path(workspace) / INCOMING
        if create:  # a dry run only looks
            self.root.mkdir(parents=True, exist_ok=True)
        self.quota_bytes = quota_bytes
        self._lock = threading.Lock()
        self._index: dict[str, Path] = {}
        self._busy: set[str] = set()
        self.used_bytes = 0
        self.removed_partials = 0
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                path = Path(dirpath) / name
                if name.startswith("."):  # a temporary file of a killed run
                    if create:
                        path.unlink(missing_ok=True)
                        self.removed_partials += 1
                elif name.endswith(".dcm"):
                    self._index[name[:-4]] = path
                    self.used_bytes += path.stat().st_size

    def __contains__(self, sop_uid: str) -> bool:
        with self._lock:
            return sop_uid in self._index

    def __len__(self) -> int:
        return len(self._index)

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        for uid in (study_uid, series_uid, sop_uid):
            if not valid_uid(uid):
                raise InstanceProblem("malformed UID", kind="mismatch")
        return self.root / study_uid / series_uid / f"{sop_uid}.dcm"

    def study_dir(self, study_uid: str) -> Path:
        if not valid_uid(study_uid):
            raise InputError("malformed StudyInstanceUID from the PACS")
        return self.root / study_uid

    def put(
        self,
        data: bytes,
        expect: tuple[str, str, str | None] | None = None,
    ) -> tuple[InstanceIds, bool]:
        """Check and store one instance; returns (its UIDs, True if written now / False if it
        was already there with the same content). Raises ``InstanceProblem`` or, for a full
        disk, ``InputError``."""
        ids = inspect_instance(data)
        if expect is not None and expect[2] is None:
            expect = (expect[0], expect[1], ids.sop_uid)  # any instance of that series
        if expect is not None and (ids.study_uid, ids.series_uid, ids.sop_uid) != expect:
            if ids.sop_uid == expect[2]:
                raise InstanceProblem(
                    f"SOP Instance UID {ids.sop_uid} repeats with different content in another "
                    "series at the PACS",
                    kind="duplicate",
                )
            raise InstanceProblem(
                "the PACS sent a different instance than the one asked for", kind="mismatch"
            )
        path = self.path_for(ids.study_uid, ids.series_uid, ids.sop_uid)
        with self._lock:
            if ids.sop_uid in self._busy:
                raise InstanceProblem("SOP Instance UID arrived twice at once", kind="duplicate")
            old = self._index.get(ids.sop_uid)
            full = self.quota_bytes is not None and self.used_bytes + len(data) > self.quota_bytes
            if old is None and full:
                raise InstanceProblem(
                    f"storage quota of {self.quota_bytes / 1e6:.0f} MB reached", kind="quota"
                )
            self._busy.add(ids.sop_uid)
        try:
            if old is not None:
                if _sha256(old.read_bytes()) == _sha256(data):
                    return ids, False
                raise InstanceProblem(
                    f"SOP Instance UID {ids.sop_uid} repeats with different content "
                    "(the copy already stored was kept)",
                    kind="duplicate",
                )
            _atomic_write(path, data)
            with self._lock:
                self._index[ids.sop_uid] = path
                self.used_bytes += len(data)
            return ids, True
        finally:
            with self._lock:
                self._busy.discard(ids.sop_uid)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InputError(
                f"the disk holding {path.parents[2]} is full",
                hint="free space or move the workspace; rerun to resume (nothing half-written)",
            ) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
