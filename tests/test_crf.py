from dataclasses import replace

import numpy as np
import pytest

from deeplab_geo.config import CRFSettings
from deeplab_geo.crf import CRFParams, colour_features, refine
from deeplab_geo.errors import ConfigError
from deeplab_geo.hookspecs import hookimpl


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
    refined = refine(probs, image, CRFParams())
    after = (refined.argmax(0) != truth).sum()
    assert before == 24 * 7  # columns 41..47 (column 40 is a tie, resolved to class 0)
    assert after == 0
    assert np.allclose(refined.sum(0), 1, atol=1e-4)


def test_without_pairwise_terms_the_crf_keeps_the_unary():
    image, probs = blurred_boundary()
    refined = refine(probs, image, CRFParams(w1=0, w2=0))
    assert (refined.argmax(0) == probs.argmax(0)).all()


def test_image_shape_must_match():
    image, probs = blurred_boundary()
    with pytest.raises(ValueError, match="image must be uint8"):
        refine(probs, image[:-1], CRFParams())


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
    serial = refine_many(items, CRFParams(iterations=3), processes=1)
    parallel = refine_many(items, CRFParams(iterations=3), processes=2)
    assert all(np.allclose(a, b) for a, b in zip(serial, parallel))


def test_spatial_widths_in_metres_are_converted_by_pixel_size():
    settings = CRFSettings(theta_alpha=33.5, theta_gamma=0.5, spatial_units="metres")
    pixels = settings.params(0.5)
    assert (pixels.theta_alpha, pixels.theta_gamma) == (67.0, 1.0)
    assert CRFSettings().params(0.5) == CRFSettings().params() == CRFParams()
    with pytest.raises(ConfigError, match="metres needs a raster with a pixel size"):
        settings.params()


def test_colour_mapping_uses_one_stretch_for_the_whole_raster(tmp_path):
    import rasterio

    from deeplab_geo.crf import colour_mapping
    from tests.conftest import write_raster

    data = np.linspace(100, 4100, 4 * 50 * 50).reshape(4, 50, 50).astype(np.uint16)
    path = write_raster(tmp_path / "ms.tif", data)
    with rasterio.open(path) as ds:
        mapping = colour_mapping(ds, [4, 3, 2], (0, 100))
    assert mapping.bands == (3, 2, 1)
    assert mapping.low[0] == pytest.approx(data[3].min(), rel=1e-3)
    features = colour_features(data[:, :10, :10], mapping)  # one tile: the global stretch
    assert features.max() < 60  # a dark corner stays dark, no per-tile stretch
    with rasterio.open(path) as ds:
        assert colour_mapping(ds, [2]).bands == (1, 1, 1)
        with pytest.raises(ConfigError, match="the raster has 4 band"):
            colour_mapping(ds, [5])


# --- refiners, nodata, worker processes, validation --------------------------------------

REFINERS = {"pydensecrf": CRFParams(), "torch": CRFParams(refiner="torch", device="cpu")}


@pytest.mark.parametrize("refiner", REFINERS)
def test_each_refiner_snaps_a_blurred_boundary(refiner):
    image, probs = blurred_boundary()
    refined = refine(probs, image, REFINERS[refiner])
    assert (refined.argmax(0) == (np.arange(96) >= 48)).all()
    assert np.allclose(refined.sum(0), 1, atol=1e-4)


@pytest.mark.parametrize("refiner", REFINERS)
def test_each_refiner_keeps_the_unary_without_pairwise_terms(refiner):
    image, probs = blurred_boundary()
    settings = replace(REFINERS[refiner], w1=0.0, w2=0.0)
    refined = refine(probs, image, settings)
    assert np.allclose(refined, probs / probs.sum(0), atol=1e-5)


