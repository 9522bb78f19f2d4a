"""Importing weights from other layouts, and adapting pretrained weights to more bands.

**kazuto1011/deeplab-pytorch (DeepLab-v2 converted from the official Caffe release).** Its
ResNet-101 is the MSRA/Caffe variant: build ``deeplabv2_resnet101`` with ``caffe=True``.
Key mapping (an ``MSC`` wrapper adds the prefix ``base.``, which is dropped)::

    layer1.conv1.conv.*              -> backbone.conv1.*
    layer1.conv1.bn.*                -> backbone.bn1.*
    layer{k+1}.block{i}.reduce.conv  -> backbone.layer{k}.{i-1}.conv1   (k = 1..4)
    layer{k+1}.block{i}.reduce.bn    -> backbone.layer{k}.{i-1}.bn1
    ...conv3x3.{conv,bn}             -> ...conv2 / bn2
    ...increase.{conv,bn}            -> ...conv3 / bn3
    ...shortcut.{conv,bn}            -> ...downsample.0 / downsample.1
    aspp.c{j}.{weight,bias}          -> classifier.branches.{j}.{weight,bias}

Batch-norm ``num_batches_tracked`` counters, absent from Caffe conversions, are filled with 0.

**Other band counts than the pretrained weights.** :func:`adapt_input_channels` turns a first
convolution trained on RGB into one for N bands (timm's rule): a single band gets the sum of the
RGB filters; otherwise band ``b`` takes the RGB filter of channel ``b mod 3`` and all filters
are scaled by ``3 / N``. The first three bands keep their colour filters, and when N is 1 or a
multiple of 3 an input whose bands are all equal gives exactly the RGB model's response to the
equivalent grey image.
"""

from __future__ import annotations

import re

import torch

_BLOCK = re.compile(
    r"^layer(\d)\.block(\d+)\.(reduce|conv3x3|increase|shortcut)\.(conv|bn)\.(.+)$")
_PARTS = {"reduce": ("conv1", "bn1"), "conv3x3": ("conv2", "bn2"), "increase": ("conv3", "bn3"),
          "shortcut": ("downsample.0", "downsample.1")}


def from_kazuto1011(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a kazuto1011/deeplab-pytorch DeepLab-v2 state dict to ours (see module doc).

    Raises:
        ValueError: a key that the mapping does not know (the file is another layout).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key.removeprefix("base.")
        out[_rename(name)] = value
    for key in list(out):
        if key.endswith(".running_var"):
            counter = key.removesuffix("running_var") + "num_batches_tracked"
            out.setdefault(counter, torch.tensor(0, dtype=torch.long))
    return out


def _rename(name: str) -> str:
    if name.startswith("layer1.conv1."):
        _, _, kind, rest = name.split(".", 3)
        return f"backbone.{'conv1' if kind == 'conv' else 'bn1'}.{rest}"
    match = _BLOCK.match(name)
    if match:
        layer, block, part, kind, rest = match.groups()
        conv, bn = _PARTS[part]
        module = conv if kind == "conv" else bn
        return f"backbone.layer{int(layer) - 1}.{int(block) - 1}.{module}.{rest}"
    match = re.match(r"^aspp\.c(\d+)\.(weight|bias)$", name)
    if match:
        return f"classifier.branches.{match.group(1)}.{match.group(2)}"
    raise ValueError(f"unexpected key '{name}' for a kazuto1011 DeepLab-v2 checkpoint")


def adapt_input_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A first-convolution weight ``(out, 3, k, k)`` adapted to ``in_channels`` bands."""
    if weight.ndim != 4:
        raise ValueError(f"expected a convolution weight, got shape {tuple(weight.shape)}")
    source = weight.shape[1]
    if in_channels == 1:
        return weight.sum(1, keepdim=True)
    index = torch.arange(in_channels) % source
    return weight[:, index] * (source / in_channels)
