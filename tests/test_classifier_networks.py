"""The plain-torch small CNN is MONAI's ``Classifier`` of the same arguments: same state-dict
keys and shapes, same seeded initial weights, same outputs for the same weights (in both
directions), and importing it does not import MONAI."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from shared.classifier.networks import build_classifier
from shared.classifier.small_cnn import CHANNELS, DROPOUT, STRIDES


def _monai(in_channels: int, grid: tuple[int, int, int]) -> torch.nn.Module:
    from monai.networks.nets import Classifier

    return Classifier(
        in_shape=(in_channels, *grid),
        classes=1,
        channels=CHANNELS,
        strides=STRIDES,
        num_res_units=1,
        dropout=DROPOUT,
    )


@pytest.mark.parametrize(
    ("in_channels", "grid"), [(3, (24, 24, 12)), (1, (32, 32, 16)), (3, (17, 23, 9))]
)
def test_small_cnn_is_monai_classifier(in_channels: int, grid: tuple[int, int, int]) -> None:
    torch.manual_seed(3)
    ours = build_classifier("small-cnn", in_channels, grid)
    torch.manual_seed(3)
    ref = _monai(in_channels, grid)
    a, b = ours.state_dict(), ref.state_dict()
    assert list(a) == list(b)
    assert {k: tuple(v.shape) for k, v in a.items()} == {k: tuple(v.shape) for k, v in b.items()}
    # the same creation order: a seed gives the same initial weights
    assert all(torch.equal(a[k], b[k]) for k in a)

    # other weights, loaded both ways: identical outputs (eval) and identical gradients
    torch.manual_seed(11)
    trained = {k: torch.randn_like(v) * 0.1 for k, v in b.items()}
    ref.load_state_dict(trained)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, in_channels, *grid)
    ours.eval(), ref.eval()
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))
        assert ours(x).shape == (4, 1)

    # train mode: dropout draws in the same order, so a seeded step matches too
    ours.train(), ref.train()
    outs = []
    for model in (ours, ref):
        torch.manual_seed(5)
        model.zero_grad()
        out = model(x)
        out.sum().backward()
        outs.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    assert torch.equal(outs[0][0], outs[1][0])
    assert all(torch.allclose(g, h) for g, h in zip(outs[0][1], outs[1][1], strict=True))

    back = _monai(in_channels, grid)
    back.load_state_dict(ours.state_dict())  # and the other way round


@pytest.mark.parametrize("network", ["small-cnn", "small-cnn-pool"])
def test_small_cnn_does_not_import_monai(network: str) -> None:
    code = (
        "import sys\n"
        "from shared.classifier.networks import build_classifier\n"
        f"build_classifier({network!r}, 3, (24, 24, 12))\n"
        "assert 'monai' not in sys.modules, sorted(m for m in sys.modules if 'monai' in m)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_plain_adamw_matches_torch_optim_bit_for_bit() -> None:
    from shared.classifier.optim import AdamW

    x = torch.randn(6, 3, 24, 24, 12)
    y = torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    weights = []
    for make in (
        lambda p: torch.optim.AdamW(p, lr=3e-3, weight_decay=1e-4, fused=True),
        lambda p: AdamW(p, lr=3e-3, weight_decay=1e-4),
    ):
        torch.manual_seed(2)
        model = build_classifier("small-cnn", 3, (24, 24, 12))
        model.eval()  # no dropout: the same graph both times
        opt = make(model.parameters())
        for i in range(5):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).reshape(-1), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if i == 2:  # a parameter without a gradient this step is left alone
                next(model.parameters()).grad = None
            opt.step()
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def _lesion_at(x0: int) -> torch.Tensor:
    """A bright 4-voxel cube on an empty 96 x 32 x 32 grid, its x position given."""
    x = torch.zeros(1, 3, 96, 32, 32)
    x[0, :, x0 : x0 + 4, 14:18, 14:18] = 1.0
    return x


def test_pooled_head_scores_a_finding_the_same_wherever_it_lies() -> None:
    """Moved by the network's total stride (16 voxels), away from the borders, a finding gives
    the pooled head the same feature values in other places: the same score. The flatten
    head (MONAI's) weighs each place on its own and scores the two differently."""
    x = torch.cat([_lesion_at(30), _lesion_at(62)])
    scores = {}
    for network in ("small-cnn", "small-cnn-pool"):
        torch.manual_seed(0)
        model = build_classifier(network, 3, (96, 32, 32)).eval()
        with torch.no_grad():
            scores[network] = model(x).reshape(-1)
    assert torch.allclose(scores["small-cnn-pool"][0], scores["small-cnn-pool"][1], atol=1e-6)
    assert abs(float(scores["small-cnn"][0] - scores["small-cnn"][1])) > 1e-3


def test_pooled_head_shares_the_trunk_but_not_the_head() -> None:
    """The trunk's keys and shapes are the flatten network's; the head takes each channel's
    mean and max, so its weights cannot be loaded from a flatten network by mistake."""
    flat = build_classifier("small-cnn", 3, (24, 24, 12)).state_dict()
    pool = build_classifier("small-cnn-pool", 3, (24, 24, 12)).state_dict()
    trunk = [k for k in flat if not k.startswith("final.")]
    assert trunk == [k for k in pool if not k.startswith("final.")]
    assert all(flat[k].shape == pool[k].shape for k in trunk)
    assert tuple(pool["final.1.weight"].shape) == (1, 2 * CHANNELS[-1])
    with pytest.raises(RuntimeError):
        build_classifier("small-cnn-pool", 3, (24, 24, 12)).load_state_dict(flat)
