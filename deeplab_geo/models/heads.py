"""Segmentation heads: Atrous Spatial Pyramid Pooling (ASPP) in the DeepLab-v3 form.

The module layout (``convs``, ``project``) follows torchvision's ``ASPP`` so that state dicts
keep torchvision's key names.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPPConv, ASPPPooling


def aspp_rates(output_stride: int) -> tuple[int, int, int]:
    """DeepLab-v3 atrous rates for an output stride: (6, 12, 18) at 16, doubled at 8."""
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
    return (6, 12, 18) if output_stride == 16 else (12, 24, 36)


class SeparableASPPConv(nn.Sequential):
    """Atrous depthwise-separable 3x3 convolution (DeepLab-v3+): depthwise atrous, then 1x1."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, padding=dilation, dilation=dilation,
                      groups=in_channels, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )


class ASPP(nn.Module):
    """1x1 branch, one 3x3 atrous branch per rate, and image pooling; concatenated and projected.

    Args:
        in_channels: channels of the backbone's last feature map.
        atrous_rates: dilation of each 3x3 branch.
        out_channels: width of every branch and of the projection.
        separable: use depthwise-separable atrous convolutions (cheaper on CPU).
        dropout: dropout after the projection.
    """

    def __init__(self, in_channels: int, atrous_rates: Sequence[int], out_channels: int = 256,
                 *, separable: bool = False, dropout: float = 0.5) -> None:
        super().__init__()
        branch = SeparableASPPConv if separable else ASPPConv
        modules: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                          nn.BatchNorm2d(out_channels), nn.ReLU()),
            *(branch(in_channels, out_channels, rate) for rate in atrous_rates),
            ASPPPooling(in_channels, out_channels),
        ]
        self.convs = nn.ModuleList(modules)
        self.project = nn.Sequential(
            nn.Conv2d(len(self.convs) * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))


class DeepLabV3Head(nn.Sequential):
    """ASPP, a 3x3 refinement convolution, and the 1x1 classifier (torchvision's DeepLabHead)."""

    def __init__(self, in_channels: int, num_classes: int, atrous_rates: Sequence[int],
                 channels: int = 256, *, separable: bool = False, dropout: float = 0.5) -> None:
        super().__init__(
            ASPP(in_channels, atrous_rates, channels, separable=separable, dropout=dropout),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, num_classes, 1),
        )
