"""How close the plan a run prints first comes to what the run then does.

    python benchmarks/plan.py [--workdir /tmp/plan-bench] [--sizes 2048 16384] [--set KEY=VALUE]

For each raster: ``deeplab-geo plan --json`` in a fresh process with an empty speed cache
(the first plan ever made of these settings: measured on one batch), then ``deeplab-geo run``
measured from outside (wall time, peak RSS of the whole process tree, CRF helpers included,
sampled every 50 ms), then ``plan --json`` again (now timed from that run). Rasters: the demo
scene (2048 px, seed 0) and VRTs of ``size`` px square with the demo scene in their upper-left
corner and nodata elsewhere (as in ``benchmarks/scale.py``), each with the shipped
``pipelines/landcover.yaml`` settings (the bundled model, 1024 px tiles, the CRF, polygons).
Printed: tiles planned and cut, seconds and MB planned against measured, and their ratios.
Last, the time ``deeplab-geo segment`` takes, in a fresh process, to refuse a 300 m scene
(791 x 718 px, the size of the Landsat RGB scene of issue 29) for the 0.5 m bundled model, with
an empty cache (nothing exported yet).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from measure import measure  # benchmarks/measure.py, beside this script
from scale import corner_vrt, demo_scene

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "from deeplab_geo.cli import main; main()"]


def plan(pipeline: Path, env: dict[str, str], sets: list[str]) -> dict:
    command = [*CLI, "plan", str(pipeline), "--json"]
    for item in sets:
        command += ["--set", item]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/plan-bench"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 16384])
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    work = args.workdir
    scene = demo_scene(work)
    env = {**os.environ, "DEEPLAB_GEO_CACHE": str(work / "cache")}
    print("| raster | tiles planned / cut | s, first plan | s, plan after a run | s, run "
          "(wall) | MB planned | MB measured (process tree) | time ratio (first) | "
          "memory ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    settings = (ROOT / "pipelines" / "landcover.yaml").read_text(encoding="utf-8")
    for size in args.sizes:
        raster = scene if size == 2048 else corner_vrt(work / f"mosaic_{size}.vrt", size, scene)
        out = work / f"out_{size}"
        shutil.rmtree(out, ignore_errors=True)
        pipeline = work / f"plan_{size}.yaml"
        body = [line for line in settings.splitlines()
                if not line.startswith(("input:", "output_dir:"))]
        pipeline.write_text(f"input: {raster}\noutput_dir: {out}\n" + "\n".join(body) + "\n",
                            encoding="utf-8")
        speeds = work / "cache" / "speed.json"
        speeds.unlink(missing_ok=True)  # the first plan of these settings on this machine
        first = plan(pipeline, env, args.sets)
        command = [*CLI, "run", str(pipeline), "--quiet"]
        for item in args.sets:
            command += ["--set", item]
        ran = measure(command, env=env)
        if ran.returncode != 0:
            raise SystemExit(ran.stderr)
        report = json.loads((out / "run.json").read_text())
        after = plan(pipeline, env, args.sets)
        print(f"| {size} x {size} | {first['tiles']} / {report['raster']['tiles']} | "
              f"{first['seconds']:.1f} | {after['seconds']:.1f} | {ran.wall_s:.1f} | "
              f"{first['memory_mb']} | {ran.tree_rss_mb:.0f} | "
              f"{first['seconds'] / ran.wall_s:.2f} | {first['memory_mb'] / ran.tree_rss_mb:.2f} |",
              flush=True)
    refusal(work)


def refusal(work: Path) -> None:
    """Wall time of refusing a 300 m scene, from a fresh process and an empty cache."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    raster = work / "landsat_300m.tif"
    with rasterio.open(raster, "w", driver="GTiff", width=791, height=718, count=3,
                       dtype="uint8", crs="EPSG:32617",
                       transform=from_origin(600000, 4000000, 300, 300)) as ds:
        ds.write(np.full((3, 718, 791), 90, np.uint8))
    cache = work / "empty-cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "DEEPLAB_GEO_CACHE": str(cache)}
    out = work / "out_300m"
    ran = measure([*CLI, "segment", str(raster), "-o", str(out), "--quiet"], env=env)
    print(f"\n300 m scene refused: exit {ran.returncode} in {ran.wall_s:.2f} s, output folder "
          f"{'left behind' if out.exists() else 'not created'}:\n{ran.stderr.strip()}")


if __name__ == "__main__":
    main()
