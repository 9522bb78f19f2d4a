"""deeplab-geo beside Raster Vision and a bare torch loop, on the same model and scene, in one run.

    python benchmarks/peers.py [--size 8192] [--workdir /tmp/peer-bench]
                               [--peers ../shared/peers] [--rv-python /tmp/peer-rv/bin/python]
                               [--skip-rv] [--rounds N] [--set KEY=VALUE ...]

The harness is ``../shared/peers`` (its README says how to make Raster Vision's virtualenv).
Its ``make_input.py`` writes the scene (3-band uint8, 0.5 m, tiled 512 px) and torchvision's
DeepLabv3-MobileNetV3-Large with 6 classes (seed 0, BatchNorm statistics recalibrated on the
scene). deeplab-geo runs those weights as a checkpoint: the ``.pth`` with a ``.json`` beside it.

Measured, each in a fresh process (wall time, peak RSS of the largest process and of the whole
process tree):

* **backend alone**: deeplab-geo's ONNX backend forwarding the scene's pixels once, as
  non-overlapping 512 px tiles in batches of 8, no reading or writing. Two ways: as the backend
  runs now (a batch split across single-threaded sessions) and as it ran before (one session
  with every core), which is the figure the targets refer to; and split, on 496 px tiles (the
  size deeplab-geo's fitted tiles take on 8192 px; 16 x 16 of them, the time scaled to the
  scene's pixels), because this CPU runs 512 px tiles slower per pixel;
* **deeplab-geo**: ``deeplab-geo run`` with its defaults (tiles 512, overlap 64, batch 4,
  ``backend: auto``), CRF off, polygons on, quicklook off; after one run that exports the
  checkpoint to the ONNX cache, so the figure is a user's second run (the first is shown too);
* **Raster Vision 0.31.1** (``rv_predict.py``: chip 512, stride 448, batch 8);
* **bare torch loop** (``bare_forward.py``: no overlap, no writes).

Printed: a Markdown table and the ratios the targets are stated in. With ``--rounds N`` the
backend alone and deeplab-geo's second run alternate N times (these VMs' speed drifts by 10-20%
within minutes), and each round's ratio is printed with their median; the table shows the last
round.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

from measure import measure  # benchmarks/measure.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
FITTED = 496  # the size deeplab-geo's 512 px tiles shrink to on 8192 px (raster.tiling)
WEIGHTS = "deeplab_mnv3_c6_seed0_bncal.pth"
SIDECAR = {
    "format": "deeplab-geo/1", "architecture": "deeplabv3_mobilenet_v3_large",
    "num_classes": 6, "in_channels": 3, "output_stride": 16,
    "classes": [f"class {i}" for i in range(6)],
    "colours": [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255],
                [255, 0, 255]],
    "normalization": {"scale": 255.0, "mean": [0, 0, 0], "std": [1, 1, 1]}, "options": {},
}

BACKEND_ALONE = textwrap.dedent("""
    import json, sys, time
    import numpy as np, onnxruntime as ort, rasterio
    from rasterio.windows import Window
    from deeplab_geo.plugins import get_backend
    raster, weights, mode, size = *sys.argv[1:4], int(sys.argv[4])
    predictor = get_backend("onnx").load(weights, device="cpu")
    if mode == "one-session":  # the backend as it was: one session using every core
        session = predictor._whole
        run = lambda x: session.run(["probabilities"], {"pixels": x})[0]
    else:
        run = predictor.predict
    with rasterio.open(raster) as ds:
        windows = [Window(c, r, size, size) for r in range(0, ds.height - size + 1, size)
                   for c in range(0, ds.width - size + 1, size)]
        tiles = np.stack([ds.read(window=w) for w in windows]).astype(np.float32)
    run(tiles[:8])  # warm-up
    started = time.perf_counter()
    for i in range(0, len(tiles), 8):
        run(tiles[i:i + 8])
    seconds = time.perf_counter() - started  # scaled to the scene's pixels once
    seconds *= ds.width * ds.height / tiles[:, 0].size
    print(json.dumps({"seconds": seconds, "mpx": tiles[:, 0].size / 1e6}))
