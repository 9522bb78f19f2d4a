"""Vectorizer against one ``rasterio.features.shapes`` call over the whole array.

    python benchmarks/vectorize.py [--size 8192] [--noise 0.1] [--out /tmp/vectorize-bench]
                                   [--rasters clean noisy] [--methods ...]

Two class rasters of ``size`` x ``size`` pixels (6 classes, tiled 512 px GeoTIFFs like the
pipeline's, 0.5 m pixels in EPSG:32633) are generated strip by strip: a *clean* one (smooth
blobs, a few thousand regions) and a *noisy* one (the same with ``noise`` of the pixels set to a
random class, as an unfiltered per-pixel classifier gives). Each method then runs in its own
process, so that its peak resident memory (``ru_maxrss``) is its own:

* ``shapes -> polygons``: read the whole band, one ``shapes(connectivity=8)`` call, one shapely
  geometry per feature (what a script usually does);
* ``shapes -> gpkg``: the same, written with its class id to a GeoPackage by GeoPandas/pyogrio;
* ``ours -> polygons``: :func:`deeplab_geo.vectorize.regions.iter_regions` (strips, exact joins
  across strips, valid geometries in map coordinates, no attributes; on 2 cores one helper
  process labels and traces strips too);
* ``ours -> gpkg``: :func:`deeplab_geo.vectorize.vectorize`, all attributes, spatial index,
  atomic write.

Printed: a Markdown table of wall time (imports excluded, as they are paid once per process),
peak RSS (the method's process plus any helper processes it started, summed) and feature count
per raster and method. The
feature counts differ where GDAL's single call splits nothing but its 8-connected polygons are
invalid (self-touching rings); ours are made valid at the same area.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
import rasterio.features
from rasterio.transform import from_origin
from rasterio.windows import Window

CLASSES = 6
METHODS = ("shapes -> polygons", "shapes -> gpkg", "ours -> polygons", "ours -> gpkg")


def write_class_raster(path: Path, size: int, noise: float, seed: int = 0) -> None:
    """Smooth blobs (argmax of 6 random sums of sinusoids), plus optional per-pixel noise."""
    rng = np.random.default_rng(seed)
    freq = rng.uniform(0.004, 0.02, size=(CLASSES, 6, 2)) * rng.choice([-1, 1], (CLASSES, 6, 2))
    phase = rng.uniform(0, 2 * np.pi, size=(CLASSES, 6))
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 1, "dtype": "uint8",
               "nodata": 255, "crs": "EPSG:32633", "transform": from_origin(500000, 5500000,
                                                                             0.5, 0.5),
               "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate",
               "BIGTIFF": "IF_SAFER"}
    cols = np.arange(size, dtype=np.float32)
    with rasterio.open(path, "w", **profile) as ds:
        for row0 in range(0, size, 512):
            rows = np.arange(row0, min(row0 + 512, size), dtype=np.float32)
            field = np.zeros((CLASSES, len(rows), size), np.float32)
            for c in range(CLASSES):
                for j in range(6):
                    field[c] += np.sin(freq[c, j, 0] * cols[None] + freq[c, j, 1] * rows[:, None]
                                       + phase[c, j])
            classes = field.argmax(0).astype(np.uint8)
            if noise > 0:
                strip_rng = np.random.default_rng([seed, row0])
                flip = strip_rng.random(classes.shape) < noise
                classes[flip] = strip_rng.integers(0, CLASSES, int(flip.sum()))
            ds.write(classes[None], window=Window(0, row0, size, len(rows)))


def run_method(method: str, raster: Path, out: Path) -> dict:
    """Run one method in this process; return its wall time (imports excluded), feature
    count, and the peak RSS of the helper processes it started."""
    import multiprocessing

    import geopandas as gpd
    import shapely.geometry

    from deeplab_geo.vectorize import vectorize
    from deeplab_geo.vectorize.regions import iter_regions

    start = time.perf_counter()
    if method.startswith("shapes"):
        with rasterio.open(raster) as ds:
            array = ds.read(1)
            shapes = rasterio.features.shapes(array, mask=array != ds.nodata, connectivity=8,
                                              transform=ds.transform)
            geoms, values = [], []
            for geom, value in shapes:
                geoms.append(shapely.geometry.shape(geom))
                values.append(int(value))
            crs = ds.crs
        count = len(geoms)
        if method.endswith("gpkg"):
            frame = gpd.GeoDataFrame({"class_id": values}, geometry=geoms, crs=crs)
            frame.to_file(out, layer="landcover", engine="pyogrio")
    else:
        names = [f"class{i}" for i in range(CLASSES)]
        if method.endswith("gpkg"):
            count = vectorize(raster, out, class_names=names).polygons
        else:
            count = 0
            with rasterio.open(raster) as ds:
                for batch in iter_regions(ds):
                    count += len(batch)
    wall = time.perf_counter() - start
    helpers_mb = sum(_peak_rss_mb(p.pid) for p in multiprocessing.active_children())
    return {"wall_s": wall, "features": count, "helpers_mb": helpers_mb}


def _peak_rss_mb(pid: int) -> float:
    """A live process's peak resident memory (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(method: str, raster: Path, out: Path) -> dict:
    """Run a method in a child process; add its peak RSS."""
    out.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, __file__, "--child", method, str(raster), str(out)],
                            stdout=subprocess.PIPE, text=True)
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{method} failed on {raster.name}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["peak_rss_mb"] = usage.ru_maxrss / 1024 + result.pop("helpers_mb")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--out", type=Path, default=Path("/tmp/vectorize-bench"))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--rasters", nargs="+", default=["clean", "noisy"],
                        choices=["clean", "noisy"])
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "RASTER", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, raster, out = args.child
        print(json.dumps(run_method(method, Path(raster), Path(out))))
        return

    args.out.mkdir(parents=True, exist_ok=True)
    rasters = {name: args.out / f"{name}_{args.size}.tif" for name in args.rasters}
    for name, path in rasters.items():
        if not path.exists():
            write_class_raster(path, args.size, args.noise if name == "noisy" else 0.0)
    print(f"{args.size} x {args.size} px, {CLASSES} classes, noise {args.noise:.0%}; "
          f"{os.cpu_count()} CPUs\n")
    print("| raster | method | wall (s) | peak RSS (MB) | features |")
    print("|---|---|---:|---:|---:|")
    for name, path in rasters.items():
        for method in args.methods:
            r = measure(method, path, args.out / f"{name}.gpkg")
            print(f"| {name} | {method} | {r['wall_s']:.1f} | {r['peak_rss_mb']:.0f} | "
                  f"{r['features']:,} |", flush=True)


if __name__ == "__main__":
    main()
