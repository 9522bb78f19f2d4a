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


REACH_MASS = 0.99
"""Share of the input gradient that lies within a model's reach (see :func:`measure_reach`)."""


def measure_reach(model: nn.Module, in_channels: int, *, multiple: int = 32,
                  probe: int = 768, mass: float = REACH_MASS) -> int | None:
    """How far (input pixels, each side) a model looks around a pixel, rounded up to ``multiple``.

    Every weight of a deep network reaches further than it matters: the theoretical receptive
    field of a DeepLab backbone spans most of a tile, while the prediction at a pixel depends
    almost entirely on a much smaller neighbourhood (Luo et al., "Understanding the effective
    receptive field", NeurIPS 2016). The reach is measured, not derived: the gradient of the
    centre pixel's scores with respect to a smooth random image, and the smallest square
    around the centre (Chebyshev radius) that holds ``mass`` of its absolute sum. Windowed
    pooling (:mod:`deeplab_geo.models.pooling`) is part of the network, so its box counts.
    The probe doubles once if the reach does not fit well inside it; a model that reaches
    further still, or that pools globally (it looks at the whole input), gets ``None``.

    Tiles that overlap by twice the reach, starting at multiples of the model's alignment,
    give the same classes as one whole-image prediction on >= 99.9% of pixels for the demo
    model (``benchmarks/agreement.py``).
    """
    if not 0 < mass < 1:
        raise ValueError(f"mass must lie in (0, 1), got {mass}")
    if any(isinstance(m, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d) and
           tuple(_pair(m.output_size)) == (1, 1) for m in model.modules()):
        return None  # a global pool looks at the whole input
    training = model.training
    model.eval()
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    try:
        for size in (probe, 2 * probe):
            radius = _gradient_radius(model, in_channels, size, mass, first.weight)
            if radius < size // 2 - multiple:
                return max(multiple, -(-radius // multiple) * multiple)
    finally:
        model.train(training)
    return None


def _pair(size: object) -> tuple:
    return size if isinstance(size, tuple) else (size, size)


def _gradient_radius(model: nn.Module, in_channels: int, size: int, mass: float,
                     like: torch.Tensor) -> int:
    generator = torch.Generator().manual_seed(0)
    coarse = torch.randn(1, in_channels, size // 8, size // 8, generator=generator)
    image = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear",
                                            align_corners=False)
    image = (image / image.std()).to(device=like.device, dtype=like.dtype).requires_grad_(True)
    out = model(image)
    out = out["out"] if isinstance(out, dict) else out
    centre = size // 2
    out[0, :, centre, centre].abs().sum().backward()
    grad = image.grad[0].abs().sum(0).double()
    offsets = (torch.arange(size) - centre).abs()
    distance = torch.maximum(offsets[:, None], offsets[None, :]).flatten()
    profile = torch.zeros(size, dtype=torch.float64).index_add_(0, distance, grad.flatten())
    cumulative = profile.cumsum(0) / profile.sum()
    return int(torch.searchsorted(cumulative, torch.tensor(mass, dtype=torch.float64)))
