"""Header-only reading of DICOM files into small, picklable frame records.

One record per 2D frame: a classic file gives one, an enhanced multi-frame file gives one per
frame (its geometry and b-value taken from the functional groups). Files that cannot be used
become ``Skipped`` records with a reason that ends up in the scan report.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from shared.dicom.bounded_header import read_bounded
from shared.dicom.bvalue import b_value, file_b_value, frame_b_value

DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
MR_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4": "MR",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR",
}


@dataclass(frozen=True)
class FrameHeader:
    """Everything scan and ingest need about one frame, without its pixels."""

    path: str
    frame: int | None  # index into a multi-frame file, None for single-frame files
    study_uid: str
    series_uid: str
    series_number: int
    series_description: str
    sop_uid: str
    image_type: tuple[str, ...]
    iop: tuple[float, ...]  # ImageOrientationPatient (row cosines, column cosines)
    ipp: tuple[float, float, float]  # ImagePositionPatient, LPS mm, centre of first pixel
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing) mm
    rows: int
    cols: int
    b_value: float | None
    b_source: str
    temporal: int | None
    manufacturer: str
    transfer_syntax: str
    file_size: int
    # Identifiers used on site only to join labels; never written to the case store.
    accession: str
    patient_id: str
    study_date: str
    # Native pixels, located at scan time so the volume reader loads them without parsing the
    # header again: byte offset of the frame, its numpy dtype ("<u2"...), slope and intercept.
    # None where pydicom must decode them (compressed, enhanced, PACS metadata).
    pixel_offset: int | None = None
    pixel_dtype: str | None = None
    rescale: tuple[float, float] = (1.0, 0.0)


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


def _floats(value: object, n: int) -> tuple[float, ...] | None:
    try:
        vals = tuple(float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    return vals if len(vals) == n else None


def _first(seq_holder: Dataset | None, seq: str) -> Dataset | None:
    if seq_holder is None:
        return None
    s = seq_holder.get(seq)
    return s[0] if s else None


@contextmanager
def _lenient_reading() -> Iterator[None]:
    # pydicom validates every value it converts (VR lengths, characters). The scan checks what
    # it uses itself, and the validation costs ~40 % of the header-read time, so skip it here.
    settings = pydicom.config.settings
    old = settings.reading_validation_mode
    settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode = old


def read_headers(path: str) -> list[FrameHeader] | Skipped:
    """Read one file's header; frames on success, ``Skipped`` with the reason otherwise."""
    with _lenient_reading():
        return _read_headers(path)


def _read_headers(path: str) -> list[FrameHeader] | Skipped:
    try:
        size = os.path.getsize(path)
        # The bounded read covers classic little-endian files; pydicom reads everything else.
        bounded = read_bounded(path)
        ds = bounded or pydicom.dcmread(path, defer_size=512)
    except InvalidDicomError:
        return Skipped(path, "not DICOM")
    except (OSError, EOFError, ValueError, KeyError, TypeError, struct.error) as exc:
        return Skipped(path, f"corrupt or truncated header ({type(exc).__name__})")
    except RecursionError:
        return Skipped(path, "corrupt header (sequences nested too deeply to read)")
    if bounded is None and len(ds) == 0 and getattr(ds, "file_meta", None):
        # pydicom's lenient reading gives up on a broken dataset and returns it empty
        return Skipped(path, "corrupt or truncated header (no element after the file meta)")
    try:
        return _frames(path, ds, size)
    except (AttributeError, ValueError, TypeError, KeyError, IndexError) as exc:
        return Skipped(path, f"malformed header ({type(exc).__name__}: {str(exc)[:80]})")


def frames_from_dataset(
    ds: Dataset, path: str = "", size: int = 0, require_pixels: bool = True
) -> list[FrameHeader] | Skipped:
    """Frame records of an already-parsed header (e.g. a PACS query's metadata, which has no
    pixels: ``require_pixels=False``), with the same rules as files get."""
    with _lenient_reading():
        try:
            return _frames(path, ds, size, require_pixels)
        except (AttributeError, ValueError, TypeError, KeyError, IndexError) as exc:
            return Skipped(path, f"malformed header ({type(exc).__name__}: {str(exc)[:80]})")