def nodata_tile(evidence: int):
    """Valid columns 0..39 weakly favour class 0; columns 40.. are nodata with confident
    ``evidence``. One colour everywhere, so both kernels reach across the border."""
    image = np.full((24, 64, 3), 120, np.uint8)
    probs = np.full((3, 24, 64), 0.3, np.float32)
    probs[0] = 0.4
    probs[:, :, 40:] = 0.005
    probs[evidence, :, 40:] = 0.99
    valid = np.ones((24, 64), bool)
    valid[:, 40:] = False
    return probs, image, valid


@pytest.mark.parametrize("refiner", REFINERS)
def test_nodata_pixels_do_not_influence_their_neighbours(refiner):
    settings = replace(REFINERS[refiner], w2=10.0, theta_gamma=5.0)
    (probs_a, image, valid), (probs_b, _, _) = nodata_tile(1), nodata_tile(2)
    masked_a = refine(probs_a, image, settings, valid)
    masked_b = refine(probs_b, image, settings, valid)
    assert np.array_equal(masked_a[:, valid], masked_b[:, valid])
    assert (masked_a.argmax(0)[valid] == 0).all()
    assert np.allclose(masked_a[:, ~valid], probs_a[:, ~valid] / probs_a[:, ~valid].sum(0))
    # without the mask the nodata evidence does pull the valid pixels next to it
    unmasked_a = refine(probs_a, image, settings)
    unmasked_b = refine(probs_b, image, settings)
    assert (unmasked_a.argmax(0)[valid] == 1).any()
    assert (unmasked_a.argmax(0)[valid] != unmasked_b.argmax(0)[valid]).any()


def test_all_nodata_tile_keeps_the_network_probabilities():
    probs, image, valid = nodata_tile(1)
    for settings in REFINERS.values():
        refined = refine(probs, image, settings, np.zeros_like(valid))
        assert np.allclose(refined, probs / probs.sum(0))


def test_valid_mask_shape_must_match():
    probs, image, valid = nodata_tile(1)
    with pytest.raises(ValueError, match="valid must be"):
        refine(probs, image, CRFParams(), valid[:, :10])


def test_refine_many_in_processes_passes_masks_and_equals_in_process():
    from deeplab_geo.crf import refine_many

    image, probs = blurred_boundary()
    mask = np.ones(probs.shape[1:], bool)
    mask[:, 60:] = False
    items = [(probs, image), (probs[::-1].copy(), image, mask), (probs, image, mask)]
    settings = CRFParams(iterations=3)
    serial = refine_many(items, settings, processes=1)
    pooled = refine_many(items, settings, processes=2)
    for a, b in zip(serial, pooled):
        assert np.array_equal(a, b)
    assert not np.array_equal(serial[0], serial[2])  # the mask reached the workers


def test_torch_refiner_ignores_the_process_count():
    from deeplab_geo.crf import refine_many

    image, probs = blurred_boundary()
    settings = replace(REFINERS["torch"], iterations=3)
    many = refine_many([(probs, image), (probs, image)], settings, processes=2)
    assert all(np.array_equal(m, refine(probs, image, settings)) for m in many)


@pytest.mark.parametrize(("crf", "message"), [
    ({"w1": -1}, "crf.w1"),
    ({"w2": float("nan")}, "crf.w2"),
    ({"w2": float("inf")}, "crf.w2"),
    ({"theta_beta": 0}, "crf.theta_beta"),
    ({"theta_gamma": -2}, "crf.theta_gamma"),
    ({"theta_alpha": float("inf")}, "crf.theta_alpha"),
    ({"iterations": 0}, "crf.iterations"),
    ({"refiner": "densecrf"}, "crf.refiner"),
    ({"device": "gpu", "refiner": "torch"}, "crf.device"),
    ({"device": "cuda"}, "crf: device 'cuda' only applies to refiner 'torch'"),
    ({"stretch": [50, 10]}, "crf: stretch must be percentiles"),
    ({"bands": [0, 1, 2]}, "crf.bands.0: Input should be greater than or equal to 1"),
])
def test_invalid_crf_settings_are_config_errors(crf, message):
    from deeplab_geo.config import validate_pipeline

    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        validate_pipeline({"input": "in.tif", "output_dir": "out", "crf": crf})


