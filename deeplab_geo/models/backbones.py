"""Atrous backbones: strides of the last stages replaced by dilation.

One ``output_stride`` argument drives the whole network: stages that would reduce resolution
below ``input / output_stride`` keep stride 1 and dilate their 3x3 convolutions instead (rate 2,
then 4), padding by their dilation so resolution is kept.
"""

from __future__ import annotations

from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.mobilenetv3 import MobileNetV3, _mobilenet_v3_conf


def mobilenet_v3_atrous(arch: str, *, output_stride: int, in_channels: int = 3,
                        low_level: bool = False, aux: bool = False
                        ) -> tuple[IntermediateLayerGetter, dict[str, int]]:
    """A MobileNetV3 feature extractor at ``output_stride`` 8 or 16.

    Args:
        arch: ``"mobilenet_v3_small"`` or ``"mobilenet_v3_large"``.
        output_stride: 8 or 16.
        in_channels: input bands; the stem convolution is built for this many.
        low_level: also return the stride-4 features under ``"low"`` (for a v3+ decoder).
        aux: also return torchvision's auxiliary features (stride 8) under ``"aux"``.

    Returns:
        The backbone, returning ``{"out": last features}`` (plus ``"low"``), and the channel
        count of each returned map.
    """
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
    setting, last_channel = _mobilenet_v3_conf(arch)
    stride, dilation = 2, 1  # the stem convolution has stride 2
    for cnf in setting:
        if cnf.stride == 2:
            if stride >= output_stride:
                dilation *= 2  # torchvision's block uses stride 1 once dilation > 1
            else:
                stride *= 2
        cnf.dilation = dilation
    features = MobileNetV3(setting, last_channel).features
    if in_channels != 3:
        stem = features[0][0]
        features[0][0] = nn.Conv2d(in_channels, stem.out_channels, stem.kernel_size,
                                   stem.stride, stem.padding, bias=False)
    # torchvision's stage indices: the stem, each block that starts a stage, the last layer
    stages = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + \
        [len(features) - 1]
    picks = {"out": stages[-1]}
    if low_level:
        picks["low"] = stages[2] - 1  # last block before the stride-8 stage: stride 4
    if aux:
        picks["aux"] = stages[-4]
    layers = {str(index): name for name, index in picks.items()}
    channels = {name: features[index].out_channels for name, index in picks.items()}
    return IntermediateLayerGetter(features, return_layers=layers), channels
