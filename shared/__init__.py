"""Code both sides need: case format, volumes, profiles, DICOM reading, phantoms, errors.

Nothing here imports torch, MONAI or Flower at module level, so the command-line tools start fast.
"""

__version__ = "0.1.0"
