"""``deeplab-geo run``: run a pipeline YAML end to end.

Examples::

    deeplab-geo run pipelines/landcover.yaml
    deeplab-geo run pipelines/landcover.yaml --input scene.tif --output-dir out/scene
    deeplab-geo run pipelines/landcover.yaml --set crf.enabled=false --set model.device=cpu
    deeplab-geo run pipelines/landcover.yaml --scheduler tcp://10.0.0.5:8786
    deeplab-geo run pipelines/landcover.yaml --set cluster.local_workers=2
    deeplab-geo run pipelines/landcover.yaml --input 'orthophotos/*.tif' --output-dir out/all
    deeplab-geo run pipelines/landcover.yaml --input orthophotos/ --force
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from deeplab_geo.cli._common import (
    parse_overrides,
    plan_printer,
    progress_factory,
    progress_option,
    reports_errors,
    show_log_messages,
)


@click.command("run")
@click.argument("pipeline", type=click.Path(path_type=Path))
@click.option("--input", "input_path", metavar="PATH|URL",
              help="Raster, folder, glob pattern, .txt list of rasters, STAC Item (.json) or "
                   "https:// URL of a raster or Item (overrides the pipeline's input).")
@click.option("--output-dir", type=click.Path(path_type=Path),
              help="Where outputs go (overrides the pipeline's output_dir).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any pipeline key, e.g. --set tiling.tile_size=256 (repeatable).")
@click.option("--scheduler", metavar="ADDRESS",
              help="Run on this dask.distributed scheduler, e.g. tcp://10.0.0.5:8786 "
                   "(= --set cluster.address=ADDRESS).")
@click.option("--force", is_flag=True,
              help="Redo inputs that the output directory's manifest records as finished.")
@progress_option
@reports_errors
def command(pipeline: Path, input_path: str | None, output_dir: Path | None,
            overrides: tuple[str, ...], scheduler: str | None, force: bool,
            progress_style: str, quiet: bool) -> None:
    """Segment the raster(s) named in PIPELINE (a YAML file) and write maps and polygons.

    The input may be one raster, a folder, a glob pattern or a .txt list of rasters; each gets
    its own outputs. It may also be a STAC Item (.json; name its bands with --set
    stac.assets=[B04,B03,B02]) or the https:// URL of a raster (a COG is read by range
    requests) or of an Item. Inputs finished earlier with the same settings are skipped (see
    output_dir/manifest.json) unless --force. Relative paths inside the YAML file resolve
    against the folder that holds it; paths given on the command line resolve against the
    working directory.
    """
    from deeplab_geo.config import is_url, load_pipeline
    from deeplab_geo.pipeline.batch import run_batch

    values = parse_overrides(overrides)
    if input_path is not None:
        values["input"] = input_path if is_url(input_path) else Path(input_path)
    if output_dir is not None:
        values["output_dir"] = output_dir
    if scheduler is not None:
        values["cluster.address"] = scheduler
    if not quiet and progress_style == "bar":  # JSON progress: stderr is for programs
        show_log_messages()
    config = load_pipeline(pipeline, values)
    progress = progress_factory("none" if quiet else progress_style, "tile")
    result = run_batch(config, force=force, progress=progress, on_outcome=_echo_outcome,
                           on_plan=plan_printer("none" if quiet else progress_style))
    if result.batch:
        counts = {s: sum(o.status == s for o in result.outcomes)
                  for s in ("done", "skipped", "failed")}
        click.echo(f"{len(result.outcomes)} inputs: {counts['done']} done, "
                   f"{counts['skipped']} skipped (finished earlier), {counts['failed']} failed; "
                   f"manifest {config.output_dir / 'manifest.json'}")
        if result.merged is not None:
            click.echo(f"  merged      {result.merged}")
    if result.failed:
        sys.exit(1)


def _echo_outcome(index: int, total: int, outcome, *, err: bool = False) -> None:
    """One input's outcome, for people (``err``: on stderr, where stdout is for programs)."""
    item = outcome.item
    if outcome.status == "skipped":
        click.echo(f"Skipped {item.key}: finished earlier with the same settings "
                   "(--force to redo)", err=err)
    elif outcome.status == "failed":
        click.echo(f"[{index + 1}/{total}] {item.key}: FAILED: {outcome.error}", err=True)
    else:
        raster = outcome.report["raster"]
        prefix = f"[{index + 1}/{total}] " if total > 1 else ""
        click.echo(f"{prefix}Segmented {item.key}: {raster['width']} x {raster['height']} px, "
                   f"{raster['tiles']} tiles in {outcome.seconds:.1f} s", err=err)
        for key, path in outcome.outputs.items():
            click.echo(f"  {key:<11} {path}", err=err)
