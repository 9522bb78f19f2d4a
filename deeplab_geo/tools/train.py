"""Training DeepLab models on any dataset kind, with the paper's recipe as the default.

The default recipe is DeepLab's: SGD with momentum 0.9, weight decay 5e-4, poly learning rate
``lr * (1 - step / steps) ** 0.9``, random scaling 0.5-1.5, random crops (padded with the mean
pixel and label 255 where the scaled image is smaller than the crop) and flips, cross-entropy
ignoring label 255, optionally frozen batch norm. ``optimizer: adamw`` trains small models from
scratch faster; the bundled demo model uses it.

* ``model.init`` fine-tunes from a checkpoint (``builtin:landcover-demo``) or starts from a bare
  state dict (ImageNet backbone weights); see :func:`load_init`.
* On CUDA, the forward pass runs under autocast (bfloat16 where supported; float16 with a
  gradient scaler otherwise); on the CPU, fp32 channels-last.
* Every random choice of step ``n`` comes from generators seeded with ``(seed, n)``, so a run
  resumed from a checkpoint (weights, optimizer, gradient scaler and step; safetensors + JSON)
  ends with the same weights as an uninterrupted run.
* The result is a checkpoint that ``deeplab-geo run`` loads, scored on the validation split.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from deeplab_geo import models
from deeplab_geo.config import OptimSettings, TrainConfig, TTASettings
from deeplab_geo.datasets import SegmentationDataset, build
from deeplab_geo.datasets.voc import voc_palette
from deeplab_geo.devices import torch_device
from deeplab_geo.errors import CheckpointError, ConfigError, DatasetError
from deeplab_geo.files import atomic_path
from deeplab_geo.models.checkpoint import (
    ModelInfo,
    build_model,
    load_checkpoint,
    metadata_path,
    read_info,
    read_state_dict,
    resolve,
    save_checkpoint,
)
from deeplab_geo.models.reach import measure_reach, trim_unreached_taps
from deeplab_geo.tools.metrics import IGNORE_INDEX

DEFAULT_ARCHITECTURE = "deeplabv3_lite_mobilenet_v3_small"
logger = logging.getLogger(__name__)

IMAGENET_NORMALIZATION = {"scale": 255.0, "mean": [0.485, 0.456, 0.406],
                          "std": [0.229, 0.224, 0.225]}
STATISTICS_SAMPLES = 64
# Settings that may change between a run and its resumption without changing the result.
RESUMABLE_CHANGES = ("resume", "log_every", "checkpoint_every", "checkpoint_dir",
                     "keep_checkpoints", "threads", "workers", "device")


@dataclass
class TrainResult:
    """What a training run produced."""

    checkpoint: Path
    val_miou: float | None
    seconds: float
    final_loss: float
    resumed_from: int | None = None


def poly_lr(base_lr: float, step: int, steps: int, power: float) -> float:
    """DeepLab's poly schedule: ``base_lr * (1 - step / steps) ** power``."""
    return base_lr * (1.0 - step / steps) ** power


