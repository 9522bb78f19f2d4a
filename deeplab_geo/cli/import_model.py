"""``deeplab-geo import-model``: a deeplab-geo checkpoint from weights trained elsewhere.

Examples::

    deeplab-geo import-model deeplabv3_mobilenet_v3_large_coco.pth \\
        --architecture deeplabv3_mobilenet_v3_large --classes-file voc_classes.txt \\
        --out models/mnv3.safetensors
    deeplab-geo import-model landcover.pth --architecture deeplabv3_resnet50 \\
        --classes water,forest,field,built-up --resolution 0.25 --out models/lc.safetensors
    deeplab-geo import-model deeplabv2_caffe.pth --architecture deeplabv2_resnet101 \\
        --classes-file voc_classes.txt --out models/v2.safetensors

Recognised layouts: torchvision segmentation state dicts (with or without the aux head) and
any state dict fitting one of our architectures; kazuto1011's DeepLab-v2 conversion.
segmentation_models_pytorch checkpoints are recognised and refused (their networks compute
otherwise; export them to ONNX). See :mod:`deeplab_geo.models.importing`.
"""

from __future__ import annotations

from pathlib import Path

import click

from deeplab_geo.cli._common import reports_errors
from deeplab_geo.errors import ConfigError


def _floats(text: str | None, name: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(f"--{name} {text!r}: give comma-separated numbers, e.g. "
                          "0.485,0.456,0.406") from None


def _colours(text: str | None) -> list[list[int]] | None:
    if text is None:
        return None
    try:
        colours = [[int(v) for v in item.split(",")] for item in text.split(";")]
    except ValueError:
        colours = []
    if not colours or any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in colours):
        raise ConfigError(f"--colours {text!r}: give r,g,b per class separated by ';', e.g. "
                          "'0,0,255;0,128,0'")
    return colours


@click.command("import-model")
@click.argument("weights", type=click.Path(path_type=Path))
@click.option("--architecture", required=True, help="One of `deeplab-geo backends`' models, "
              "e.g. deeplabv3_mobilenet_v3_large.")
@click.option("--classes", help="Class names in order of the model's outputs, comma-separated.")
@click.option("--classes-file", type=click.Path(path_type=Path),
              help="A text file with one class name per line (instead of --classes).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="The .safetensors to write (its .json goes beside it).")
@click.option("--colours", help="r,g,b per class separated by ';' (default: VOC palette).")
@click.option("--scale", type=float, default=255.0, show_default=True,
              help="Pixels are divided by it before --mean/--std.")
@click.option("--mean", help="Per-band means after --scale (default: ImageNet's).")
@click.option("--std", help="Per-band standard deviations after --scale (default: ImageNet's).")
@click.option("--resolution", type=float, help="Ground sampling distance the model was "
              "trained at, metres per pixel (windows are resampled to it).")
@click.option("--in-channels", type=int, default=3, show_default=True, help="Input bands.")
@click.option("--output-stride", type=click.Choice(["8", "16"]),
              help="Output stride (default: the architecture's).")
@click.option("--reach", default="auto", show_default=True,
              help="Pixels the model looks around each pixel (tiling.overlap: auto overlaps "
              "tiles by twice it): auto measures it (seconds to minutes on a CPU), none "
              "records none, or a number.")
@reports_errors
def command(weights: Path, architecture: str, classes: str | None, classes_file: Path | None,
            out: Path, colours: str | None, scale: float, mean: str | None, std: str | None,
            resolution: float | None, in_channels: int, output_stride: str | None,
            reach: str) -> None:
    """Write a deeplab-geo checkpoint (OUT and its .json) from the state dict WEIGHTS."""
    from deeplab_geo.models.importing import import_model

    if (classes is None) == (classes_file is None):
        raise ConfigError("give the class names with --classes or --classes-file (one of them)")
    if classes_file is not None:
        if not classes_file.is_file():
            raise ConfigError(f"{classes_file}: classes file not found")
        names = [line.strip() for line in classes_file.read_text(encoding="utf-8").splitlines()
                 if line.strip()]
    else:
        names = [name.strip() for name in classes.split(",") if name.strip()]
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out {out}: checkpoints are written as .safetensors")
    normalization = None
    means, stds = _floats(mean, "mean"), _floats(std, "std")
    if (means is None) != (stds is None):
        raise ConfigError("give --mean and --std together")
    if means is not None:
        normalization = {"scale": scale, "mean": means, "std": stds}
    path, layout = import_model(
        weights, out, architecture=architecture, classes=names, colours=_colours(colours),
        normalization=normalization, resolution=resolution, in_channels=in_channels,
        output_stride=int(output_stride) if output_stride else None, reach=_reach(reach))
    click.echo(f"Imported {weights.name} ({layout} layout) as {architecture} with "
               f"{len(names)} classes: {path}")


def _reach(text: str) -> int | None | str:
    if text in ("auto", "none"):
        return None if text == "none" else text
    if not text.isdigit():
        raise ConfigError(f"--reach {text}: give auto, none or a whole number of pixels")
    return int(text)
