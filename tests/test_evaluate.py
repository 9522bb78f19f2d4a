"""Evaluation: datasets image by image (TTA, CRF), rasters against vector labels, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from deeplab_geo.cli import main
from deeplab_geo.config import CRFSettings, TTASettings
from deeplab_geo.datasets import SegmentationDataset
from deeplab_geo.datasets.voc import CLASSES as VOC_CLASSES
from deeplab_geo.datasets.voc import voc_palette
from deeplab_geo.models.checkpoint import ModelInfo, build_model, save_checkpoint
from deeplab_geo.tools.evaluate import evaluate_dataset, evaluate_raster
from deeplab_geo.tools.metrics import boundary_counts, boundary_f_score, confusion_matrix, scores
from tests.conftest import write_raster
from tests.test_datasets import make_chips_scene, make_voc


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


class Encoded(SegmentationDataset):
    """Images whose first band holds the class id (255 where the label is ignored)."""

    def __init__(self, labels: list[np.ndarray]) -> None:
        self.samples = [(np.stack([lab, lab, lab]).astype(np.uint8), lab) for lab in labels]
        self.name = "encoded"

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        return self.samples[index]


class Decoder:
    """A predictor that reads the class from band 0, shifted ``shift`` pixels to the right."""

    def __init__(self, num_classes: int, shift: int = 0) -> None:
        self.num_classes, self.shift = num_classes, shift
        self.calls = 0

    def predict(self, tiles: np.ndarray) -> np.ndarray:
        self.calls += 1
        classes = np.clip(np.asarray(tiles)[:, 0], 0, self.num_classes - 1).astype(np.int64)
        classes = np.roll(classes, self.shift, axis=-1)
        probs = np.full((len(tiles), self.num_classes, *classes.shape[1:]), 0.02, np.float32)
        np.put_along_axis(probs, classes[:, None], 0.9, axis=1)
        return probs / probs.sum(1, keepdims=True)


def _labels(seed: int, shape=(24, 30)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint8)
    labels[:, rng.integers(5, 25):] = 1
    labels[rng.integers(2, 10):rng.integers(12, 20), 3:12] = 2
    labels[0] = 255
    return labels


def test_dataset_scores_come_from_one_matrix_over_the_split():
    data = Encoded([_labels(i, (24 + i, 30 - i)) for i in range(4)])
    perfect = evaluate_dataset(Decoder(3), data, 3)[0]
    assert perfect.scores.miou == 1.0 and perfect.boundary_f == 1.0
    shifted = evaluate_dataset(Decoder(3, shift=2), data, 3)[0]
    matrix = np.zeros((3, 4), np.int64)
    edges = np.zeros(4, np.int64)
    for image, target in data:
        pred = np.roll(np.clip(image[0], 0, 2), 2, axis=-1)
        matrix += confusion_matrix(pred, target, 3)
        edges += boundary_counts(pred, target)
    assert (shifted.matrix == matrix).all()
    assert shifted.scores.miou == pytest.approx(scores(matrix).miou)
    assert shifted.boundary_f == pytest.approx(boundary_f_score(edges))
    assert shifted.scores.miou < 1.0


def test_dataset_tta_flip_limit_and_crf_share_one_prediction():
    data = Encoded([_labels(i) for i in range(3)])
    predictor = Decoder(3)
    results = evaluate_dataset(predictor, data, 3, tta=TTASettings(flip=True),
                               crf=CRFSettings(iterations=2), crf_modes=(False, True), limit=2)
    assert [r.name for r in results] == ["without CRF", "with CRF"]
    assert predictor.calls == 2 * 2  # two images, each plain and flipped, for both modes
    assert results[0].matrix.sum() == 2 * 23 * 30
    assert results[0].scores.miou == 1.0 and results[1].scores.miou > 0.95
    with pytest.raises(ValueError, match="crf settings"):
        evaluate_dataset(predictor, data, 3, crf_modes=(True,))


def test_raster_against_vector_labels_matches_the_label_raster(tmp_path):
    scene = make_chips_scene(tmp_path / "scene")
    import rasterio

    with rasterio.open(scene["labels"]) as ds:
        truth = ds.read(1)
    pred = np.where(truth == 255, 0, truth).astype(np.uint8)
    pred[:, 40:44] = 2  # some errors
    prediction = write_raster(tmp_path / "pred.tif", pred[None], tiled=True, blockxsize=16,
                              blockysize=16)
    on_raster = evaluate_raster(prediction, scene["labels"], 3)
    on_vector = evaluate_raster(prediction, scene["vector"], 3)
    assert on_raster.scores.miou == pytest.approx(scores(confusion_matrix(pred, truth, 3)).miou)
    assert on_vector.scores.miou == pytest.approx(on_raster.scores.miou, abs=0.02)
    assert on_vector.matrix.sum() == pytest.approx(on_raster.matrix.sum(), rel=0.03)
    result = invoke("evaluate", "raster", prediction, "--labels", scene["vector"],
                    "--json", tmp_path / "s.json", "--markdown", tmp_path / "s.md")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "s.json").read_text())[0]
    assert report["miou"] == pytest.approx(on_vector.scores.miou)
    assert "| mIoU |" in (tmp_path / "s.md").read_text()
    bad = invoke("evaluate", "raster", prediction, "--labels", scene["vector"],
                 "--class-field", "nope")
    assert bad.exit_code == 2 and "no field 'nope'" in bad.output


@pytest.fixture(scope="module")
def voc_checkpoint(tmp_path_factory):
    """A randomly initialised 21-class checkpoint (VOC classes)."""
    torch.manual_seed(0)
    info = ModelInfo(architecture="deeplabv3_lite_mobilenet_v3_small", num_classes=21,
                     classes=list(VOC_CLASSES), colours=voc_palette(21))
    path = tmp_path_factory.mktemp("voc") / "m.safetensors"
    return save_checkpoint(build_model(info).eval(), info, path)


def test_evaluate_dataset_cli_with_options_only(tmp_path, voc_checkpoint):
    voc = make_voc(tmp_path / "data")
    result = invoke("evaluate", "dataset", "--kind", "voc", "--root", voc,
                    "--checkpoint", voc_checkpoint, "--crf", "both", "--limit", "1",
                    "--set", "evaluate.tta.scales=[0.75,1.0]", "--set", "evaluate.tta.flip=true",
                    "--set", "evaluate.device=cpu", "--set", "evaluate.backend=torch",
                    "--set", "evaluate.crf.iterations=2",
                    "--json", tmp_path / "s.json", "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "s.json").read_text())
    assert [r["name"] for r in report] == ["without CRF", "with CRF"]
    assert set(report[0]["iou"]) == set(VOC_CLASSES)
    matrix = np.array(report[0]["confusion_matrix"])
    assert matrix.sum() == 39 * 48  # one image, top row void
    hits = np.diag(matrix[:, :-1])  # rows: labels; columns: predictions, then "no prediction"
    union = matrix[:, :-1].sum(0) + matrix.sum(1) - hits
    iou = hits[union > 0] / union[union > 0]  # classes neither labelled nor predicted: no IoU
    assert report[0]["miou"] == pytest.approx(iou.mean(), abs=1e-6)
    assert [report[0]["iou"][c] for c, u in zip(VOC_CLASSES, union) if u > 0] == \
        pytest.approx(list(iou), abs=1e-6)
    assert "boundary_f_2px" in report[0]


def test_evaluate_dataset_cli_errors(tmp_path, tiny_checkpoint):
    voc = make_voc(tmp_path / "data")
    wrong = invoke("evaluate", "dataset", "--kind", "voc", "--root", voc,
                   "--checkpoint", tiny_checkpoint)
    assert wrong.exit_code == 2 and "predicts 3 classes" in wrong.output
    none = invoke("evaluate", "dataset", "--kind", "voc", "--root", voc)
    assert none.exit_code == 2 and "--checkpoint" in none.output
    typo = invoke("evaluate", "dataset", "--kind", "voc", "--root", voc, "--set", "data.rot=1")
    assert typo.exit_code == 2 and "unknown key 'data.rot'" in typo.output