NATIVE_LITTLE_ENDIAN = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
UNDEFINED_LENGTH = 0xFFFFFFFF
DEFLATED = "1.2.840.10008.1.2.1.99"
_ITEM, _SEQUENCE_END = (0xFFFE, 0xE000), (0xFFFE, 0xE0DD)


def _encapsulated_short_by(path: str, tell: int, size: int) -> str | None:
    """Where encapsulated pixel data starting at ``tell`` breaks off, or None if its items run
    to the sequence delimiter inside the file. Reads 8 bytes per fragment (a few per frame),
    not the fragments (and the tags are little endian: encapsulation needs an explicit
    little-endian transfer syntax)."""
    pos = tell
    try:
        with open(path, "rb") as fh:
            while True:
                fh.seek(pos)
                head = fh.read(8)
                if len(head) < 8:
                    return "lacks its end delimiter"
                group, elem, n = struct.unpack("<HHI", head)
                if (group, elem) == _SEQUENCE_END:
                    return None
                if (group, elem) != _ITEM or n == UNDEFINED_LENGTH:
                    return f"has a broken item at byte {pos}"
                pos += 8 + n
                if pos > size:
                    return f"needs {pos} bytes"
    except OSError as exc:
        return f"unreadable ({type(exc).__name__})"


def _native_pixels(ds: Dataset, raw: object, ts: str) -> dict[str, object]:
    """Where a single-frame file's native pixels are, if the volume reader can load them
    directly (little-endian, one sample, whole bytes, the value exactly one frame long)."""
    bits = int(ds.get("BitsAllocated", 0) or 0)
    tell, length = getattr(raw, "value_tell", None), getattr(raw, "length", None)
    if ts not in NATIVE_LITTLE_ENDIAN or bits not in (8, 16, 32) or tell is None:
        return {}
    if length != int(ds.Rows) * int(ds.Columns) * bits // 8:
        return {}
    kind = "i" if int(ds.get("PixelRepresentation", 0) or 0) == 1 else "u"
    slope, inter = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    return {
        "pixel_offset": int(tell),
        "pixel_dtype": f"<{kind}{bits // 8}",
        "rescale": (
            float(slope) if slope not in (None, "") else 1.0,
            float(inter) if inter not in (None, "") else 0.0,
        ),
    }


