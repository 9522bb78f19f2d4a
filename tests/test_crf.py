import numpy as np
import pytest

from deeplab_geo.config import CRFSettings
from deeplab_geo.crf import colour_features, refine
from deeplab_geo.errors import ConfigError


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


def test_refine_many_in_processes_equals_in_process():
    from deeplab_geo.crf import refine_many

    image, probs = blurred_boundary()
    items = [(probs, image), (probs[::-1].copy(), image)]
    serial = refine_many(items, CRFSettings(iterations=3), processes=1)
    parallel = refine_many(items, CRFSettings(iterations=3), processes=2)
    assert all(np.allclose(a, b) for a, b in zip(serial, parallel))


def test_spatial_widths_in_metres_are_converted_by_pixel_size():
    settings = CRFSettings(theta_alpha=33.5, theta_gamma=0.5, spatial_units="metres")
    pixels = settings.in_pixels(0.5)
    assert (pixels.theta_alpha, pixels.theta_gamma) == (67.0, 1.0)
    assert pixels.spatial_units == "pixels"
    assert CRFSettings().in_pixels(0.5) == CRFSettings()


def test_colour_mapping_uses_one_stretch_for_the_whole_raster(tmp_path):
    import rasterio

    from deeplab_geo.crf import colour_mapping
    from tests.conftest import write_raster

    data = np.linspace(100, 4100, 4 * 50 * 50).reshape(4, 50, 50).astype(np.uint16)
    path = write_raster(tmp_path / "ms.tif", data)
    with rasterio.open(path) as ds:
        mapping = colour_mapping(ds, CRFSettings(bands=[4, 3, 2], stretch=(0, 100)))
    assert mapping.bands == (3, 2, 1)
    assert mapping.low[0] == pytest.approx(data[3].min(), rel=1e-3)
    features = colour_features(data[:, :10, :10], mapping)  # one tile: the global stretch
    assert features.max() < 60  # a dark corner stays dark, no per-tile stretch
    with rasterio.open(path) as ds:
        assert colour_mapping(ds, CRFSettings(bands=[2])).bands == (1, 1, 1)
        with pytest.raises(ConfigError, match="the raster has 4 band"):
            colour_mapping(ds, CRFSettings(bands=[5]))
