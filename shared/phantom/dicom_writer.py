"""Write phantom series the way scanners export them: classic single-frame files (explicit or
implicit VR, JPEG-Lossless or JPEG 2000 compressed) or one enhanced multi-frame file per series.

Headers carry realistic (fake) identities, so the scan, ingest and export-gate code paths meet
the same PHI-bearing attributes a PACS export has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    generate_uid,
)

from shared.dicom.element_cache import ElementCache
from shared.phantom.acquire import SeriesGrid
from shared.phantom.vendors import VENDORS, set_b_value
from shared.volume import percentiles

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
SYNTAXES = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "jpeg-lossless": JPEGLosslessSV1,
    "j2k": JPEG2000Lossless,
}


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
            p60, p99 = percentiles(frame, (60.0, 99.0))
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
