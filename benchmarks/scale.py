"""Memory and time on mostly-nodata rasters of growing extent, in a fresh process each.

    python benchmarks/scale.py [--sizes 4096 16384 100000] [--workdir /tmp/scale-bench]
                               [--set KEY=VALUE ...]

Each raster is a VRT of ``size`` x ``size`` pixels whose only source is the demo scene (seed 0,
2048 px, 0.5 m) in its upper-left corner; everything else is nodata, as in rotated satellite
scenes and orthophoto mosaics. ``deeplab-geo run`` runs the bundled demo model with the
library's defaults (tiles 512, overlap 64, batch 4, the dense CRF on, polygons and quicklook
on). Printed: wall time, peak RSS of the largest process and of the whole process tree (CRF
workers included, sampled every 50 ms), and the output sizes on disk.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from measure import measure  # benchmarks/measure.py, beside this script

from deeplab_geo.tools.sample import write_sample


def demo_scene(work: Path) -> Path:
    """The demo scene (seed 0, 2048 px) in ``work/sample``, written once."""
    work.mkdir(parents=True, exist_ok=True)
    scene = work / "sample" / "orthophoto.tif"
    if not scene.exists():
        write_sample(work / "sample", seed=0, size=2048)
    return scene


def corner_vrt(path: Path, size: int, source: Path) -> Path:
    """A ``size`` px square VRT holding ``source`` in its upper-left corner (nodata 0)."""
    import rasterio

    with rasterio.open(source) as ds:
        crs, transform = ds.crs.to_wkt(), ds.transform.to_gdal()
        width, height, count = ds.width, ds.height, ds.count
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><NoDataValue>0</NoDataValue>'
        f'<SimpleSource><SourceFilename relativeToVRT="0">{source}</SourceFilename>'
        f'<SourceBand>{b}</SourceBand><SrcRect xOff="0" yOff="0" xSize="{width}" '
        f'ySize="{height}"/><DstRect xOff="0" yOff="0" xSize="{width}" ySize="{height}"/>'
        "</SimpleSource></VRTRasterBand>" for b in range(1, count + 1))
    path.write_text(f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}"><SRS>{crs}</SRS>'
                    f"<GeoTransform>{', '.join(map(repr, transform))}</GeoTransform>{bands}"
                    "</VRTDataset>", encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 100_000])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/scale-bench"))
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    work = args.workdir
    scene = demo_scene(work)
    print("| raster | data | wall s | tiles | peak RSS MB (largest process) | "
          "peak RSS MB (process tree) | classes MB | confidence MB | polygons |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        vrt = corner_vrt(work / f"mosaic_{size}.vrt", size, scene)
        out = work / f"out_{size}"
        shutil.rmtree(out, ignore_errors=True)
        pipeline = work / f"scale_{size}.yaml"
        pipeline.write_text(f"input: {vrt}\noutput_dir: {out}\n", encoding="utf-8")
        command = [sys.executable, "-c", "from deeplab_geo.cli import main; main()", "run",
                   str(pipeline), "--quiet"]
        for item in args.sets:
            command += ["--set", item]
        m = measure(command)
        if m.returncode != 0:
            raise SystemExit(m.stderr)
        report = json.loads((out / "run.json").read_text())
        sizes = {key: (out / f"mosaic_{size}_{key}.tif").stat().st_size / 2**20
                 for key in ("classes", "confidence")}
        print(f"| {size} x {size} | 2048 x 2048 corner | {m.wall_s:.1f} | "
              f"{report['raster']['tiles']} | {m.peak_rss_mb:.0f} | {m.tree_rss_mb:.0f} | "
              f"{sizes['classes']:.1f} | {sizes['confidence']:.1f} | {report['polygons']} |",
              flush=True)
        print(f"<!-- {size}: {report['timings_s']} -->", flush=True)


if __name__ == "__main__":
    main()
