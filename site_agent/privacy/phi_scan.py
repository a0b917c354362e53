"""Default-deny PHI scan of everything a bundle would carry.

Every file must be of a known type at a known path; each type is parsed and judged:

* DICOM: 128-byte zero preamble and ``DICM``; file meta limited to the standard elements; every
  element of the data set and of every nested sequence item must be on the allowlist for its
  level (``dicom_allowlist``) with an allowed value; no private tags, no overlay (50xx) or curve
  (60xx) groups; UID closure (each UI value is the MR SOP class/transfer syntax or a UID
  minted by this export and listed in the manifest); deny-list search of the whole file.
* NIfTI (``.nii.gz``): plain gzip header (no name, comment or extra field, mtime 0); text
  fields ``descrip``, ``aux_file``, ``intent_name``, ``db_name``, ``data_type`` empty; no
  extensions; no trailing bytes; deny-list search of the header.
* ``labels.csv``: exactly the columns ``case_id,cspca`` with bundle case ids and 0/1.
* weights: safetensors header without metadata beyond ``format``, tensor names of plain
  characters; ``config.json`` valid JSON; deny-list search of header and config.
* file names and the manifest's strings against the deny-list.

Findings name the file and the place (element path or byte offset), never the offending value,
so the review report itself cannot leak it.
"""

from __future__ import annotations

import gzip
import json
import re
import struct
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from site_agent.privacy.dicom_allowlist import FILE_META, MR_SYNTHETIC, Rule
from site_agent.privacy.identifiers import DenyList

STANDARD_UID_ROOT = "1.2.840.10008."
NIFTI_TEXT_FIELDS = ("descrip", "aux_file", "intent_name", "db_name", "data_type")
MAX_NIFTI_BYTES = 2 << 30

SYNTHETIC_PATHS = (
    r"payload/labels\.csv",
    r"payload/cases/SYN-\d{4,6}/nifti/(t2w|hbv|adc)\.nii\.gz",
    r"payload/cases/SYN-\d{4,6}/dicom/(t2w|hbv|adc)/\d{4}\.dcm",
)
WEIGHTS_PATHS = (
    r"payload/weights/(classifier|autoencoder|diffusion)/(model\.safetensors|config\.json)",
)
ALLOWED_PATHS = {"synthetic": SYNTHETIC_PATHS, "weights": WEIGHTS_PATHS}


@dataclass
class Finding:
    path: str  # bundle-relative file
    kind: str
    where: str
    message: str

    def line(self) -> str:
        return f"{self.path} [{self.kind}] {self.where}: {self.message}"


@dataclass
class KeptElement:
    """A DICOM attribute that passed, with the allowlist rule that let it through (the review
    page lists these; the value itself is never recorded)."""

    level: str  # "file meta", "data set" or the keyword of the enclosing sequence
    keyword: str
    rule: str  # the rule in words (``describe_rule``)
    count: int = 0  # how many times it was kept, over all files


def describe_rule(rule: Rule) -> str:
    """An allowlist rule in plain words, for a reader who does not read the code."""
    if rule.kind == "const":
        return "fixed value: " + " | ".join(rule.values)
    if rule.kind == "regex":
        return f"pattern {rule.values[0]}"
    return {
        "empty": "must be empty",
        "number": "numbers only",
        "uid": "UID minted by this export (listed in the manifest) or a standard UID",
        "sequence": "sequence; each item checked against its own list",
        "pixels": "pixel data (synthetic image)",
        "any": "any value (fixed binary version field)",
    }.get(rule.kind, rule.kind)


@dataclass
class PhiReport:
    files: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    elements: int = 0
    deny_list_entries: int = 0
    findings: list[Finding] = field(default_factory=list)
    kept: dict[tuple[str, str], KeptElement] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.findings

    def keep(self, level: str, keyword: str, rule: Rule) -> None:
        item = self.kept.get((level, keyword))
        if item is None:
            item = self.kept[(level, keyword)] = KeptElement(level, keyword, describe_rule(rule))
        item.count += 1

    def summary(self) -> dict[str, Any]:
        kinds: dict[str, int] = {}
        for f in self.findings:
            kinds[f.kind] = kinds.get(f.kind, 0) + 1
        return {
            "passed": self.passed,
            "files_scanned": self.files,
            "files_by_type": dict(sorted(self.by_type.items())),
            "dicom_elements_checked": self.elements,
            "deny_list_entries": self.deny_list_entries,
            "findings": len(self.findings),
            "findings_by_kind": kinds,
            "policy": "default-deny allowlist per file type; see site_agent/privacy/phi_scan.py",
        }

    def to_json(self) -> dict[str, Any]:
        return self.summary() | {"finding_list": [asdict(f) for f in self.findings]}


