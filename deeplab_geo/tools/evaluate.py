"""Evaluation against ground truth: class rasters block by block, and datasets image by image.

Every score comes from one confusion matrix accumulated over the whole raster or split (label
255 ignored), never from averaging per-image or per-tile IoUs; the boundary F-score's counts are
accumulated the same way.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window

from deeplab_geo import crf as crf_module
from deeplab_geo.config import CRFSettings, PipelineConfig, TTASettings, updated
from deeplab_geo.datasets import SegmentationDataset
from deeplab_geo.datasets.labels import Grid, open_labels
from deeplab_geo.errors import InputError
from deeplab_geo.hookspecs import Predictor
from deeplab_geo.pipeline import tta
from deeplab_geo.raster import io
from deeplab_geo.tools.metrics import (
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


def evaluate_raster(prediction: Path, labels: Path, num_classes: int, name: str = "", *,
                    class_field: str = "class_id", layer: str | None = None,
                    window: Window | None = None, label_values: list[int] | None = None,
                    class_names: list[str] | None = None,
                    input_raster: Path | None = None) -> Evaluation:
    """Compare a class raster with ground truth (label 255 ignored).

    Args:
        prediction: a class raster (nodata predictions count as misses).
        labels: a class raster on the same grid, or vector polygons with class ids in
            ``class_field`` (GeoPackage, GeoJSON, ...), rasterized on the prediction's grid in
            its CRS (see :mod:`deeplab_geo.datasets.labels`).
        num_classes: classes scored.
        name: the row name in reports (default: the prediction's file name).
        class_field: the vector labels' class id field.
        layer: the vector layer (default: the first).
        window: score only this pixel window of the prediction (a hold-out area).
        label_values: the label value of each class (default: label = class id).
        class_names: to match a vector field of class names.
        input_raster: the raster the prediction was made from; pixels it has no data for are
            not scored (no model can label them).

    Both are read block by block (with a small halo for the boundary F-score), so memory does
    not grow with the raster.
    """
    with io.open_raster(prediction) as pred_ds:
        truth = open_labels(labels, Grid.of(pred_ds), class_field=class_field, layer=layer,
                            values=label_values, classes=class_names)
        scored = Window(0, 0, pred_ds.width, pred_ds.height)
        if window is not None:
            if not (0 <= window.col_off and 0 <= window.row_off and
                    window.col_off + window.width <= pred_ds.width and
                    window.row_off + window.height <= pred_ds.height):
                raise InputError(f"{prediction.name}: window {_window_list(window)} leaves the "
                                 f"{pred_ds.width}x{pred_ds.height} raster; give col_off, "
                                 "row_off, width, height inside it")
            scored = window
        source = rasterio.open(input_raster) if input_raster is not None else None
        try:
            matrix, edges = _accumulate(pred_ds, truth, scored, num_classes, source)
        finally:
            if source is not None:
                source.close()
    return Evaluation(name or prediction.name, matrix, scores(matrix), boundary_f_score(edges))


def _window_list(window: Window) -> list[int]:
    return [int(window.col_off), int(window.row_off), int(window.width), int(window.height)]


def _accumulate(pred_ds: rasterio.DatasetReader, truth: Any, scored: Window, num_classes: int,
                source: rasterio.DatasetReader | None) -> tuple[np.ndarray, np.ndarray]:
    """The confusion matrix and boundary counts over the blocks of ``scored``."""
    matrix = np.zeros((num_classes, num_classes + 1), dtype=np.int64)
    edges = np.zeros(4, dtype=np.int64)
    halo = BOUNDARY_TOLERANCE + 1
    for _, block in pred_ds.block_windows(1):
        try:
            window = block.intersection(scored)
        except rasterio.errors.WindowError:
            continue  # the block lies outside the scored area
        outer = Window(window.col_off - halo, window.row_off - halo,
                       window.width + 2 * halo, window.height + 2 * halo)
        outer = outer.intersection(scored)
        target = truth.read(outer)
        if source is not None:
            target[~io.read_window(source, outer)[1]] = IGNORE_INDEX
        pred = pred_ds.read(1, window=outer)
        r0, c0 = window.row_off - outer.row_off, window.col_off - outer.col_off
        core = (slice(r0, r0 + window.height), slice(c0, c0 + window.width))
        matrix += confusion_matrix(pred[core], target[core], num_classes)
        edges += boundary_counts(pred, target, BOUNDARY_TOLERANCE, core)
    return matrix, edges


def evaluate_pipeline(config: PipelineConfig, labels: Path,
                      crf_modes: tuple[bool, ...] = (False, True), *,
                      class_field: str = "class_id", layer: str | None = None,
                      window: Window | None = None,
                      label_values: list[int] | None = None) -> list[Evaluation]:
    """Run a pipeline's model on its input, with and/or without CRF, and score each class map
    against a label raster or vector labels (see :func:`evaluate_raster`), over ``window`` if
    given. Pixels the input has no data for are not scored.

    Only the class raster is produced (no polygons, no quicklook), in a temporary folder.
    """
    from deeplab_geo.pipeline.runner import run

    results = []
    with tempfile.TemporaryDirectory(prefix="deeplab-geo-eval-") as tmp:
        for enabled in crf_modes:
            out = Path(tmp) / ("crf" if enabled else "nocrf")
            cfg = updated(config, {"output_dir": out, "quicklook": False,
                                   "crf.enabled": enabled, "vectorize.enabled": False})
            result = run(cfg)
            classes = result.outputs["classes"]
            with rasterio.open(classes) as ds:
                names = ds.tags()["CLASS_NAMES"].split(",")
            results.append(evaluate_raster(classes, labels, len(names),
                                           "with CRF" if enabled else "without CRF",
                                           class_field=class_field, layer=layer, window=window,
                                           label_values=label_values, class_names=names,
                                           input_raster=Path(config.input)))
    return results


def evaluate_dataset(predictor: Predictor, dataset: SegmentationDataset, num_classes: int, *,
                     tta: TTASettings | None = None, crf: CRFSettings | None = None,
                     crf_modes: tuple[bool, ...] = (False,), limit: int | None = None,
                     progress: Callable[[int], Any] | None = None) -> list[Evaluation]:
    """Score a predictor on a dataset split, one whole image at a time.

    Args:
        predictor: any backend's predictor (``predict(tiles) -> probabilities``).
        dataset: the split (:mod:`deeplab_geo.datasets`).
        num_classes: classes scored.
        tta: multi-scale and flip inference (:func:`deeplab_geo.pipeline.tta.predict`).
        crf: dense CRF settings, used for the ``True`` entries of ``crf_modes``.
        crf_modes: which results to produce: without the CRF (``False``), with it (``True``);
            the network runs once per image for both.
        limit: score only the first ``limit`` images.
        progress: called with the image count; returns a bar with ``update`` and ``close``.

    Returns:
        One :class:`Evaluation` per entry of ``crf_modes``, each from one confusion matrix
        accumulated over all images.
    """
    if any(crf_modes) and crf is None:
        raise ValueError("crf settings are needed to evaluate with the CRF")
    params = crf.params() if crf is not None else None
    count = len(dataset) if limit is None else min(limit, len(dataset))
    matrices = {mode: np.zeros((num_classes, num_classes + 1), np.int64) for mode in crf_modes}
    edges = {mode: np.zeros(4, np.int64) for mode in crf_modes}
    bar = progress(count) if progress else None
    try:
        for index in range(count):
            image, target = dataset[index]
            probs = tta_predict(predictor, image, tta)
            for mode in crf_modes:
                refined = crf_module.refine(probs, crf_module.colour_features(image), params) \
                    if mode else probs
                pred = refined.argmax(0).astype(np.uint8)
                matrices[mode] += confusion_matrix(pred, target, num_classes)
                edges[mode] += boundary_counts(pred, target, BOUNDARY_TOLERANCE)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return [Evaluation("with CRF" if mode else "without CRF", matrices[mode],
                       scores(matrices[mode]), boundary_f_score(edges[mode]))
            for mode in crf_modes]


def tta_predict(predictor: Predictor, image: np.ndarray, settings: TTASettings | None
                ) -> np.ndarray:
    """Class probabilities ``(C, H, W)`` of one image ``(bands, H, W)``."""
    settings = settings or TTASettings()
    return tta.predict(predictor, image[None], settings.scales, settings.flip,
                       settings.fusion)[0]
