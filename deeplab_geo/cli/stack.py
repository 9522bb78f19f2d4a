"""``deeplab-geo stack``: one multi-band raster (a VRT) from single-band files.

Example::

    deeplab-geo stack scene.vrt LE07_B1.TIF LE07_B2.TIF LE07_B3.TIF LE07_B4.TIF LE07_B5.TIF \\
        LE07_B7.TIF
"""

from __future__ import annotations

from pathlib import Path

import click

from deeplab_geo.cli._common import reports_errors


@click.command("stack")
@click.argument("out", type=click.Path(path_type=Path))
@click.argument("bands", nargs=-1, required=True, type=click.Path(path_type=Path))
@reports_errors
def command(out: Path, bands: tuple[Path, ...]) -> None:
    """Write OUT, a VRT whose band i is band 1 of the i-th of BANDS (as Landsat scenes ship).

    The files must share one grid. Bands read as Float32, whatever their types, and keep each
    file's nodata value; nothing is copied, the VRT points at the files.
    """
    from deeplab_geo.errors import InputError
    from deeplab_geo.raster.io import stack_bands

    if out.suffix.lower() != ".vrt":
        raise InputError(f"{out.name}: the stack is a VRT; name it *.vrt")
    click.echo(stack_bands(list(bands), out))
