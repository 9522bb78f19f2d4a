"""Trimming atrous taps that training crops never reached."""

import pytest
import torch
from torch import nn

from deeplab_geo import models
from deeplab_geo.models.reach import input_strides, measure_reach, trim_unreached_taps


def test_demo_model_trained_on_256_px_crops_loses_the_far_taps_of_its_rate_24_and_36_branches():
    net = models.build("deeplabv3_lite_mobilenet_v3_small", num_classes=3, output_stride=8)
    branches = net.classifier[0].convs
    assert [b[0].dilation[0] for b in branches[1:4]] == [12, 24, 36]
    before = {n: p.clone() for n, p in net.named_parameters()}
    changed = trim_unreached_taps(net, 256)
    # rate 24 at stride 8 looks 192 px away, rate 36 288 px: beyond half a 256 px crop
    assert changed == {"classifier.0.convs.2.0": 8, "classifier.0.convs.3.0": 8}
    for rate_branch in (branches[2][0], branches[3][0]):
        w = rate_branch.weight
        assert w[:, :, 1, 1].abs().sum() > 0
        ring = torch.ones(3, 3, dtype=torch.bool)
        ring[1, 1] = False
        assert (w[:, :, ring] == 0).all()
    untouched = [n for n, p in net.named_parameters() if torch.equal(p, before[n])]
    assert len(untouched) == len(before) - 2


def test_trimming_taps_that_never_met_the_crop_leaves_the_function_on_crops_unchanged():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(4, 3, 3, padding=8, dilation=8))
    crops = torch.rand(5, 2, 8, 8)  # taps 8 px away never land inside an 8 px crop
    with torch.no_grad():
        before = net(crops)
        assert trim_unreached_taps(net, 14) == {"2": 8}
        assert torch.allclose(net(crops), before, atol=1e-6)


def test_input_strides_and_bad_crop():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 3, stride=2,
                                                                           padding=1))
    assert input_strides(net, [net[0], net[1]]) == [1, 2]
    with pytest.raises(ValueError, match="crop_size must be positive"):
        trim_unreached_taps(net, 0)


def test_measured_reach_grows_with_depth_and_global_pooling_has_none():
    def stack(layers):
        net = nn.Sequential(*[nn.Conv2d(1, 1, 3, padding=1, bias=False) for _ in range(layers)])
        for conv in net:
            nn.init.constant_(conv.weight, 1 / 9)
        return net

    # a stack of n 3x3 means spreads a pixel's gradient over at most n px each side
    shallow, deep = (measure_reach(stack(n), 1, multiple=1, probe=64) for n in (3, 12))
    assert 1 <= shallow <= 3 and shallow < deep <= 12

    class GlobalMean(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 1)

        def forward(self, x):
            return self.conv(x) * 0.001 + x.mean((2, 3), keepdim=True).expand_as(x)

    assert measure_reach(GlobalMean(), 1, probe=64) is None  # it looks at the whole input
    pooled = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.AdaptiveAvgPool2d(1))
    assert measure_reach(pooled, 1) is None  # known from its modules, without a probe
    with pytest.raises(ValueError, match="mass"):
        measure_reach(stack(1), 1, mass=1.0)


def test_the_demo_model_records_the_reach_it_has():
    from deeplab_geo.models.checkpoint import load_checkpoint

    model, info = load_checkpoint("builtin:landcover-demo")
    assert info.reach == measure_reach(model, info.in_channels) == 192
    assert info.alignment == 32  # it pools over windows of 32 px cells