""")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/peer-bench"))
    parser.add_argument("--peers", type=Path, default=ROOT.parent / "shared" / "peers")
    parser.add_argument("--rv-python", type=Path, default=Path("/tmp/peer-rv/bin/python"))
    parser.add_argument("--skip-rv", action="store_true", help="leave Raster Vision out")
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate the backend alone and deeplab-geo this many times")
    parser.add_argument("--set", dest="sets", action="append", default=[],
                        help="pipeline override for the deeplab-geo run")
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    scene = work / f"scene_{args.size}.tif"
    weights = work / WEIGHTS
    if not scene.exists() or not weights.exists():
        subprocess.run([sys.executable, str(args.peers / "make_input.py"), str(args.size),
                        "--bncal", "--outdir", str(work)], check=True)
    weights.with_suffix(".json").write_text(json.dumps(SIDECAR), encoding="utf-8")
    env = {**os.environ, "DEEPLAB_GEO_CACHE": str(work / "cache")}

    pipeline = work / "deeplab-geo.yaml"
    pipeline.write_text(f"input: {scene}\noutput_dir: {work / 'dg_out'}\n"
                        f"model: {{checkpoint: {weights}, device: cpu}}\n"
                        "crf: {enabled: false}\nquicklook: false\n", encoding="utf-8")
    first = "deeplab-geo (first run: exports the model)"
    shutil.rmtree(work / "cache", ignore_errors=True)
    runs = {first: _deeplab_geo(work, pipeline, args.sets, env)}
    ratios: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        rows = _backend_alone(scene, weights, env)
        runs["deeplab-geo"] = _deeplab_geo(work, pipeline, args.sets, env)
        for name, row in rows.items():
            ratios.setdefault(name, []).append(row["seconds"] / runs["deeplab-geo"].wall_s)
    report = json.loads((work / "dg_out" / "run.json").read_text())

    peers = {}
    python = args.rv_python if args.rv_python.exists() else Path(sys.executable)
    if not args.skip_rv and args.rv_python.exists():
        out = work / "rv_out"
        shutil.rmtree(out, ignore_errors=True)
        peers["Raster Vision 0.31.1"] = _peer(python, args.peers / "rv_predict.py", scene,
                                              weights, out)
    peers["bare torch loop"] = _peer(python, args.peers / "bare_forward.py", scene, weights)

    mpx = args.size ** 2 / 1e6
    print(f"{args.size} x {args.size} px scene ({mpx:.1f} Mpx), {os.cpu_count()} CPUs\n")
    print("| run | wall s | Mpx/s end to end | peak RSS MB (largest process) | "
          "peak RSS MB (process tree) | polygons |")
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name}: forward only | {row['seconds']:.1f} | {mpx / row['seconds']:.2f} "
              "| - | - | - |")
    for name, m in runs.items():
        polygons = report["polygons"] if name == "deeplab-geo" else "-"
        print(f"| {name} | {m.wall_s:.1f} | {mpx / m.wall_s:.2f} | {m.peak_rss_mb:.0f} | "
              f"{m.tree_rss_mb:.0f} | {polygons} |")
    for name, (m, result) in peers.items():
        polygons = sum(result.get("n_polygons", {}).values()) or "-"
        print(f"| {name} | {m.wall_s:.1f} | {mpx / m.wall_s:.2f} | {m.peak_rss_mb:.0f} | "
              f"{m.tree_rss_mb:.0f} | {polygons} |")
    ours = runs["deeplab-geo"]
    print(f"\ndeeplab-geo stages (s): {report['timings_s']}")
    for name, values in ratios.items():
        rounds = ", ".join(f"{value:.2f}" for value in values)
        print(f"end to end / backend alone ({name}): median {statistics.median(values):.2f} "
              f"(rounds: {rounds})")
    if "Raster Vision 0.31.1" in peers:
        rv = peers["Raster Vision 0.31.1"][0]
        print(f"throughput vs Raster Vision: {rv.wall_s / ours.wall_s:.2f}x; peak RSS vs "
              f"Raster Vision: {ours.peak_rss_mb / rv.peak_rss_mb:.2f}x (largest process), "
              f"{ours.tree_rss_mb / rv.tree_rss_mb:.2f}x (process tree)")


def _backend_alone(scene: Path, weights: Path, env: dict[str, str]) -> dict[str, dict]:
    """The backend alone forwarding the scene once, each way, in a fresh process each."""
    rows = {}
    for mode, size in (("one-session", 512), ("split", 512), ("split", FITTED)):
        done = subprocess.run([sys.executable, "-c", BACKEND_ALONE, str(scene), str(weights),
                               mode, str(size)], env=env, capture_output=True, text=True,
                              check=True)
        rows[f"backend alone ({mode}, {size} px tiles)"] = \
            json.loads(done.stdout.strip().splitlines()[-1])
    return rows


def _deeplab_geo(work: Path, pipeline: Path, sets: list[str], env: dict[str, str]):
    """One measured ``deeplab-geo run`` of the pipeline into a fresh output folder."""
    shutil.rmtree(work / "dg_out", ignore_errors=True)
    command = [sys.executable, "-c", "from deeplab_geo.cli import main; main()", "run",
               str(pipeline), "--quiet"]
    for item in sets:
        command += ["--set", item]
    m = measure(command, env=env)
    if m.returncode != 0:
        raise SystemExit(m.stderr)
    return m


def _peer(python: Path, script: Path, scene: Path, weights: Path, *extra: Path):
    """A peer script's measurement and the JSON line it prints."""
    m = measure([str(python), str(script), str(scene), str(weights), *map(str, extra)])
    if m.returncode != 0:
        raise SystemExit(f"{script.name} failed: {m.stderr}")
    return m, json.loads(m.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
