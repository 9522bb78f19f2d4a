"""Ensembles: several copies of one architecture, trained side by side, averaged at inference.

A model trained from scratch on a small labelled area (a few dozen chips) lands somewhere
different with every seed, and on every CPU: floating-point differences are enough. Averaging
the class probabilities of a few independently initialised copies removes most of that
spread (see ``docs/real-imagery.md``). Build one with ``members=N`` in the model options
(:func:`deeplab_geo.models.build`); it is saved, exported and run as one model.

>>> from deeplab_geo import models
>>> net = models.build("deeplabv3_lite_mobilenet_v3_small", num_classes=3, members=2).eval()
>>> net(torch.zeros(1, 3, 64, 64))["out"].shape
torch.Size([1, 3, 64, 64])

``forward`` returns the logarithm of the members' mean softmax as ``"out"``, so that a
softmax over it (what every backend and the ONNX export apply) gives the mean probabilities
exactly. Training does not use it: each member gets its own loss on its own crops
(:func:`deeplab_geo.tools.train.train`), so that none leans on another.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn


class Ensemble(nn.Module):
    """``members`` copies of one model; ``"out"``: the log of their mean probabilities."""

    def __init__(self, make: Callable[[], nn.Module], members: int) -> None:
        super().__init__()
        if members < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {members}")
        self.members = nn.ModuleList(make() for _ in range(members))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = [member(x) for member in self.members]
        log_probs = torch.stack([torch.log_softmax(o["out"].float(), dim=1) for o in outputs])
        mean = torch.logsumexp(log_probs, dim=0) - math.log(len(outputs))
        return OrderedDict(out=mean)
