"""Vendor export styles: series descriptions, ImageType values and b-value conventions.

Each vendor puts the diffusion b-value somewhere else, and ingest must find it on all three:

* Siemens: private ``(0019,xx0C)`` IS in block "SIEMENS MR HEADER" and ``SequenceName``
  ``*ep_b1400t``; public ``DiffusionBValue`` only in enhanced (XA) exports.
* GE: private ``(0043,xx39)`` IS[4] in block "GEMS_PARM_01", first value b + 10⁹.
* Philips: private ``(2001,xx03)`` FL in block "Philips Imaging DD 001", plus the public
  ``DiffusionBValue (0018,9087)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

GE_B_OFFSET = 1_000_000_000


@dataclass(frozen=True)
class VendorStyle:
    manufacturer: str
    model: str
    t2_ax: str
    t2_sag: str
    localizer: str
    dwi: str  # format with {bvals}
    adc: str
    calc: str
    dynamic: str
    dwi_image_type: tuple[str, ...]
    adc_image_type: tuple[str, ...]
    compressed_syntax: str  # transfer syntax UID used for compressed exports


VENDORS: dict[str, VendorStyle] = {
    "siemens": VendorStyle(
        manufacturer="SIEMENS",
        model="Skyra",
        t2_ax="t2_tse_tra",
        t2_sag="t2_tse_sag",
        localizer="localizer",
        dwi="ep2d_diff_tra_b{bvals}",
        adc="ep2d_diff_tra_b{bvals}_ADC",
        calc="ep2d_diff_tra_b{bvals}_CALC_BVAL",
        dynamic="t1_vibe_tra_dyn",
        dwi_image_type=("ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW", "ND", "NORM"),
        adc_image_type=("DERIVED", "PRIMARY", "DIFFUSION", "ADC", "ND", "NORM"),
        compressed_syntax="1.2.840.10008.1.2.4.70",
    ),
    "ge": VendorStyle(
        manufacturer="GE MEDICAL SYSTEMS",
        model="SIGNA Artist",
        t2_ax="Ax T2 FRFSE",
        t2_sag="Sag T2 FRFSE",
        localizer="3-Plane Loc",
        dwi="Ax DWI b{bvals}",
        adc="Apparent Diffusion Coefficient (mm2/s)",
        calc="Ax DWI calc",
        dynamic="Ax LAVA DCE",
        dwi_image_type=("ORIGINAL", "PRIMARY", "OTHER"),
        adc_image_type=("DERIVED", "PRIMARY", "ADC"),
        compressed_syntax="1.2.840.10008.1.2.4.70",
    ),
    "philips": VendorStyle(
        manufacturer="Philips Medical Systems",
        model="Ingenia",
        t2_ax="T2W_TSE_ax",
        t2_sag="T2W_TSE_sag",
        localizer="Survey",
        dwi="DWI_b{bvals}",
        adc="dADC_b{bvals}",
        calc="DWI_calc",
        dynamic="DCE_THRIVE",
        dwi_image_type=("ORIGINAL", "PRIMARY", "M_SE", "M", "SE"),
        adc_image_type=("DERIVED", "PRIMARY", "ADC", "ADC"),
        compressed_syntax="1.2.840.10008.1.2.4.90",
    ),
}


def set_b_value(ds: Dataset, vendor: str, b: int, enhanced: bool = False) -> None:
    """Write ``b`` (s/mm²) into a single-frame dataset the way ``vendor`` does."""
    if vendor == "siemens":
        ds.SequenceName = f"*ep_b{b}t"
        block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
        block.add_new(0x0C, "IS", str(b))
        block.add_new(0x0D, "CS", "DIRECTIONAL" if b > 0 else "NONE")
        if enhanced:
            ds.DiffusionBValue = float(b)
    elif vendor == "ge":
        block = ds.private_block(0x0043, "GEMS_PARM_01", create=True)
        block.add_new(0x39, "IS", [str(b + GE_B_OFFSET), "8", "0", "0"])
    elif vendor == "philips":
        block = ds.private_block(0x2001, "Philips Imaging DD 001", create=True)
        block.add_new(0x03, "FL", float(b))
        ds.DiffusionBValue = float(b)
    else:
        raise ValueError(f"vendor must be siemens, ge or philips, not {vendor!r}")
