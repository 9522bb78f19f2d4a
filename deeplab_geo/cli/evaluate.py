"""``deeplab-geo evaluate``: mIoU, per-class IoU and pixel accuracy against ground truth.

Examples::

    # a finished class map against a label raster on the same grid
    deeplab-geo evaluate raster out/orthophoto_classes.tif --labels data/sample/labels.tif
    # the pipeline's model on its input, without and with the dense CRF
    deeplab-geo evaluate pipeline pipelines/landcover.yaml --labels data/sample/labels.tif
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from deeplab_geo.cli._common import parse_overrides, reports_errors


@click.group("evaluate")
def command() -> None:
    """Score class maps against ground truth (one confusion matrix over the whole raster)."""


def _outputs(func):
    func = click.option("--json", "json_path", type=click.Path(path_type=Path),
                        help="Also write the scores as JSON.")(func)
    func = click.option("--markdown", "md_path", type=click.Path(path_type=Path),
                        help="Also write the scores as a Markdown table.")(func)
    return func


@command.command("raster")
@click.argument("prediction", type=click.Path(path_type=Path))
@click.option("--labels", required=True, type=click.Path(path_type=Path),
              help="Label raster on the same grid (class ids; 255 = ignore).")
@_outputs
@reports_errors
def raster(prediction: Path, labels: Path, json_path: Path | None, md_path: Path | None) -> None:
    """Score the class raster PREDICTION (a deeplab-geo *_classes.tif)."""
    from deeplab_geo import io
    from deeplab_geo.evaluate import evaluate_raster

    with io.open_raster(prediction) as ds:
        names = ds.tags().get("CLASS_NAMES", "").split(",") if ds.tags().get("CLASS_NAMES") \
            else None
        if names is None:
            names = [str(i) for i in range(int(ds.read(1).max()) + 1)]
    _emit([evaluate_raster(prediction, labels, len(names))], names, json_path, md_path)


@command.command("pipeline")
@click.argument("pipeline", type=click.Path(path_type=Path))
@click.option("--labels", required=True, type=click.Path(path_type=Path),
              help="Label raster on the input's grid (class ids; 255 = ignore).")
@click.option("--crf", "crf_mode", type=click.Choice(["both", "on", "off"]), default="both",
              show_default=True, help="Evaluate with the CRF, without it, or both.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any pipeline key (repeatable).")
@_outputs
@reports_errors
def pipeline(pipeline: Path, labels: Path, crf_mode: str, overrides: tuple[str, ...],
             json_path: Path | None, md_path: Path | None) -> None:
    """Run PIPELINE's model on its input and score the class map against LABELS."""
    from deeplab_geo.config import load_pipeline
    from deeplab_geo.evaluate import evaluate_pipeline
    from deeplab_geo.models.checkpoint import read_info

    config = load_pipeline(pipeline, parse_overrides(overrides))
    modes = {"both": (False, True), "on": (True,), "off": (False,)}[crf_mode]
    names = read_info(config.model.checkpoint).classes
    _emit(evaluate_pipeline(config, labels, modes), names, json_path, md_path)


def _emit(results, names: list[str], json_path: Path | None, md_path: Path | None) -> None:
    table = markdown_table(results, names)
    click.echo(table)
    if json_path:
        json_path.write_text(json.dumps([r.as_dict(names) for r in results], indent=2) + "\n")
    if md_path:
        md_path.write_text(table + "\n")


def markdown_table(results, names: list[str]) -> str:
    header = ["run", "mIoU", "pixel acc.", "boundary F (2 px)", *names]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        ious = ["-" if v != v else f"{v:.4f}" for v in r.scores.iou]
        rows.append(f"| {r.name} | {r.scores.miou:.4f} | {r.scores.pixel_accuracy:.4f} | "
                    f"{r.boundary_f:.4f} | " + " | ".join(ious) + " |")
    return "\n".join(rows)


