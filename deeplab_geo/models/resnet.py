"""Atrous ResNet backbones (torchvision's ResNet with strides replaced by dilation).

``output_stride`` 8 dilates layer3 (rate 2) and layer4 (rate 4); 16 dilates layer4 only. Two
Caffe/MSRA details of the original DeepLab-v2 release are available for importing its weights:
``stride_in_1x1`` (the stride sits in each block's first 1x1 convolution instead of the 3x3)
and ``caffe_pool`` (the stem's max-pool rounds its output size up).
"""

from __future__ import annotations

from torch import nn
from torchvision.models import resnet
from torchvision.models._utils import IntermediateLayerGetter

_DEPTHS = {50: resnet.resnet50, 101: resnet.resnet101}


def resnet_atrous(depth: int, *, output_stride: int, in_channels: int = 3,
                  return_layers: dict[str, str], stride_in_1x1: bool = False,
                  caffe_pool: bool = False) -> IntermediateLayerGetter:
    """A ResNet-50/101 trunk returning the named layers (e.g. ``{"layer4": "out"}``).

    Args:
        depth: 50 or 101.
        output_stride: 8 or 16.
        in_channels: input bands (the stem convolution is built for this many).
        return_layers: layer names to returned keys.
        stride_in_1x1: MSRA/Caffe bottleneck (stride in ``conv1``), as in DeepLab-v2's release.
        caffe_pool: stem max-pool with ``ceil_mode=True``, as in DeepLab-v2's release.
    """
    if depth not in _DEPTHS:
        raise ValueError(f"ResNet depth must be 50 or 101, got {depth}")
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
    trunk = _DEPTHS[depth](weights=None,
                           replace_stride_with_dilation=[False, output_stride == 8, True])
    if in_channels != 3:
        trunk.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    if caffe_pool:
        trunk.maxpool = nn.MaxPool2d(3, 2, 1, ceil_mode=True)
    if stride_in_1x1:
        for layer in (trunk.layer2, trunk.layer3, trunk.layer4):
            block = layer[0]
            if block.conv2.stride != (1, 1):
                block.conv1.stride, block.conv2.stride = block.conv2.stride, (1, 1)
    return IntermediateLayerGetter(trunk, return_layers=return_layers)
