"""Institution presets: how real sites differ (vendor, field strength, contrast, noise, b-values).

Sites must differ in more than noise, or a classifier's denoising masquerades as domain transfer:
each preset shifts T2 contrast, DWI gain, ADC calibration, bias field, resolution and b-values.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.errors import InputError


@dataclass(frozen=True)
class Institution:
    name: str
    display_name: str  # what goes into InstitutionName (site PHI the export gate must catch)
    vendor: str  # "siemens", "ge" or "philips"
    field_strength: float  # tesla
    b_values: tuple[int, ...]  # acquired b-values, s/mm^2
    calculated_b: int | None  # vendor-computed high b series (Siemens CALC_BVALUE), if any
    t2_gamma: float  # contrast curve of the T2 TSE (1 = reference)
    dwi_gain: float  # receiver gain of the DWI
    adc_scale: float  # vendor ADC calibration (multiplies true ADC)
    noise_t2: float  # Gaussian sigma of the complex noise, relative to the PZ signal
    noise_dwi: float  # same for b=0 DWI
    bias: float  # amplitude of the smooth coil-sensitivity field
    dwi_blur_mm: float  # extra EPI blur of the diffusion series
    prevalence: float  # fraction of csPCa-positive studies
    label_key: str  # "study_uid", "accession" or "patient_date": how the site's CSV is keyed
    multi_b_series: float  # probability that all b-values share one DWI series
    enhanced: float  # probability that a study is exported as enhanced multi-frame
    compressed: float  # probability that a classic study uses the vendor's compressed syntax
    angulated: float  # probability that the DWI/ADC block is slightly angulated
    implicit_vr: float  # probability of Implicit VR Little Endian files (older exports)


INSTITUTIONS: dict[str, Institution] = {
    "aurora": Institution(
        name="aurora",
        display_name="Aurora University Hospital",
        vendor="siemens",
        field_strength=3.0,
        b_values=(50, 400, 800, 1400),
        calculated_b=1600,
        t2_gamma=1.0,
        dwi_gain=1.0,
        adc_scale=1.0,
        noise_t2=0.03,
        noise_dwi=0.04,
        bias=0.15,
        dwi_blur_mm=0.6,
        prevalence=0.4,
        label_key="study_uid",
        multi_b_series=0.7,
        enhanced=0.15,
        compressed=0.0,
        angulated=0.3,
        implicit_vr=0.3,
    ),
    "borealis": Institution(
        name="borealis",
        display_name="Borealis Regional Medical Center",
        vendor="ge",
        field_strength=1.5,
        b_values=(0, 100, 1000, 1600),
        calculated_b=None,
        t2_gamma=1.15,
        dwi_gain=1.25,
        adc_scale=0.95,
        noise_t2=0.045,
        noise_dwi=0.06,
        bias=0.25,
        dwi_blur_mm=0.9,
        prevalence=0.4,
        label_key="accession",
        multi_b_series=0.5,
        enhanced=0.0,
        compressed=0.5,
        angulated=0.3,
        implicit_vr=0.0,
    ),
    "cascade": Institution(
        name="cascade",
        display_name="Cascade Prostate Clinic",
        vendor="philips",
        field_strength=3.0,
        b_values=(0, 200, 800, 1500),
        calculated_b=None,
        t2_gamma=0.9,
        dwi_gain=0.85,
        adc_scale=1.04,
        noise_t2=0.035,
        noise_dwi=0.05,
        bias=0.2,
        dwi_blur_mm=0.7,
        prevalence=0.35,
        label_key="patient_date",
        multi_b_series=0.6,
        enhanced=0.0,
        compressed=0.5,
        angulated=0.4,
        implicit_vr=0.0,
    ),
    # The external institution of the study: noisier 1.5 T, stronger bias, another contrast.
    "external": Institution(
        name="external",
        display_name="Meridian External Institute",
        vendor="philips",
        field_strength=1.5,
        b_values=(0, 500, 1000, 2000),
        calculated_b=None,
        t2_gamma=1.35,
        dwi_gain=1.5,
        adc_scale=0.9,
        noise_t2=0.06,
        noise_dwi=0.09,
        bias=0.35,
        dwi_blur_mm=1.0,
        prevalence=0.4,
        label_key="study_uid",
        multi_b_series=0.5,
        enhanced=0.1,
        compressed=0.4,
        angulated=0.3,
        implicit_vr=0.0,
    ),
}


def get_institution(name: str) -> Institution:
    try:
        return INSTITUTIONS[name]
    except KeyError:
        raise InputError(
            f"unknown institution preset {name!r}",
            hint=f"choose one of: {', '.join(INSTITUTIONS)}",
        ) from None
