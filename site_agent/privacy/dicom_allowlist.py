"""What an exported synthetic MR image may contain: every attribute, per nesting level, with
the only values it may take. Anything not listed here fails the PHI scan (default deny).

Kept apart from the writer on purpose: the writer builds files, this list judges them, and a
change to one without the other shows up as a finding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
PYDICOM_IMPLEMENTATION_UID = "1.2.826.0.1.3680043.8.498.1"


@dataclass(frozen=True)
class Rule:
    """How one attribute is judged: ``kind`` is const, regex, empty, number, uid, sequence or
    pixels; ``values`` the allowed constants or the pattern."""

    kind: str
    values: tuple[str, ...] = ()

    def accepts(self, text: str) -> bool:
        if self.kind == "const":
            return text in self.values
        if self.kind == "regex":
            return re.fullmatch(self.values[0], text) is not None
        if self.kind == "empty":
            return text == ""
        if self.kind == "number":
            return re.fullmatch(r"[-+0-9.eE\\ ]*", text) is not None
        return True


def const(*v: str) -> Rule:
    return Rule("const", v)


def regex(p: str) -> Rule:
    return Rule("regex", (p,))


EMPTY = Rule("empty")
NUMBER = Rule("number")
UID = Rule("uid")
SEQUENCE = Rule("sequence")
PIXELS = Rule("pixels")

FILE_META: dict[str, Rule] = {
    "FileMetaInformationGroupLength": NUMBER,
    "FileMetaInformationVersion": Rule("any"),  # OB 00\01
    "MediaStorageSOPClassUID": const(MR_IMAGE_STORAGE),
    "MediaStorageSOPInstanceUID": UID,
    "TransferSyntaxUID": const(EXPLICIT_VR_LE),
    "ImplementationClassUID": const(PYDICOM_IMPLEMENTATION_UID),
    "ImplementationVersionName": regex(r"SITEAGENT_[0-9_]+"),
}

_SERIES_DESCRIPTIONS = (
    "SYNTHETIC AxT2 (not a patient)",
    "SYNTHETIC high-b DWI (not a patient)",
    "SYNTHETIC ADC um2/s (not a patient)",
)

# parent sequence keyword ("" = top level) -> keyword -> rule
MR_SYNTHETIC: dict[str, dict[str, Rule]] = {
    "": {
        "SOPClassUID": const(MR_IMAGE_STORAGE),
        "SOPInstanceUID": UID,
        "StudyInstanceUID": UID,
        "SeriesInstanceUID": UID,
        "FrameOfReferenceUID": UID,
        "ImageType": regex(
            r"DERIVED\\SECONDARY\\OTHER\\SYNTHETIC"
            r"|DERIVED\\SECONDARY\\DIFFUSION MAP\\SYNTHETIC\\ADC"
        ),
        "SyntheticData": const("YES"),
        "Modality": const("MR"),
        "Manufacturer": const("site-agent"),
        "ManufacturerModelName": const("prostate-fl-toolkit"),
        "SoftwareVersions": regex(r"\d+\.\d+\.\d+"),
        "StudyDate": EMPTY,
        "StudyTime": EMPTY,
        "AccessionNumber": EMPTY,
        "ReferringPhysicianName": EMPTY,
        "StudyDescription": const("SYNTHETIC bpMRI (not a patient)"),
        "SeriesDescription": const(*_SERIES_DESCRIPTIONS),
        "DerivationDescription": const(
            "Sampled from a latent diffusion model trained on site; not a patient"
        ),
        "PatientName": const("SYNTHETIC^BPMRI"),
        "PatientID": regex(r"SYNTH-\d{4,6}"),
        "PatientBirthDate": EMPTY,
        "PatientSex": EMPTY,
        "PatientIdentityRemoved": const("YES"),
        "DeidentificationMethod": const(
            "Synthetic image from an on-site generative model; no source"
        ),
        "BodyPartExamined": const("PROSTATE"),
        "PatientPosition": EMPTY,
        "ScanningSequence": const("RM"),
        "SequenceVariant": const("NONE"),
        "ScanOptions": EMPTY,
        "MRAcquisitionType": const("3D"),
        "RepetitionTime": EMPTY,
        "EchoTime": EMPTY,
        "EchoTrainLength": EMPTY,
        "SliceThickness": NUMBER,
        "SpacingBetweenSlices": NUMBER,
        "StudyID": EMPTY,
        "SeriesNumber": NUMBER,
        "InstanceNumber": NUMBER,
        "PatientOrientation": EMPTY,
        "ImagePositionPatient": NUMBER,
        "ImageOrientationPatient": NUMBER,
        "PositionReferenceIndicator": EMPTY,
        "SamplesPerPixel": NUMBER,
        "PhotometricInterpretation": const("MONOCHROME2"),
        "Rows": NUMBER,
        "Columns": NUMBER,
        "PixelSpacing": NUMBER,
        "BitsAllocated": const("16"),
        "BitsStored": const("12"),
        "HighBit": const("11"),
        "PixelRepresentation": const("0"),
        "BurnedInAnnotation": const("NO"),
        "RecognizableVisualFeatures": const("NO"),
        "LossyImageCompression": const("00"),
        "WindowCenter": NUMBER,
        "WindowWidth": NUMBER,
        "RealWorldValueMappingSequence": SEQUENCE,
        "PixelData": PIXELS,
    },
    "RealWorldValueMappingSequence": {
        "RealWorldValueFirstValueMapped": NUMBER,
        "RealWorldValueLastValueMapped": NUMBER,
        "RealWorldValueIntercept": NUMBER,
        "RealWorldValueSlope": NUMBER,
        "LUTExplanation": const("t2w no units", "hbv no units", "adc um2/s"),
        "LUTLabel": const("T2W", "HBV", "ADC"),
        "MeasurementUnitsCodeSequence": SEQUENCE,
    },
    "MeasurementUnitsCodeSequence": {
        "CodeValue": const("1", "um2/s"),
        "CodingSchemeDesignator": const("UCUM"),
        "CodeMeaning": const("no units", "um2/s"),
    },
}
