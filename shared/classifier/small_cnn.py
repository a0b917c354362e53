"""The small csPCa classifier in plain torch, without MONAI's import cost.

It is MONAI's ``Classifier(in_shape=(C, X, Y, Z), classes=1, channels=(16, 32, 64, 128),
strides=(2, 2, 2, 2), num_res_units=1, dropout=0.2)`` (the network the ``tiny`` and ``cpu``
profiles always used) rebuilt from torch layers: the same module names, so the same state-dict
keys and shapes; the same parameter creation order, so the same initial weights for a seed;
the same forward pass. Weights saved by either load into the other
(``tests/test_classifier_networks.py`` checks this against MONAI). A federation node starts a
fresh process for every message, and MONAI's import would cost each one seconds for nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

CHANNELS = (16, 32, 64, 128)
STRIDES = (2, 2, 2, 2)
DROPOUT = 0.2


def _unit(cin: int, cout: int, stride: int, conv_only: bool) -> nn.Sequential:
    """MONAI ``Convolution``: 3x3x3 convolution, then instance norm (no affine), dropout and
    PReLU ("NDA" order), or the convolution alone."""
    parts: OrderedDict[str, nn.Module] = OrderedDict(
        conv=nn.Conv3d(cin, cout, 3, stride=stride, padding=1)
    )
    if not conv_only:
        parts["adn"] = nn.Sequential(
            OrderedDict(N=nn.InstanceNorm3d(cout), D=nn.Dropout(DROPOUT), A=nn.PReLU())
        )
    return nn.Sequential(parts)


class ResidualUnit(nn.Module):
    """MONAI ``ResidualUnit`` with one subunit and a strided 3x3x3 residual convolution."""

    def __init__(self, cin: int, cout: int, stride: int, last: bool) -> None:
        super().__init__()
        # The unit before the residual convolution, as MONAI creates them: a seeded
        # initialisation then draws the same weights.
        self.conv = nn.Sequential(OrderedDict(unit0=_unit(cin, cout, stride, last)))
        self.residual = nn.Conv3d(cin, cout, 3, stride=stride, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = self.residual(x)
        return self.conv(x) + res


class GlobalPool(nn.Module):
    """Mean and max over all voxels of each channel, side by side: (B, C, ...) -> (B, 2C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)
        return torch.cat([flat.mean(2), flat.amax(2)], dim=1)


HEADS = ("flatten", "pool")


class SmallCNN(nn.Module):
    """Four strided residual units, then one linear layer: one logit per case.

    ``head="flatten"`` (MONAI's ``Classifier``) feeds the linear layer the whole last feature
    map, so every position has weights of its own; ``head="pool"`` (network
    ``small-cnn-pool``) feeds it each channel's mean and max over the map, so a finding scores
    the same wherever it lies, for data whose findings move more than the training set shows.
    On the phantom quick demo it was no better than the flatten head (issue 15).
    """

    def __init__(self, in_channels: int, grid_size: Sequence[int], head: str = "flatten") -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, not {head!r}")
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        cin, size = in_channels, [int(n) for n in grid_size]
        for i, (c, s) in enumerate(zip(CHANNELS, STRIDES, strict=True)):
            layers[f"layer_{i}"] = ResidualUnit(cin, c, s, last=i == len(CHANNELS) - 1)
            cin, size = c, [(n - 1) // s + 1 for n in size]  # kernel 3, padding 1
        self.net = nn.Sequential(layers)
        if head == "flatten":
            features = cin * size[0] * size[1] * size[2]
            self.final = nn.Sequential(nn.Flatten(), nn.Linear(features, 1))
        else:
            self.final = nn.Sequential(GlobalPool(), nn.Linear(2 * cin, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.net(x)).reshape(x.shape[0], 1)
