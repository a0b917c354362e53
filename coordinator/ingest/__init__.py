"""External-data ingest at the coordinator (DICOM via shared, PI-CAI MHA layout here)."""
