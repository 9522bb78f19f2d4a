"""Extent-independent pooling: global means replaced by windowed means on a coarse grid.

DeepLab-v3's image pooling and MobileNetV3's squeeze-and-excitation blocks average features
over the whole input. A model trained on 256 px crops then predicts a pixel differently
inside a 512 px tile than inside a 2048 px scene, and the class map depends on the tile size.
DeepLab's reference implementation answers this for ASPP with ``image_pooling_crop_size``: at
inference the mean is taken over a box the size of the training crop.

:func:`set_pooling_window` does this for every global average pool of a model. Each becomes a
:class:`GridBoxMean`: features are averaged over cells of :data:`CELL_PIXELS` input pixels,
then over a box of about ``pixels`` input pixels (an odd number of cells, centred on each cell
and clipped at the input's border). What follows the pool (the 1x1 convolutions of a
squeeze-excitation block or of ASPP's image pooling branch) runs once per cell, and its output
is bilinearly upsampled to every position: the cost stays close to that of global pooling.

Cells are counted from the input's top-left corner, so when a tile starts at a multiple of
:data:`CELL_PIXELS` from the raster's origin, the interior of the tile pools exactly as the
same pixels inside the whole raster. There are no weights involved: state dicts are
unchanged, and ``None`` restores global pooling.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops.misc import SqueezeExcitation

from deeplab_geo.checkpoints import POOLING_CELL
from deeplab_geo.models.reach import input_strides

CELL_PIXELS = POOLING_CELL
"""Side of a pooling cell in input pixels; tile steps that are multiples of it pool exactly."""


def box_mean(x: torch.Tensor, window: int) -> torch.Tensor:
    """Mean over a ``window`` x ``window`` box centred on each position, clipped at the border.

    The clipped box is a product of two intervals, so a vertical then a horizontal 1-D mean is
    exact.
    """
    half = window // 2
    x = F.avg_pool2d(x, (window, 1), stride=1, padding=(half, 0), count_include_pad=False)
    return F.avg_pool2d(x, (1, window), stride=1, padding=(0, half), count_include_pad=False)


class GridBoxMean(nn.Module):
    """Windowed mean on a coarse grid.

    Averages ``cell`` x ``cell`` blocks of positions (the last row and column of blocks may be
    partial), then takes the :func:`box_mean` of ``cells`` x ``cells`` blocks around each block.
    The output has one position per block: ``ceil(H / cell)`` x ``ceil(W / cell)``.
    """

    def __init__(self, cell: int, cells: int) -> None:
        super().__init__()
        if cell < 1:
            raise ValueError(f"cell must be positive, got {cell}")
        if cells < 1 or cells % 2 == 0:
            raise ValueError(f"cells must be a positive odd number, got {cells}")
        self.cell, self.cells = cell, cells

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cell > 1:
            x = F.avg_pool2d(x, self.cell, stride=self.cell, ceil_mode=True,
                             count_include_pad=False)
        return box_mean(x, self.cells)

    def extra_repr(self) -> str:
        return f"cell={self.cell}, cells={self.cells}"


def upsample_cells(x: torch.Tensor, cell: int, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of per-cell values to positions, cropped to ``size``."""
    if cell > 1:
        x = F.interpolate(x, scale_factor=cell, mode="bilinear", align_corners=False)
    return x[..., : size[0], : size[1]]


class WindowedSqueezeExcitation(SqueezeExcitation):
    """A squeeze-excitation block whose ``avgpool`` is a :class:`GridBoxMean`.

    The excitation is computed per cell and upsampled. Instances are made by switching the
    class of an existing block, so its parameters and state-dict keys stay as they are.
    """

    avgpool: GridBoxMean

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        scale = self._scale(input)
        return upsample_cells(scale, self.avgpool.cell, input.shape[-2:]) * input


def _global_pools(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(parent, attribute) of every pool that averages over the whole input."""
    found = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, GridBoxMean) or (isinstance(child, nn.AdaptiveAvgPool2d)
                                                  and child.output_size in (1, (1, 1))):
                found.append((parent, name))
    return found


def set_pooling_window(model: nn.Module, pixels: int | None) -> int:
    """Average every global pool of ``model`` over a box of about ``pixels`` input pixels.

    Use the training crop size, so that inference sees the statistics the model was trained
    with. The box is rounded to an odd number of :data:`CELL_PIXELS` cells (at least one).
    ``None`` restores global average pooling.

    Returns:
        The number of pools changed.

    Raises:
        ValueError: ``pixels`` is not positive, or the model has no global pooling.
    """
    if pixels is not None and pixels < 1:
        raise ValueError(f"pooling_window must be a positive number of pixels, got {pixels}")
    pools = _global_pools(model)
    if not pools:
        raise ValueError("this model has no global pooling; pooling_window does not apply")
    strides = input_strides(model, [getattr(parent, name) for parent, name in pools])
    for (parent, name), stride in zip(pools, strides):
        if pixels is None:
            setattr(parent, name, nn.AdaptiveAvgPool2d(1))
            if isinstance(parent, WindowedSqueezeExcitation):
                parent.__class__ = SqueezeExcitation
            continue
        cell_pixels = max(CELL_PIXELS, stride)
        cells = max(1, round(pixels / cell_pixels))
        setattr(parent, name, GridBoxMean(cell_pixels // stride, 2 * (cells // 2) + 1))
        if isinstance(parent, SqueezeExcitation):
            parent.__class__ = WindowedSqueezeExcitation
    return len(pools)
