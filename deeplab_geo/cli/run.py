"""``deeplab-geo run``: run a pipeline YAML end to end.

Examples::

    deeplab-geo run pipelines/landcover.yaml
    deeplab-geo run pipelines/landcover.yaml --input scene.tif --output-dir out/scene
    deeplab-geo run pipelines/landcover.yaml --set crf.enabled=false --set model.device=cpu
    deeplab-geo run pipelines/landcover.yaml --scheduler tcp://10.0.0.5:8786
    deeplab-geo run pipelines/landcover.yaml --set cluster.local_workers=2
"""

from __future__ import annotations

from pathlib import Path

import click

from deeplab_geo.cli._common import (
    parse_overrides,
    progress_factory,
    progress_option,
    reports_errors,
    show_log_messages,
)


@click.command("run")
@click.argument("pipeline", type=click.Path(path_type=Path))
@click.option("--input", "input_path", type=click.Path(path_type=Path),
              help="Raster to segment (overrides the pipeline's input).")
@click.option("--output-dir", type=click.Path(path_type=Path),
              help="Where outputs go (overrides the pipeline's output_dir).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any pipeline key, e.g. --set tiling.tile_size=256 (repeatable).")
@click.option("--scheduler", metavar="ADDRESS",
              help="Run on this dask.distributed scheduler, e.g. tcp://10.0.0.5:8786 "
                   "(= --set cluster.address=ADDRESS).")
@progress_option
@reports_errors
def command(pipeline: Path, input_path: Path | None, output_dir: Path | None,
            overrides: tuple[str, ...], scheduler: str | None, progress_style: str,
            quiet: bool) -> None:
    """Segment the raster named in PIPELINE (a YAML file) and write maps and polygons.

    Relative paths inside the YAML file resolve against the folder that holds it; paths given
    on the command line resolve against the working directory.
    """
    from deeplab_geo.config import load_pipeline
    from deeplab_geo.pipeline import run

    values = parse_overrides(overrides)
    if input_path is not None:
        values["input"] = input_path
    if output_dir is not None:
        values["output_dir"] = output_dir
    if scheduler is not None:
        values["cluster.address"] = scheduler
    if not quiet and progress_style != "none":
        show_log_messages()
    config = load_pipeline(pipeline, values)
    progress = progress_factory("none" if quiet else progress_style, "tile")
    result = run(config, progress=progress)
    report = result.report
    click.echo(f"Segmented {config.input.name}: {report['raster']['width']} x "
               f"{report['raster']['height']} px, {report['raster']['tiles']} tiles in "
               f"{report['timings_s']['total']:.1f} s")
    for key, path in result.outputs.items():
        click.echo(f"  {key:<11} {path}")
