"""Pipeline throughput against the bare model, and peak memory at two raster sizes.

    python benchmarks/throughput.py [--sizes 4096 16384] [--backend auto] [--workdir DIR]

Rasters are made by mirroring the demo scene (seed 0, 2048 px) into tiled, deflate GeoTIFFs of
each size, written block by block. One run measures, with the same model, tiles and settings
(tile 512, overlap 64, batch 4):

* bare forward: ``predictor.predict`` on batches of tiles already in memory: the ceiling;
* pipeline, CRF off and CRF on, on the smaller raster: ``deeplab-geo run`` in a fresh process;
  Mpx/s over the tile pixels it predicted (overlap included, as the bare forward counts
  them) in its predict stage, and over the raster's pixels for the whole run;
* peak RSS of ``deeplab-geo run`` (CRF off, vectorize and quicklook on) at each size, read from
  the child's rusage; the ratio of the largest to the smallest is the memory-growth figure.
  Also the peak of the summed RSS of the run and its helper processes (CRF pool, vectorize
  helper), sampled every 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from measure import measure  # benchmarks/measure.py, beside this script
from rasterio.transform import from_origin

from deeplab_geo.plugins import choose_backend, get_backend
from deeplab_geo.raster.tiling import batched, tile_grid
from deeplab_geo.tools.sample import PIXEL_M, synthesize_scene

TILE, OVERLAP, BATCH = 512, 64, 4
SCENE = 2048


def mirrored_raster(path: Path, size: int, scene: np.ndarray) -> Path:
    """A ``size`` x ``size`` raster tiling ``scene`` with alternate mirroring (no hard seams)."""
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8",
               "crs": "EPSG:32633", "transform": from_origin(500000, 5500000, PIXEL_M, PIXEL_M),
               "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate"}
    n = scene.shape[-1]
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size, n):
            for col in range(0, size, n):
                block = scene
                if (row // n) % 2:
                    block = block[:, ::-1]
                if (col // n) % 2:
                    block = block[:, :, ::-1]
                h, w = min(n, size - row), min(n, size - col)
                dst.write(np.ascontiguousarray(block[:, :h, :w]),
                          window=((row, row + h), (col, col + w)))
    return path


def bare_forward(raster: Path, backend: str, batches: int) -> float:
    """Mpx/s of the backend's predict on in-memory batches of the pipeline's tiles."""
    predictor = get_backend(backend).load("builtin:landcover-demo", device="cpu")
    with rasterio.open(raster) as ds:
        grid = tile_grid(ds.height, ds.width, TILE, OVERLAP)
        tiles = [ds.read(window=t.read_window).astype(np.float32)
                 for t in grid[: BATCH * (batches + 1)]]
    groups = [np.stack(b) for b in batched(tiles, BATCH) if len(b) == BATCH]
    predictor.predict(groups[0])  # warm-up
    started = time.perf_counter()
    for group in groups[1:]:
        predictor.predict(group)
    seconds = time.perf_counter() - started
    return sum(g.size // 3 for g in groups[1:]) / 1e6 / seconds


def pipeline_run(raster: Path, out: Path, backend: str, *sets: str) -> dict:
    """Run the CLI in a fresh process; its report, with the child's peak RSS in MB."""
    pipeline = out.parent / f"{out.name}.yaml"
    pipeline.write_text(f"input: {raster}\noutput_dir: {out}\n"
                        f"model: {{backend: {backend}, device: cpu, batch_size: {BATCH}}}\n"
                        f"tiling: {{tile_size: {TILE}, overlap: {OVERLAP}}}\n")
    args = [sys.executable, "-c", "from deeplab_geo.cli import main; main()", "run",
            str(pipeline), "--quiet"]
    for item in sets:
        args += ["--set", item]
    measured = measure(args)
    if measured.returncode != 0:
        raise SystemExit(f"pipeline failed: {measured.stderr}")
    report = json.loads((out / "run.json").read_text())
    report["peak_rss_mb"] = measured.peak_rss_mb
    report["tree_rss_mb"] = measured.tree_rss_mb
    return report


def tile_megapixels(size: int) -> float:
    return sum(t.row.size * t.col.size for t in tile_grid(size, size, TILE, OVERLAP)) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--batches", type=int, default=6, help="timed bare-forward batches")
    parser.add_argument("--workdir", type=Path, help="keep rasters and outputs here")
    args = parser.parse_args()
    backend = choose_backend(args.backend, "cpu")
    sizes = sorted(args.sizes)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="deeplab-geo-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    scene, _ = synthesize_scene(0, SCENE)
    rasters = {s: mirrored_raster(work / f"scene_{s}.tif", s, scene) for s in sizes}
    small = sizes[0]
    bare = bare_forward(rasters[small], backend, args.batches)
    runs = {"crf off": pipeline_run(rasters[small], work / f"off_{small}", backend,
                                    "crf.enabled=false"),
            "crf on": pipeline_run(rasters[small], work / f"on_{small}", backend)}
    for size in sizes[1:]:
        runs[f"crf off {size}"] = pipeline_run(rasters[size], work / f"off_{size}", backend,
                                               "crf.enabled=false")

    print(f"backend {backend}, tile {TILE}, overlap {OVERLAP}, batch {BATCH}, "
          f"{os.cpu_count()} CPUs\n")
    print("| measurement | raster | tile Mpx/s (predict stage) | vs bare forward | "
          "raster Mpx/s (whole run) | peak RSS MB | peak RSS MB, with helper processes |")
    print("|---|---|---|---|---|---|---|")
    print(f"| bare forward | - | {bare:.3f} | 1.00 | - | - | - |")
    for name, report in runs.items():
        size = report["raster"]["width"]
        stage = tile_megapixels(size) / report["timings_s"]["predict_and_refine"]
        whole = size * size / 1e6 / report["timings_s"]["total"]
        print(f"| pipeline, {name.split(' ')[0]} {name.split(' ')[1]} | {size} | "
              f"{stage:.3f} | {stage / bare:.2f} | {whole:.3f} | "
              f"{report['peak_rss_mb']:.0f} | {report['tree_rss_mb']:.0f} |")
    for key, label in (("peak_rss_mb", "peak RSS"), ("tree_rss_mb", "peak RSS with helpers")):
        rss = {r["raster"]["width"]: r[key] for n, r in runs.items() if "off" in n}
        print(f"\n{label} {sizes[-1]} px / {small} px (CRF off): "
              f"{rss[sizes[-1]] / rss[small]:.2f}x", end="")
    print()
    for name, report in runs.items():
        print(f"{name} ({report['raster']['width']} px) stage timings: {report['timings_s']}")


if __name__ == "__main__":
    main()
