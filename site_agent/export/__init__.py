"""The export gate: site keys, DICOM/NIfTI writers, signed bundles of synthetic cases or
weights, the audit log and the privacy reviewer's report. See ``shared.bundle`` for the
format and ``site_agent.privacy`` for the screens."""