class CropSampler:
    """Random scaled, cropped, flipped samples of a dataset (the paper's augmentation).

    A sample picks an item uniformly and a scale ``s`` in ``scale_range``; a window of
    ``crop_size / s`` pixels (clipped to the image) at a uniform position is resized by ``s``
    (bilinear for pixels, nearest for labels) and padded to ``crop_size`` with ``fill`` (the
    mean pixel) and label 255: the same as scaling the whole image by ``s`` and cropping.
    Then a horizontal flip with probability 1/2, and for ``augment="dihedral"`` also a
    vertical flip and a random multiple of 90 degrees.
    """

    def __init__(self, dataset: SegmentationDataset, crop_size: int,
                 scale_range: tuple[float, float], augment: str, fill: list[float]) -> None:
        if len(dataset) == 0:
            raise DatasetError(f"{dataset.name}: no training samples")
        self.dataset, self.crop_size, self.scale_range = dataset, crop_size, scale_range
        self.dihedral = augment == "dihedral"
        self.fill = torch.tensor(fill, dtype=torch.float32).view(-1, 1, 1)

    def sample(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One ``(image float32 (bands, crop, crop), labels int64 (crop, crop))`` pair."""
        image, labels = self.dataset[int(rng.integers(len(self.dataset)))]
        _, height, width = image.shape
        scale = rng.uniform(*self.scale_range)
        side = max(1, round(self.crop_size / scale))
        win_h, win_w = min(side, height), min(side, width)
        r = int(rng.integers(0, height - win_h + 1))
        c = int(rng.integers(0, width - win_w + 1))
        img = torch.from_numpy(image[:, r:r + win_h, c:c + win_w].astype(np.float32))
        lab = torch.from_numpy(labels[r:r + win_h, c:c + win_w].astype(np.int64))
        out_h = min(self.crop_size, max(1, round(win_h * scale)))
        out_w = min(self.crop_size, max(1, round(win_w * scale)))
        if (out_h, out_w) != (win_h, win_w):
            img = F.interpolate(img[None], size=(out_h, out_w), mode="bilinear",
                                align_corners=False)[0]
            lab = F.interpolate(lab[None, None].float(), size=(out_h, out_w),
                                mode="nearest")[0, 0].long()
        if (out_h, out_w) != (self.crop_size, self.crop_size):
            padded = self.fill.expand(-1, self.crop_size, self.crop_size).clone()
            padded[:, :out_h, :out_w] = img
            padded_lab = torch.full((self.crop_size, self.crop_size), IGNORE_INDEX,
                                    dtype=torch.int64)
            padded_lab[:out_h, :out_w] = lab
            img, lab = padded, padded_lab
        if rng.random() < 0.5:
            img, lab = img.flip(-1), lab.flip(-1)
        if self.dihedral:
            if rng.random() < 0.5:
                img, lab = img.flip(-2), lab.flip(-2)
            k = int(rng.integers(4))
            img, lab = img.rot90(k, (-2, -1)), lab.rot90(k, (-2, -1))
        return img.contiguous(), lab.contiguous()


def batches(sampler: CropSampler, seed: int, start: int, steps: int, batch_size: int,
            workers: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(step, images, labels)`` for steps ``start..steps-1``; sample ``i`` of step ``n`` is
    drawn with a generator seeded ``(seed, n, i)``. With ``workers`` threads, the next batch is
    prepared while the current one trains."""

    def make(step: int) -> list[Any]:
        rngs = [np.random.default_rng([seed, step, i]) for i in range(batch_size)]
        if pool is None:
            return [sampler.sample(rng) for rng in rngs]
        return [pool.submit(sampler.sample, rng) for rng in rngs]

    def collect(items: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [f.result() if isinstance(f, Future) else f for f in items]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    pool = ThreadPoolExecutor(workers) if workers > 0 else None
    try:
        pending = make(start) if start < steps else []
        for step in range(start, steps):
            current = pending
            if pool is not None and step + 1 < steps:
                pending = make(step + 1)
            images, labels = collect(current)
            if pool is None and step + 1 < steps:
                pending = make(step + 1)
            yield step, images, labels
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def make_optimizer(model: nn.Module, settings: OptimSettings) -> torch.optim.Optimizer:
    """SGD (or AdamW) over the trainable parameters; the head (``classifier``) gets
    ``lr * head_lr_multiplier``. Each group's ``lr_scale`` is applied by the schedule."""
    head, body = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (head if name.startswith("classifier.") else body).append(param)
    groups = [{"params": body, "lr_scale": 1.0},
              {"params": head, "lr_scale": settings.head_lr_multiplier}]
    groups = [g for g in groups if g["params"]]
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=settings.lr, weight_decay=settings.weight_decay)
    return torch.optim.SGD(groups, lr=settings.lr, momentum=settings.momentum,
                           weight_decay=settings.weight_decay)


def freeze_batch_norm(model: nn.Module) -> int:
    """Put every batch-norm layer in eval mode with frozen affine parameters; returns how many.

    Call after ``model.train()``: the running statistics are then used, not the batch's."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
            for param in module.parameters():
                param.requires_grad_(False)
            count += 1
    return count


def band_statistics(dataset: SegmentationDataset, scale: float,
                    max_samples: int = STATISTICS_SAMPLES) -> tuple[list[float], list[float]]:
    """Per-band mean and std (in units of ``scale``) over the valid pixels of up to
    ``max_samples`` evenly spaced samples of the dataset."""
    count = len(dataset)
    picks = np.unique(np.linspace(0, count - 1, min(count, max_samples)).round().astype(int))
    total = sq = None
    n = 0
    for index in picks:
        image = dataset[int(index)][0].reshape(dataset.in_channels, -1).astype(np.float64)
        valid = dataset.valid(int(index))
        if valid is not None:
            image = image[:, valid.ravel()]
        image /= scale
        total = image.sum(1) if total is None else total + image.sum(1)
        sq = (image ** 2).sum(1) if sq is None else sq + (image ** 2).sum(1)
        n += image.shape[1]
    n = max(n, 1)
    mean = total / n
    std = np.sqrt(np.maximum(sq / n - mean ** 2, 1e-12))
    return mean.round(4).tolist(), std.round(4).tolist()


MAX_CLASS_WEIGHT = 50.0


def label_counts(dataset: SegmentationDataset, num_classes: int) -> np.ndarray:
    """Labelled pixels of each class in a dataset (chips count without reading images)."""
    if hasattr(dataset, "label_counts"):
        return dataset.label_counts(num_classes)
    counts = np.zeros(num_classes, np.int64)
    for index in range(len(dataset)):
        labels = dataset[index][1]
        counts += np.bincount(labels[labels < num_classes], minlength=num_classes)
    return counts


def class_weights(counts: np.ndarray, rule: str | list[float]) -> np.ndarray | None:
    """Per-class loss weights: ``None`` for ``"none"``, the list as given, or the (square root
    of the) inverse frequency, scaled so that the average labelled pixel weighs 1 and capped at
    :data:`MAX_CLASS_WEIGHT`; classes without labels weigh 0.

    Raises:
        ConfigError: a list whose length is not the number of classes.
    """
    if rule == "none":
        return None
    if not isinstance(rule, str):
        if len(rule) != len(counts):
            raise ConfigError(f"train.class_weights lists {len(rule)} weights for "
                              f"{len(counts)} classes; give one per class")
        return np.asarray(rule, np.float64)
    counts = counts.astype(np.float64)
    total = counts.sum()
    present = counts > 0
    raw = np.zeros_like(counts)
    raw[present] = total / (present.sum() * counts[present])
    if rule == "sqrt_inverse":
        raw = np.sqrt(raw)
    for _ in range(3):  # scale to a mean of 1 per labelled pixel, cap, and scale again
        raw = np.minimum(raw * total / max((raw * counts).sum(), 1e-12), MAX_CLASS_WEIGHT)
    return raw


def describe_labels(counts: np.ndarray, classes: list[str], weights: np.ndarray | None,
                    log: Callable[[str], None]) -> None:
    """Log each class's share of the training labels (and weight); warn of absent classes."""
    total = max(int(counts.sum()), 1)
    parts = [f"{name} {count / total:.1%}" + (f" (w {weights[i]:.2f})" if weights is not None
                                              else "")
             for i, (name, count) in enumerate(zip(classes, counts))]
    log("training labels: " + ", ".join(parts))
    missing = [name for name, count in zip(classes, counts) if count == 0]
    if missing:
        logger.warning("no training labels for class(es) %s: the model cannot learn them; "
                       "add labels or drop the classes", ", ".join(missing))


def load_init(init: str) -> tuple[dict[str, torch.Tensor], ModelInfo | None]:
    """The state dict ``model.init`` names, and its metadata when it is a full checkpoint.

    Full checkpoints (weights + ``.json``) load through their metadata; bare state dicts are
    read as safetensors or with ``torch.load(weights_only=True)``: pickled code is refused.
    """
    weights = resolve(init)
    if metadata_path(weights).is_file():
        model, info = load_checkpoint(init)
        return model.state_dict(), info
    if not weights.is_file():
        raise CheckpointError(f"{weights}: model.init not found; check the path")
    state = read_state_dict(weights)
    if not isinstance(state, dict):
        raise CheckpointError(f"{weights}: not a state dict")
    return state, None


def apply_init(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[int, list[str]]:
    """Copy the tensors of ``state`` whose name (or ``backbone.`` + name) and shape fit.

    Returns the number of tensors loaded and the model's tensors left at their initialisation.
    """
    own = model.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        for target in (name, f"backbone.{name}"):
            if target in own and own[target].shape == tensor.shape:
                loaded[target] = tensor
                break
    if not loaded:
        raise CheckpointError("model.init: no tensor fits the architecture; choose matching "
                              "weights or model.architecture")
    model.load_state_dict(loaded, strict=False)
    return len(loaded), [k for k in own if k not in loaded]


def model_info(config: TrainConfig, dataset: SegmentationDataset,
               init_info: ModelInfo | None, bare_init: bool) -> ModelInfo:
    """The metadata of the model to train: architecture, classes, bands and normalisation."""
    spec = config.model
    architecture = spec.architecture or (init_info.architecture if init_info else
                                         DEFAULT_ARCHITECTURE)
    same = init_info is not None and init_info.architecture == architecture
    output_stride = spec.output_stride or (init_info.output_stride if same else
                                           models.default_output_stride(architecture))
    options = spec.options or (init_info.options if same else {})
    classes = dataset.classes or (init_info.classes if init_info else None)
    if not classes:
        raise ConfigError("the labels carry no class names and model.init has none; list "
                          "them in data.classes")
    if dataset.colours and len(dataset.colours) == len(classes):
        colours = dataset.colours
    elif init_info is not None and init_info.classes == classes:
        colours = init_info.colours
    else:
        colours = voc_palette(len(classes))
    bands = dataset.in_channels
    if init_info is not None and init_info.in_channels != bands:
        raise ConfigError(f"model.init expects {init_info.in_channels} band(s) but the data "
                          f"has {bands}; choose a matching checkpoint")
    if init_info is not None:
        normalization = init_info.normalization
    elif bare_init and bands == 3:
        normalization = IMAGENET_NORMALIZATION
    else:
        scale = 255.0 if dataset[0][0].dtype == np.uint8 else 1.0
        mean, std = band_statistics(dataset, scale)
        normalization = {"scale": scale, "mean": mean, "std": std}
    return ModelInfo(architecture=architecture, num_classes=len(classes), classes=list(classes),
                     colours=[list(c) for c in colours], in_channels=bands,
                     output_stride=output_stride, normalization=dict(normalization),
                     options=dict(options),
                     resolution=dataset.resolution or (init_info.resolution if init_info
                                                       else None))


def train(config: TrainConfig, *, log: Callable[[str], None] = print,
          progress: Callable[[int], Any] | None = None) -> TrainResult:
    """Train a model as ``config`` says and write its checkpoint.

    Args:
        config: a validated training config (:func:`deeplab_geo.config.load_train_config`).
        log: receives one-line messages.
        progress: called with the number of steps; returns a bar with ``update(n)``,
            ``close()`` and optionally ``set_postfix(**values)`` (a ``tqdm``). Without it, a
            line is logged every ``train.log_every`` steps.

    Raises:
        DeepLabGeoError: bad data, init checkpoint or resume state.
    """
    previous_threads = torch.get_num_threads()
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    try:
        return _train(config, log, progress)
    finally:
        torch.set_num_threads(previous_threads)


def _train(config: TrainConfig, log: Callable[[str], None],
           progress: Callable[[int], Any] | None) -> TrainResult:
    started = time.perf_counter()
    state = _prepare(config, log)
    bar = progress(config.train.steps) if progress else None
    if bar is not None and state.start:
        bar.update(state.start)
    try:
        running = _optimise(state, config, log, bar, started)
    finally:
        if bar is not None:
            bar.close()
    return _finish(state, config, log, started, running)


@dataclass
class _TrainState:
    """What a training run works on, once prepared (see :func:`_prepare`)."""

    device: torch.device
    info: ModelInfo
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: Any
    amp_dtype: torch.dtype | None
    sampler: CropSampler
    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor | None
    checkpoints: Path
    start: int
    running: float | None


def _prepare(config: TrainConfig, log: Callable[[str], None]) -> _TrainState:
    """The data, the model (initialised, or resumed with its optimiser), and the sampler."""
    opt = config.train
    device = torch_device(opt.device, "train.device")
    torch.manual_seed(opt.seed)
    train_set = build(config.data, "train")
    log(f"training on {train_set.name}")
    checkpoints = checkpoint_dir(config)
    resume_from = latest_state(checkpoints) if opt.resume else None
    if opt.resume and resume_from is None:
        raise ConfigError(f"train.resume: no checkpoint in {checkpoints}; train without "
                          "--resume first")
    info, model, weights = _model_for(config, train_set, resume_from, log)
    model = model.to(device, memory_format=torch.channels_last)
    model.train()
    if opt.freeze_bn:
        log(f"froze {freeze_batch_norm(model)} batch-norm layers")
    optimizer = make_optimizer(model, opt)
    amp_dtype = _amp_dtype(device, opt.amp)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    start, running = 0, None
    if resume_from is not None:
        start, running = load_state(resume_from, config, model, optimizer, scaler, device)
        log(f"resumed from {resume_from} at step {start}")
    augment = opt.augment if opt.augment != "auto" else (
        "dihedral" if config.data.kind in ("synthetic", "chips") else "hflip")
    mean, std = (torch.from_numpy(a) for a in info.input_statistics())
    sampler = CropSampler(train_set, opt.crop_size, opt.scale_range, augment,
                          fill=mean.flatten().tolist())
    weight = None if weights is None else torch.tensor(weights, dtype=torch.float32,
                                                       device=device)
    return _TrainState(device, info, model, optimizer, scaler, amp_dtype, sampler,
                       mean.to(device), std.to(device), weight, checkpoints, start, running)


def _model_for(config: TrainConfig, train_set: SegmentationDataset, resume_from: Path | None,
               log: Callable[[str], None]) -> tuple[ModelInfo, nn.Module, list[float] | None]:
    """The model's metadata, the model (with ``model.init``'s weights where given) and the
    class weights of the loss."""
    opt = config.train
    init_state, init_info = (load_init(config.model.init) if config.model.init and
                             resume_from is None else ({}, None))
    if resume_from is not None:
        info = read_info(resume_from / "model.safetensors")
        info = ModelInfo(**{**asdict(info), "training": {}})
    else:
        info = model_info(config, train_set, init_info, bool(init_state) and init_info is None)
    weights = None
    if hasattr(train_set, "label_counts") or opt.class_weights != "none":
        counts = label_counts(train_set, info.num_classes)  # every label read once if needed
        weights = class_weights(counts, opt.class_weights)
        describe_labels(counts, info.classes, weights, log)
    if getattr(train_set, "note", ""):
        log(train_set.note)
    if init_state and info.options.get("members", 1) > 1:
        raise ConfigError("model.init: an ensemble (model.options.members) trains its "
                          "members from scratch, each from its own start; leave model.init "
                          "out or train one model")
    model = build_model(info)
    if init_state:
        loaded, fresh = apply_init(model, init_state)
        log(f"initialised {loaded} tensors from {config.model.init}; {len(fresh)} left fresh")
    return info, model, weights


def _optimise(state: _TrainState, config: TrainConfig, log: Callable[[str], None], bar: Any,
              started: float) -> float | None:
    """The training steps from ``state.start``; returns the running loss."""
    opt = config.train
    device, cuda = state.device, state.device.type == "cuda"
    running = state.running
    members = len(state.model.members) if isinstance(state.model, models.Ensemble) else 1
    for step, images, labels in batches(state.sampler, opt.seed, state.start, opt.steps,
                                        opt.batch_size * members, opt.workers):
        lr = poly_lr(opt.lr, step, opt.steps, opt.poly_power)
        for group in state.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        torch.manual_seed(int(np.random.default_rng([opt.seed, step]).integers(2 ** 62)))
        if cuda:
            images, labels = images.pin_memory(), labels.pin_memory()
        images = images.to(device, non_blocking=cuda)
        labels = labels.to(device, non_blocking=cuda)
        images = ((images - state.mean) / state.std).contiguous(memory_format=torch.channels_last)
        value = _step(state, images, labels, opt.aux_loss_weight)
        running = value if running is None else 0.9 * running + 0.1 * value
        done = step + 1
        if bar is not None:
            bar.update(1)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{running:.4f}", lr=f"{lr:.2e}")
        elif done % opt.log_every == 0 or done == opt.steps:
            log(f"step {done}/{opt.steps} loss {running:.4f} lr {lr:.2e} "
                f"({time.perf_counter() - started:.0f} s)")
        if opt.checkpoint_every and (done % opt.checkpoint_every == 0 or done == opt.steps):
            save_state(state.checkpoints, done, state.model, state.info, state.optimizer,
                       state.scaler, running, config)
            prune_states(state.checkpoints, opt.keep_checkpoints)
    return running


def _step(state: _TrainState, images: torch.Tensor, labels: torch.Tensor,
          aux_weight: float) -> float:
    """One optimisation step; returns the batch's loss."""
    loss = _loss(state.model, images, labels, state.amp_dtype, aux_weight, state.weight)
    state.optimizer.zero_grad(set_to_none=True)
    if state.scaler is not None:
        state.scaler.scale(loss).backward()
        state.scaler.step(state.optimizer)
        state.scaler.update()
    else:
        loss.backward()
        state.optimizer.step()
    return float(loss.detach())


def _finish(state: _TrainState, config: TrainConfig, log: Callable[[str], None],
            started: float, running: float | None) -> TrainResult:
    """Trim, validate, measure the reach, and write the checkpoint with its training record."""
    opt, model = config.train, state.model
    train_seconds = time.perf_counter() - started
    trimmed = trim_unreached_taps(model, opt.crop_size) if opt.trim_taps else {}
    if trimmed:
        log(f"zeroed taps beyond {opt.crop_size / 2:g} px in {len(trimmed)} convolutions "
            f"({', '.join(trimmed)})")
    val_miou = validate(model, state.info, config, state.device, log)
    seconds = time.perf_counter() - started
    amp = str(state.amp_dtype).removeprefix("torch.") if state.amp_dtype else None
    record = {"config": config.model_dump(mode="json"), "seconds": round(seconds, 1),
              "train_seconds": round(train_seconds, 1), "val_miou": val_miou,
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "device": str(state.device), "amp": amp, "resumed_at_step": state.start or None,
              "trimmed_taps": trimmed or None}
    reach = measure_reach(model, state.info.in_channels)
    log(f"reach {reach} px" if reach else "reach: the whole input (global pooling)")
    info = ModelInfo(**{**asdict(state.info), "training": record, "reach": reach})
    path = save_checkpoint(model, info, config.output)
    log(f"wrote {path}")
    return TrainResult(path, val_miou, seconds, float(running or 0.0), state.start or None)


def _amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bfloat16 on CUDA devices that support it, else float16; ``None`` (fp32) on the CPU."""
    if device.type != "cuda" or not enabled:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
          amp_dtype: torch.dtype | None, aux_weight: float,
          weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy over labelled pixels (0 for a batch without any), optionally weighted
    per class, plus the weighted auxiliary loss when the model has an auxiliary head; for an
    ensemble, the sum of its members' own losses, each on its own share of the batch."""
    if isinstance(model, models.Ensemble):  # each member its own share of the crops
        return sum(_loss(member, x, y, amp_dtype, aux_weight, weight) for member, x, y in
                   zip(model.members, images.chunk(len(model.members)),
                       labels.chunk(len(model.members))))
    with torch.autocast(images.device.type, dtype=amp_dtype or torch.float32,
                        enabled=amp_dtype is not None):
        outputs = model(images)
    labelled = max(1, int((labels != IGNORE_INDEX).sum()))
    loss = F.cross_entropy(outputs["out"].float(), labels, weight=weight,
                           ignore_index=IGNORE_INDEX, reduction="sum") / labelled
    if "aux" in outputs and aux_weight > 0:
        loss = loss + aux_weight * F.cross_entropy(
            outputs["aux"].float(), labels, weight=weight, ignore_index=IGNORE_INDEX,
            reduction="sum") / labelled
    return loss


def validate(model: nn.Module, info: ModelInfo, config: TrainConfig, device: torch.device,
             log: Callable[[str], None]) -> float | None:
    """mIoU of the trained model on the validation split (plain inference), or ``None``."""
    from deeplab_geo.backends.torch_backend import TorchPredictor
    from deeplab_geo.tools.evaluate import evaluate_dataset

    data = config.data
    if (data.kind == "synthetic" and not data.val_seeds) or \
            (data.kind == "chips" and data.val_fraction == 0):
        return None
    val_set = build(data, "val")
    predictor = TorchPredictor(model, info, device)
    result = evaluate_dataset(predictor, val_set, info.num_classes, tta=TTASettings())[0]
    log(f"validation mIoU {result.scores.miou:.4f} on {val_set.name}")
    return result.scores.miou


# -- checkpoints for resuming ----------------------------------------------------------------

def checkpoint_dir(config: TrainConfig) -> Path:
    """Where a run's resumable checkpoints go (``train.checkpoint_dir`` or beside ``output``)."""
    if config.train.checkpoint_dir is not None:
        return config.train.checkpoint_dir
    return config.output.with_name(f"{config.output.stem}.checkpoints")


def latest_state(folder: Path) -> Path | None:
    """The newest complete ``step_*`` checkpoint in ``folder``, or ``None``."""
    if not folder.is_dir():
        return None
    states = sorted(p for p in folder.glob("step_*") if (p / "state.json").is_file())
    return states[-1] if states else None


def _fingerprint(config: TrainConfig) -> dict[str, Any]:
    dump = config.model_dump(mode="json", exclude={"evaluate", "output"})
    for key in RESUMABLE_CHANGES:
        dump["train"].pop(key, None)
    return dump


def save_state(folder: Path, step: int, model: nn.Module, info: ModelInfo,
               optimizer: torch.optim.Optimizer, scaler: Any, running: float | None,
               config: TrainConfig) -> Path:
    """Write ``folder/step_<n>/``: the model as a regular checkpoint (``run`` loads it), the
    optimizer's tensors as safetensors and everything else as JSON. Written to a hidden folder
    and renamed, so a checkpoint is complete or absent."""
    final = folder / f"step_{step:08d}"
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(final, fixed=True) as staging:
        staging.mkdir()
        _write_state(staging, step, model, info, optimizer, scaler, running, config)
    return final


def _write_state(staging: Path, step: int, model: nn.Module, info: ModelInfo,
                 optimizer: torch.optim.Optimizer, scaler: Any, running: float | None,
                 config: TrainConfig) -> None:
    save_checkpoint(model, ModelInfo(**{**asdict(info), "training": {"step": step}}),
                    staging / "model.safetensors")
    tensors, scalars = {}, {}
    for index, entries in optimizer.state_dict()["state"].items():
        for name, value in entries.items():
            key = f"{index}.{name}"
            if torch.is_tensor(value):
                tensors[key] = value.detach().cpu().contiguous()
            else:
                scalars[key] = value
    save_file(tensors, str(staging / "optimizer.safetensors"))
    state = {"step": step, "running_loss": running, "config": _fingerprint(config),
             "param_groups": optimizer.state_dict()["param_groups"], "optimizer_scalars":
             scalars, "scaler": scaler.state_dict() if scaler is not None else None}
    (staging / "state.json").write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")


def prune_states(folder: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints."""
    states = sorted(p for p in folder.glob("step_*") if p.is_dir())
    for old in states[:-keep]:
        shutil.rmtree(old)


def load_state(folder: Path, config: TrainConfig, model: nn.Module,
               optimizer: torch.optim.Optimizer, scaler: Any,
               device: torch.device) -> tuple[int, float | None]:
    """Restore a :func:`save_state` checkpoint; returns the step and running loss.

    Raises:
        ConfigError: the checkpoint was made with different settings.
        CheckpointError: its files are unreadable.
    """
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        weights = load_file(str(folder / "model.safetensors"), device=str(device))
        tensors = load_file(str(folder / "optimizer.safetensors"), device=str(device))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder}: unreadable checkpoint ({type(exc).__name__}); "
                              "delete it to resume from the one before") from None
    changed = _first_difference(state["config"], _fingerprint(config))
    if changed:
        raise ConfigError(f"{folder}: made with a different {changed}; resume with the same "
                          "settings or train afresh")
    model.load_state_dict(weights, strict=True)
    entries: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *state["optimizer_scalars"].items()]:
        index, name = key.split(".", 1)
        entries.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": entries, "param_groups": state["param_groups"]})
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    return int(state["step"]), state["running_loss"]


def _first_difference(saved: Any, current: Any, prefix: str = "") -> str | None:
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in sorted(set(saved) | set(current)):
            found = _first_difference(saved.get(key), current.get(key),
                                      f"{prefix}.{key}" if prefix else key)
            if found:
                return found
        return None
    return None if saved == current else (prefix or "config")
