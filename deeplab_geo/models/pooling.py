"""Extent-independent pooling: global means replaced by windowed means at inference.

DeepLab-v3's image pooling and MobileNetV3's squeeze-and-excitation blocks average features
over the whole input. A model trained on 256 px crops then predicts a pixel differently
inside a 512 px tile than inside a 2048 px scene, and the class map depends on the tile size.
DeepLab's reference implementation answers this for ASPP with ``image_pooling_crop_size``: at
inference the mean is taken over a box the size of the training crop.

:func:`set_pooling_window` does this for every global average pool of a model: each becomes a
:class:`BoxMean` over about ``pixels`` input pixels (the box is measured in the pool's own
feature pixels, found by one probe forward pass), centred on each position and clipped at the
input's border. The model becomes shift-equivariant away from borders, so the interior of a
tile predicts exactly like the same pixels inside the whole raster. There are no weights
involved: state dicts are unchanged, and ``None`` restores global pooling.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

_PROBE = 64


class BoxMean(nn.Module):
    """Mean over a ``window`` x ``window`` box centred on each position (``window`` odd).

    Near the border the box is clipped and the mean is over the pixels inside. Computed as a
    vertical then a horizontal 1-D mean (the clipped box is a product of two intervals, so this
    is exact), which on channels-last tensors is several times faster than prefix sums.
    """

    def __init__(self, window: int) -> None:
        super().__init__()
        if window < 1 or window % 2 == 0:
            raise ValueError(f"window must be a positive odd number, got {window}")
        self.window = window

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.window // 2
        x = F.avg_pool2d(x, (self.window, 1), stride=1, padding=(half, 0),
                         count_include_pad=False)
        return F.avg_pool2d(x, (1, self.window), stride=1, padding=(0, half),
                            count_include_pad=False)

    def extra_repr(self) -> str:
        return f"window={self.window}"


def _global_pools(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(parent, attribute) of every pool that averages over the whole input."""
    found = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, BoxMean) or (isinstance(child, nn.AdaptiveAvgPool2d)
                                              and child.output_size in (1, (1, 1))):
                found.append((parent, name))
    return found


def set_pooling_window(model: nn.Module, pixels: int | None) -> int:
    """Average every global pool of ``model`` over a box of about ``pixels`` input pixels.

    Use the training crop size, so that inference sees the statistics the model was trained
    with. ``None`` restores global average pooling.

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
    strides = _strides(model, pools)
    for parent, name in pools:
        if pixels is None:
            setattr(parent, name, nn.AdaptiveAvgPool2d(1))
        else:
            boxes = max(1, pixels // strides[(id(parent), name)])
            setattr(parent, name, BoxMean(2 * (boxes // 2) + 1))
    return len(pools)


def _strides(model: nn.Module, pools: list[tuple[nn.Module, str]]) -> dict[tuple[int, str], int]:
    """Each pool's input stride (input pixels per feature pixel), from one probe forward pass."""
    strides: dict[tuple[int, str], int] = {}

    def record(key: tuple[int, str], module: nn.Module, inputs: tuple, output: torch.Tensor):
        strides[key] = max(1, round(_PROBE / inputs[0].shape[-1]))

    hooks = [getattr(parent, name).register_forward_hook(partial(record, (id(parent), name)))
             for parent, name in pools]
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    probe = torch.zeros(2, first.in_channels, _PROBE, _PROBE,
                        device=first.weight.device, dtype=first.weight.dtype)
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(probe)
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    return strides
