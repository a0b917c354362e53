"""Find the diffusion b-value (s/mm²) of a frame, whichever vendor convention carries it.

Lookup order: public DiffusionBValue (0018,9087) (also inside an enhanced frame's
MRDiffusionSequence) → Siemens private (0019,xx0C) → GE private (0043,xx39) (first value
minus its 10⁹ offset) → Philips private (2001,xx03) → Siemens SequenceName ``*ep_b1400t``.
Private elements read from implicit-VR files can arrive as raw bytes (VR UN): decoded here.
"""

from __future__ import annotations

import re
import struct

from pydicom.dataset import Dataset

GE_B_OFFSET = 1_000_000_000
_SEQ_NAME = re.compile(r"b(\d{1,5})t?$")


def _private(ds: Dataset, group: int, creator: str, elem: int) -> object | None:
    try:
        return ds.private_block(group, creator)[elem].value
    except (KeyError, ValueError):
        return None


def _as_numbers(value: object, vr_hint: str) -> list[float]:
    """Numbers from a private value that may be str, list, float or raw UN bytes."""
    if value is None:
        return []
    if isinstance(value, bytes):
        if vr_hint == "FL" and len(value) % 4 == 0:
            return [float(v) for v in struct.unpack(f"<{len(value) // 4}f", value)]
        if vr_hint == "FD" and len(value) % 8 == 0:
            return [float(v) for v in struct.unpack(f"<{len(value) // 8}d", value)]
        text = value.decode("ascii", errors="ignore").strip("\x00 ")
        return [float(p) for p in text.split("\\") if _is_number(p)]
    if isinstance(value, list | tuple) or (
        hasattr(value, "__iter__") and not isinstance(value, str)
    ):
        return [float(v) for v in value if _is_number(str(v))]
    return [float(value)] if _is_number(str(value)) else []  # type: ignore[arg-type]


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def b_value(ds: Dataset, frame: Dataset | None = None) -> tuple[float | None, str]:
    """Return (b in s/mm², where it was found) or (None, "none")."""
    if frame is not None:
        b, source = frame_b_value(frame)
        if b is not None:
            return b, source
    return file_b_value(ds)


def frame_b_value(frame: Dataset) -> tuple[float | None, str]:
    """The b-value an enhanced file's per-frame functional group item carries itself, or
    (None, "none"): then the file's own (``file_b_value``) holds for the frame."""
    for seq_name in ("MRDiffusionSequence", "UnassignedPerFrameConvertedAttributesSequence"):
        seq = frame.get(seq_name)
        if seq and "DiffusionBValue" in seq[0]:
            return float(seq[0].DiffusionBValue), seq_name
    return None, "none"


def file_b_value(ds: Dataset) -> tuple[float | None, str]:
    """The b-value of the data set as a whole (see the module's lookup order)."""
    if "DiffusionBValue" in ds and ds.DiffusionBValue is not None and ds.DiffusionBValue != "":
        return float(ds.DiffusionBValue), "DiffusionBValue"
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        seq = shared[0].get("MRDiffusionSequence")
        if seq and "DiffusionBValue" in seq[0]:
            return float(seq[0].DiffusionBValue), "MRDiffusionSequence"
    v = _as_numbers(_private(ds, 0x0019, "SIEMENS MR HEADER", 0x0C), "IS")
    if v:
        return v[0], "siemens-private"
    v = _as_numbers(_private(ds, 0x0043, "GEMS_PARM_01", 0x39), "IS")
    if v:
        return float(v[0] % GE_B_OFFSET), "ge-private"
    v = _as_numbers(_private(ds, 0x2001, "Philips Imaging DD 001", 0x03), "FL")
    if v:
        return v[0], "philips-private"
    seq_name = str(ds.get("SequenceName", "") or "").strip()
    m = _SEQ_NAME.search(seq_name)
    if m and "ep" in seq_name.lower():
        return float(m.group(1)), "SequenceName"
    return None, "none"