def _deny(deny: DenyList, data: bytes, rel: str, what: str) -> list[Finding]:
    return [
        Finding(rel, "identifier", f"{what} byte {off}", f"a {n}-character source identifier")
        for off, n in deny.find(data)
    ]


# --- DICOM -----------------------------------------------------------------------------------
def _text(elem: Any) -> str:
    v = elem.value
    if v is None:
        return ""
    if isinstance(v, bytes | bytearray):
        return ""
    if isinstance(v, list | tuple) or type(v).__name__ == "MultiValue":
        return "\\".join(str(x) for x in v)
    return str(v)


def _check_uid(text: str, minted: set[str], rel: str, where: str) -> list[Finding]:
    out = []
    for uid in filter(None, text.split("\\")):
        if not uid.startswith(STANDARD_UID_ROOT) and uid not in minted:
            out.append(Finding(rel, "uid", where, "UID neither standard nor minted by this export"))
    return out


def _walk(
    ds: Any,
    level: str,
    prefix: str,
    rules: dict[str, dict[str, Rule]],
    minted: set[str],
    rel: str,
    report: PhiReport,
    section: str | None = None,
) -> None:
    """Judge every element of ``ds`` at ``level``; ``section`` names the level in the tally of
    kept elements (default: the level's sequence keyword, or "data set" at the top)."""
    allowed = rules.get(level, {})
    section = section or level or "data set"
    for elem in ds:
        tag = elem.tag
        where = f"{prefix}({tag.group:04X},{tag.element:04X})"
        report.elements += 1
        if tag.is_private:
            report.findings.append(Finding(rel, "private-tag", where, "private tag"))
            continue
        if 0x5000 <= tag.group <= 0x50FF or 0x6000 <= tag.group <= 0x60FF:
            kind = "curve-group" if tag.group < 0x6000 else "overlay-group"
            report.findings.append(Finding(rel, kind, where, "curve/overlay group (graphics)"))
            continue
        kw = elem.keyword or ""
        name = f"{prefix}{kw}" if kw else where
        rule = allowed.get(kw)
        if rule is None:
            report.findings.append(
                Finding(rel, "not-allowlisted", name, "attribute not on the export allowlist")
            )
            continue
        if elem.VR == "SQ":
            if rule.kind != "sequence":
                report.findings.append(Finding(rel, "value", name, "unexpected sequence"))
                continue
            report.keep(section, kw, rule)
            for i, item in enumerate(elem.value):
                _walk(item, kw, f"{name}[{i}].", rules, minted, rel, report)
            continue
        before = len(report.findings)
        _judge_value(elem, level, kw, name, rule, minted, rel, report)
        if len(report.findings) == before:
            report.keep(section, kw, rule)


def _judge_value(
    elem: Any,
    level: str,
    kw: str,
    name: str,
    rule: Rule,
    minted: set[str],
    rel: str,
    report: PhiReport,
) -> None:
    """Findings for one non-sequence element already on the allowlist."""
    if elem.VR == "UI":
        text = _text(elem)
        if rule.kind == "const":  # a fixed standard or implementation UID
            if not rule.accepts(text):
                report.findings.append(Finding(rel, "uid", name, "UID not the expected one"))
        else:
            report.findings += _check_uid(text, minted, rel, name)
        return
    if rule.kind == "pixels":
        if level != "" or kw != "PixelData":
            report.findings.append(Finding(rel, "value", name, "pixel data out of place"))
        return
    if rule.kind == "any":
        return
    if not rule.accepts(_text(elem)):
        report.findings.append(
            Finding(rel, "value", name, f"value not allowed for this attribute ({rule.kind})")
        )


