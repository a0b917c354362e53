"""The deny-list of source identifiers, stored as salted hashes, never as plaintext.

**Decision**: ``WS/secrets/identifiers.json`` holds keyed BLAKE2b-128 hashes (key = the
workspace salt, ``WS/secrets/salt``) of every harvested identifier of at least
``MIN_LENGTH`` characters (upper-cased, trimmed), plus keyed hashes of each identifier's first
``MIN_LENGTH`` characters and the set of lengths present. A stolen file reveals neither the
values nor (without the salt) a dictionary attack on them.

Matching (``DenyList.find``) scans bytes, not parsed fields: every maximal run of printable
ASCII of at least ``MIN_LENGTH`` bytes (what ``strings`` shows: an identifier embedded anywhere
in a file lies inside one) is upper-cased, each position's ``MIN_LENGTH``-gram is hashed and
looked up among the prefixes, and only on a prefix hit are the windows of the recorded lengths
hashed. Cost: one hash per printable byte, which keeps a paper-size export to seconds.

Harvested (``harvest_identifiers``): from the scan's frame records accession number, patient
id, study date and the study/series/SOP instance UIDs, and from one header per series the
names, IDs, dates, institution and device attributes listed in ``REREAD_KEYWORDS``.
Manufacturer and model names are not identifying and are left out.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.atomic import atomic_write_json
from shared.ids import load_or_create_salt

MIN_LENGTH = 6
DENYLIST_FILE = Path("secrets") / "identifiers.json"
SCHEME = "blake2b-128(key=salt, upper(strip(value)))"
_PRINTABLE_RUN = re.compile(rb"[\x20-\x7e]{%d,}" % MIN_LENGTH)

# Attributes re-read from one header per series (PS3.15 Annex E identifying attributes).
REREAD_KEYWORDS = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "OtherPatientNames",
    "PatientMotherBirthName",
    "MedicalRecordLocator",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "DeviceSerialNumber",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "OperatorsName",
    "RequestingPhysician",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
)


def normalise(value: str) -> str:
    return value.strip().upper()


def _variants(value: Any) -> Iterable[str]:
    """A header value and the parts it is made of (multi-values, name components)."""
    text = str(value)
    yield text
    for part in re.split(r"[\\]", text):
        yield part
        if "^" in part:
            comps = [c for c in part.split("^") if c.strip()]
            yield from comps
            yield " ".join(comps)


def harvest_identifiers(scan_result: Any, reread: bool = True) -> set[str]:
    """Identifier strings of a DICOM scan (``shared.dicom.scan.ScanResult``).

    From the frame records: accession, patient id, study date, study/series/SOP UIDs. With
    ``reread`` one header per series is read again for names, IDs, dates, institution and
    device attributes (``REREAD_KEYWORDS``); call it where the scan happens, on site.
    """
    values: set[str] = set()
    first_paths: list[str] = []
    for study in scan_result.studies:
        values.update([study.study_uid, study.accession, study.patient_id, study.study_date])
        for vol in study.volumes:
            values.add(vol.series_uid)
            for f in vol.frames:
                values.update([f.sop_uid, f.accession, f.patient_id, f.study_date])
            if vol.frames:
                first_paths.append(vol.frames[0].path)
    if reread:
        for p in dict.fromkeys(first_paths):
            values |= harvest_file(Path(p))
    return {v for v in values if v and len(normalise(v)) >= MIN_LENGTH}


def harvest_file(path: Path) -> set[str]:
    """Identifying values in one DICOM header (``REREAD_KEYWORDS``); unreadable files: none."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(REREAD_KEYWORDS))
    except Exception:  # an unreadable file contributes nothing; the scan reports it anyway
        return set()
    out: set[str] = set()
    for kw in REREAD_KEYWORDS:
        v = ds.get(kw)
        if v is None or v == "":
            continue
        for part in _variants(v if not isinstance(v, list | tuple) else "\\".join(map(str, v))):
            if len(normalise(part)) >= MIN_LENGTH:
                out.add(part)
    return out


def harvest_dicom_dir(root: Path) -> set[str]:
    """Scan a DICOM folder (headers only) and harvest its identifiers (fallback for workspaces
    ingested before identifiers were recorded)."""
    from shared.dicom.scan import scan

    return harvest_identifiers(scan(Path(root)))


@dataclass
class DenyList:
    """Salted hashes of source identifiers; ``find`` looks for them inside bytes."""

    key: bytes
    hashes: set[str] = field(default_factory=set)
    prefixes: set[str] = field(default_factory=set)
    lengths: set[int] = field(default_factory=set)
    sources: list[str] = field(default_factory=list)

    def _h(self, data: bytes) -> str:
        return hashlib.blake2b(data, key=self.key, digest_size=16).hexdigest()

    def __len__(self) -> int:
        return len(self.hashes)

    def add(self, values: Iterable[str]) -> int:
        n0 = len(self.hashes)
        for v in values:
            norm = normalise(str(v))
            if len(norm) < MIN_LENGTH or not norm.isascii():
                continue
            b = norm.encode("ascii")
            self.hashes.add(self._h(b))
            self.prefixes.add(self._h(b[:MIN_LENGTH]))
            self.lengths.add(len(b))
        return len(self.hashes) - n0

    def find(self, data: bytes) -> list[tuple[int, int]]:
        """(offset, length) of every identifier occurrence in ``data`` (never the value)."""
        if not self.hashes:
            return []
        hits = []
        lengths = sorted(self.lengths)
        for m in _PRINTABLE_RUN.finditer(data):
            run = m.group().upper()
            for p in range(len(run) - MIN_LENGTH + 1):
                if self._h(run[p : p + MIN_LENGTH]) not in self.prefixes:
                    continue
                for n in lengths:
                    if p + n <= len(run) and self._h(run[p : p + n]) in self.hashes:
                        hits.append((m.start() + p, n))
        return hits

    def contains(self, text: str | bytes) -> bool:
        data = text.encode("utf-8", "replace") if isinstance(text, str) else text
        return bool(self.find(data))

    def to_json(self) -> dict[str, Any]:
        return {
            "scheme": SCHEME,
            "min_length": MIN_LENGTH,
            "hashes": sorted(self.hashes),
            "prefixes": sorted(self.prefixes),
            "lengths": sorted(self.lengths),
        }

    @classmethod
    def load(cls, workspace: Path) -> DenyList:
        """The workspace's recorded deny-list (empty when nothing was recorded yet)."""
        key = _key(workspace)
        path = Path(workspace) / DENYLIST_FILE
        if not path.is_file():
            return cls(key)
        d = json.loads(path.read_text())
        return cls(
            key,
            set(d.get("hashes", [])),
            set(d.get("prefixes", [])),
            {int(n) for n in d.get("lengths", [])},
            ["recorded at ingest"],
        )


def _key(workspace: Path) -> bytes:
    return hashlib.sha256(b"identifier-denylist|" + load_or_create_salt(Path(workspace))).digest()


def record_identifiers(workspace: Path, values: Iterable[str]) -> int:
    """Add identifiers (≥ ``MIN_LENGTH`` chars) to ``WS/secrets/identifiers.json`` as salted
    hashes (file mode 0600); returns how many new entries were recorded."""
    deny = DenyList.load(workspace)
    added = deny.add(values)
    path = Path(workspace) / DENYLIST_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    atomic_write_json(path, deny.to_json())
    os.chmod(path, 0o600)
    return added