def _frames(
    path: str, ds: Dataset, size: int, require_pixels: bool = True
) -> list[FrameHeader] | Skipped:
    meta = getattr(ds, "file_meta", None)
    sop_class = str(
        ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta else "")
    )
    if sop_class == DICOMDIR_CLASS or "DirectoryRecordSequence" in ds:
        return Skipped(path, "DICOMDIR (an index file, not an image)")
    modality = str(ds.get("Modality", ""))
    if modality != "MR":
        return Skipped(path, f"not MR (modality {modality or 'missing'})")
    if sop_class not in MR_CLASSES:
        return Skipped(path, f"unsupported SOP class {sop_class or 'missing'}")
    raw = ds.get_item(0x7FE00010, keep_deferred=True)
    if raw is None and require_pixels:
        # An image storage object without pixels is almost always a cut-off copy.
        return Skipped(path, f"no pixel data (an MR image ending at byte {size}: truncated?)")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        return Skipped(path, "unsupported: colour image")
    # Truncation: a defined-length PixelData must fit inside the file; encapsulated
    # (compressed) pixel data must reach its sequence delimiter.
    tell = getattr(raw, "value_tell", None)
    length = getattr(raw, "length", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta else ""
    if ts == DEFLATED:  # offsets count the inflated stream, not the file's bytes
        tell = None
    if require_pixels and tell is not None and length not in (None, UNDEFINED_LENGTH):
        if tell + length > size:
            return Skipped(
                path, f"truncated file (pixel data needs {tell + length} bytes, has {size})"
            )
    elif require_pixels and tell is not None and length == UNDEFINED_LENGTH:
        short = _encapsulated_short_by(path, tell, size)
        if short is not None:
            return Skipped(
                path, f"truncated file (compressed pixel data {short}, file has {size} bytes)"
            )
    common = dict(
        path=path,
        study_uid=str(ds.get("StudyInstanceUID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        series_number=int(ds.get("SeriesNumber", 0) or 0),
        series_description=str(ds.get("SeriesDescription", "") or ""),
        sop_uid=str(ds.get("SOPInstanceUID", "")),
        rows=int(ds.Rows),
        cols=int(ds.Columns),
        manufacturer=str(ds.get("Manufacturer", "") or ""),
        transfer_syntax=ts,
        file_size=size,
        accession=str(ds.get("AccessionNumber", "") or ""),
        patient_id=str(ds.get("PatientID", "") or ""),
        study_date=str(ds.get("StudyDate", "") or ""),
    )
    if not common["study_uid"] or not common["series_uid"]:
        return Skipped(path, "missing StudyInstanceUID or SeriesInstanceUID")
    image_type = tuple(str(v).upper() for v in (ds.get("ImageType") or ()))
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if "PerFrameFunctionalGroupsSequence" not in ds:
        if n_frames > 1:
            return Skipped(path, "unsupported: multi-frame file without functional groups")
        iop = _floats(ds.get("ImageOrientationPatient"), 6)
        ipp = _floats(ds.get("ImagePositionPatient"), 3)
        ps = _floats(ds.get("PixelSpacing"), 2)
        if iop is None or ipp is None or ps is None:
            return Skipped(path, "no patient geometry (ImagePosition/Orientation/PixelSpacing)")
        b, src = b_value(ds)
        temporal = ds.get("TemporalPositionIdentifier")
        return [
            FrameHeader(
                frame=None,
                image_type=image_type,
                iop=iop,
                ipp=ipp,
                pixel_spacing=ps,
                b_value=b,
                b_source=src,  # type: ignore[arg-type]
                temporal=int(temporal) if temporal not in (None, "") else None,
                **common,
                **_native_pixels(ds, raw, ts),
            )
        ]  # type: ignore[arg-type]
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    # The file's own b-value holds for every frame whose item carries none: looked up once
    # (its private-block searches cost more than the rest of a frame's header).
    file_b: tuple[float | None, str] | None = None
    frames = []
    per_frame = ds.PerFrameFunctionalGroupsSequence
    if len(per_frame) != n_frames:
        return Skipped(path, f"{len(per_frame)} per-frame groups for {n_frames} frames")
    for i, item in enumerate(per_frame):

        def find(seq: str, item: Dataset = item) -> Dataset | None:
            return _first(item, seq) or _first(shared, seq)

        orient, pos, meas = (
            find("PlaneOrientationSequence"),
            find("PlanePositionSequence"),
            find("PixelMeasuresSequence"),
        )
        iop = _floats(orient.get("ImageOrientationPatient") if orient else None, 6)
        ipp = _floats(pos.get("ImagePositionPatient") if pos else None, 3)
        ps = _floats(meas.get("PixelSpacing") if meas else None, 2)
        if iop is None or ipp is None or ps is None:
            return Skipped(path, "enhanced file without per-frame geometry (functional groups)")
        ftype = find("MRImageFrameTypeSequence")
        itype = tuple(
            str(v).upper()
            for v in (ftype.FrameType if ftype and "FrameType" in ftype else image_type)
        )
        b, src = frame_b_value(item)
        if b is None:
            file_b = file_b or file_b_value(ds)
            b, src = file_b
        content = _first(item, "FrameContentSequence")
        temporal = content.get("TemporalPositionIndex") if content else None
        frames.append(
            FrameHeader(
                frame=i,
                image_type=itype,
                iop=iop,
                ipp=ipp,  # type: ignore[arg-type]
                pixel_spacing=ps,
                b_value=b,
                b_source=src,  # type: ignore[arg-type]
                temporal=int(temporal) if temporal else None,
                **common,
            )
        )  # type: ignore[arg-type]
    return frames


def iter_files(root: Path) -> list[str]:
    """All regular files under ``root`` (recursive), sorted for determinism; hidden ones skipped."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith("."))
    return out
