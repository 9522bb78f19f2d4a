"""Example deeplab-geo backend plugin: plain eager fp32 PyTorch on the CPU.

This file is the worked example of the plugin contract (:mod:`deeplab_geo.hookspecs`) that the
README shows, and the eager baseline that ``benchmarks/backends.py`` compares the built-in
backends with. Install it with ``pip install -e plugins/example_eager`` (entry point
``eager``), or register the module on ``deeplab_geo.plugins.get_plugin_manager()``.
"""

from __future__ import annotations

import numpy as np
import torch

from deeplab_geo.hookspecs import Backend, Predictor, hookimpl, normalized_tiles
from deeplab_geo.models.checkpoint import ModelInfo, load_checkpoint


class EagerPredictor(Predictor):
    """A :class:`~deeplab_geo.hookspecs.Predictor`: ``info`` and ``predict``."""

    info: ModelInfo

    def __init__(self, checkpoint: str) -> None:
        self.model, self.info = load_checkpoint(checkpoint)  # safe formats only

    def predict(self, tiles: np.ndarray) -> np.ndarray:
        """(B, bands, H, W) raw pixels -> (B, classes, H, W) probabilities summing to 1."""
        x = torch.from_numpy(normalized_tiles(tiles, self.info))  # checked, normalised
        with torch.inference_mode():
            return torch.softmax(self.model(x)["out"], dim=1).numpy()


class EagerBackend(Backend):
    """A :class:`~deeplab_geo.hookspecs.Backend`: ``name``, ``description`` and ``load``."""

    name = "eager"  # what users put in model.backend
    description = "example plugin: eager fp32 PyTorch on the CPU"

    def load(self, checkpoint: str, *, device: str = "auto") -> EagerPredictor:
        return EagerPredictor(checkpoint)


@hookimpl
def register_backends():
    return [EagerBackend()]
