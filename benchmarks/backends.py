"""Forward throughput of each backend on the same tiles, side by side, in one run.

    python benchmarks/backends.py [--checkpoint builtin:landcover-demo] [--batch 4] [--tile 512]

Tiles are cut from the demo scene (seed 0, generated in memory). For each backend (OpenVINO
at fp32 and, where the CPU has it natively, bf16): Mpx/s of
``predict`` (normalisation and softmax included, as the pipeline calls it), its speed-up over
the eager fp32 baseline (the example plugin ``plugins/example_eager``), and the share of pixels
whose label equals the torch backend's.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "plugins" / "example_eager"))

from deeplab_geo.plugins import (  # noqa: E402
    choose_backend,
    get_backend,
    get_plugin_manager,
    registered_backends,
)
from deeplab_geo.tools.sample import synthesize_scene  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="builtin:landcover-demo")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--batches", type=int, default=4, help="timed batches per backend")
    args = parser.parse_args()

    if "eager" not in registered_backends():
        get_plugin_manager().register(importlib.import_module("deeplab_geo_eager"), "eager")
    image, _ = synthesize_scene(0, 2048)
    n = args.batch * (args.batches + 1)
    rng = np.random.default_rng(0)
    starts = rng.integers(0, 2048 - args.tile, (n, 2))
    tiles = np.stack([image[:, r:r + args.tile, c:c + args.tile] for r, c in starts])
    tiles = tiles.astype(np.float32)
    batches = [tiles[i:i + args.batch] for i in range(0, n, args.batch)]

    runs = [(b, {}) for b in ("eager", "torch", "onnx") if b in registered_backends()]
    if "openvino" in registered_backends():
        from deeplab_geo_openvino import native_precisions

        runs += [("openvino", {"precision": p}) for p in ("fp32", "bf16")
                 if p in native_precisions()]
    rows, labels = [], {}
    for backend, options in runs:
        name = " ".join([backend, *options.values()])
        predictor = get_backend(backend).load(args.checkpoint, device="cpu", **options)
        predictor.predict(batches[0])  # warm-up
        started = time.perf_counter()
        outputs = [predictor.predict(b) for b in batches[1:]]
        seconds = time.perf_counter() - started
        labels[name] = np.concatenate([o.argmax(1) for o in outputs])
        rows.append((name, (n - args.batch) * args.tile**2 / 1e6 / seconds))
    base = dict(rows)["eager"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{args.tile} px tiles, checkpoint {args.checkpoint}; "
          f"model.backend auto picks '{choose_backend('auto', 'cpu')}' on the CPU\n")
    print("| backend | Mpx/s | vs eager fp32 | labels equal to torch |")
    print("|---|---|---|---|")
    for name, mpx in rows:
        agree = (labels[name] == labels["torch"]).mean()
        print(f"| {name} | {mpx:.2f} | {mpx / base:.2f}x | {agree:.4%} |")


if __name__ == "__main__":
    main()
