"""Synthetic phantom data: DICOM series and pixel encoders for tests and demos."""