def scan_dicom(path: Path, rel: str, minted: set[str], deny: DenyList, report: PhiReport) -> None:
    import pydicom
    from pydicom.errors import InvalidDicomError

    data = path.read_bytes()
    if len(data) < 132 or data[128:132] != b"DICM":
        report.findings.append(Finding(rel, "preamble", "byte 128", "no DICM prefix"))
        return
    if any(data[:128]):
        report.findings.append(Finding(rel, "preamble", "bytes 0-127", "preamble is not zero"))
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, ValueError, EOFError, struct.error) as exc:
        report.findings.append(Finding(rel, "unreadable", "file", f"cannot parse ({exc})"))
        return
    _walk(ds.file_meta, "", "FileMeta.", {"": FILE_META}, minted, rel, report, "file meta")
    _walk(ds, "", "", MR_SYNTHETIC, minted, rel, report)
    if ds.file_meta.get("MediaStorageSOPInstanceUID") != ds.get("SOPInstanceUID"):
        report.findings.append(
            Finding(rel, "value", "FileMeta.MediaStorageSOPInstanceUID", "differs from SOP UID")
        )
    report.findings += _deny(deny, data, rel, "file")


# --- NIfTI -----------------------------------------------------------------------------------
def scan_nifti(path: Path, rel: str, deny: DenyList, report: PhiReport) -> None:
    import nibabel as nib
    import numpy as np

    raw = path.read_bytes()
    if len(raw) < 10 or raw[:3] != b"\x1f\x8b\x08":
        report.findings.append(Finding(rel, "nifti", "gzip", "not a gzip file"))
        return
    if raw[3] != 0:
        report.findings.append(
            Finding(rel, "nifti", "gzip header", "gzip header carries a name, comment or extra")
        )
    if raw[4:8] != b"\x00\x00\x00\x00":
        report.findings.append(Finding(rel, "nifti", "gzip header", "gzip mtime is set"))
    try:
        data = gzip.decompress(raw)
    except (OSError, EOFError) as exc:
        report.findings.append(Finding(rel, "nifti", "gzip", f"cannot decompress ({exc})"))
        return
    if len(data) < 352:
        report.findings.append(Finding(rel, "nifti", "header", "too short"))
        return
    try:
        hdr = nib.Nifti1Header(binaryblock=data[:348])
    except Exception as exc:  # nibabel raises assorted errors on a bad header
        report.findings.append(Finding(rel, "nifti", "header", f"unreadable ({exc})"))
        return
    for name in NIFTI_TEXT_FIELDS:
        value = bytes(np.asarray(hdr[name]).tobytes()).rstrip(b"\x00")
        if value:
            report.findings.append(Finding(rel, "nifti-text", name, "text field is not empty"))
    if data[348:352] != b"\x00\x00\x00\x00" or float(hdr["vox_offset"]) != 352.0:
        report.findings.append(Finding(rel, "nifti-extension", "header", "extensions present"))
    expected = 352 + int(np.prod(hdr.get_data_shape())) * hdr.get_data_dtype().itemsize
    if len(data) != expected:
        report.findings.append(
            Finding(rel, "nifti", "size", f"{len(data) - expected:+d} bytes beyond the image")
        )
    report.findings += _deny(deny, data[: int(hdr["vox_offset"])], rel, "header")


# --- labels, weights, JSON -------------------------------------------------------------------
def scan_labels(
    path: Path, rel: str, case_ids: set[str], deny: DenyList, report: PhiReport
) -> None:
    data = path.read_bytes()
    lines = data.decode("ascii", "replace").splitlines()
    if not lines or lines[0] != "case_id,cspca":
        report.findings.append(Finding(rel, "csv", "header", "columns must be case_id,cspca"))
    for n, line in enumerate(lines[1:], 2):
        parts = line.split(",")
        if len(parts) != 2 or parts[0] not in case_ids or parts[1] not in ("0", "1"):
            report.findings.append(Finding(rel, "csv", f"line {n}", "unexpected row"))
    report.findings += _deny(deny, data, rel, "file")


