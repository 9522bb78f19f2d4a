"""``deeplab-geo sample``: write a synthetic land-cover scene with its ground truth.

Example::

    deeplab-geo sample --out data/sample --seed 0 --size 2048
"""

from __future__ import annotations

from pathlib import Path

import click

from deeplab_geo.cli._common import reports_errors


@click.command("sample")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder for orthophoto.tif, labels.tif and labels.gpkg.")
@click.option("--seed", default=0, show_default=True, help="Scene seed (0 = the demo scene).")
@click.option("--size", default=2048, show_default=True, type=click.IntRange(32, 65536),
              help="Width and height in pixels (0.5 m each).")
@reports_errors
def command(out_dir: Path, seed: int, size: int) -> None:
    """Generate a deterministic synthetic orthophoto (EPSG:32633, 0.5 m) and its labels."""
    from deeplab_geo.sample import write_sample

    for path in write_sample(out_dir, seed=seed, size=size).values():
        click.echo(path)
