import numpy as np
import pytest

from deeplab_geo.metrics import confusion_matrix, scores


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
    from deeplab_geo.metrics import boundary_counts, boundary_f_score

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
    from deeplab_geo.evaluate import evaluate_raster
    from deeplab_geo.metrics import boundary_counts, boundary_f_score
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
