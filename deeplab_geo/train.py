"""Training DeepLab models: random scaled crops, poly learning rate, cross-entropy ignoring 255.

The default recipe is the DeepLab paper's (SGD with momentum 0.9, weight decay 5e-4, poly
learning rate ``lr * (1 - step / steps) ** 0.9``, random scaling 0.5-1.5, random crops and
flips). ``optimizer: adamw`` trains small models from scratch faster; the bundled demo model
uses it. The result is a checkpoint that ``deeplab-geo run`` loads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from deeplab_geo.config import OptimSettings, TrainConfig
from deeplab_geo.metrics import IGNORE_INDEX, confusion_matrix, scores
from deeplab_geo.models.checkpoint import ModelInfo, save_checkpoint
from deeplab_geo.sample import CLASS_COLOURS, CLASS_NAMES, synthesize_scene


@dataclass
class TrainResult:
    checkpoint: Any
    val_miou: float | None
    seconds: float
    final_loss: float


def poly_lr(base_lr: float, step: int, steps: int, power: float) -> float:
    """DeepLab's poly schedule: ``base_lr * (1 - step / steps) ** power``."""
    return base_lr * (1.0 - step / steps) ** power


class CropSampler:
    """Random scaled, flipped crops from in-memory scenes.

    Each crop picks a scene uniformly, a scale ``s`` in ``scale_range``, cuts a square of
    ``crop_size / s`` pixels at a uniform position (whole scene if smaller) and resizes it to
    ``crop_size`` (bilinear for pixels, nearest for labels); then a random horizontal and vertical
    flip and a random 90-degree rotation (aerial images have no canonical "up").
    """

    def __init__(self, scenes: list[tuple[np.ndarray, np.ndarray]], crop_size: int,
                 scale_range: tuple[float, float], rng: np.random.Generator) -> None:
        self.scenes, self.crop_size = scenes, crop_size
        self.scale_range, self.rng = scale_range, rng

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [self._crop() for _ in range(size)]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    def _crop(self) -> tuple[torch.Tensor, torch.Tensor]:
        image, labels = self.scenes[self.rng.integers(len(self.scenes))]
        _, height, width = image.shape
        scale = self.rng.uniform(*self.scale_range)
        side = min(round(self.crop_size / scale), height, width)
        r = self.rng.integers(0, height - side + 1)
        c = self.rng.integers(0, width - side + 1)
        img = torch.from_numpy(image[:, r:r + side, c:c + side].astype(np.float32))
        lab = torch.from_numpy(labels[r:r + side, c:c + side].astype(np.int64))
        if side != self.crop_size:
            img = F.interpolate(img[None], size=self.crop_size, mode="bilinear",
                                align_corners=False)[0]
            lab = F.interpolate(lab[None, None].float(), size=self.crop_size,
                                mode="nearest")[0, 0].long()
        if self.rng.random() < 0.5:
            img, lab = img.flip(-1), lab.flip(-1)
        if self.rng.random() < 0.5:
            img, lab = img.flip(-2), lab.flip(-2)
        k = int(self.rng.integers(4))
        return img.rot90(k, (-2, -1)), lab.rot90(k, (-2, -1))


def make_optimizer(model: nn.Module, settings: OptimSettings) -> torch.optim.Optimizer:
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=settings.lr,
                                 weight_decay=settings.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                           weight_decay=settings.weight_decay)


def band_statistics(scenes: list[tuple[np.ndarray, np.ndarray]]) -> tuple[list[float],
                                                                         list[float]]:
    """Per-band mean and std of the training images, in units of 1/255."""
    pixels = np.concatenate([img.reshape(img.shape[0], -1) for img, _ in scenes], axis=1)
    pixels = pixels.astype(np.float64) / 255.0
    return pixels.mean(1).round(4).tolist(), pixels.std(1).round(4).tolist()


def train(config: TrainConfig, *, log: Callable[[str], None] = print) -> TrainResult:
    """Train a model as ``config`` says and write its checkpoint."""
    opt = config.train
    started = time.perf_counter()
    if opt.threads:
        torch.set_num_threads(opt.threads)
    torch.manual_seed(opt.seed)
    rng = np.random.default_rng(opt.seed)
    data = config.data
    log(f"generating {len(data.train_seeds)} training and {len(data.val_seeds)} validation "
        f"scenes of {data.size} px")
    scenes = [synthesize_scene(seed, data.size) for seed in data.train_seeds]
    val_scenes = [synthesize_scene(seed, data.size) for seed in data.val_seeds]
    mean, std = band_statistics(scenes)
    info = ModelInfo(
        architecture=config.model.architecture, num_classes=len(CLASS_NAMES),
        classes=list(CLASS_NAMES), colours=[list(c) for c in CLASS_COLOURS], in_channels=3,
        output_stride=config.model.output_stride,
        normalization={"scale": 255.0, "mean": mean, "std": std},
    )
    model = info.build().to(memory_format=torch.channels_last)
    norm_mean = torch.tensor(mean).view(1, -1, 1, 1) * 255.0
    norm_std = torch.tensor(std).view(1, -1, 1, 1) * 255.0
    optimizer = make_optimizer(model, opt)
    sampler = CropSampler(scenes, opt.crop_size, opt.scale_range, rng)
    loss_fn = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    model.train()
    running = None
    for step in range(opt.steps):
        lr = poly_lr(opt.lr, step, opt.steps, opt.poly_power)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, labels = sampler.batch(opt.batch_size)
        images = ((images - norm_mean) / norm_std).contiguous(memory_format=torch.channels_last)
        loss = loss_fn(model(images)["out"], labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        if (step + 1) % opt.log_every == 0 or step + 1 == opt.steps:
            elapsed = time.perf_counter() - started
            log(f"step {step + 1}/{opt.steps} loss {running:.4f} lr {lr:.2e} "
                f"({elapsed:.0f} s)")
    model.eval()
    val_miou = None
    if val_scenes:
        val_miou = evaluate_scenes(model, val_scenes, norm_mean, norm_std, len(CLASS_NAMES))
        log(f"validation mIoU {val_miou:.4f} on seeds {data.val_seeds}")
    seconds = time.perf_counter() - started
    info = ModelInfo(**{**info.__dict__, "training": {
        "config": config.model_dump(mode="json"), "seconds": round(seconds, 1),
        "val_miou": val_miou, "torch": torch.__version__, "threads": torch.get_num_threads(),
    }})
    path = save_checkpoint(model, info, config.output)
    log(f"wrote {path}")
    return TrainResult(path, val_miou, seconds, float(running or 0.0))


def evaluate_scenes(model: nn.Module, scenes: list[tuple[np.ndarray, np.ndarray]],
                    norm_mean: torch.Tensor, norm_std: torch.Tensor, num_classes: int) -> float:
    """mIoU of whole-scene predictions over one accumulated confusion matrix."""
    matrix = np.zeros((num_classes, num_classes + 1), dtype=np.int64)
    with torch.inference_mode():
        for image, labels in scenes:
            x = (torch.from_numpy(image[None].astype(np.float32)) - norm_mean) / norm_std
            pred = model(x.contiguous(memory_format=torch.channels_last))["out"].argmax(1)[0]
            matrix += confusion_matrix(pred.numpy(), labels, num_classes)
    return scores(matrix).miou