def scan_safetensors(path: Path, rel: str, deny: DenyList, report: PhiReport) -> None:
    with open(path, "rb") as fh:
        head = fh.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if n <= 0 or n > (100 << 20):
            report.findings.append(Finding(rel, "weights", "header", "not a safetensors file"))
            return
        header = fh.read(n)
    try:
        meta = json.loads(header)
    except ValueError:
        report.findings.append(Finding(rel, "weights", "header", "header is not JSON"))
        return
    extra = meta.get("__metadata__") or {}
    if any(k != "format" for k in extra) or extra.get("format", "pt") not in ("pt", "np"):
        report.findings.append(Finding(rel, "weights", "__metadata__", "metadata not allowed"))
    for name in meta:
        if name != "__metadata__" and not re.fullmatch(r"[A-Za-z0-9_.]+", name):
            report.findings.append(Finding(rel, "weights", "tensor name", "odd tensor name"))
    report.findings += _deny(deny, header, rel, "header")


def scan_json(path: Path, rel: str, deny: DenyList, report: PhiReport) -> None:
    data = path.read_bytes()
    try:
        json.loads(data)
    except ValueError:
        report.findings.append(Finding(rel, "json", "file", "not valid JSON"))
    report.findings += _deny(deny, data, rel, "file")


def _strings(obj: Any, key: str = "") -> Iterable[tuple[str, str]]:
    """(key path, string) pairs of a manifest; SHA-256 digests (computed, 64 hex) are skipped,
    as chance digit runs in them would otherwise match numeric identifiers."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield key + "." + k, k
            yield from _strings(v, f"{key}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _strings(v, f"{key}[{i}]")
    elif isinstance(obj, str) and not re.fullmatch(r"[0-9a-f]{64}", obj):
        yield key, obj


def scan_manifest(manifest: dict[str, Any], minted: set[str], deny: DenyList) -> list[Finding]:
    out = []
    for where, text in _strings(manifest):
        if text in minted:  # minted UIDs were checked against the deny-list when minted
            continue
        if deny.contains(text):
            out.append(Finding("manifest.json", "identifier", where, "source identifier"))
    return out


# --- the whole bundle ------------------------------------------------------------------------
def scan_paths(rels: Iterable[str], kind: str, deny: DenyList) -> list[Finding]:
    out = []
    patterns = ALLOWED_PATHS[kind]
    for rel in rels:
        if not any(re.fullmatch(p, rel) for p in patterns):
            out.append(Finding(rel, "file-name", "path", f"not an allowed {kind} bundle path"))
        if deny.contains(rel):
            out.append(Finding(rel, "identifier", "path", "source identifier in a file name"))
    return out


def scan_payload(root: Path, kind: str, minted: set[str], deny: DenyList) -> PhiReport:
    """Scan every file under ``root`` (a bundle folder; manifest.json/sig excluded, and the
    reviewers' ``approvals/``, which are not payload: ``site_agent.export.release`` checks
    their text against the deny-list before a bundle is released)."""
    report = PhiReport(deny_list_entries=len(deny))
    rels = sorted(
        rel
        for p in root.rglob("*")
        if p.is_file()
        and p.name not in ("manifest.json", "manifest.sig")
        and not (rel := p.relative_to(root).as_posix()).startswith("approvals/")
    )
    report.findings += scan_paths(rels, kind, deny)
    case_ids = {m.group(1) for r in rels if (m := re.match(r"payload/cases/([^/]+)/", r))}
    for rel in rels:
        path = root / rel
        report.files += 1
        if rel.endswith(".dcm"):
            t = "dicom"
            scan_dicom(path, rel, minted, deny, report)
        elif rel.endswith(".nii.gz"):
            t = "nifti"
            scan_nifti(path, rel, deny, report)
        elif rel.endswith("labels.csv"):
            t = "csv"
            scan_labels(path, rel, case_ids, deny, report)
        elif rel.endswith(".safetensors"):
            t = "safetensors"
            scan_safetensors(path, rel, deny, report)
        elif rel.endswith(".json"):
            t = "json"
            scan_json(path, rel, deny, report)
        else:
            t = "other"
            report.findings.append(Finding(rel, "file-type", "file", "unknown file type"))
        report.by_type[t] = report.by_type.get(t, 0) + 1
    return report
