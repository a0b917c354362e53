"""Write phantom series the way scanners export them: classic single-frame files (explicit or
implicit VR, JPEG-Lossless or JPEG 2000 compressed) or one enhanced multi-frame file per series.

Headers carry realistic (fake) identities, so the scan, ingest and export-gate code paths meet
the same PHI-bearing attributes a PACS export has.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset, validate_file_meta
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr, write_data_element
from pydicom.multival import MultiValue
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    generate_uid,
)

from shared.phantom.acquire import SeriesGrid
from shared.phantom.vendors import VENDORS, set_b_value

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
SYNTAXES = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "jpeg-lossless": JPEGLosslessSV1,
    "j2k": JPEG2000Lossless,
}
PREAMBLE = b"\x00" * 128 + b"DICM"


@dataclass(frozen=True)
class StudyInfo:
    vendor: str
    field_strength: float
    patient_name: str
    patient_id: str
    birth_date: str
    study_uid: str
    accession: str
    study_date: str
    study_time: str
    institution: str
    station: str
    device_serial: str
    referring: str
    operator: str
    frame_of_reference_uid: str
    uid_seed: str  # makes every UID of the study deterministic


@dataclass
class Stack:
    """One spatial stack of a series: a grid, the image in physical units, and per-stack tags."""

    grid: SeriesGrid
    image: np.ndarray  # float, shape == grid.shape
    b_value: int | None = None
    temporal_position: int | None = None
    image_type: tuple[str, ...] | None = None  # overrides the series' ImageType


@dataclass
class SeriesSpec:
    description: str
    number: int
    image_type: tuple[str, ...]
    stacks: list[Stack]
    scanning_sequence: str = "SE"
    echo_time: float = 100.0
    repetition_time: float = 4000.0
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)


def _uid(study: StudyInfo, *parts: object) -> str:
    return generate_uid(entropy_srcs=[study.uid_seed, *map(str, parts)])


def _fmt(v: float) -> str:
    s = f"{v:.6f}".rstrip("0").rstrip(".")
    return s if s not in ("-0", "") else "0"


def _common(ds: Dataset, study: StudyInfo, series: SeriesSpec, series_uid: str) -> None:
    style = VENDORS[study.vendor]
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.Modality = "MR"
    ds.Manufacturer = style.manufacturer
    ds.ManufacturerModelName = style.model
    ds.MagneticFieldStrength = _fmt(study.field_strength)
    ds.InstitutionName = study.institution
    ds.StationName = study.station
    ds.DeviceSerialNumber = study.device_serial
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = study.birth_date
    ds.PatientSex = "M"
    ds.ReferringPhysicianName = study.referring
    ds.OperatorsName = study.operator
    ds.StudyInstanceUID = study.study_uid
    ds.AccessionNumber = study.accession
    ds.StudyID = study.accession[-6:]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = study.study_time
    ds.StudyDescription = "MRI PROSTATE W/WO CONTRAST"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series.number
    ds.SeriesDescription = series.description
    ds.ProtocolName = series.description
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.BodyPartExamined = "PROSTATE"
    ds.PatientPosition = "HFS"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0


def _stored(image2d: np.ndarray, series: SeriesSpec) -> np.ndarray:
    v = (image2d - series.rescale_intercept) / series.rescale_slope
    return np.clip(np.round(v), 0, 65535).astype(np.uint16)


def _pixels_for_slice(stack: Stack, k: int, series: SeriesSpec) -> np.ndarray:
    # Our arrays are [i (along row), j (down columns), k]; DICOM frames are (rows=j, cols=i).
    return _stored(stack.image[:, :, k].T, series)


class ElementCache:
    """Encoded data elements of a series' files, each distinct one encoded once.

    A series' single-frame files repeat most of their header from slice to slice; pydicom's
    ``dcmwrite`` spends most of a file's time encoding those elements again. Here each element
    is encoded by pydicom's own ``write_data_element`` the first time its (tag, VR, value)
    appears and reused after, and a file is laid out as ``dcmwrite`` lays it out (preamble,
    file meta, elements in tag order, ambiguous VRs resolved first): the same bytes.
    ``write_slice`` goes one step further for a stack's files: the stack's shared header is
    encoded once and each file adds only what changes from slice to slice.
    """

    def __init__(self) -> None:
        self._encoded: dict[tuple[object, ...], bytes] = {}
        self._stack: tuple[Dataset, list[tuple[int, bytes]]] | None = None  # the last one
        self._meta_parts: dict[tuple[str, str], list[tuple[int, bytes]]] = {}

    @staticmethod
    def _key(elem: object, implicit: bool, charset: object) -> tuple[object, ...] | None:
        value = elem.value  # type: ignore[attr-defined]
        if isinstance(value, bytes | bytearray) or elem.VR == "SQ":  # type: ignore[attr-defined]
            return None  # pixel data and sequences: encoded every time
        if isinstance(value, MultiValue | list | tuple):
            shown: object = tuple((type(v).__name__, str(v)) for v in value)
        else:
            shown = (type(value).__name__, str(value))
        return (elem.tag, elem.VR, implicit, str(charset), shown)  # type: ignore[attr-defined]

    def _parts(self, ds: Dataset, implicit: bool, charset: object) -> list[tuple[int, bytes]]:
        """(tag, encoded element) of ``ds`` in tag order, as ``write_dataset`` writes them."""
        parts = []
        for tag in sorted(ds.keys()):
            if tag.element == 0 and tag.group > 6:  # retired group lengths are not written
                continue
            elem = ds[tag]
            key = self._key(elem, implicit, charset)
            data = self._encoded.get(key) if key is not None else None
            if data is None:
                fp = DicomBytesIO()
                fp.is_little_endian, fp.is_implicit_VR = True, implicit
                write_data_element(fp, elem, charset)
                data = fp.getvalue()
                if key is not None:
                    self._encoded[key] = data
            parts.append((int(tag), data))
        return parts

    def _meta(self, sop_class: str, sop_instance: str, syntax: str) -> bytes:
        """The file meta group as ``write_file_meta_info`` writes it: the elements every file
        of the series shares encoded once, the instance UID and the group length per file."""
        shared = self._meta_parts.get((sop_class, syntax))
        if shared is None:
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = sop_class
            meta.MediaStorageSOPInstanceUID = sop_instance
            meta.TransferSyntaxUID = syntax
            validate_file_meta(meta, enforce_standard=True)  # adds version and implementation
            shared = self._parts(meta, False, "iso8859")
            self._meta_parts[(sop_class, syntax)] = shared
        uid = DicomBytesIO()
        uid.is_little_endian, uid.is_implicit_VR = True, False
        write_data_element(uid, DataElement(0x00020003, "UI", sop_instance))
        rest = b"".join(uid.getvalue() if tag == 0x00020003 else data for tag, data in shared)
        # (0002,0000) File Meta Information Group Length, UL, explicit VR little endian
        return b"\x02\x00\x00\x00UL\x04\x00" + struct.pack("<I", len(rest)) + rest

    def write_slice(self, stack: Dataset, slice_ds: Dataset, syntax: str, path: Path) -> None:
        """The file of ``stack`` (the header its slices share, encoded once per stack) with
        ``slice_ds`` (what this slice changes, pixel data included) on top: the bytes that
        ``write`` gives for the two merged."""
        implicit = syntax == ImplicitVRLittleEndian
        compressed = UID(syntax).is_compressed
        pixels = slice_ds["PixelData"]
        pixels.is_undefined_length = compressed
        # what correct_ambiguous_vr decides for pixel data (PS3.5 A.1, A.2, A.4)
        pixels.VR = "OB" if compressed or int(stack.BitsAllocated) <= 8 else "OW"
        charset = stack.get("SpecificCharacterSet", "iso8859")
        if self._stack is None or self._stack[0] is not stack:  # a series' next stack
            self._stack = (stack, self._parts(correct_ambiguous_vr(stack, True), implicit, charset))
        shared = self._stack[1]
        own = self._parts(slice_ds, implicit, charset)
        mine = {tag for tag, _ in own}
        merged = sorted([*(p for p in shared if p[0] not in mine), *own], key=lambda p: p[0])
        meta = self._meta(stack.SOPClassUID, slice_ds.SOPInstanceUID, syntax)
        path.write_bytes(PREAMBLE + meta + b"".join(data for _, data in merged))


def write_series(
    folder: Path,
    study: StudyInfo,
    series: SeriesSpec,
    syntax: str = "explicit",
    enhanced: bool = False,
    rng: np.random.Generator | None = None,
) -> list[Path]:
    """Write ``series`` into ``folder``; returns the files written.

    ``syntax`` is "explicit", "implicit", "jpeg-lossless" or "j2k" (classic files only;
    enhanced files are written explicit little endian).
    """
    if syntax not in SYNTAXES:
        raise ValueError(f"syntax must be explicit, implicit, jpeg-lossless or j2k, not {syntax!r}")
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = _uid(study, "series", series.number)
    if enhanced:
        return [_write_enhanced(folder, study, series, series_uid)]
    files = []
    instance = 0
    cache = ElementCache()
    names = [f"IM{n:05d}" for n in range(sum(s.grid.shape[2] for s in series.stacks))]
    if rng is not None:  # exports rarely keep slice order in file names
        rng.shuffle(names)
    for s_idx, stack in enumerate(series.stacks):
        g = stack.grid
        shared = _stack_header(study, series, series_uid, stack)
        for k in range(g.shape[2]):
            ds = Dataset()  # what changes from slice to slice
            ds.SOPInstanceUID = _uid(study, "sop", series.number, s_idx, k)
            ds.InstanceNumber = instance + 1
            pos = g.affine[:3, :3] @ np.array([0.0, 0.0, k]) + g.affine[:3, 3]
            ds.ImagePositionPatient = [_fmt(v) for v in pos]
            ds.SliceLocation = _fmt(float(pos @ g.normal))
            frame = _pixels_for_slice(stack, k, series)
            p60, p99 = np.percentile(frame, [60, 99])
            ds.WindowCenter = _fmt(float(p60))
            ds.WindowWidth = _fmt(max(float(p99 * 1.2), 1.0))
            path = folder / f"{names[instance]}.dcm"
            if syntax in ("jpeg-lossless", "j2k"):
                ds.LossyImageCompression = "00"
            ds.PixelData = _pixel_data(frame[None], syntax, shared)
            cache.write_slice(shared, ds, SYNTAXES[syntax], path)
            files.append(path)
            instance += 1
    return files


def _stack_header(study: StudyInfo, series: SeriesSpec, series_uid: str, stack: Stack) -> Dataset:
    """The header every single-frame file of ``stack`` shares."""
    g = stack.grid
    ds = Dataset()
    _common(ds, study, series, series_uid)
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.ImageType = list(stack.image_type or series.image_type)
    ds.ScanningSequence = series.scanning_sequence
    ds.SequenceVariant = "SK"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.EchoTime = _fmt(series.echo_time)
    ds.RepetitionTime = _fmt(series.repetition_time)
    ds.EchoTrainLength = {"SE": 16, "EP": 64}.get(series.scanning_sequence, 1)
    ds.ImageOrientationPatient = [_fmt(v) for v in (*g.row_dir, *g.col_dir)]
    ds.PixelSpacing = [_fmt(g.spacing[1]), _fmt(g.spacing[0])]  # [row, column] spacing
    ds.SliceThickness = _fmt(g.slice_thickness)
    ds.SpacingBetweenSlices = _fmt(g.spacing[2])
    if stack.temporal_position is not None:
        ds.TemporalPositionIdentifier = stack.temporal_position
        ds.AcquisitionNumber = stack.temporal_position
    if stack.b_value is not None:
        set_b_value(ds, study.vendor, stack.b_value)
    if series.rescale_slope != 1.0 or series.rescale_intercept != 0.0:
        ds.RescaleSlope = _fmt(series.rescale_slope)
        ds.RescaleIntercept = _fmt(series.rescale_intercept)
        ds.RescaleType = "US"
    for key, value in series.extra.items():
        setattr(ds, key, value)
    ds.Rows, ds.Columns = g.shape[1], g.shape[0]  # a frame is image[:, :, k].T
    return ds


def _pixel_data(frames: np.ndarray, syntax: str, header: Dataset) -> bytes:
    """Pixel Data of ``frames`` (uint16) in ``syntax``; ``header`` holds the image pixel
    module that JPEG 2000 encodes by."""
    if syntax == "jpeg-lossless":
        from shared.phantom.jpeg_lossless import encode_jpeg_lossless_sv1

        return encapsulate([encode_jpeg_lossless_sv1(f, 16) for f in frames])
    if syntax == "j2k":  # what Dataset.compress(JPEG2000Lossless) encapsulates, per frame
        from pydicom.pixels import as_pixel_options, get_encoder

        opts = as_pixel_options(header, number_of_frames=1)
        encoder = get_encoder(JPEG2000Lossless)
        return encapsulate([encoder.encode(f, **opts) for f in frames])
    return frames.tobytes()


def _save_enhanced(ds: Dataset, frames: np.ndarray, path: Path) -> None:
    """Write an enhanced multi-frame data set, explicit VR little endian."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.PixelData = frames.tobytes()
    ds.save_as(path, enforce_file_format=True)


