"""How closely a tiled run agrees with one whole-image prediction of the same model.

    python benchmarks/agreement.py [--size 2048] [--width W]
                                   [--tiles 256/auto 512/auto 512/64 1024/auto]
                                   [--checkpoint builtin:landcover-demo] [--global-pooling]

The demo scene (seed 0, ``--size`` px high and ``--width`` wide; 2048 is the bundled sample)
is predicted once whole by the backend ``model.backend: auto`` picks (padded at its bottom
and right to the model's alignment, as the pipeline pads every tile), then run through
``deeplab_geo.pipeline.runner.run`` with the same backend, CRF and polygons off, at each tile size /
overlap (``auto``: the model's own). The figure is the share of pixels whose class equals the
whole-image argmax. The tile and the smallest overlap actually used (tiles may grow to hold
an automatic overlap, and spread so that overlaps exceed the one asked for) are printed.
``--global-pooling`` also measures the checkpoint with its pooling window removed.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from deeplab_geo.config import validate_pipeline
from deeplab_geo.models.checkpoint import load_checkpoint, save_checkpoint
from deeplab_geo.pipeline.runner import run
from deeplab_geo.plugins import choose_backend, get_backend
from deeplab_geo.raster.tiling import axis_spans
from deeplab_geo.tools.sample import PIXEL_M, synthesize_scene


def agreement(raster: Path, image: np.ndarray, checkpoint: str, tiles: list[tuple[int, str]],
              workdir: Path) -> list[tuple[int, str, int, int, float]]:
    backend = choose_backend("auto", "cpu")
    predictor = get_backend(backend).load(checkpoint, device="cpu")
    align = predictor.info.alignment
    height, width = image.shape[-2:]
    padded = np.pad(image, [(0, 0), (0, -height % align), (0, -width % align)], mode="edge")
    whole = predictor.predict(padded[None].astype(np.float32))[0].argmax(0)[:height, :width]
    rows = []
    for tile, overlap in tiles:
        config = validate_pipeline({
            "input": str(raster), "output_dir": str(workdir / f"run-{tile}-{overlap}"),
            "model": {"checkpoint": checkpoint, "backend": backend, "device": "cpu"},
            "tiling": {"tile_size": tile,
                       "overlap": overlap if overlap == "auto" else int(overlap)},
            "crf": {"enabled": False}, "vectorize": {"enabled": False}})
        result = run(config)
        with rasterio.open(result.outputs["classes"]) as src:
            classes = src.read(1)
        windows = result.report["windows"]
        spans = [t for t, _ in axis_spans(width, windows["tile_px"], windows["overlap_px"],
                                          windows["align_px"])]
        used = min((a.stop - b.start for a, b in zip(spans, spans[1:])), default=0)
        rows.append((tile, str(overlap), windows["tile_px"], used,
                     float((classes == whole).mean())))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--width", type=int, help="scene width (default: --size)")
    parser.add_argument("--tiles", nargs="+",
                        default=["256/auto", "512/auto", "512/64", "1024/128", "1024/auto"],
                        help="tile_size/overlap pairs (overlap: pixels or auto)")
    parser.add_argument("--checkpoint", default="builtin:landcover-demo")
    parser.add_argument("--global-pooling", action="store_true",
                        help="also measure the checkpoint with global pooling")
    args = parser.parse_args()
    tiles = [(int(pair.split("/")[0]), pair.split("/")[1]) for pair in args.tiles]
    width = args.width or args.size
    image, _ = synthesize_scene(0, max(args.size, width))
    image = np.ascontiguousarray(image[:, :args.size, :width])
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        raster = workdir / "scene.tif"
        with rasterio.open(raster, "w", driver="GTiff", width=width, height=args.size,
                           count=image.shape[0], dtype=image.dtype, crs="EPSG:32633",
                           transform=from_origin(500000, 5500000, PIXEL_M, PIXEL_M)) as dst:
            dst.write(image)
        models = {"as shipped": args.checkpoint}
        if args.global_pooling:
            model, info = load_checkpoint(args.checkpoint)
            options = {k: v for k, v in info.options.items() if k != "pooling_window"}
            models["global pooling"] = str(save_checkpoint(
                model, dataclasses.replace(info, options=options), workdir / "global.safetensors"))
        print(f"scene seed 0, {args.size} x {width} px, checkpoint {args.checkpoint}, CRF off\n")
        print("| model | tile asked | overlap asked | tile used | overlap used "
              "| pixels equal to whole image |")
        print("|---|---|---|---|---|---|")
        for label, checkpoint in models.items():
            for tile, overlap, tile_used, used, share in agreement(raster, image, checkpoint,
                                                                   tiles, workdir):
                print(f"| {label} | {tile} | {overlap} | {tile_used} | {used} | {share:.4%} |",
                      flush=True)


if __name__ == "__main__":
    main()
