"""From acquired volumes (DICOM or PI-CAI MHA) to cases on the profile grid."""
