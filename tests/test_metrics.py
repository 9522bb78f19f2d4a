import numpy as np
import pytest

from deeplab_geo.tools.metrics import confusion_matrix, scores


def test_confusion_matrix_and_scores_by_hand():
    target = np.array([0, 0, 1, 1, 2, 255])
    pred = np.array([0, 1, 1, 1, 0, 2])
    m = confusion_matrix(pred, target, 3)
    assert m[:, :3].tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    s = scores(m)
    # class 0: tp1 fp1 fn1 -> 1/3; class 1: tp2 fp1 fn0 -> 2/3; class 2: tp0 fp0 fn1 -> 0
    assert s.iou == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert s.miou == pytest.approx(1 / 3)
    assert s.pixel_accuracy == pytest.approx(3 / 5)


def test_nodata_predictions_count_as_misses():
    m = confusion_matrix(np.array([0, 255]), np.array([0, 0]), 2)
    s = scores(m)
    assert s.iou[0] == pytest.approx(0.5)
    assert np.isnan(s.iou[1])
    assert s.pixel_accuracy == pytest.approx(0.5)


def test_matrix_accumulates_over_images_not_average_of_ious():
    a = confusion_matrix(np.array([0, 0, 0, 0]), np.array([0, 0, 0, 1]), 2)
    b = confusion_matrix(np.array([1]), np.array([1]), 2)
    assert scores(a + b).miou == pytest.approx((3 / 4 + 1 / 2) / 2)


def test_shapes_must_match():
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(np.zeros(3), np.zeros(4), 2)


def test_boundary_f_score_tolerates_small_shifts_only():
    from deeplab_geo.tools.metrics import boundary_counts, boundary_f_score

    target = np.zeros((20, 20), np.uint8)
    target[:, 10:] = 1
    assert boundary_f_score(boundary_counts(target, target)) == 1.0
    shifted = np.roll(target, 2, axis=1)
    shifted[:, :2] = 0
    assert boundary_f_score(boundary_counts(shifted, target, tolerance=2)) == 1.0
    far = np.zeros_like(target)
    far[:, 16:] = 1
    assert boundary_f_score(boundary_counts(far, target, tolerance=2)) == 0.0


def test_block_wise_boundary_counts_equal_whole_array(tmp_path):
    from deeplab_geo.tools.evaluate import evaluate_raster
    from deeplab_geo.tools.metrics import boundary_counts, boundary_f_score
    from tests.conftest import write_raster

    rng = np.random.default_rng(0)
    from scipy import ndimage

    target = ndimage.zoom(rng.integers(0, 3, (12, 12)), 25, order=0).astype(np.uint8)
    pred = np.roll(target, 1, axis=0)
    kw = {"tiled": True, "blockxsize": 64, "blockysize": 64}
    p = write_raster(tmp_path / "p.tif", pred[None], **kw)
    t = write_raster(tmp_path / "t.tif", target[None], **kw)
    result = evaluate_raster(p, t, 3)
    assert result.boundary_f == pytest.approx(boundary_f_score(boundary_counts(pred, target)))
    assert result.scores.miou == pytest.approx(
        scores(confusion_matrix(pred, target, 3)).miou)


def _random_split(seed: int, images: int = 5, num_classes: int = 5):
    """Label maps with ignored pixels and noisy predictions of different sizes per image."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(images):
        shape = (20 + 3 * i, 30 - 2 * i)
        target = rng.integers(0, num_classes, shape).astype(np.uint8)
        target[rng.random(shape) < 0.1] = 255
        pred = np.where(rng.random(shape) < 0.6, target, rng.integers(0, num_classes, shape))
        pred = np.where(pred == 255, 0, pred).astype(np.uint8)
        pairs.append((pred, target))
    return pairs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_scores_agree_with_torchmetrics(seed):
    torch = pytest.importorskip("torch")
    tm = pytest.importorskip("torchmetrics.classification")
    num_classes = 5
    jaccard = tm.MulticlassJaccardIndex(num_classes, average="none", ignore_index=255)
    mean_jaccard = tm.MulticlassJaccardIndex(num_classes, average="macro", ignore_index=255)
    accuracy = tm.MulticlassAccuracy(num_classes, average="micro", ignore_index=255)
    matrix = np.zeros((num_classes, num_classes + 1), np.int64)
    per_image = []
    for pred, target in _random_split(seed, num_classes=num_classes):
        matrix += confusion_matrix(pred, target, num_classes)
        per_image.append(scores(confusion_matrix(pred, target, num_classes)).miou)
        p = torch.from_numpy(pred.astype(np.int64))
        t = torch.from_numpy(target.astype(np.int64))
        for metric in (jaccard, mean_jaccard, accuracy):
            metric.update(p, t)
    ours = scores(matrix)
    assert ours.iou == pytest.approx(jaccard.compute().numpy(), abs=1e-6)
    assert ours.miou == pytest.approx(float(mean_jaccard.compute()), abs=1e-6)
    assert ours.pixel_accuracy == pytest.approx(float(accuracy.compute()), abs=1e-6)
    assert ours.miou != pytest.approx(float(np.mean(per_image)), abs=1e-4)


def test_absent_classes_are_left_out_of_the_mean_as_torchmetrics_does():
    torch = pytest.importorskip("torch")
    tm = pytest.importorskip("torchmetrics.classification")
    target = np.array([0, 0, 1, 1, 2, 255])
    pred = np.array([0, 1, 1, 1, 0, 2])
    metric = tm.MulticlassJaccardIndex(4, average="macro", ignore_index=255)
    metric.update(torch.from_numpy(pred), torch.from_numpy(target))
    ours = scores(confusion_matrix(pred, target, 4))
    assert np.isnan(ours.iou[3])
    assert ours.miou == pytest.approx(float(metric.compute()))
