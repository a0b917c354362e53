"""External-data ingest at the coordinator: DICOM (``dicom``) beside the PI-CAI layout
(``picai``)."""
