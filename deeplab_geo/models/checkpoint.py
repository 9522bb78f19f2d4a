"""Model checkpoints: weights in safetensors plus a JSON metadata sidecar.

A checkpoint ``model.safetensors`` comes with ``model.json`` beside it::

    {"format": "deeplab-geo/1", "architecture": "deeplabv3_lite_mobilenet_v3_small",
     "num_classes": 6, "in_channels": 3, "output_stride": 8,
     "classes": ["water", ...], "colours": [[31, 120, 180], ...],
     "normalization": {"scale": 255.0, "mean": [...], "std": [...]},
     "options": {}, "training": {...}}

Inputs are normalised as ``(pixel / scale - mean) / std`` per band. Weights stored as
``.pt``/``.pth`` are read with ``torch.load(weights_only=True)``: pickled code is refused.
``builtin:<name>`` names a checkpoint shipped inside the package (``deeplab_geo/weights``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from deeplab_geo import models
from deeplab_geo.errors import CheckpointError

FORMAT = "deeplab-geo/1"
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "weights"


@dataclass(frozen=True)
class ModelInfo:
    """Everything needed to rebuild a model and interpret its outputs."""

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

    def build(self) -> nn.Module:
        """A freshly initialised model of this architecture."""
        try:
            return models.build(self.architecture, num_classes=self.num_classes,
                                in_channels=self.in_channels, output_stride=self.output_stride,
                                **self.options)
        except ValueError as exc:
            raise CheckpointError(f"checkpoint metadata: {exc}") from None


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
    return weights.with_suffix(".json")


def save_checkpoint(model: nn.Module, info: ModelInfo, path: str | Path) -> Path:
    """Write ``path`` (safetensors) and its JSON sidecar; returns the weights path."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: checkpoints are written as .safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp))
    tmp.replace(path)
    meta = {"format": FORMAT, **asdict(info)}
    metadata_path(path).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return path


def read_info(checkpoint: str | Path) -> ModelInfo:
    """Read and validate a checkpoint's metadata without loading its weights."""
    weights = resolve(checkpoint)
    meta_file = metadata_path(weights)
    if not weights.is_file():
        raise CheckpointError(f"{weights}: checkpoint not found; check model.checkpoint")
    if not meta_file.is_file():
        raise CheckpointError(
            f"{meta_file}: checkpoint metadata missing; keep the .json beside the weights")
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


def load_checkpoint(checkpoint: str | Path, map_location: str = "cpu") -> tuple[nn.Module,
                                                                                ModelInfo]:
    """Build the model a checkpoint describes and load its weights (safe formats only).

    Raises:
        CheckpointError: missing files, an unsafe or unreadable file, or weights that do not
            fit the declared architecture.
    """
    info = read_info(checkpoint)
    weights = resolve(checkpoint)
    state = _read_state_dict(weights, map_location)
    model = info.build()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise CheckpointError(
            f"{weights}: weights do not fit architecture '{info.architecture}' ({first}); "
            "use the checkpoint's own metadata") from None
    return model.eval(), info


def _read_state_dict(weights: Path, map_location: str) -> dict[str, torch.Tensor]:
    try:
        if weights.suffix == ".safetensors":
            return load_file(str(weights), device=map_location)
        if weights.suffix in (".pt", ".pth"):
            state = torch.load(weights, map_location=map_location, weights_only=True)
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
            return state
    except Exception as exc:  # noqa: BLE001 - any parse failure means an unusable file
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                f"{weights}: refused to unpickle code from a checkpoint; save a plain "
                "state dict or safetensors") from None
        raise CheckpointError(f"{weights}: unreadable checkpoint ({type(exc).__name__})") from None
    raise CheckpointError(f"{weights}: unknown checkpoint format; use .safetensors or .pt")
