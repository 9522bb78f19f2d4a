"""Dense CRF: throughput per refiner and the paper's claim (CRF improves mIoU and boundaries).

    python benchmarks/crf.py [--checkpoint builtin:landcover-demo] [--size 2048] [--seed 0]

The held-out demo scene (seed 0) is cut into the pipeline's tiles (512 px, overlap 64), the
network's probabilities are computed once, then each refiner processes the same tiles. Printed:
Mpx/s of each refiner (tile pixels, overlap included) and, for the stitched cores, mIoU and
boundary F-score (2 px) against the ground truth without and with each refiner.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from deeplab_geo.config import CRFSettings
from deeplab_geo.crf import colour_features, refine_many
from deeplab_geo.metrics import boundary_counts, boundary_f_score, confusion_matrix, scores
from deeplab_geo.plugins import get_backend
from deeplab_geo.sample import synthesize_scene
from deeplab_geo.tiling import batched, tile_grid


def stitch(grid, probs, size):
    classes = np.empty((size, size), np.uint8)
    for tile, p in zip(grid, probs):
        rows, cols = tile.core_slices
        core = tile.core_window
        classes[core.row_off:core.row_off + core.height,
                core.col_off:core.col_off + core.width] = p[:, rows, cols].argmax(0)
    return classes


def quality(classes, labels, num_classes):
    miou = scores(confusion_matrix(classes, labels, num_classes)).miou
    return miou, boundary_f_score(boundary_counts(classes, labels, 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="builtin:landcover-demo")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()

    image, labels = synthesize_scene(args.seed, args.size)
    grid = tile_grid(args.size, args.size, 512, 64)
    predictor = get_backend("torch").load(args.checkpoint, device="cpu")
    tiles = [image[:, t.row.start:t.row.stop, t.col.start:t.col.stop] for t in grid]
    probs = []
    for batch in batched(tiles, 4):
        probs.extend(predictor.predict(np.stack(batch).astype(np.float32)))
    n_classes = probs[0].shape[0]
    pairs = [(p, colour_features(t)) for p, t in zip(probs, tiles)]
    megapixels = sum(t.shape[1] * t.shape[2] for t in tiles) / 1e6
    settings = CRFSettings()

    rows = [("none (network only)", None, *quality(stitch(grid, probs, args.size), labels,
                                                    n_classes))]
    refine_many(pairs[:2], settings, args.processes)  # start the pool before timing
    for name, processes in (("pydensecrf, 1 process", 1),
                            (f"pydensecrf, {args.processes} processes", args.processes)):
        started = time.perf_counter()
        refined = refine_many(pairs, settings, processes)
        seconds = time.perf_counter() - started
        rows.append((name, megapixels / seconds,
                     *quality(stitch(grid, refined, args.size), labels, n_classes)))

    print(f"scene seed {args.seed}, {args.size} px, {len(grid)} tiles of 512 px "
          f"({megapixels:.1f} Mpx with overlap), {n_classes} classes, CRF {settings}\n")
    print("| refiner | Mpx/s | mIoU | boundary F (2 px) |")
    print("|---|---|---|---|")
    for name, mpx, miou, bf in rows:
        speed = "-" if mpx is None else f"{mpx:.3f}"
        print(f"| {name} | {speed} | {miou:.4f} | {bf:.4f} |")
    single, pooled = rows[1][1], rows[2][1]
    print(f"\nprocess-pool speed-up: {pooled / single:.2f}x")


if __name__ == "__main__":
    main()
