"""``deeplab-geo plan``: what a run would do and cost, without running it.

Examples::

    deeplab-geo plan pipelines/landcover.yaml
    deeplab-geo plan scene.tif                       # the bundled model, segment's defaults
    deeplab-geo plan scene.tif --model zoo.onnx --no-crf --set model.resolution=native
    deeplab-geo plan orthophotos/ -o out --json      # one JSON object per input

Prints, for each input: its size and resolution, the model's and the resampling factor, the
tiles, the pixels the model will see, the nodata share where the raster's mask tells it
cheaply, the expected peak memory, the outputs' size against the free disk space, and the
expected duration (measured on one tile the first time, then from the last run of the same
settings on this machine). A raster the run would refuse is refused here, with the same
message and exit code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from deeplab_geo.cli._common import parse_overrides, reports_errors


@click.command("plan")
@click.argument("target", metavar="PIPELINE.yaml|RASTER")
@click.option("--input", "input_path", metavar="PATH|URL",
              help="With a pipeline: plan this input instead of the pipeline's.")
@click.option("--output-dir", "-o", type=click.Path(path_type=Path),
              help="Where the outputs would go (its disk's free space is checked); default: "
                   "the pipeline's, or the working directory for a raster.")
@click.option("--model", "checkpoint", default="builtin:landcover-demo", show_default=True,
              help="With a raster: the checkpoint, as for `segment`.")
@click.option("--device", default="auto", show_default=True, help="With a raster: auto, cpu, "
              "cuda or cuda:N.")
@click.option("--tile-size", type=int, help="With a raster: tile size in pixels.")
@click.option("--crf/--no-crf", default=True, show_default=True,
              help="With a raster: plan the dense CRF too.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any pipeline key (repeatable).")
@click.option("--remeasure", is_flag=True,
              help="Time the model and the CRF again, even where this machine has before.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per input.")
@reports_errors
def command(target: str, input_path: str | None, output_dir: Path | None, checkpoint: str,
            device: str, tile_size: int | None, crf: bool, overrides: tuple[str, ...],
            remeasure: bool, as_json: bool) -> None:
    """Show what running PIPELINE.yaml (or segmenting RASTER) would do and cost.

    Nothing is written but this machine's speed measurements (in the cache folder).
    """
    from deeplab_geo.config import is_url, load_pipeline, updated, validate_pipeline
    from deeplab_geo.errors import DeepLabGeoError
    from deeplab_geo.pipeline.batch import is_batch, resolve_inputs
    from deeplab_geo.pipeline.runner import plan

    values = parse_overrides(overrides)
    if Path(target).suffix.lower() in (".yaml", ".yml"):
        if input_path is not None:
            values["input"] = input_path if is_url(input_path) else Path(input_path)
        if output_dir is not None:
            values["output_dir"] = output_dir
        config = load_pipeline(Path(target), values)
    else:
        from deeplab_geo.cli.segment import pipeline_for

        source = target if is_url(target) else str(Path(target).resolve())
        folder = (output_dir or Path.cwd()).resolve()
        data = pipeline_for(source, folder, checkpoint, device, tile_size, crf, True, "gpkg",
                            values)
        config = validate_pipeline(data, source="deeplab-geo plan")
    inputs = resolve_inputs(config.input)
    if not is_batch(config.input):
        _show(plan(config, remeasure=remeasure), as_json)
        return
    failed = 0
    for raster in inputs:
        try:
            _show(plan(updated(config, {"input": raster}), remeasure=remeasure), as_json)
        except DeepLabGeoError as exc:
            failed += 1
            click.echo(f"{raster}: Error: {exc}", err=True)
    if failed:
        sys.exit(2)


def _show(run_plan, as_json: bool) -> None:
    click.echo(json.dumps(run_plan.report()) if as_json else run_plan.text())
