"""``deeplab-geo evaluate``: mIoU, per-class IoU, pixel accuracy and boundary F-score.

Examples::

    # a finished class map against a label raster on the same grid, or vector labels
    deeplab-geo evaluate raster out/orthophoto_classes.tif --labels data/sample/labels.tif
    deeplab-geo evaluate raster out/orthophoto_classes.tif --labels data/sample/labels.gpkg
    # the pipeline's model on its input, without and with the dense CRF
    deeplab-geo evaluate pipeline pipelines/landcover.yaml --labels data/sample/labels.tif
    # a trained checkpoint on a dataset split (VOC, Cityscapes, chips), with TTA and CRF
    deeplab-geo evaluate dataset pipelines/voc2012.yaml --set data.root=/data/VOC2012
    deeplab-geo evaluate dataset --kind cityscapes --root /data/cityscapes \\
        --checkpoint model.safetensors --crf both
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from deeplab_geo.cli._common import (
    parse_overrides,
    progress_factory,
    progress_option,
    reports_errors,
)


@click.group("evaluate")
def command() -> None:
    """Score class maps against ground truth (one confusion matrix over the whole raster or
    split, label 255 ignored)."""


def _outputs(func):
    func = click.option("--json", "json_path", type=click.Path(path_type=Path),
                        help="Also write the scores as JSON.")(func)
    func = click.option("--markdown", "md_path", type=click.Path(path_type=Path),
                        help="Also write the scores as a Markdown table.")(func)
    return func


def _vector_options(func):
    func = click.option("--class-field", default="class_id", show_default=True,
                        help="Class field of vector labels: class ids, or class names.")(func)
    func = click.option("--layer", default=None,
                        help="Layer of vector labels (default: the first).")(func)
    func = click.option("--window", "window", default=None, metavar="COL,ROW,WIDTH,HEIGHT",
                        callback=_parse_window,
                        help="Score only this pixel window (a hold-out area).")(func)
    func = click.option("--label-values", default=None, metavar="V1,V2,...",
                        callback=_parse_values,
                        help="The label value of each model class, in order (e.g. 1,2,3 for "
                             "labels coded from 1); default: label = class id.")(func)
    return func


def _int_list(value: str, param: str, count: int | None = None) -> list[int]:
    try:
        numbers = [int(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers",
                                 param_hint=param) from None
    if count is not None and len(numbers) != count:
        raise click.BadParameter(f"{value!r}: give {count} integers", param_hint=param)
    return numbers


def _parse_window(ctx, param, value):
    if value is None:
        return None
    from rasterio.windows import Window

    col, row, width, height = _int_list(value, "--window", 4)
    if min(col, row) < 0 or min(width, height) < 1:
        raise click.BadParameter(f"{value!r}: offsets must be >= 0 and sizes >= 1",
                                 param_hint="--window")
    return Window(col, row, width, height)


def _parse_values(ctx, param, value):
    return None if value is None else _int_list(value, "--label-values")


@command.command("raster")
@click.argument("prediction", type=click.Path(path_type=Path))
@click.option("--labels", required=True, type=click.Path(path_type=Path),
              help="Label raster on the same grid (class ids; 255 = ignore), or vector labels "
                   "(.gpkg, .geojson, .shp, .fgb) rasterized on the prediction's grid.")
@_vector_options
@_outputs
@reports_errors
@click.option("--input", "input_raster", default=None, type=click.Path(path_type=Path),
              help="The raster the prediction was made from: pixels it has no data for are "
                   "not scored.")
def raster(prediction: Path, labels: Path, class_field: str, layer: str | None, window,
           label_values: list[int] | None, input_raster: Path | None,
           json_path: Path | None, md_path: Path | None) -> None:
    """Score the class raster PREDICTION (a deeplab-geo *_classes.tif)."""
    from deeplab_geo.raster import io
    from deeplab_geo.tools.evaluate import evaluate_raster

    with io.open_raster(prediction) as ds:
        tag = ds.tags().get("CLASS_NAMES")
        names = tag.split(",") if tag else [str(i) for i in range(_max_class(ds) + 1)]
    _emit([evaluate_raster(prediction, labels, len(names), class_field=class_field,
                           layer=layer, window=window, label_values=label_values,
                           class_names=names, input_raster=input_raster)],
          names, json_path, md_path)


def _max_class(ds) -> int:
    """The largest class id of an untagged class raster (read block by block; nodata skipped)."""
    import numpy as np

    largest = 0
    for _, window in ds.block_windows(1):
        block = ds.read(1, window=window, masked=True)
        if block.count():
            largest = max(largest, int(np.ma.max(block)))
    return largest


@command.command("pipeline")
@click.argument("pipeline", type=click.Path(path_type=Path))
@click.option("--labels", required=True, type=click.Path(path_type=Path),
              help="Label raster on the input's grid (class ids; 255 = ignore), or vector "
                   "labels rasterized on it.")
@click.option("--crf", "crf_mode", type=click.Choice(["both", "on", "off"]), default="both",
              show_default=True, help="Evaluate with the CRF, without it, or both.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any pipeline key (repeatable).")
@_vector_options
@_outputs
@reports_errors
def pipeline(pipeline: Path, labels: Path, crf_mode: str, overrides: tuple[str, ...],
             class_field: str, layer: str | None, window, label_values: list[int] | None,
             json_path: Path | None, md_path: Path | None) -> None:
    """Run PIPELINE's model on its input and score the class map against LABELS (pixels the
    input has no data for are not scored)."""
    from deeplab_geo.checkpoints import read_info
    from deeplab_geo.config import load_pipeline
    from deeplab_geo.tools.evaluate import evaluate_pipeline

    config = load_pipeline(pipeline, parse_overrides(overrides))
    names = read_info(config.model.checkpoint).classes
    results = evaluate_pipeline(config, labels, _CRF_MODES[crf_mode], class_field=class_field,
                                layer=layer, window=window, label_values=label_values)
    _emit(results, names, json_path, md_path)


_CRF_MODES = {"both": (False, True), "on": (True,), "off": (False,)}


@command.command("dataset")
@click.argument("config_path", metavar="[CONFIG]", required=False,
                type=click.Path(path_type=Path))
@click.option("--kind", type=click.Choice(["voc", "cityscapes", "chips", "synthetic"]),
              help="Dataset kind without a CONFIG (= --set data.kind=...).")
@click.option("--root", type=click.Path(path_type=Path),
              help="Dataset root for voc / cityscapes (= --set data.root=...).")
@click.option("--split", type=click.Choice(["train", "val"]),
              help="Which split to score (default: evaluate.split, val).")
@click.option("--checkpoint", help="Model to score (default: evaluate.checkpoint, else the "
                                   "config's output).")
@click.option("--crf", "crf_mode", type=click.Choice(["both", "on", "off"]),
              help="Score with the CRF, without it, or both (default: evaluate.crf.enabled).")
@click.option("--limit", type=click.IntRange(min=1), help="Score only the first N images.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any key, e.g. --set 'evaluate.tta.scales=[0.5,0.75,1.0]'.")
@_outputs
@progress_option
@reports_errors
def dataset(config_path: Path | None, kind: str | None, root: Path | None, split: str | None,
            checkpoint: str | None, crf_mode: str | None, limit: int | None,
            overrides: tuple[str, ...], json_path: Path | None, md_path: Path | None,
            progress_style: str, quiet: bool) -> None:
    """Score a checkpoint on a dataset split (VOC 2012, Cityscapes, raster chips).

    CONFIG is a training YAML (its data, and its evaluate section: split, tta, crf); without
    one, give the data with --kind/--root/--set data.KEY=VALUE and the model with --checkpoint.
    Images are predicted whole, with the TTA of evaluate.tta.
    """
    from deeplab_geo.config import load_dataset_eval_config
    from deeplab_geo.datasets import build
    from deeplab_geo.errors import ConfigError
    from deeplab_geo.plugins import choose_backend, get_backend
    from deeplab_geo.tools.evaluate import evaluate_dataset

    values = parse_overrides(overrides)
    for key, value in (("data.kind", kind), ("data.root", root), ("evaluate.split", split),
                       ("evaluate.checkpoint", checkpoint), ("evaluate.limit", limit)):
        if value is not None:
            values[key] = str(value.resolve()) if isinstance(value, Path) else value
    config = load_dataset_eval_config(config_path, values)
    settings = config.evaluate
    model = settings.checkpoint or (str(config.output) if config.output else None)
    if model is None:
        raise ConfigError("no model to score; give --checkpoint (or evaluate.checkpoint)")
    predictor = get_backend(choose_backend(settings.backend, settings.device)).load(
        model, device=settings.device)
    info = predictor.info
    data = build(config.data, settings.split)
    if data.classes is not None and len(data.classes) != info.num_classes:
        raise ConfigError(f"{model} predicts {info.num_classes} classes but {data.name} has "
                          f"{len(data.classes)}; score a checkpoint trained on these classes")
    modes = _CRF_MODES[crf_mode] if crf_mode else (settings.crf.enabled,)
    style = "none" if quiet else progress_style
    click.echo(f"Scoring {model} on {data.name}", err=True)
    results = evaluate_dataset(predictor, data, info.num_classes, tta=settings.tta,
                               crf=settings.crf, crf_modes=modes, limit=settings.limit,
                               progress=progress_factory(style, "image"))
    _emit(results, info.classes, json_path, md_path)


def _emit(results, names: list[str], json_path: Path | None, md_path: Path | None) -> None:
    table = markdown_table(results, names)
    click.echo(table)
    if json_path:
        json_path.write_text(json.dumps([r.as_dict(names) for r in results], indent=2) + "\n")
    if md_path:
        md_path.write_text(table + "\n")


def markdown_table(results, names: list[str]) -> str:
    """One row per result: mIoU, pixel accuracy, boundary F-score, then IoU per class."""
    header = ["run", "mIoU", "mIoU (labelled classes)", "pixel acc.", "boundary F (2 px)",
              *names]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        ious = ["-" if v != v else f"{v:.4f}" for v in r.scores.iou]
        rows.append(f"| {r.name} | {r.scores.miou:.4f} | {r.scores.miou_present:.4f} | "
                    f"{r.scores.pixel_accuracy:.4f} | "
                    f"{r.boundary_f:.4f} | " + " | ".join(ious) + " |")
    return "\n".join(rows)
