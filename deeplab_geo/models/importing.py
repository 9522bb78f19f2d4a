"""Making a deeplab-geo checkpoint of weights trained elsewhere (``deeplab-geo import-model``).

Layouts recognised from the keys of the state dict:

* **deeplab-geo / torchvision** (``backbone.*``, ``classifier.*``): torchvision's segmentation
  models (``deeplabv3_resnet50``, ``deeplabv3_mobilenet_v3_large``, ...) keep this layout, as
  ours do; an auxiliary head (``aux_classifier.*``) is dropped, since inference never uses it.
  Any state dict whose keys fit one of our architectures is this layout;
* **kazuto1011/deeplab-pytorch** (``layer1.conv1.conv.*``, ``aspp.c0.*``, optionally under
  ``base.``): the DeepLab-v2 conversion of the official Caffe release, mapped by
  :func:`deeplab_geo.models.convert.from_kazuto1011` (``deeplabv2_resnet101`` with
  ``caffe: true``);
* **segmentation_models_pytorch** (``encoder.*``, ``decoder.*``, ``segmentation_head.*``) is
  recognised and refused: its DeepLabV3 keys would map onto ours (``encoder.`` ->
  ``backbone.``, ``decoder.aspp`` -> ``classifier.0``, ...) and the weights load, but its
  dilated ResNet dilates every block of a stage where torchvision's keeps the first at the
  previous rate, and it upsamples with ``align_corners=True``: the network computes something
  else (checked against smp 0.6: probabilities differ by up to 0.15). DeepLabV3+ has another
  decoder altogether.

A ``module.`` prefix (DataParallel) and a ``state_dict`` / ``model`` wrapper are removed.
Weights are read as safetensors or with ``torch.load(weights_only=True)``: a pickle carrying
code is refused. Weights that do not fit the architecture are refused with the first key that
does not.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import torch

from deeplab_geo.checkpoints import ModelInfo
from deeplab_geo.datasets.voc import voc_palette
from deeplab_geo.errors import CheckpointError
from deeplab_geo.models import default_output_stride
from deeplab_geo.models.checkpoint import (
    build_model,
    describe_mismatch,
    read_state_dict,
    save_checkpoint,
)
from deeplab_geo.models.convert import from_kazuto1011
from deeplab_geo.models.reach import measure_reach

IMAGENET = {"scale": 255.0, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def import_model(weights: str | Path, out: str | Path, *, architecture: str,
                 classes: list[str], colours: list[list[int]] | None = None,
                 normalization: dict[str, Any] | None = None, resolution: float | None = None,
                 in_channels: int = 3, output_stride: int | None = None,
                 options: dict[str, Any] | None = None,
                 reach: int | None | Literal["auto"] = "auto") -> tuple[Path, str]:
    """Write ``out`` (``.safetensors`` with its ``.json``) from foreign ``weights``.

    Args:
        weights: a state dict file (``.safetensors``, ``.pt``, ``.pth``).
        out: the checkpoint to write.
        architecture: one of :func:`deeplab_geo.models.available`.
        classes: one name per output class.
        colours: one RGB triple per class (default: the VOC palette).
        normalization: ``{"scale", "mean", "std"}`` (default: ImageNet's, for 3 bands).
        resolution: the ground sampling distance the weights were trained at (m/px).
        in_channels, output_stride, options: as :func:`deeplab_geo.models.build` takes them.
        reach: pixels the model looks around each pixel (``tiling.overlap: auto`` uses twice
            it); ``"auto"`` measures it (:func:`deeplab_geo.models.reach.measure_reach`, from
            seconds to a couple of minutes on a CPU), ``None`` records none.

    Returns:
        The path written and the layout that was recognised.

    Raises:
        CheckpointError: unreadable or unsafe file, an unknown layout, or weights that do not
            fit the architecture.
    """
    weights = Path(weights)
    if not weights.is_file():
        raise CheckpointError(f"{weights}: weights not found; check the path")
    state = _unwrap(read_state_dict(weights, "cpu"))
    layout, state = _to_ours(state, architecture, weights)
    options = dict(options or {})
    if layout == "kazuto1011":
        options.setdefault("caffe", True)
    if normalization is None:
        if in_channels != 3:
            raise CheckpointError(f"{weights.name}: give the band normalisation (--scale, "
                                  f"--mean, --std) for {in_channels} bands")
        normalization = IMAGENET
    info = ModelInfo(
        architecture=architecture, num_classes=len(classes), classes=list(classes),
        colours=[list(c) for c in (colours or voc_palette(len(classes)))],
        in_channels=in_channels,
        output_stride=output_stride or _checked_stride(architecture),
        normalization=dict(normalization), options=options, resolution=resolution,
        training={"imported_from": weights.name, "layout": layout})
    model = build_model(info)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        raise CheckpointError(f"{weights.name}: the weights do not fit {architecture} with "
                              f"{len(classes)} classes ({describe_mismatch(model, state)}); "
                              "check --architecture, --classes and --output-stride") from None
    if reach == "auto":
        reach = measure_reach(model, in_channels)
    info = dataclasses.replace(info, reach=reach)
    return save_checkpoint(model.eval(), info, out), layout


def _checked_stride(architecture: str) -> int:
    try:
        return default_output_stride(architecture)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None


def _unwrap(state: Any) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise CheckpointError("the file holds no state dict of tensors; save "
                              "model.state_dict()")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _to_ours(state: dict[str, torch.Tensor], architecture: str, weights: Path
             ) -> tuple[str, dict[str, torch.Tensor]]:
    keys = list(state)
    if any(k.removeprefix("base.").startswith(("layer1.conv1.conv.", "aspp.c")) for k in keys):
        if architecture != "deeplabv2_resnet101":
            raise CheckpointError(f"{weights.name}: a kazuto1011 DeepLab-v2 checkpoint; use "
                                  "--architecture deeplabv2_resnet101")
        try:
            return "kazuto1011", from_kazuto1011(state)
        except ValueError as exc:
            raise CheckpointError(f"{weights.name}: {exc}") from None
    if any(k.startswith("segmentation_head.") for k in keys):
        raise CheckpointError(f"{weights.name}: a segmentation_models_pytorch checkpoint; its "
                              "dilated ResNet and upsampling differ from ours, so the weights "
                              "would not compute what they were trained to; export it to ONNX "
                              "and run the .onnx instead")
    ours = {k: v for k, v in state.items() if not k.startswith("aux_classifier.")}
    return "torchvision", ours
