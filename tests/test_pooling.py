"""Windowed pooling: box means clipped at borders, shift-equivariance, per-stride windows."""

import pytest
import torch
from torch import nn

from deeplab_geo import models
from deeplab_geo.models.pooling import BoxMean, set_pooling_window

DEMO = "deeplabv3_lite_mobilenet_v3_small"


def reference_box_mean(x, window):
    half = window // 2
    out = torch.empty_like(x)
    for i in range(x.shape[2]):
        for j in range(x.shape[3]):
            box = x[:, :, max(0, i - half):i + half + 1, max(0, j - half):j + half + 1]
            out[:, :, i, j] = box.mean((-2, -1))
    return out


@pytest.mark.parametrize("window", [1, 3, 7, 41])
def test_box_mean_is_the_clipped_window_mean(window):
    x = torch.rand(2, 3, 19, 13, dtype=torch.float64)
    assert torch.allclose(BoxMean(window)(x), reference_box_mean(x, window))


def test_box_mean_window_must_be_odd():
    with pytest.raises(ValueError, match="positive odd"):
        BoxMean(4)


def test_box_mean_of_a_crop_equals_the_whole_away_from_the_crop_border():
    """The property tiling relies on: a tile's interior sees what the whole raster sees."""
    x = torch.rand(1, 4, 60, 50)
    window, half = 9, 4
    whole = BoxMean(window)(x)
    crop = BoxMean(window)(x[:, :, 10:45, 7:40])
    assert torch.allclose(crop[:, :, half:-half, half:-half],
                          whole[:, :, 10 + half:45 - half, 7 + half:40 - half], atol=1e-6)


def windows(model):
    return sorted({m.window for m in model.modules() if isinstance(m, BoxMean)})


def test_windows_follow_each_pools_stride():
    net = models.build(DEMO, num_classes=3, output_stride=8, pooling_window=256)
    # squeeze-excitation blocks at strides 4 and 8, ASPP image pooling at 8
    assert windows(net) == [33, 65]
    assert set_pooling_window(net, 64) == len([m for m in net.modules()
                                               if isinstance(m, BoxMean)])
    assert windows(net) == [9, 17]


def test_none_restores_global_pooling_and_the_same_logits():
    from deeplab_geo.models.checkpoint import load_checkpoint
    from deeplab_geo.sample import synthesize_scene

    trained, _ = load_checkpoint("builtin:landcover-demo")
    plain = models.build(DEMO, num_classes=6).eval()
    plain.load_state_dict(trained.state_dict())  # no weights involved: keys unchanged
    image, _ = synthesize_scene(5, 192)
    x = (torch.from_numpy(image[None]).float() - 100) / 50
    with torch.inference_mode():
        set_pooling_window(trained, 64)
        assert (trained(x)["out"] - plain(x)["out"]).abs().max() > 0.1
        set_pooling_window(trained, None)
        assert torch.equal(trained(x)["out"], plain(x)["out"])
    assert not any(isinstance(m, BoxMean) for m in trained.modules())


def test_models_without_global_pooling_refuse_a_window():
    with pytest.raises(ValueError, match="no global pooling"):
        set_pooling_window(nn.Sequential(nn.Conv2d(3, 4, 3)), 64)
    with pytest.raises(ValueError, match="positive number of pixels"):
        models.build(DEMO, num_classes=3, pooling_window=0)
