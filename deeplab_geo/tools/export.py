"""Export a checkpoint to ONNX: raw pixels in, class probabilities out.

The exported graph includes the checkpoint's band normalisation and the final softmax, so a
runtime only feeds ``(B, bands, H, W)`` float32 pixels (input ``pixels``) and reads
``(B, classes, H, W)`` probabilities (output ``probabilities``). Batch, height and width are
dynamic. The checkpoint's JSON metadata is written beside the ``.onnx`` file.

:func:`cached_onnx` keeps one export per checkpoint content in the cache folder
(``$DEEPLAB_GEO_CACHE``, else ``$XDG_CACHE_HOME/deeplab-geo``, else ``~/.cache/deeplab-geo``),
so only the first run of a checkpoint on ONNX Runtime imports torch.
"""

from __future__ import annotations

import hashlib
import io as _io
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import deeplab_geo
from deeplab_geo.checkpoints import ModelInfo, metadata_path, read_info, resolve, write_metadata
from deeplab_geo.errors import OutputError
from deeplab_geo.files import write_atomic

DEFAULT_OPSET = 17


def export_onnx_bytes(checkpoint: str | Path, *, opset: int = DEFAULT_OPSET,
                      sample_size: int = 64) -> tuple[bytes, ModelInfo]:
    """The ONNX model of a checkpoint, as bytes, with its metadata."""
    import torch

    from deeplab_geo.models.checkpoint import load_checkpoint

    model, info = load_checkpoint(checkpoint)
    deployable = _deployable(model, info).eval()
    sample = torch.rand(1, info.in_channels, sample_size, sample_size) * 255
    buffer = _io.BytesIO()
    with torch.inference_mode():
        torch.onnx.export(
            deployable, (sample,), buffer, dynamo=False, opset_version=opset,
            input_names=["pixels"], output_names=["probabilities"],
            dynamic_axes={"pixels": {0: "batch", 2: "height", 3: "width"},
                          "probabilities": {0: "batch", 2: "height", 3: "width"}},
        )
    return buffer.getvalue(), info


def _deployable(model, info: ModelInfo):
    """The model wrapped to normalise raw pixels first and return softmax probabilities."""
    import torch
    from torch import nn

    class Deployable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            mean, std = info.input_statistics()
            self.register_buffer("mean", torch.from_numpy(mean))
            self.register_buffer("std", torch.from_numpy(std))

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.model((pixels - self.mean) / self.std)["out"], dim=1)

    return Deployable()


def export_onnx(checkpoint: str | Path, out: str | Path, *, opset: int = DEFAULT_OPSET) -> Path:
    """Write ``out`` (.onnx) and its ``.json`` metadata; returns the ONNX path."""
    out = Path(out)
    if out.suffix != ".onnx":
        raise OutputError(f"{out}: the exported file name must end in .onnx")
    data, info = export_onnx_bytes(checkpoint, opset=opset)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, data)
    write_metadata(out, info)
    return out


def cache_dir() -> Path:
    """Where exports are kept (see the module docstring)."""
    if os.environ.get("DEEPLAB_GEO_CACHE"):
        return Path(os.environ["DEEPLAB_GEO_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "deeplab-geo"


def cached_onnx(checkpoint: str | Path) -> tuple[str | bytes, ModelInfo]:
    """The ONNX model of a checkpoint: the path of its cached export, exported now if there is
    none (or the bytes, where the cache folder cannot be written), with its metadata.

    Exports are named by a hash of the weights, the metadata, the opset and the versions of
    deeplab-geo and torch, so a changed checkpoint is exported again.
    """
    weights = resolve(checkpoint)
    info = read_info(checkpoint)
    path = cache_dir() / "onnx" / f"{weights.stem}-{_content_hash(weights)}.onnx"
    if path.is_file():
        return str(path), info
    data, info = export_onnx_bytes(checkpoint)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
    except OSError:
        return data, info
    return str(path), info


def _content_hash(weights: Path) -> str:
    digest = hashlib.sha256()
    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = "none"
    digest.update(f"{deeplab_geo.__version__} {torch_version} {DEFAULT_OPSET}\n".encode())
    for path in (weights, metadata_path(weights)):
        with open(path, "rb") as file:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:16]
