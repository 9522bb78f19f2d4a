"""The xarray path: agreement with `deeplab-geo run`, and memory on lazy arrays larger than RAM.

    python benchmarks/xarray_lazy.py [--sizes 16384 100000] [--workdir /tmp/xarray-bench]
                                     [--skip-agreement]

1. Agreement: the demo scene (seed 0, 2048 px) through ``pipelines/landcover.yaml``'s settings
   (tiles 512, overlap 64, dense CRF on), once with ``deeplab-geo run`` and once as
   ``rioxarray.open_rasterio(..., chunks=...)`` -> ``.deeplab.segment(pipeline=...)``, at two
   input chunkings; printed: the share of pixels whose class agrees.
2. Memory: for each size, a VRT of ``size`` x ``size`` px holding the demo scene in its
   upper-left corner and nodata elsewhere (``benchmarks/scale.py``'s mosaics) is opened lazily
   with rioxarray (1024 px chunks), segmented with the demo model (CRF on) and written with
   :func:`deeplab_geo.xarray.write` (COGs and a GeoPackage), in a fresh process. Printed: the
   array's size in memory terms, wall time and peak RSS (largest process and process tree).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from measure import measure  # benchmarks/measure.py, beside this script
from scale import corner_vrt, demo_scene

ROOT = Path(__file__).resolve().parents[1]

_LAZY = """
import sys, time, rioxarray, deeplab_geo.xarray as dx
vrt, out = sys.argv[1], sys.argv[2]
started = time.perf_counter()
image = rioxarray.open_rasterio(vrt, chunks={"x": 1024, "y": 1024}, lock=False)
result = image.deeplab.segment()
graph = time.perf_counter() - started
outputs = dx.write(result, out, stem="lazy")
print(f"{image.nbytes / 2**30:.1f} {graph:.1f}")
"""


def agreement(work: Path, scene: Path) -> None:
    import rasterio
    import rioxarray

    import deeplab_geo.xarray  # noqa: F401 - registers .deeplab
    from deeplab_geo.config import load_pipeline
    from deeplab_geo.pipeline.runner import run

    pipeline = ROOT / "pipelines" / "landcover.yaml"
    config = load_pipeline(pipeline, {"input": scene, "output_dir": work / "agreement"})
    result = run(config)
    with rasterio.open(result.outputs["classes"]) as ds:
        expected = ds.read(1)
    print("| input chunks | pixels agreeing with `deeplab-geo run` |")
    print("|---|---|")
    for chunks in ({"x": 1024, "y": 1024}, {"x": 700, "y": 300}):
        image = rioxarray.open_rasterio(scene, chunks=chunks)
        classes = image.deeplab.segment(pipeline=pipeline).classes.values
        share = float((classes == expected).mean())
        print(f"| {chunks['y']} x {chunks['x']} | {share:.5f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16384, 100_000])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/xarray-bench"))
    parser.add_argument("--skip-agreement", action="store_true")
    args = parser.parse_args()
    work = args.workdir
    scene = demo_scene(work)
    if not args.skip_agreement:
        agreement(work, scene)
    print()
    print("| lazy array | in memory GiB | wall s | graph built s | peak RSS MB (largest "
          "process) | peak RSS MB (process tree) |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        vrt = corner_vrt(work / f"mosaic_{size}.vrt", size, scene)
        out = work / f"lazy_{size}"
        shutil.rmtree(out, ignore_errors=True)
        m = measure([sys.executable, "-c", _LAZY, str(vrt), str(out)])
        if m.returncode != 0:
            raise SystemExit(m.stderr)
        gib, graph = m.stdout.split()[-2:]
        print(f"| {size} x {size} x 3 uint8, 2048 px corner of data | {gib} | {m.wall_s:.1f} | "
              f"{graph} | {m.peak_rss_mb:.0f} | {m.tree_rss_mb:.0f} |", flush=True)


if __name__ == "__main__":
    main()
