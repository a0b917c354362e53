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


class SmallCNN(nn.Module):
    """Four strided residual units, flatten, one linear layer: one logit per case."""

    def __init__(self, in_channels: int, grid_size: Sequence[int]) -> None:
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        cin, size = in_channels, [int(n) for n in grid_size]
        for i, (c, s) in enumerate(zip(CHANNELS, STRIDES, strict=True)):
            layers[f"layer_{i}"] = ResidualUnit(cin, c, s, last=i == len(CHANNELS) - 1)
            cin, size = c, [(n - 1) // s + 1 for n in size]  # kernel 3, padding 1
        self.net = nn.Sequential(layers)
        features = cin * size[0] * size[1] * size[2]
        self.final = nn.Sequential(nn.Flatten(), nn.Linear(features, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.net(x)).reshape(x.shape[0], 1)