def _seq_item(**kw: object) -> Dataset:
    item = Dataset()
    for k, v in kw.items():
        setattr(item, k, v)
    return item


def _set_plane(group: Dataset, g: SeriesGrid) -> None:
    """Plane orientation and pixel measures functional groups for grid ``g``."""
    group.PlaneOrientationSequence = [
        _seq_item(ImageOrientationPatient=[_fmt(v) for v in (*g.row_dir, *g.col_dir)])
    ]
    group.PixelMeasuresSequence = [
        _seq_item(
            PixelSpacing=[_fmt(g.spacing[1]), _fmt(g.spacing[0])],
            SliceThickness=_fmt(g.slice_thickness),
            SpacingBetweenSlices=_fmt(g.spacing[2]),
        )
    ]


def _write_enhanced(folder: Path, study: StudyInfo, series: SeriesSpec, series_uid: str) -> Path:
    """One Enhanced MR Image Storage file holding every stack of the series as frames."""
    ds = Dataset()
    _common(ds, study, series, series_uid)
    ds.SOPClassUID = ENHANCED_MR_IMAGE_STORAGE
    ds.SOPInstanceUID = _uid(study, "sop-enh", series.number)
    ds.InstanceNumber = 1
    it = list(series.image_type)
    ds.ImageType = [it[0], it[1], *(it[2:4] if len(it) > 2 else ["OTHER"]), "NONE"][:4]
    ds.ContentQualification = "PRODUCT"
    ds.AcquisitionContrast = "DIFFUSION" if series.scanning_sequence == "EP" else "T2"
    ds.PresentationLUTShape = "IDENTITY"
    ds.BurnedInAnnotation = "NO"
    ds.DimensionOrganizationType = "3D"
    dim_uid = _uid(study, "dim", series.number)
    ds.DimensionOrganizationSequence = [_seq_item(DimensionOrganizationUID=dim_uid)]
    ds.DimensionIndexSequence = [
        _seq_item(
            DimensionOrganizationUID=dim_uid,
            DimensionIndexPointer=0x00209057,
            FunctionalGroupPointer=0x00209111,
        ),
    ]
    first = series.stacks[0].grid
    same_plane = all(
        np.allclose(s.grid.affine[:3, :2], first.affine[:3, :2]) for s in series.stacks
    )
    shared = Dataset()
    if same_plane:
        _set_plane(shared, first)
    shared.PixelValueTransformationSequence = [
        _seq_item(
            RescaleSlope=_fmt(series.rescale_slope),
            RescaleIntercept=_fmt(series.rescale_intercept),
            RescaleType="US",
        )
    ]
    shared.MRTimingAndRelatedParametersSequence = [
        _seq_item(RepetitionTime=float(series.repetition_time))
    ]
    shared.MREchoSequence = [_seq_item(EffectiveEchoTime=float(series.echo_time))]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame: list[Dataset] = []
    frames: list[np.ndarray] = []
    for s_idx, stack in enumerate(series.stacks):
        g = stack.grid
        for k in range(g.shape[2]):
            item = Dataset()
            pos = g.affine[:3, :3] @ np.array([0.0, 0.0, k]) + g.affine[:3, 3]
            item.PlanePositionSequence = [_seq_item(ImagePositionPatient=[_fmt(v) for v in pos])]
            if not same_plane:  # e.g. a tri-planar localizer: orientation per frame
                _set_plane(item, g)
            item.FrameContentSequence = [
                _seq_item(
                    StackID=str(s_idx + 1),
                    InStackPositionNumber=k + 1,
                    DimensionIndexValues=[k + 1],
                    TemporalPositionIndex=stack.temporal_position or 1,
                )
            ]
            frame_type = list(stack.image_type or ds.ImageType)[:4]
            item.MRImageFrameTypeSequence = [
                _seq_item(
                    FrameType=[*frame_type, "NONE"][:4],
                    PixelPresentation="MONOCHROME",
                    VolumetricProperties="VOLUME",
                    VolumeBasedCalculationTechnique="NONE",
                    ComplexImageComponent="MAGNITUDE",
                    AcquisitionContrast=ds.AcquisitionContrast,
                )
            ]
            if stack.b_value is not None:
                item.MRDiffusionSequence = [
                    _seq_item(
                        DiffusionBValue=float(stack.b_value),
                        DiffusionDirectionality="ISOTROPIC" if stack.b_value > 0 else "NONE",
                    )
                ]
            per_frame.append(item)
            frames.append(_pixels_for_slice(stack, k, series))
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.NumberOfFrames = len(frames)
    ds.Rows, ds.Columns = frames[0].shape
    path = folder / f"{series.number:03d}_enhanced.dcm"
    _save_enhanced(ds, np.stack(frames), path)
    return path
