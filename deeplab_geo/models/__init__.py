"""DeepLab models, built by name.

>>> from deeplab_geo import models
>>> net = models.build("deeplabv3_resnet50", num_classes=21, output_stride=16)
>>> net(torch.zeros(1, 3, 64, 64))["out"].shape
torch.Size([1, 21, 64, 64])

Every model returns a dict whose ``"out"`` holds class logits at input resolution (and
``"aux"`` when built with ``aux_loss=True``), as torchvision's segmentation models do; the
``deeplabv3_*`` models have torchvision's state-dict layout, so its checkpoints load strictly.

Names, default output stride, and the atrous rates it implies:

==================================  ====  ===========================================
``deeplabv2_resnet101``             8     v2 ASPP-L (6, 12, 18, 24) summed; ``aspp="S"``
                                          (2, 4, 8, 12) or ``"LargeFOV"`` (12,)
``deeplabv3_resnet50/101``          8     v3 ASPP (12, 24, 36); (6, 12, 18) at 16
``deeplabv3_mobilenet_v3_large``    16    v3 ASPP (12, 24, 36), torchvision's choice
``deeplabv3plus_resnet50/101``      16    v3 ASPP (6, 12, 18) + decoder on layer1
``deeplabv3_lite_mobilenet_v3_small``  8  separable v3 ASPP (12, 24, 36), 128 channels
==================================  ====  ===========================================

v2 rates are given at output stride 8 and halve at 16.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.segmentation.fcn import FCNHead

from deeplab_geo.models.backbones import mobilenet_v3_atrous
from deeplab_geo.models.ensemble import Ensemble
from deeplab_geo.models.heads import (
    V2_RATES,
    DeepLabV2Head,
    DeepLabV3Head,
    DeepLabV3PlusHead,
    aspp_rates,
)
from deeplab_geo.models.pooling import set_pooling_window
from deeplab_geo.models.resnet import resnet_atrous

__all__ = ["DeepLab", "Ensemble", "build", "available", "default_output_stride",
           "set_pooling_window"]


class DeepLab(nn.Module):
    """Backbone + head (+ optional auxiliary head); logits upsampled to the input size.

    Attribute names match torchvision's segmentation models (``backbone``, ``classifier``,
    ``aux_classifier``). A v3+ head receives the backbone's ``"low"`` features too.
    """

    def __init__(self, backbone: nn.Module, classifier: nn.Module,
                 aux_classifier: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.aux_classifier = aux_classifier

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        features = self.backbone(x)
        if isinstance(self.classifier, DeepLabV3PlusHead):
            logits = self.classifier(features["out"], features["low"])
        else:
            logits = self.classifier(features["out"])
        result = OrderedDict(out=_upsample(logits, size))
        if self.aux_classifier is not None:
            result["aux"] = _upsample(self.aux_classifier(features["aux"]), size)
        return result


def _upsample(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _deeplabv2_resnet101(*, num_classes: int, in_channels: int, output_stride: int,
                         aspp: str = "L", caffe: bool = False) -> DeepLab:
    """DeepLab-v2: atrous ResNet-101 and the v2 ASPP (class scores of each branch summed).

    ``caffe=True`` builds the layout of the official Caffe release (stride in each block's
    first 1x1 convolution, ceil-mode stem pooling), needed for its converted weights.
    """
    if aspp not in V2_RATES:
        raise ValueError(f"aspp must be one of {', '.join(V2_RATES)}, got {aspp!r}")
    backbone = resnet_atrous(101, output_stride=output_stride, in_channels=in_channels,
                             return_layers={"layer4": "out"}, stride_in_1x1=caffe,
                             caffe_pool=caffe)
    rates = tuple(max(1, r * 8 // output_stride) for r in V2_RATES[aspp])
    return DeepLab(backbone, DeepLabV2Head(2048, num_classes, rates))


def _resnet_v3(depth: int) -> Callable[..., DeepLab]:
    def builder(*, num_classes: int, in_channels: int, output_stride: int,
                aux_loss: bool = False) -> DeepLab:
        layers = {"layer4": "out", **({"layer3": "aux"} if aux_loss else {})}
        backbone = resnet_atrous(depth, output_stride=output_stride, in_channels=in_channels,
                                 return_layers=layers)
        aux = FCNHead(1024, num_classes) if aux_loss else None
        return DeepLab(backbone, DeepLabV3Head(2048, num_classes, aspp_rates(output_stride)),
                       aux)

    builder.__doc__ = f"DeepLab-v3 on an atrous ResNet-{depth} (torchvision's layout)."
    return builder


def _resnet_v3plus(depth: int) -> Callable[..., DeepLab]:
    def builder(*, num_classes: int, in_channels: int, output_stride: int) -> DeepLab:
        backbone = resnet_atrous(depth, output_stride=output_stride, in_channels=in_channels,
                                 return_layers={"layer4": "out", "layer1": "low"})
        return DeepLab(backbone, DeepLabV3PlusHead(2048, 256, num_classes,
                                                   aspp_rates(output_stride)))

    builder.__doc__ = f"DeepLab-v3+ on an atrous ResNet-{depth}: v3 ASPP and the decoder."
    return builder


def _deeplabv3_mobilenet_v3_large(*, num_classes: int, in_channels: int, output_stride: int,
                                  aux_loss: bool = False) -> DeepLab:
    """DeepLab-v3 on MobileNetV3-Large (torchvision's layout and rates: 12, 24, 36 at 16)."""
    backbone, channels = mobilenet_v3_atrous("mobilenet_v3_large", output_stride=output_stride,
                                             in_channels=in_channels, aux=aux_loss)
    rates = aspp_rates(output_stride, base=(12, 24, 36))
    aux = FCNHead(channels["aux"], num_classes) if aux_loss else None
    return DeepLab(backbone, DeepLabV3Head(channels["out"], num_classes, rates), aux)


def _deeplabv3_lite_mobilenet_v3_small(*, num_classes: int, in_channels: int,
                                       output_stride: int) -> DeepLab:
    """DeepLab-v3 with a MobileNetV3-Small atrous backbone and a separable ASPP (128 channels).

    The compact CPU model behind the bundled land-cover demo: class scores at the output
    stride are bilinearly upsampled to the input, and the dense CRF sharpens their boundaries.
    """
    backbone, channels = mobilenet_v3_atrous("mobilenet_v3_small", output_stride=output_stride,
                                             in_channels=in_channels)
    head = DeepLabV3Head(channels["out"], num_classes, aspp_rates(output_stride), 128,
                         separable=True, dropout=0.1)
    return DeepLab(backbone, head)


def _deeplabv3plus_lite_mobilenet_v3_small(*, num_classes: int, in_channels: int,
                                           output_stride: int) -> DeepLab:
    """DeepLab-v3+ on MobileNetV3-Small: the lite model's separable ASPP (128 channels) and
    the v3+ decoder on the stride-4 features, for rasters whose classes are a few pixels wide
    (Landsat's 30 m pixels, say), where stride-8 scores are too coarse.
    """
    backbone, channels = mobilenet_v3_atrous("mobilenet_v3_small", output_stride=output_stride,
                                             in_channels=in_channels, low_level=True)
    head = DeepLabV3PlusHead(channels["out"], channels["low"], num_classes,
                             aspp_rates(output_stride), 128, separable=True)
    return DeepLab(backbone, head)


_BUILDERS: dict[str, tuple[Callable[..., DeepLab], int]] = {
    "deeplabv2_resnet101": (_deeplabv2_resnet101, 8),
    "deeplabv3_resnet50": (_resnet_v3(50), 8),
    "deeplabv3_resnet101": (_resnet_v3(101), 8),
    "deeplabv3_mobilenet_v3_large": (_deeplabv3_mobilenet_v3_large, 16),
    "deeplabv3plus_resnet50": (_resnet_v3plus(50), 16),
    "deeplabv3plus_resnet101": (_resnet_v3plus(101), 16),
    "deeplabv3_lite_mobilenet_v3_small": (_deeplabv3_lite_mobilenet_v3_small, 8),
    "deeplabv3plus_lite_mobilenet_v3_small": (_deeplabv3plus_lite_mobilenet_v3_small, 8),
}


def available() -> list[str]:
    """Names accepted by :func:`build`."""
    return sorted(_BUILDERS)


def default_output_stride(name: str) -> int:
    """The output stride a model is built with when none is given."""
    _check_name(name)
    return _BUILDERS[name][1]


def build(name: str, *, num_classes: int, in_channels: int = 3,
          output_stride: int | None = None, **options: Any) -> nn.Module:
    """Build a DeepLab model with freshly initialised weights.

    Args:
        name: one of :func:`available`.
        num_classes: number of output classes.
        in_channels: number of input bands.
        output_stride: 8 or 16; the architecture's default when omitted.
        **options: architecture options: ``aux_loss`` (``deeplabv3_*``), ``aspp`` and
            ``caffe`` (``deeplabv2_resnet101``), and ``pooling_window`` (models with global
            pooling: see :func:`set_pooling_window`), and ``members`` (any model: an
            :class:`~deeplab_geo.models.ensemble.Ensemble` of that many copies, each
            initialised independently). Unknown options are an error.

    Raises:
        ValueError: unknown name, option, or invalid sizes.
    """
    _check_name(name)
    if num_classes < 1 or in_channels < 1:
        raise ValueError("num_classes and in_channels must be positive")
    members = options.pop("members", 1)
    if not isinstance(members, int) or members < 1:
        raise ValueError(f"model '{name}': members must be a positive integer, got {members!r}")
    if members > 1:
        return Ensemble(lambda: build(name, num_classes=num_classes, in_channels=in_channels,
                                      output_stride=output_stride, **options), members)
    builder, default_stride = _BUILDERS[name]
    window = options.pop("pooling_window", None)
    try:
        model = builder(num_classes=num_classes, in_channels=in_channels,
                        output_stride=output_stride or default_stride, **options)
    except TypeError as exc:
        raise ValueError(f"model '{name}': {exc}") from None
    if window is not None:
        set_pooling_window(model, window)
    return model


def _check_name(name: str) -> None:
    if name not in _BUILDERS:
        raise ValueError(f"unknown model '{name}'; available: {', '.join(available())}")
