"""Segmentation heads: DeepLab-v2 ASPP, DeepLab-v3 ASPP, and the DeepLab-v3+ decoder.

Module layouts follow torchvision's (``convs``, ``project``; ``DeepLabHead`` as a Sequential) so
that state dicts keep torchvision's key names.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.segmentation.deeplabv3 import ASPPConv, ASPPPooling

V2_RATES = {"L": (6, 12, 18, 24), "S": (2, 4, 8, 12), "LargeFOV": (12,)}


def aspp_rates(output_stride: int, base: Sequence[int] = (6, 12, 18)) -> tuple[int, ...]:
    """Atrous rates for an output stride: ``base`` is given at stride 16 and doubles at 8."""
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
    return tuple(r * 16 // output_stride for r in base)


class DeepLabV2Head(nn.Module):
    """DeepLab-v2 ASPP: parallel 3x3 atrous convolutions to class scores, summed.

    ``rates`` are at output stride 8: ASPP-L (6, 12, 18, 24), ASPP-S (2, 4, 8, 12) or LargeFOV
    (12,). Each branch is a plain convolution with bias, as in the paper's release.
    """

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r, bias=True)
            for r in rates)
        for conv in self.branches:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([branch(x) for branch in self.branches]).sum(0)


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
    """DeepLab-v3 ASPP: 1x1, one 3x3 atrous branch per rate, image pooling; concat, project.

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


class DeepLabV3PlusHead(nn.Module):
    """DeepLab-v3+ decoder: ASPP output upsampled to stride 4 and fused with low-level features.

    Low-level features are reduced to 48 channels by a 1x1 convolution, concatenated with the
    upsampled ASPP output, refined by two 3x3 convolutions and classified by a 1x1 convolution.
    """

    def __init__(self, in_channels: int, low_channels: int, num_classes: int,
                 atrous_rates: Sequence[int], channels: int = 256, *,
                 separable: bool = False) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels, atrous_rates, channels, separable=separable, dropout=0.1)
        self.low_project = nn.Sequential(nn.Conv2d(low_channels, 48, 1, bias=False),
                                         nn.BatchNorm2d(48), nn.ReLU())
        self.fuse = nn.Sequential(
            nn.Conv2d(channels + 48, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels), nn.ReLU(),
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.aspp(x), size=low.shape[-2:], mode="bilinear",
                          align_corners=False)
        return self.classifier(self.fuse(torch.cat([x, self.low_project(low)], dim=1)))
