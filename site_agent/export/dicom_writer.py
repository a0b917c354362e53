"""Synthetic cases as DICOM: one MR Image Storage series per sequence, built from scratch.

Nothing is copied from a source file: every attribute below is written from constants, the
case's own array and geometry, and UIDs minted for this export (``UidMinter``). Conventions:

* one file per slice, explicit VR little endian, 128-byte zero preamble, no private tags;
* identity ``SYNTHETIC^BPMRI``, ``SyntheticData YES``, ``PatientIdentityRemoved YES``,
  ``BurnedInAnnotation NO``; ImageType ``DERIVED\\SECONDARY\\OTHER\\SYNTHETIC`` (ADC:
  ``DERIVED\\SECONDARY\\DIFFUSION MAP\\SYNTHETIC\\ADC``); no dates, times or device serials;
* geometry from the case's LPS affine: ImageOrientationPatient = the i and j axis directions,
  PixelSpacing = [j spacing (rows), i spacing (columns)], ImagePositionPatient = centre of
  voxel (0, 0, k); pixel rows run along j, columns along i;
* intensities as unsigned 12-bit stored values with a Real World Value Mapping: ADC stored in
  µm²/s (slope 1, unit ``um2/s``; quantisation 0.5 µm²/s), t2w and hbv in the case format's
  scaled units (slope 0.001, unitless).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import shared
from shared.case_format import ADC_MAX_UM2_S
from shared.volume import Volume

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLEMENTATION_VERSION = "SITEAGENT_" + shared.__version__.replace(".", "_")
PATIENT_NAME = "SYNTHETIC^BPMRI"
DEID_METHOD = "Synthetic image from an on-site generative model; no source"
MANUFACTURER = "site-agent"
MODEL_NAME = "prostate-fl-toolkit"
DERIVATION = "Sampled from a latent diffusion model trained on site; not a patient"
STUDY_DESCRIPTION = "SYNTHETIC bpMRI (not a patient)"
SERIES = {
    # sequence: (series number, description, image type, window centre/width, RWVM)
    "t2w": (1, "SYNTHETIC AxT2 (not a patient)", ["DERIVED", "SECONDARY", "OTHER", "SYNTHETIC"]),
    "hbv": (
        2,
        "SYNTHETIC high-b DWI (not a patient)",
        ["DERIVED", "SECONDARY", "OTHER", "SYNTHETIC"],
    ),
    "adc": (
        3,
        "SYNTHETIC ADC um2/s (not a patient)",
        ["DERIVED", "SECONDARY", "DIFFUSION MAP", "SYNTHETIC", "ADC"],
    ),
}
# stored value -> physical value: value = slope * stored
SLOPE = {"t2w": 0.001, "hbv": 0.001, "adc": 1.0}
UNITS = {
    "t2w": ("1", "UCUM", "no units"),
    "hbv": ("1", "UCUM", "no units"),
    "adc": ("um2/s", "UCUM", "um2/s"),
}
MAX_STORED = 4095


@dataclass
class UidMinter:
    """Fresh UIDs (2.25.<uuid4>) for one export, all remembered for the manifest.

    ``reject`` (e.g. the deny-list) re-mints a UID that happens to contain a source identifier
    by chance (a digit run equal to a numeric patient id), so the scan never trips on it.
    """

    reject: Callable[[str], bool] | None = None
    minted: list[str] = field(default_factory=list)

    def __call__(self) -> str:
        from pydicom.uid import generate_uid

        for _ in range(100):
            uid = str(generate_uid(prefix=None))
            if self.reject is None or not self.reject(uid):
                self.minted.append(uid)
                return uid
        raise RuntimeError("could not mint a UID free of deny-listed substrings")


def physical_values(sequence: str, case_array: np.ndarray) -> np.ndarray:
    """Case-format intensities -> the values the DICOM series carries (ADC in µm²/s)."""
    if sequence == "adc":
        return np.clip(case_array, 0.0, 1.0) * ADC_MAX_UM2_S
    return np.clip(case_array, 0.0, 3.0)


def _code_item(value: str, scheme: str, meaning: str):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def write_series(
    folder: Path,
    sequence: str,
    vol: Volume,
    *,
    patient_id: str,
    study_uid: str,
    frame_of_reference_uid: str,
    mint: UidMinter,
) -> list[Path]:
    """Write one sequence of a case (case-format intensities) as a series; returns the files.

    The header the slices share is built once; each file adds its instance UID, number,
    position and pixels, and is laid out as pydicom's ``dcmwrite`` would (``ElementCache``)."""
    import pydicom
    from pydicom.dataset import Dataset

    from shared.dicom.element_cache import ElementCache

    slope = SLOPE[sequence]
    values = physical_values(sequence, np.asarray(vol.array, dtype=np.float64))
    stored = np.clip(np.rint(values / slope), 0, MAX_STORED).astype(np.uint16)
    folder.mkdir(parents=True, exist_ok=True)
    cache = ElementCache(implementation_version=IMPLEMENTATION_VERSION)
    files = []
    with pydicom.config.strict_reading():
        header = _series_header(
            sequence, vol, values, patient_id, study_uid, frame_of_reference_uid, mint()
        )
        for k in range(vol.shape[2]):
            ds = Dataset()
            ds.SOPInstanceUID = mint()
            ds.InstanceNumber = k + 1
            pos = vol.affine[:3, :3] @ np.array([0.0, 0.0, float(k)]) + vol.affine[:3, 3]
            ds.ImagePositionPatient = [f"{v:.6g}" for v in pos]
            ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
            path = folder / f"{k + 1:04d}.dcm"
            cache.write_slice(header, ds, EXPLICIT_VR_LE, path)
            files.append(path)
    return files


