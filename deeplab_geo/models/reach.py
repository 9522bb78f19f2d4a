"""Atrous taps that training never reached, and how to remove them.

A 3x3 convolution at rate ``r`` on features of stride ``s`` looks ``r * s`` input pixels away
from its centre. DeepLab's rates are chosen for 513 px crops; a model trained on smaller crops
sees the far taps of its large-rate ASPP branches land in zero padding for most (or all)
training positions. Those weights stay close to their random initialisation, and at inference
on larger tiles they multiply real features: noise that also makes the prediction depend on
where a pixel lies in its tile.

:func:`trim_unreached_taps` zeroes every tap further from its kernel's centre than half the
training crop (the tap then lay outside the crop for more than half of the training
positions). For a tap that never lay inside a crop this is exact: the trimmed model computes
the same function on crop-sized inputs as the trained one.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

_PROBE = 64


def trim_unreached_taps(model: nn.Module, crop_size: int) -> dict[str, int]:
    """Zero the convolution taps further than ``crop_size / 2`` input pixels from the centre.

    Args:
        model: any model whose first convolution takes the input image.
        crop_size: the side of the (square) training crops, in input pixels.

    Returns:
        ``{module name: taps zeroed per filter}`` for the convolutions changed.
    """
    if crop_size < 1:
        raise ValueError(f"crop_size must be positive, got {crop_size}")
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    strides = dict(zip((name for name, _ in convs), input_strides(model, [m for _, m in convs])))
    changed: dict[str, int] = {}
    for name, conv in convs:
        (kh, kw), (dh, dw) = conv.kernel_size, conv.dilation
        rows = (torch.arange(kh) - kh // 2).abs() * dh * strides[name]
        cols = (torch.arange(kw) - kw // 2).abs() * dw * strides[name]
        far = torch.maximum(rows[:, None], cols[None, :]) > crop_size / 2
        if far.any():
            with torch.no_grad():
                conv.weight[:, :, far] = 0
            changed[name] = int(far.sum())
    return changed


def input_strides(model: nn.Module, modules: list[nn.Module]) -> list[int]:
    """Input pixels per feature pixel at the input of each of ``modules`` (one probe pass)."""
    strides: dict[int, int] = {}

    def record(index: int, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        strides[index] = max(1, round(_PROBE / inputs[0].shape[-1]))

    hooks = [m.register_forward_hook(partial(record, i)) for i, m in enumerate(modules)]
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
    return [strides[i] for i in range(len(modules))]