def test_torch_refiner_settings_validate():
    from deeplab_geo.config import validate_pipeline

    config = validate_pipeline({"input": "in.tif", "output_dir": "out",
                                "crf": {"refiner": "torch", "device": "cuda:1"}})
    assert (config.crf.refiner, config.crf.device) == ("torch", "cuda:1")
    assert CRFSettings().refiner == "pydensecrf" and CRFSettings().device == "auto"
    assert config.crf.params().device == "cuda:1" and CRFSettings().params().device == "cpu"


class _BrightestBand:
    """Test backend: class = brightest band, probabilities from a softmax over band values."""

    name = "crf-test-brightest"
    description = "test backend for the CRF"

    def load(self, checkpoint, *, device="auto"):
        return self

    @property
    def info(self):
        from deeplab_geo.models.checkpoint import ModelInfo

        return ModelInfo(architecture="deeplabv3_lite_mobilenet_v3_small", num_classes=3,
                         classes=["a", "b", "c"], colours=[[255, 0, 0], [0, 255, 0],
                                                           [0, 0, 255]])

    def predict(self, tiles):
        logits = tiles.astype(np.float32) / 16.0
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)



class _BrightestBandPlugin:
    @hookimpl
    def register_backends(self):
        return [_BrightestBand()]


@pytest.fixture
def brightest_band():
    from deeplab_geo.plugins import get_plugin_manager

    plugin = _BrightestBandPlugin()
    get_plugin_manager().register(plugin, name="crf-test-plugin")
    yield
    get_plugin_manager().unregister(plugin)


def masked_raster(path, hidden_band: int, with_mask: bool = True):
    """Columns 0..39 weakly favour band 0; columns 40.. hold a bright ``hidden_band`` and are
    masked out as nodata (GDAL mask band) when ``with_mask``."""
    import rasterio

    from tests.conftest import write_raster

    data = np.zeros((3, 48, 64), np.uint8)
    data[:, :, :40] = np.array([100, 97, 95], np.uint8)[:, None, None]
    data[hidden_band, :, 40:] = 250
    write_raster(path, data)
    if with_mask:
        with rasterio.open(path, "r+") as ds:
            mask = np.full((48, 64), 255, np.uint8)
            mask[:, 40:] = 0
            ds.write_mask(mask)
    return path


@pytest.mark.parametrize("refiner", REFINERS)
def test_pipeline_keeps_nodata_out_of_the_crf(tmp_path, brightest_band, refiner):
    import rasterio

    from deeplab_geo.config import validate_pipeline
    from deeplab_geo.pipeline.runner import run

    def classes(raster, name):
        config = validate_pipeline({
            "input": str(raster), "output_dir": str(tmp_path / name),
            "model": {"backend": "crf-test-brightest", "batch_size": 2},
            "tiling": {"tile_size": 32, "overlap": 8}, "quicklook": False,
            "vectorize": {"enabled": False}, "execution": {"crf_processes": 1},
            "crf": {"refiner": refiner, "w1": 0, "w2": 10, "theta_gamma": 5, "iterations": 5},
        })
        with rasterio.open(run(config).outputs["classes"]) as ds:
            return ds.read(1)

    green = classes(masked_raster(tmp_path / "g.tif", 1), "g")
    blue = classes(masked_raster(tmp_path / "b.tif", 2), "b")
    assert (green[:, :40] == 0).all() and (blue[:, :40] == 0).all()
    assert (green[:, 40:] == 255).all()
    unmasked = classes(masked_raster(tmp_path / "u.tif", 1, with_mask=False), "u")
    assert (unmasked[:, :40] == 1).any()  # unmasked, the bright columns pull their neighbours
