"""The built-in PyTorch backend: CUDA when present, CPU otherwise.

On CUDA it runs under autocast (bfloat16 where supported, else float16) with channels-last
tensors, pinned host memory and non-blocking copies. On CPU it runs fp32 with channels-last,
which more than doubles the throughput of MobileNet-style models on this kind of machine.
Models are cached per (checkpoint, device): each process loads a model once. torch is imported
when a model is loaded, not when the backend is registered, so runs on other backends never
pay for it.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from deeplab_geo.checkpoints import ModelInfo, resolve
from deeplab_geo.devices import resolve_device
from deeplab_geo.hookspecs import Backend, Predictor, checked_tiles, hookimpl


class TorchPredictor(Predictor):
    """A loaded model that turns raw tiles into class probabilities."""

    def __init__(self, model: Any, info: ModelInfo, device: Any) -> None:
        import torch

        self.info = info
        self.device = device
        self.model = model.to(device, memory_format=torch.channels_last).eval()
        mean, std = info.input_statistics()
        self._mean, self._std = torch.from_numpy(mean).to(device), torch.from_numpy(std).to(device)
        if device.type == "cuda":
            self._autocast = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            self._autocast = None

    def predict(self, tiles: np.ndarray) -> np.ndarray:
        """Class probabilities ``(B, C, H, W)`` float32 for raw tiles ``(B, bands, H, W)``."""
        import torch

        batch = torch.from_numpy(checked_tiles(tiles, self.info))
        cuda = self.device.type == "cuda"
        if cuda:
            batch = batch.pin_memory()
        batch = batch.to(self.device, non_blocking=cuda)
        batch = ((batch - self._mean) / self._std).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self._autocast is not None:
                with torch.autocast("cuda", dtype=self._autocast):
                    logits = self.model(batch)["out"]
            else:
                logits = self.model(batch)["out"]
            probs = torch.softmax(logits.float(), dim=1)
        return probs.contiguous().cpu().numpy()


class TorchBackend(Backend):
    name = "torch"
    description = "PyTorch (CUDA with autocast when available, else CPU fp32 channels-last)"
    auto_priority = {"cuda": 20, "cpu": 10}

    def load(self, checkpoint: str, *, device: str = "auto") -> TorchPredictor:
        return _load_cached(str(resolve(checkpoint)), resolve_device(device))

    def release(self) -> None:
        """Forget the loaded models."""
        _load_cached.cache_clear()


@functools.lru_cache(maxsize=4)
def _load_cached(weights: str, device: str) -> TorchPredictor:
    import torch

    from deeplab_geo.models.checkpoint import load_checkpoint

    model, info = load_checkpoint(weights)
    return TorchPredictor(model, info, torch.device(device))


@hookimpl
def register_backends():
    return [TorchBackend()]
