"""Reading bpMRI out of real DICOM trees: header scan, classification, volumes with geometry."""
