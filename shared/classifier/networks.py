"""Classifier networks: EfficientNet-B0 (3D, the paper's; MONAI) and a small fast CNN.

The small CNN is plain torch (``shared/classifier/small_cnn.py``): a federation node starts a
fresh process for every message, and MONAI's import would cost each one seconds for nothing.
Its weights load into MONAI's ``Classifier`` of the same arguments and back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.errors import InputError

if TYPE_CHECKING:
    from torch import nn

NETWORKS = ("efficientnet-b0", "small-cnn", "small-cnn-pool")
# EfficientNet-B0 downsamples 32x and uses 5x5x5 kernels: below this size per axis it fails.
_MIN_EFFICIENTNET_SIZE = 64


def build_classifier(network: str, in_channels: int, grid_size: tuple[int, int, int]) -> nn.Module:
    """A binary csPCa classifier returning one logit per case.

    Parameters
    ----------
    network
        ``"efficientnet-b0"`` (MONAI ``EfficientNetBN``, 3D, random init, as CCELLA++) or
        ``"small-cnn"`` (:func:`small_cnn`: four strided residual units, 16-128 channels,
        about 0.6 M parameters) for the ``tiny`` and ``cpu`` profiles, or ``"small-cnn-pool"``
        (the same trunk, each channel's mean and max into the linear layer).
    in_channels
        3 for bpMRI (t2w, hbv, adc) or 1 for T2 only.
    grid_size
        The case grid (x, y, z) in voxels; input tensors are (batch, channels, x, y, z).
    """
    if in_channels not in (1, 3):
        raise InputError(f"classifier in_channels must be 1 or 3, not {in_channels}")
    if network == "efficientnet-b0":
        if min(grid_size) < _MIN_EFFICIENTNET_SIZE // 2:
            raise InputError(
                f"efficientnet-b0 needs a case grid of at least {_MIN_EFFICIENTNET_SIZE // 2} "
                f"voxels per axis, not {grid_size}",
                hint="use network small-cnn for the tiny and cpu profiles",
            )
        from monai.networks.nets import EfficientNetBN

        return EfficientNetBN(
            "efficientnet-b0",
            pretrained=False,
            spatial_dims=3,
            in_channels=in_channels,
            num_classes=1,
        )
    if network == "small-cnn":
        return small_cnn(in_channels, grid_size)
    if network == "small-cnn-pool":
        return small_cnn(in_channels, grid_size, head="pool")
    raise InputError(f"unknown classifier network {network!r}", hint=f"one of {NETWORKS}")


def small_cnn(
    in_channels: int, grid_size: tuple[int, int, int], head: str = "flatten"
) -> nn.Module:
    """MONAI's small ``Classifier`` in plain torch (``shared/classifier/small_cnn.py``), with
    its flatten head or a global-pooling one."""
    from shared.classifier.small_cnn import SmallCNN

    return SmallCNN(in_channels, grid_size, head=head)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
