"""``deeplab-geo quantize``: an INT8 model for the ``openvino`` backend, checked against fp32.

Examples::

    deeplab-geo quantize builtin:landcover-demo --calibration data/chips/orthophoto.tif \\
        --out models/landcover-demo-int8
    deeplab-geo run pipelines/landcover.yaml --set model.backend=openvino \\
        --set model.checkpoint=models/landcover-demo-int8/model.xml
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

from deeplab_geo.cli._common import reports_errors


@click.command("quantize")
@click.argument("checkpoint")
@click.option("--calibration", "rasters", multiple=True, required=True, metavar="RASTER",
              type=click.Path(path_type=Path),
              help="A raster to draw calibration tiles from (repeatable); not one you score on.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Folder for model.xml, model.bin, model.json and quantize.json.")
@click.option("--tile-size", type=click.IntRange(16, 4096), default=512, show_default=True,
              help="Tile size the model is quantised and checked at (model pixels).")
@click.option("--tiles", type=click.IntRange(4, 10000), default=96, show_default=True,
              help="Tiles drawn; a third are held out to check the result.")
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=0.97, show_default=True,
              help="Share of held-out pixels whose class must equal fp32's, or nothing is "
                   "written.")
@reports_errors
def command(checkpoint: str, rasters: tuple[Path, ...], out: Path, tile_size: int, tiles: int,
            min_agreement: float) -> None:
    """Quantise CHECKPOINT to INT8 with NNCF on tiles of your own rasters.

    The INT8 model's classes are compared with fp32's on held-out tiles; below
    --min-agreement it is refused (exit 2) and nothing is written.
    """
    from deeplab_geo.errors import ConfigError

    try:
        from deeplab_geo_openvino.quantize import quantize
    except ImportError:
        raise ConfigError("quantize needs the openvino backend with NNCF: pip install -e "
                          "'plugins/openvino[quantize]' (make does)") from None
    report = quantize(checkpoint, list(rasters), out, tile=tile_size, tiles=tiles,
                      min_agreement=min_agreement)
    click.echo(json.dumps(asdict(report), indent=2))
    click.echo(f"INT8 model agrees with fp32 on {report.agreement:.2%} of held-out pixels, "
               f"{report.int8_mpx_s / report.fp32_mpx_s:.2f}x its speed: "
               f"{out / 'model.xml'}", err=True)
