import numpy as np
import pytest

from deeplab_geo.config import CRFSettings
from deeplab_geo.crf import colour_features, refine


def blurred_boundary(width=96, height=24, edge=48, predicted_edge=40, softness=6.0):
    """An image edge at column `edge`; network probabilities with a blurred edge elsewhere."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, edge:] = (200, 180, 40)
    image[:, :edge] = (30, 60, 140)
    cols = np.arange(width, dtype=np.float32)
    p1 = 1 / (1 + np.exp(-(cols - predicted_edge) / softness))
    probs = np.stack([np.tile(1 - p1, (height, 1)), np.tile(p1, (height, 1))]).astype(np.float32)
    return image, probs


def test_crf_snaps_a_blurred_boundary_to_the_image_edge():
    image, probs = blurred_boundary()
    truth = np.arange(96) >= 48
    before = (probs.argmax(0) != truth).sum()
    refined = refine(probs, image, CRFSettings())
    after = (refined.argmax(0) != truth).sum()
    assert before == 24 * 7  # columns 41..47 (column 40 is a tie, resolved to class 0)
    assert after == 0
    assert np.allclose(refined.sum(0), 1, atol=1e-4)


def test_without_pairwise_terms_the_crf_keeps_the_unary():
    image, probs = blurred_boundary()
    refined = refine(probs, image, CRFSettings(w1=0, w2=0))
    assert (refined.argmax(0) == probs.argmax(0)).all()


def test_image_shape_must_match():
    image, probs = blurred_boundary()
    with pytest.raises(ValueError, match="image must be uint8"):
        refine(probs, image[:-1], CRFSettings())


def test_colour_features_uint8_rgb_kept():
    tile = np.random.default_rng(0).integers(0, 255, (4, 5, 6), dtype=np.uint8)
    features = colour_features(tile)
    assert features.shape == (5, 6, 3) and features.flags.c_contiguous
    assert (features == tile[:3].transpose(1, 2, 0)).all()


def test_colour_features_stretch_16bit_and_repeat_single_band():
    tile = np.linspace(1000, 3000, 100, dtype=np.float32).reshape(1, 10, 10).astype(np.uint16)
    features = colour_features(tile)
    assert features.dtype == np.uint8 and features.shape == (10, 10, 3)
    assert features[..., 0].min() == 0 and features[..., 0].max() == 255
    assert (features[..., 0] == features[..., 2]).all()
