"""Model checkpoints: weights in safetensors plus a JSON metadata sidecar (see
:mod:`deeplab_geo.checkpoints` for the metadata, which needs no torch).

Weights stored as ``.pt``/``.pth`` are read with ``torch.load(weights_only=True)``: pickled code
is refused.
"""

from __future__ import annotations

import json
from dataclasses import asdict
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
)
from deeplab_geo.errors import CheckpointError


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