def _series_header(
    sequence: str,
    vol: Volume,
    values: np.ndarray,
    patient_id: str,
    study_uid: str,
    frame_of_reference_uid: str,
    series_uid: str,
):
    """Every element of the series' files but the per-slice ones (see ``write_series``)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    number, description, image_type = SERIES[sequence]
    slope = SLOPE[sequence]
    spacing = vol.spacing
    direction = vol.direction
    nx, ny, _ = vol.shape
    centre = float(np.median(values)) if values.size else 0.0
    width = float(max(values.max() - values.min(), slope)) if values.size else 1.0
    ds = Dataset()
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.ImageType = image_type
    ds.SyntheticData = "YES"
    ds.Modality = "MR"
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MODEL_NAME
    ds.SoftwareVersions = shared.__version__
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = STUDY_DESCRIPTION
    ds.SeriesDescription = description
    ds.DerivationDescription = DERIVATION
    ds.PatientName = PATIENT_NAME
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEID_METHOD
    ds.BodyPartExamined = "PROSTATE"
    ds.PatientPosition = ""
    ds.ScanningSequence = "RM"
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "3D"
    ds.RepetitionTime = ""
    ds.EchoTime = ""
    ds.EchoTrainLength = ""
    ds.SliceThickness = f"{spacing[2]:.6g}"
    ds.SpacingBetweenSlices = f"{spacing[2]:.6g}"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = ""
    ds.SeriesNumber = number
    ds.PatientOrientation = ""
    ds.ImageOrientationPatient = [f"{v:.8g}" for v in (*direction[:, 0], *direction[:, 1])]
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ny
    ds.Columns = nx
    ds.PixelSpacing = [f"{spacing[1]:.6g}", f"{spacing[0]:.6g}"]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.BurnedInAnnotation = "NO"
    ds.RecognizableVisualFeatures = "NO"
    ds.LossyImageCompression = "00"
    ds.WindowCenter = f"{centre / slope:.6g}"
    ds.WindowWidth = f"{width / slope:.6g}"
    rw = Dataset()
    rw.RealWorldValueFirstValueMapped = 0
    rw.RealWorldValueLastValueMapped = MAX_STORED
    rw.RealWorldValueIntercept = 0.0
    rw.RealWorldValueSlope = float(slope)
    rw.LUTExplanation = f"{sequence} {UNITS[sequence][2]}"
    rw.LUTLabel = sequence.upper()
    rw.MeasurementUnitsCodeSequence = Sequence([_code_item(*UNITS[sequence])])
    ds.RealWorldValueMappingSequence = Sequence([rw])
    return ds


def write_case_dicom(
    folder: Path,
    volumes: dict[str, Volume],
    patient_id: str,
    mint: UidMinter,
) -> dict[str, list[Path]]:
    """One study (fresh Study and Frame of Reference UIDs) with a series per sequence under
    ``folder/<sequence>/NNNN.dcm``."""
    study_uid = mint()
    for_uid = mint()
    return {
        seq: write_series(
            folder / seq,
            seq,
            volumes[seq],
            patient_id=patient_id,
            study_uid=study_uid,
            frame_of_reference_uid=for_uid,
            mint=mint,
        )
        for seq in ("t2w", "hbv", "adc")
    }
