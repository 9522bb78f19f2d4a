"""Checkpoint references and metadata: what a model is, without loading it (no torch needed).

A checkpoint ``model.safetensors`` comes with ``model.json`` beside it::

    {"format": "deeplab-geo/1", "architecture": "deeplabv3_lite_mobilenet_v3_small",
     "num_classes": 6, "in_channels": 3, "output_stride": 8,
     "classes": ["water", ...], "colours": [[31, 120, 180], ...],
     "normalization": {"scale": 255.0, "mean": [...], "std": [...]},
     "options": {}, "training": {...}}

Inputs are normalised as ``(pixel / scale - mean) / std`` per band. ``builtin:<name>`` names a
checkpoint shipped inside the package (``deeplab_geo/weights``). Loading and saving weights is
:mod:`deeplab_geo.models.checkpoint`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deeplab_geo.errors import CheckpointError
from deeplab_geo.files import write_atomic

FORMAT = "deeplab-geo/1"
BUILTIN_DIR = Path(__file__).resolve().parent / "weights"
POOLING_CELL = 32
"""Side in input pixels of the cells that windowed pooling averages
(:mod:`deeplab_geo.models.pooling`)."""


@dataclass(frozen=True)
class ModelInfo:
    """Everything needed to rebuild a model and interpret its outputs.

    ``resolution`` is the ground sampling distance the model was trained at (metres per
    pixel; ``None``: unknown, rasters are used as they are). ``input_size`` and ``batch_size``
    are fixed by models whose graph takes only one shape (tiles and batches are then that
    size); ``overlap`` is a model's own advice on tile overlap (pixels), as zoo models give it.
    ``reach`` is how far (pixels, each side, at the model's resolution) the model looks around
    a pixel, measured by :func:`deeplab_geo.models.reach.measure_reach`; ``tiling.overlap:
    auto`` overlaps tiles by twice that.
    """

    architecture: str
    num_classes: int
    classes: list[str]
    colours: list[list[int]]
    in_channels: int = 3
    output_stride: int = 8
    normalization: dict[str, Any] = field(
        default_factory=lambda: {"scale": 255.0, "mean": [0.485, 0.456, 0.406],
                                 "std": [0.229, 0.224, 0.225]})
    options: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    resolution: float | None = None
    input_size: int | None = None
    batch_size: int | None = None
    overlap: int | None = None
    reach: int | None = None

    @property
    def alignment(self) -> int:
        """Tile offsets (pixels) at which the model computes what it computes on the whole
        image: its pooling cell where it pools over windows (cells count from a tile's
        corner; a shift of part of a cell changes every pooled value), else ``1``."""
        if self.input_size is None and self.options.get("pooling_window"):
            return POOLING_CELL
        return 1

    def __post_init__(self) -> None:
        if len(self.classes) != self.num_classes or len(self.colours) != self.num_classes:
            raise CheckpointError(
                f"metadata lists {len(self.classes)} classes and {len(self.colours)} colours "
                f"for num_classes={self.num_classes}; make them agree")
        norm = self.normalization
        if len(norm.get("mean", [])) != self.in_channels or len(norm.get("std", [])) != \
                self.in_channels:
            raise CheckpointError(
                f"normalization needs one mean and std per band ({self.in_channels} bands)")
        if self.reach is not None and not (isinstance(self.reach, int) and self.reach >= 0):
            raise CheckpointError(f"reach must be a whole number of pixels >= 0, got {self.reach}")
        if self.resolution is not None and not self.resolution > 0:
            raise CheckpointError(f"resolution must be a positive number of metres per pixel, "
                                  f"got {self.resolution}")

    def input_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """The per-band mean and std, float32 ``(1, bands, 1, 1)``, in the units of raw pixels:
        a backend feeds the network ``(tiles - mean) / std``.

        This is the one place the ``normalization`` record is read; backend plugins use it
        (as torch tensors: ``torch.from_numpy(mean)``) rather than parse the record.
        """
        norm = self.normalization
        scale = float(norm.get("scale", 1.0))
        shape = (1, self.in_channels, 1, 1)
        mean = np.asarray(norm["mean"], np.float32).reshape(shape) * np.float32(scale)
        std = np.asarray(norm["std"], np.float32).reshape(shape) * np.float32(scale)
        return mean, std


def resolve(checkpoint: str | Path) -> Path:
    """The weights file a checkpoint reference points to (``builtin:`` names included)."""
    text = str(checkpoint)
    if text.startswith("builtin:"):
        name = text.removeprefix("builtin:")
        path = BUILTIN_DIR / f"{name}.safetensors"
        if not path.is_file():
            shipped = sorted(p.stem for p in BUILTIN_DIR.glob("*.safetensors"))
            raise CheckpointError(
                f"no built-in checkpoint '{name}'; shipped: {', '.join(shipped) or 'none'}")
        return path
    return Path(text)


def metadata_path(weights: Path) -> Path:
    """The JSON sidecar of a weights (or ONNX) file."""
    return weights.with_suffix(".json")


def write_metadata(weights: Path, info: ModelInfo) -> Path:
    """Write the JSON sidecar of ``weights`` (after the weights: a sidecar names a complete
    file); returns its path."""
    meta = {"format": FORMAT, **asdict(info)}
    path = metadata_path(weights)
    write_atomic(path, json.dumps(meta, indent=2) + "\n")
    return path


def read_info(checkpoint: str | Path) -> ModelInfo:
    """Read and validate a checkpoint's metadata without loading its weights."""
    weights = resolve(checkpoint)
    meta_file = metadata_path(weights)
    if not weights.is_file():
        raise CheckpointError(f"{weights}: checkpoint not found; check model.checkpoint")
    if not meta_file.is_file():
        raise CheckpointError(
            f"{meta_file}: checkpoint metadata missing; keep the .json beside the weights, or "
            f"make a checkpoint of a bare state dict with `deeplab-geo import-model`")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{meta_file}: metadata is not valid JSON") from None
    if not isinstance(meta, dict) or meta.pop("format", None) != FORMAT:
        raise CheckpointError(f"{meta_file}: not a {FORMAT} metadata file")
    try:
        return ModelInfo(**meta)
    except TypeError as exc:
        raise CheckpointError(f"{meta_file}: invalid metadata ({exc})") from None
