"""DeepLab models, built by name.

>>> from deeplab_geo import models
>>> net = models.build("deeplabv3_lite_mobilenet_v3_small", num_classes=6)
>>> net(torch.zeros(1, 3, 64, 64))["out"].shape
torch.Size([1, 6, 64, 64])

Every model returns a dict whose ``"out"`` holds class logits at input resolution, as
torchvision's segmentation models do.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torchvision.models.segmentation.deeplabv3 import DeepLabV3

from deeplab_geo.models.backbones import mobilenet_v3_atrous
from deeplab_geo.models.heads import DeepLabV3Head, aspp_rates

__all__ = ["build", "available", "DEFAULT_OUTPUT_STRIDE"]


def _deeplabv3_lite_mobilenet_v3_small(*, num_classes: int, in_channels: int,
                                       output_stride: int) -> nn.Module:
    """DeepLab-v3 with a MobileNetV3-Small atrous backbone and a separable ASPP (128 channels).

    The compact CPU model behind the bundled land-cover demo: class scores at the output
    stride are bilinearly upsampled to the input, and the dense CRF sharpens their boundaries.
    """
    backbone, channels = mobilenet_v3_atrous("mobilenet_v3_small", output_stride=output_stride,
                                             in_channels=in_channels)
    head = DeepLabV3Head(channels["out"], num_classes, aspp_rates(output_stride), 128,
                         separable=True, dropout=0.1)
    return DeepLabV3(backbone, head)


_BUILDERS: dict[str, tuple[Callable[..., nn.Module], int]] = {
    "deeplabv3_lite_mobilenet_v3_small": (_deeplabv3_lite_mobilenet_v3_small, 8),
}

DEFAULT_OUTPUT_STRIDE = {name: stride for name, (_, stride) in _BUILDERS.items()}


def available() -> list[str]:
    """Names accepted by :func:`build`."""
    return sorted(_BUILDERS)


def build(name: str, *, num_classes: int, in_channels: int = 3,
          output_stride: int | None = None) -> nn.Module:
    """Build a DeepLab model with freshly initialised weights.

    Args:
        name: one of :func:`available`.
        num_classes: number of output classes.
        in_channels: number of input bands.
        output_stride: 8 or 16; the architecture's default when omitted.

    Raises:
        ValueError: unknown name or invalid sizes.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown model '{name}'; available: {', '.join(available())}")
    if num_classes < 1 or in_channels < 1:
        raise ValueError("num_classes and in_channels must be positive")
    builder, default_stride = _BUILDERS[name]
    return builder(num_classes=num_classes, in_channels=in_channels,
                   output_stride=output_stride or default_stride)
