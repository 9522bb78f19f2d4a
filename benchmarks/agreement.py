"""How closely a tiled run agrees with one whole-image prediction of the same model.

    python benchmarks/agreement.py [--size 2048] [--tiles 512/64 1024/128 1024/256]
                                   [--checkpoint builtin:landcover-demo] [--global-pooling]

The demo scene (seed 0, ``--size`` px; 2048 is the bundled sample) is predicted once whole by
the backend ``model.backend: auto`` picks, then run through ``deeplab_geo.pipeline.run`` with
the same backend, CRF and polygons off, at each tile size / overlap. The figure is the share of
pixels whose class equals the whole-image argmax. Tiles are spread evenly (see
``deeplab_geo.tiling``), so the overlap actually used can exceed the one asked for; both are
printed. ``--global-pooling`` also measures the checkpoint with its pooling window removed.
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
from deeplab_geo.pipeline import run
from deeplab_geo.plugins import choose_backend, get_backend
from deeplab_geo.sample import PIXEL_M, synthesize_scene
from deeplab_geo.tiling import axis_spans


def agreement(raster: Path, image: np.ndarray, checkpoint: str, tiles: list[tuple[int, int]],
              workdir: Path) -> list[tuple[int, int, int, float]]:
    backend = choose_backend("auto", "cpu")
    whole = get_backend(backend).load(checkpoint, device="cpu").predict(
        image[None].astype(np.float32))[0].argmax(0)
    rows = []
    for tile, overlap in tiles:
        config = validate_pipeline({
            "input": str(raster), "output_dir": str(workdir / f"run-{tile}-{overlap}"),
            "model": {"checkpoint": checkpoint, "backend": backend, "device": "cpu"},
            "tiling": {"tile_size": tile, "overlap": overlap},
            "crf": {"enabled": False}, "vectorize": {"enabled": False}})
        with rasterio.open(run(config).outputs["classes"]) as src:
            classes = src.read(1)
        spans = [t for t, _ in axis_spans(image.shape[-1], tile, overlap)]
        used = min((a.stop - b.start for a, b in zip(spans, spans[1:])), default=0)
        rows.append((tile, overlap, used, float((classes == whole).mean())))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--tiles", nargs="+", default=["512/64", "1024/128", "1024/256"],
                        help="tile_size/overlap pairs")
    parser.add_argument("--checkpoint", default="builtin:landcover-demo")
    parser.add_argument("--global-pooling", action="store_true",
                        help="also measure the checkpoint with global pooling")
    args = parser.parse_args()
    tiles = [tuple(int(v) for v in pair.split("/")) for pair in args.tiles]
    image, _ = synthesize_scene(0, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        raster = workdir / "scene.tif"
        with rasterio.open(raster, "w", driver="GTiff", width=args.size, height=args.size,
                           count=image.shape[0], dtype=image.dtype, crs="EPSG:32633",
                           transform=from_origin(500000, 5500000, PIXEL_M, PIXEL_M)) as dst:
            dst.write(image)
        models = {"as shipped": args.checkpoint}
        if args.global_pooling:
            model, info = load_checkpoint(args.checkpoint)
            options = {k: v for k, v in info.options.items() if k != "pooling_window"}
            models["global pooling"] = str(save_checkpoint(
                model, dataclasses.replace(info, options=options), workdir / "global.safetensors"))
        print(f"scene seed 0, {args.size} px, checkpoint {args.checkpoint}, CRF off\n")
        print("| model | tiles | overlap asked | overlap used | pixels equal to whole image |")
        print("|---|---|---|---|---|")
        for label, checkpoint in models.items():
            for tile, overlap, used, share in agreement(raster, image, checkpoint, tiles, workdir):
                print(f"| {label} | {tile} | {overlap} | {used} | {share:.4%} |", flush=True)


if __name__ == "__main__":
    main()
