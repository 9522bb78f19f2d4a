"""``deeplab-geo segment``: segment rasters with the built-in defaults, no YAML needed.

    deeplab-geo segment ortho.tif --output-dir out
    deeplab-geo segment a.tif b.tif --output-dir out --model my_model.safetensors --no-crf
    deeplab-geo segment https://example.org/ortho.tif --output-dir out --tile-size 768

Prints the pipeline it runs (as YAML, on stdout; everything else goes to stderr) so that it
can be saved and reused with ``deeplab-geo run``::

    deeplab-geo segment ortho.tif -o out > saved.yaml && deeplab-geo run saved.yaml
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import click
import yaml

from deeplab_geo.cli._common import (
    parse_overrides,
    plan_printer,
    progress_factory,
    progress_option,
    reports_errors,
    show_log_messages,
)

FORMATS = ("gpkg", "fgb", "geojson", "parquet")


@click.command("segment")
@click.argument("rasters", nargs=-1, required=True, metavar="RASTER...")
@click.option("--output-dir", "-o", type=click.Path(path_type=Path), required=True,
              help="Where outputs go (one raster: here; several: a folder per raster).")
@click.option("--model", "checkpoint", default="builtin:landcover-demo", show_default=True,
              help="Checkpoint (.safetensors or .pt with its .json; a bare state dict "
                   "becomes one with `import-model`), .onnx, or builtin:<name>.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--tile-size", type=int,
              help="Tile size in pixels; the largest, for models of any input size "
              "(default: the model's).")
@click.option("--crf/--no-crf", default=True, show_default=True,
              help="Refine each tile with the dense CRF.")
@click.option("--polygons/--no-polygons", default=True, show_default=True,
              help="Also write polygons.")
@click.option("--format", "polygon_format", type=click.Choice(FORMATS), default="gpkg",
              show_default=True, help="Polygon file format.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Any other pipeline key, e.g. --set tta.flip=true (repeatable).")
@click.option("--force", is_flag=True, help="Redo rasters finished earlier with these settings.")
@progress_option
@reports_errors
def command(rasters: tuple[str, ...], output_dir: Path, checkpoint: str, device: str,
            tile_size: int | None, crf: bool, polygons: bool, polygon_format: str,
            overrides: tuple[str, ...], force: bool, progress_style: str, quiet: bool) -> None:
    """Segment rasters with the built-in defaults, no YAML needed.

    RASTER may be files, folders, globs, STAC Items or URLs; each gets class and confidence
    COGs, polygons, a quicklook and run.json.

    The pipeline used is printed first, as YAML: save it to rerun with `deeplab-geo run`.
    """
    from deeplab_geo.cli.run import _echo_outcome
    from deeplab_geo.config import is_url, validate_pipeline
    from deeplab_geo.pipeline.batch import run_batch

    if not quiet and progress_style == "bar":
        show_log_messages()
    progress = progress_factory("none" if quiet else progress_style, "tile")
    failed = False
    for raster in rasters:
        source = raster if is_url(raster) else str(Path(raster).resolve())
        folder = output_dir if len(rasters) == 1 else output_dir / _stem(raster)
        data = pipeline_for(source, folder.resolve(), checkpoint, device, tile_size, crf,
                            polygons, polygon_format, parse_overrides(overrides))
        config = validate_pipeline(data, source="deeplab-geo segment")
        if not quiet:
            click.echo("# the pipeline used (save it as a .yaml file to rerun it with "
                       "`deeplab-geo run`):")
            click.echo(yaml.safe_dump(data, sort_keys=False).rstrip())
        result = run_batch(config, force=force, progress=progress,
                           on_outcome=functools.partial(_echo_outcome, err=True),
                           on_plan=plan_printer("none" if quiet else progress_style))
        failed = failed or bool(result.failed)
    if failed:
        sys.exit(1)


def pipeline_for(source: str, output_dir: Path, checkpoint: str, device: str,
                 tile_size: int | None, crf: bool, polygons: bool, polygon_format: str,
                 overrides: dict[str, Any]) -> dict[str, Any]:
    """The pipeline mapping ``segment`` runs: the given choices over the built-in defaults."""
    from deeplab_geo.config import set_dotted

    data: dict[str, Any] = {
        "input": source, "output_dir": str(output_dir),
        "model": {"checkpoint": checkpoint if checkpoint.startswith("builtin:")
                  else str(Path(checkpoint).resolve()), "device": device},
        "crf": {"enabled": crf},
        "vectorize": {"enabled": polygons, "format": polygon_format},
    }
    if tile_size is not None:
        data["tiling"] = {"tile_size": tile_size}
    for dotted, value in overrides.items():
        set_dotted(data, dotted, str(value) if isinstance(value, Path) else value)
    return data


def _stem(raster: str) -> str:
    name = raster.rstrip("/").rsplit("/", 1)[-1]
    return Path(name).stem or "raster"
