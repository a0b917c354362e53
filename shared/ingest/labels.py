"""Join a hospital's label sheet to scanned studies.

A site keeps labels keyed by whatever it has: StudyInstanceUID, AccessionNumber, or PatientID
with the study date. The key is detected from the header row (case and separators ignored).
Label columns: ``cspca`` (0/1), ``isup`` (0-5) and ``pirads`` (1-5), any subset. The label
used for training is histopathology (ISUP ≥ 2) where known, else the site's cspca column, else
PI-RADS ≥ 3; which one is recorded in each case.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from shared.case_format import Label
from shared.errors import InputError

_KEY_ALIASES = {
    "studyinstanceuid": "study_uid",
    "studyuid": "study_uid",
    "accessionnumber": "accession",
    "accession": "accession",
    "accessionno": "accession",
    "patientid": "patient_id",
    "mrn": "patient_id",
    "studydate": "study_date",
    "date": "study_date",
    "mridate": "study_date",
    "cspca": "cspca",
    "casecspca": "cspca",
    "label": "cspca",
    "isup": "isup",
    "caseisup": "isup",
    "ggg": "isup",
    "pirads": "pirads",
    "piradsscore": "pirads",
}


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _norm_date(value: str) -> str:
    digits = re.sub(r"[^0-9]", "", value)
    return digits[:8]


@dataclass
class LabelSheet:
    key: str  # "study_uid", "accession" or "patient_date"
    rows: dict[tuple[str, ...], tuple[int, Label]]  # key → (row number, label)
    problems: list[str] = field(default_factory=list)

    def lookup(
        self,
        study_uid: str,
        accession: str,
        patient_id: str,
        study_date: str,
    ) -> tuple[int, Label] | None:
        k: tuple[str, ...]
        if self.key == "study_uid":
            k = (study_uid,)
        elif self.key == "accession":
            k = (accession.strip(),)
        else:
            k = (patient_id.strip(), _norm_date(study_date))
        return self.rows.get(k)


def _int_or_none(value: str, column: str, row: int, lo: int, hi: int) -> int | None:
    v = value.strip()
    if v == "" or v.lower() in ("na", "nan", "none", "unknown", "-"):
        return None
    if v.lower() in ("yes", "true", "pos", "positive"):
        return 1
    if v.lower() in ("no", "false", "neg", "negative"):
        return 0
    try:
        n = int(float(v))
    except ValueError:
        raise InputError(f"labels row {row}: {column} must be a number, not {v!r}") from None
    if not lo <= n <= hi:
        raise InputError(f"labels row {row}: {column} must be in {lo}..{hi}, not {n}")
    return n


def make_label(cspca: int | None, isup: int | None, pirads: int | None) -> Label:
    if isup is not None:
        return Label(cspca=int(isup >= 2), isup=isup, pirads=pirads, source="histopathology")
    if cspca is not None:
        return Label(cspca=cspca, isup=None, pirads=pirads, source="site")
    if pirads is not None:
        return Label(cspca=int(pirads >= 3), isup=None, pirads=pirads, source="pirads")
    return Label()


def _decode(path: Path, raw: bytes) -> tuple[str, str | None]:
    """The sheet's text, and a note when it was not UTF-8.

    Excel writes UTF-8 only for "CSV UTF-8"; its plain "CSV" on a Western-European Windows is
    Windows-1252 and its "Unicode Text" is UTF-16 with a byte-order mark. Keys and labels are
    ASCII either way, so reading cp1252 is safe; the report says it was done.
    """
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return raw.decode("utf-16"), None
        except UnicodeDecodeError:
            pass
    else:
        try:
            return raw.decode("utf-8-sig"), None
        except UnicodeDecodeError:
            pass
        try:
            return raw.decode("cp1252"), (
                "file is not UTF-8: read as Windows-1252 (cp1252, Excel's CSV on Windows); "
                "save it as 'CSV UTF-8' to be sure of any non-ASCII text"
            )
        except UnicodeDecodeError:
            pass
    raise InputError(
        f"labels file {path} is not UTF-8, UTF-16 or Windows-1252 text",
        hint="save it from Excel as 'CSV UTF-8 (Comma delimited)' and rerun",
    )


def read_labels(path: Path) -> LabelSheet:
    """Parse the label CSV; raises ``InputError`` with the row for malformed content."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read labels file {path}: {exc.strerror or exc}") from None
    text, note = _decode(path, raw)
    try:
        dialect = csv.Sniffer().sniff(text.splitlines()[0] if text else ",", delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(text.splitlines(), dialect)
    header = next(reader, None)
    if not header:
        raise InputError(f"labels file {path} is empty")
    cols = {_KEY_ALIASES.get(_norm(h)): i for i, h in enumerate(header) if _norm(h) in _KEY_ALIASES}
    if "study_uid" in cols:
        key, key_cols = "study_uid", ["study_uid"]
    elif "accession" in cols:
        key, key_cols = "accession", ["accession"]
    elif "patient_id" in cols and "study_date" in cols:
        key, key_cols = "patient_date", ["patient_id", "study_date"]
    else:
        raise InputError(
            f"labels file {path} has no key column",
            hint="add StudyInstanceUID, AccessionNumber, or PatientID with StudyDate",
        )
    if not {"cspca", "isup", "pirads"} & set(cols):
        raise InputError(f"labels file {path} has no label column (cspca, isup or pirads)")
    rows: dict[tuple[str, ...], tuple[int, Label]] = {}
    problems: list[str] = [note] if note else []
    for n, rec in enumerate(reader, start=2):
        if not any(c.strip() for c in rec):
            continue
        if len(rec) < len(header):
            rec = rec + [""] * (len(header) - len(rec))
        k = tuple(
            _norm_date(rec[cols[c]]) if c == "study_date" else rec[cols[c]].strip()
            for c in key_cols
        )
        if not all(k):
            problems.append(f"row {n}: empty key")
            continue
        get = {c: rec[cols[c]] if c in cols else "" for c in ("cspca", "isup", "pirads")}
        cspca = _int_or_none(get["cspca"], "cspca", n, 0, 1)
        isup = _int_or_none(get["isup"], "isup", n, 0, 5)
        pirads = _int_or_none(get["pirads"], "pirads", n, 1, 5)
        label = make_label(cspca, isup, pirads)
        if cspca is not None and isup is not None and cspca != int(isup >= 2):
            problems.append(f"row {n}: cspca={cspca} disagrees with isup={isup}; ISUP used")
        if k in rows:
            problems.append(f"row {n}: duplicate key (row {rows[k][0]} kept)")
            continue
        rows[k] = (n, label)
    return LabelSheet(key, rows, problems)
