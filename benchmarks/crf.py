"""Dense CRF: throughput per refiner and the paper's claim (CRF improves mIoU and boundaries).

    python benchmarks/crf.py [--checkpoint builtin:landcover-demo] [--size 2048] [--seed 0]
                             [--processes 2] [--repeat 1]

The held-out demo scene (seed 0) is cut into the pipeline's tiles (512 px, overlap 64), the
network's probabilities are computed once, then each refiner processes the same tiles:

* pydensecrf in this process, then in a pool of ``--processes`` workers (started before the
  clock runs, as a long pipeline run amortises it; arrays are pickled to them and back);
* the torch refiner on the CPU (``torch.get_num_threads()`` threads; its Gaussian lattice is
  built once, inside the timing), and on CUDA when there is a device.

Printed: Mpx/s (tile pixels, overlap included; the best of ``--repeat`` rounds, each round
timing every refiner once, so that all see similar machine load), mIoU and boundary F-score
(2 px) of the stitched cores against the ground truth without and with each refiner, the
speed-up of the pool over one process, the share of pixels where the torch refiner's labels
equal pydensecrf's, and the load average before and after (other work on the machine skews
the timings).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

import numpy as np
import torch

from deeplab_geo import crf
from deeplab_geo.crf import lattice
from deeplab_geo.plugins import get_backend
from deeplab_geo.raster.tiling import batched, tile_grid
from deeplab_geo.tools.metrics import boundary_counts, boundary_f_score, confusion_matrix, scores
from deeplab_geo.tools.sample import synthesize_scene


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


def timed(pairs, settings, processes):
    started = time.perf_counter()
    refined = crf.refine_many(pairs, settings, processes)
    return refined, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="builtin:landcover-demo")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="rounds; the best time counts")
    args = parser.parse_args()
    load_before = os.getloadavg()

    image, labels = synthesize_scene(args.seed, args.size)
    grid = tile_grid(args.size, args.size, 512, 64)
    predictor = get_backend("torch").load(args.checkpoint, device="cpu")
    tiles = [image[:, t.row.start:t.row.stop, t.col.start:t.col.stop] for t in grid]
    probs = []
    for batch in batched(tiles, 4):
        probs.extend(predictor.predict(np.stack(batch).astype(np.float32)))
    n_classes = probs[0].shape[0]
    pairs = [(p, crf.colour_features(t)) for p, t in zip(probs, tiles)]
    megapixels = sum(t.shape[1] * t.shape[2] for t in tiles) / 1e6
    settings = crf.CRFParams()

    runs = [("pydensecrf, 1 process", settings, 1)]
    crf.start_pool(args.processes)
    runs.append((f"pydensecrf, {args.processes} processes", settings, args.processes))
    runs.append((f"torch, CPU ({torch.get_num_threads()} threads)",
                 replace(settings, refiner="torch", device="cpu"), 1))
    if torch.cuda.is_available():
        runs.append((f"torch, {torch.cuda.get_device_name()}",
                     replace(settings, refiner="torch", device="cuda"), 1))

    best: dict[str, float] = {}
    labels_of: dict[str, np.ndarray] = {}
    for _ in range(args.repeat):
        for name, run_settings, processes in runs:
            lattice.forget_lattices()
            if run_settings.device == "cuda":
                timed(pairs[:1], run_settings, 1)  # CUDA context and kernels, not timed
            refined, seconds = timed(pairs, run_settings, processes)
            best[name] = min(seconds, best.get(name, seconds))
            labels_of[name] = stitch(grid, refined, args.size)
    rows = [("none (network only)", None, *quality(stitch(grid, probs, args.size), labels,
                                                    n_classes))]
    rows += [(name, megapixels / best[name], *quality(labels_of[name], labels, n_classes))
             for name, _, _ in runs]

    print(f"scene seed {args.seed}, {args.size} px, {len(grid)} tiles of 512 px "
          f"({megapixels:.1f} Mpx with overlap), {n_classes} classes, CRF {settings}\n")
    print("| refiner | Mpx/s | mIoU | boundary F (2 px) |")
    print("|---|---|---|---|")
    for name, mpx, miou, bf in rows:
        speed = "-" if mpx is None else f"{mpx:.3f}"
        print(f"| {name} | {speed} | {miou:.4f} | {bf:.4f} |")
    single, pooled = rows[1][1], rows[2][1]
    print(f"\nprocess-pool speed-up: {pooled / single:.2f}x")
    reference = labels_of[runs[0][0]]
    for name, _, _ in runs:
        if name.startswith("torch"):
            agreement = (labels_of[name] == reference).mean()
            print(f"{name} labels equal to pydensecrf's on {100 * agreement:.3f}% of pixels")
    print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} "
          f"({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
