"""Windowed pooling: box means clipped at borders, coarse grids, shift-equivariance, per-stride
cells, the same logits after restoring global pooling, and ONNX export."""

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops.misc import SqueezeExcitation

from deeplab_geo import models
from deeplab_geo.models.pooling import (
    CELL_PIXELS,
    GridBoxMean,
    WindowedSqueezeExcitation,
    box_mean,
    set_pooling_window,
)

DEMO = "deeplabv3_lite_mobilenet_v3_small"


def reference_box_mean(x, window):
    half = window // 2
    out = torch.empty_like(x)
    for i in range(x.shape[2]):
        for j in range(x.shape[3]):
            box = x[:, :, max(0, i - half):i + half + 1, max(0, j - half):j + half + 1]
            out[:, :, i, j] = box.mean((-2, -1))
    return out


def reference_cell_means(x, cell):
    rows, cols = -(-x.shape[2] // cell), -(-x.shape[3] // cell)
    out = torch.empty(*x.shape[:2], rows, cols, dtype=x.dtype)
    for i in range(rows):
        for j in range(cols):
            block = x[:, :, i * cell:(i + 1) * cell, j * cell:(j + 1) * cell]
            out[:, :, i, j] = block.mean((-2, -1))
    return out


@pytest.mark.parametrize("window", [1, 3, 7, 41])
def test_box_mean_is_the_clipped_window_mean(window):
    x = torch.rand(2, 3, 19, 13, dtype=torch.float64)
    assert torch.allclose(box_mean(x, window), reference_box_mean(x, window))


@pytest.mark.parametrize("cell,cells", [(1, 3), (4, 3), (5, 1), (3, 5)])
def test_grid_box_mean_averages_cells_then_a_clipped_box_of_cells(cell, cells):
    x = torch.rand(2, 3, 23, 17, dtype=torch.float64)  # partial last cells
    out = GridBoxMean(cell, cells)(x)
    assert out.shape[-2:] == (-(-23 // cell), -(-17 // cell))
    assert torch.allclose(out, reference_box_mean(reference_cell_means(x, cell), cells))


def test_grid_sizes_must_be_valid():
    with pytest.raises(ValueError, match="positive odd"):
        GridBoxMean(4, 4)
    with pytest.raises(ValueError, match="cell must be positive"):
        GridBoxMean(0, 3)


def test_a_cell_aligned_crop_pools_like_the_whole_away_from_its_border():
    """The property tiling relies on: a tile's interior sees what the whole raster sees."""
    x = torch.rand(1, 4, 96, 80)
    pool = GridBoxMean(4, 5)
    whole, crop = pool(x), pool(x[:, :, 16:84, 8:72])  # crop starts on cell corners
    rows, cols = crop.shape[-2:]
    assert torch.allclose(crop[:, :, 2:rows - 3, 2:cols - 3],
                          whole[:, :, 4 + 2:4 + rows - 3, 2 + 2:2 + cols - 3], atol=1e-6)


def test_windowed_squeeze_excitation_runs_its_convolutions_per_cell_and_is_shift_equivariant():
    torch.manual_seed(0)
    se = SqueezeExcitation(8, 4).eval()
    x = torch.rand(1, 8, 64, 48)
    plain = se(x)
    assert set_pooling_window(nn.Sequential(se), 3 * CELL_PIXELS) == 1
    assert type(se) is WindowedSqueezeExcitation and se.avgpool.cell == CELL_PIXELS
    calls = []
    se.fc1.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape[-2:])))
    # one position per cell: a 1-pixel-stride layer with 32 px cells
    windowed = se(torch.rand(1, 8, 128, 96))
    assert calls == [(4, 3)] and windowed.shape == (1, 8, 128, 96)
    big = torch.rand(1, 8, 8 * CELL_PIXELS, 6 * CELL_PIXELS)
    whole = se(big)
    crop = se(big[:, :, 2 * CELL_PIXELS:, CELL_PIXELS:5 * CELL_PIXELS])
    # equal where neither the box (1 cell each side) nor the upsampling meets the crop border
    inner = slice(2 * CELL_PIXELS, 4 * CELL_PIXELS)
    assert torch.allclose(crop[:, :, inner, CELL_PIXELS + 16:2 * CELL_PIXELS + 16],
                          whole[:, :, 2 * CELL_PIXELS + inner.start:2 * CELL_PIXELS + inner.stop,
                                2 * CELL_PIXELS + 16:3 * CELL_PIXELS + 16], atol=1e-6)
    set_pooling_window(nn.Sequential(se), None)
    assert type(se) is SqueezeExcitation and torch.equal(se(x), plain)


def cells(model):
    return sorted({(m.cell, m.cells) for m in model.modules() if isinstance(m, GridBoxMean)})


def test_cells_follow_each_pools_stride():
    net = models.build(DEMO, num_classes=3, output_stride=8, pooling_window=256)
    # squeeze-excitation blocks at strides 4 and 8, ASPP image pooling at 8: 32 px cells
    assert cells(net) == [(4, 9), (8, 9)]
    assert set_pooling_window(net, 64) == len([m for m in net.modules()
                                               if isinstance(m, GridBoxMean)])
    assert cells(net) == [(4, 3), (8, 3)]


def test_none_restores_global_pooling_and_the_same_logits():
    from deeplab_geo.models.checkpoint import load_checkpoint
    from deeplab_geo.tools.sample import synthesize_scene

    trained, _ = load_checkpoint("builtin:landcover-demo")
    plain = models.build(DEMO, num_classes=6).eval()
    plain.load_state_dict(trained.state_dict())  # no weights involved: keys unchanged
    set_pooling_window(plain, None)
    image, _ = synthesize_scene(5, 192)
    x = (torch.from_numpy(image[None]).float() - 100) / 50
    with torch.inference_mode():
        set_pooling_window(trained, 64)
        assert (trained(x)["out"] - plain(x)["out"]).abs().max() > 0.1
        set_pooling_window(trained, None)
        assert torch.equal(trained(x)["out"], plain(x)["out"])
    assert not any(isinstance(m, (GridBoxMean, WindowedSqueezeExcitation))
                   for m in trained.modules())


def test_windowed_model_exports_to_onnx_with_the_same_probabilities(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from deeplab_geo.models.checkpoint import ModelInfo, build_model, save_checkpoint
    from deeplab_geo.plugins import get_backend
    from deeplab_geo.tools.export import export_onnx_bytes

    torch.manual_seed(0)
    info = ModelInfo(architecture=DEMO, num_classes=3, classes=["a", "b", "c"],
                     colours=[[0, 0, 0]] * 3, options={"pooling_window": 96})
    net = build_model(info).eval()
    path = save_checkpoint(net, info, tmp_path / "model.safetensors")
    data, _ = export_onnx_bytes(path)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    pixels = (np.random.default_rng(0).random((1, 3, 200, 168)) * 255).astype(np.float32)
    onnx_probs = session.run(None, {"pixels": pixels})[0]  # sizes that are not whole cells
    torch_probs = get_backend("torch").load(str(path), device="cpu").predict(pixels)
    assert np.abs(onnx_probs - torch_probs).max() < 1e-4


def test_models_without_global_pooling_refuse_a_window():
    with pytest.raises(ValueError, match="no global pooling"):
        set_pooling_window(nn.Sequential(nn.Conv2d(3, 4, 3)), 64)
    with pytest.raises(ValueError, match="positive number of pixels"):
        models.build(DEMO, num_classes=3, pooling_window=0)
