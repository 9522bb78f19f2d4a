"""Evaluation of class maps against ground truth, block by block over whole rasters."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from deeplab_geo import io
from deeplab_geo.config import PipelineConfig
from deeplab_geo.errors import InputError
from deeplab_geo.metrics import (
    IGNORE_INDEX,
    Scores,
    boundary_counts,
    boundary_f_score,
    confusion_matrix,
    scores,
)

BOUNDARY_TOLERANCE = 2


@dataclass(frozen=True)
class Evaluation:
    """Scores of one prediction, with the matrix they came from."""

    name: str
    matrix: np.ndarray
    scores: Scores
    boundary_f: float

    def as_dict(self, class_names: list[str]) -> dict:
        return {"name": self.name, **self.scores.as_dict(class_names),
                f"boundary_f_{BOUNDARY_TOLERANCE}px": self.boundary_f,
                "confusion_matrix": self.matrix.tolist()}


def evaluate_raster(prediction: Path, labels: Path, num_classes: int, name: str = "") -> Evaluation:
    """Compare a class raster with a label raster on the same grid (label 255 ignored).

    Reads both block by block (with a small halo for the boundary F-score), so memory does not
    grow with the raster.
    """
    with io.open_raster(prediction) as pred_ds, io.open_raster(labels) as label_ds:
        if (pred_ds.width, pred_ds.height) != (label_ds.width, label_ds.height) or \
                not pred_ds.transform.almost_equals(label_ds.transform):
            raise InputError(f"{prediction.name} and {labels.name} are not on the same grid; "
                             "resample the labels to the prediction's grid first")
        label_nodata = label_ds.nodata
        matrix = np.zeros((num_classes, num_classes + 1), dtype=np.int64)
        edges = np.zeros(4, dtype=np.int64)
        halo = BOUNDARY_TOLERANCE + 1
        for _, window in pred_ds.block_windows(1):
            outer = Window(window.col_off - halo, window.row_off - halo,
                           window.width + 2 * halo, window.height + 2 * halo)
            outer = outer.intersection(Window(0, 0, pred_ds.width, pred_ds.height))
            target = label_ds.read(1, window=outer)
            if label_nodata is not None and label_nodata != IGNORE_INDEX:
                target = np.where(target == label_nodata, IGNORE_INDEX, target)
            pred = pred_ds.read(1, window=outer)
            r0, c0 = window.row_off - outer.row_off, window.col_off - outer.col_off
            core = (slice(r0, r0 + window.height), slice(c0, c0 + window.width))
            matrix += confusion_matrix(pred[core], target[core], num_classes)
            edges += boundary_counts(pred, target, BOUNDARY_TOLERANCE, core)
    return Evaluation(name or prediction.name, matrix, scores(matrix), boundary_f_score(edges))


def evaluate_pipeline(config: PipelineConfig, labels: Path,
                      crf_modes: tuple[bool, ...] = (False, True)) -> list[Evaluation]:
    """Run a pipeline's model on its input, with and/or without CRF, and score each class map.

    Only the class raster is produced (no polygons, no quicklook), in a temporary folder.
    """
    from deeplab_geo.pipeline import run

    results = []
    with tempfile.TemporaryDirectory(prefix="deeplab-geo-eval-") as tmp:
        for enabled in crf_modes:
            out = Path(tmp) / ("crf" if enabled else "nocrf")
            cfg = config.model_copy(update={
                "output_dir": out, "quicklook": False,
                "crf": config.crf.model_copy(update={"enabled": enabled}),
                "vectorize": config.vectorize.model_copy(update={"enabled": False}),
            })
            result = run(cfg)
            classes = result.outputs["classes"]
            with rasterio.open(classes) as ds:
                num_classes = len(ds.tags()["CLASS_NAMES"].split(","))
            results.append(evaluate_raster(classes, labels, num_classes,
                                           "with CRF" if enabled else "without CRF"))
    return results
