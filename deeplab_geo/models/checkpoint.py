"""Model checkpoints: weights in safetensors plus a JSON metadata sidecar (see
:mod:`deeplab_geo.checkpoints` for the metadata, which needs no torch).

Weights stored as ``.pt``/``.pth`` are read with ``torch.load(weights_only=True)``: pickled code
is refused.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from deeplab_geo.checkpoints import (  # noqa: F401  (the checkpoint API, in one place)
    BUILTIN_DIR,
    FORMAT,
    ModelInfo,
    metadata_path,
    read_info,
    resolve,
    write_metadata,
)
from deeplab_geo.errors import CheckpointError
from deeplab_geo.files import atomic_path


def save_checkpoint(model: nn.Module, info: ModelInfo, path: str | Path) -> Path:
    """Write ``path`` (safetensors) and its JSON sidecar; returns the weights path."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: checkpoints are written as .safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))
    write_metadata(path, info)
    return path


def build_model(info: ModelInfo) -> nn.Module:
    """A freshly initialised model of the architecture ``info`` describes.

    Raises:
        CheckpointError: the architecture or its options are unknown.
    """
    from deeplab_geo import models

    try:
        return models.build(info.architecture, num_classes=info.num_classes,
                            in_channels=info.in_channels, output_stride=info.output_stride,
                            **info.options)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint metadata: {exc}") from None


def load_checkpoint(checkpoint: str | Path, map_location: str = "cpu") -> tuple[nn.Module,
                                                                                ModelInfo]:
    """Build the model a checkpoint describes and load its weights (safe formats only).

    Raises:
        CheckpointError: missing files, an unsafe or unreadable file, or weights that do not
            fit the declared architecture.
    """
    info = read_info(checkpoint)
    weights = resolve(checkpoint)
    state = read_state_dict(weights, map_location)
    model = build_model(info)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        raise CheckpointError(
            f"{weights}: weights do not fit architecture '{info.architecture}' "
            f"({describe_mismatch(model, state)}); use the checkpoint's own metadata") from None
    return model.eval(), info


def describe_mismatch(model: torch.nn.Module, state: dict[str, torch.Tensor],
                      shown: int = 2) -> str:
    """What keeps ``state`` from loading into ``model``, short: how many keys are missing,
    unexpected or of another shape, with the first ``shown`` of each."""
    own = model.state_dict()
    kinds = [("missing", [k for k in own if k not in state]),
             ("unexpected", [k for k in state if k not in own]),
             ("of another shape", [k for k in own if k in state
                                   and tuple(own[k].shape) != tuple(state[k].shape)])]
    parts = []
    for kind, keys in kinds:
        if keys:
            more = f", +{len(keys) - shown} more" if len(keys) > shown else ""
            parts.append(f"{len(keys)} keys {kind}: {', '.join(keys[:shown])}{more}")
    return "; ".join(parts) or "no key differs"


def read_state_dict(weights: Path, map_location: str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a weights file: safetensors, or ``.pt``/``.pth`` read with
    ``torch.load(weights_only=True)`` (pickled code is refused; a ``state_dict`` entry is
    unwrapped).

    Raises:
        CheckpointError: an unsafe, unreadable or unknown file.
    """
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
