"""``tiling.overlap: auto``: tiles overlap by twice the model's reach and agree with one
whole-image prediction."""

import logging

import numpy as np
import pytest
import rasterio

from deeplab_geo.config import validate_pipeline
from deeplab_geo.pipeline.runner import run
from deeplab_geo.plugins import get_backend
from deeplab_geo.tools.sample import synthesize_scene
from tests.conftest import write_raster

DEMO = "builtin:landcover-demo"


def pipeline(tmp_path, raster, checkpoint=DEMO, **tiling):
    return validate_pipeline({
        "input": str(raster), "output_dir": str(tmp_path / "out"),
        "model": {"checkpoint": checkpoint, "backend": "torch", "device": "cpu"},
        "tiling": tiling, "crf": {"enabled": False}, "quicklook": False,
        "vectorize": {"enabled": False}})


@pytest.fixture(scope="module")
def demo_scene(tmp_path_factory):
    """A synthetic scene whose sides are not multiples of the model's 32 px cells."""
    image, _ = synthesize_scene(0, 1120)
    image = np.ascontiguousarray(image[:, :1090, :1013])
    raster = write_raster(tmp_path_factory.mktemp("scene") / "scene.tif", image)
    # one window over the whole scene, padded like every tile to the model's 32 px grid
    padded = np.pad(image, [(0, 0), (0, -1090 % 32), (0, -1013 % 32)], mode="edge")
    whole = get_backend("torch").load(DEMO, device="cpu").predict(
        padded[None].astype(np.float32))[0].argmax(0)
    return raster, whole[:1090, :1013]


def test_auto_overlap_agrees_with_a_whole_image_prediction_even_on_256_px_tiles(
        tmp_path, demo_scene, caplog):
    raster, whole = demo_scene
    with caplog.at_level(logging.WARNING, logger="deeplab_geo.pipeline.windows"):
        result = run(pipeline(tmp_path, raster, tile_size=256))
    windows = result.report["windows"]
    # the demo model reaches 192 px: 384 px of overlap, so 256 px tiles grow to 768
    assert (windows["overlap_px"], windows["tile_px"], windows["align_px"]) == (384, 768, 32)
    assert "twice the model's reach (192 px)" in windows["overlap_source"]
    assert "tiling.tile_size 256 cannot hold the model's overlap of 384 px" in caplog.text
    with rasterio.open(result.outputs["classes"]) as ds:
        classes = ds.read(1)
    assert (classes == whole).mean() >= 0.999


def test_an_explicit_overlap_below_the_reach_warns_and_is_used(tmp_path, demo_scene, caplog):
    raster, whole = demo_scene
    with caplog.at_level(logging.WARNING, logger="deeplab_geo.pipeline.windows"):
        result = run(pipeline(tmp_path, raster, tile_size=256, overlap=0))
    assert "tiling.overlap 0 is below the model's reach: it looks 192 px around" in caplog.text
    windows = result.report["windows"]
    assert (windows["tile_px"], windows["overlap_px"]) == (256, 0)
    with rasterio.open(result.outputs["classes"]) as ds:
        assert (ds.read(1) == whole).mean() < 0.999  # what the warning is about


def test_a_model_without_a_recorded_reach_falls_back_to_64_px(tmp_path, tiny_checkpoint):
    image = np.random.default_rng(0).integers(0, 255, (3, 80, 90), dtype=np.uint8)
    raster = write_raster(tmp_path / "r.tif", image)
    result = run(pipeline(tmp_path, raster, str(tiny_checkpoint), tile_size=256))
    windows = result.report["windows"]
    assert (windows["overlap_px"], windows["tile_px"]) == (64, 256)
    assert windows["overlap_source"] == "default (the model records no reach)"


def test_tiles_shrink_to_fit_the_raster_for_a_model_of_any_input_size(tmp_path, tiny_checkpoint):
    image = np.random.default_rng(0).integers(0, 255, (3, 300, 200), dtype=np.uint8)
    raster = write_raster(tmp_path / "r.tif", image)
    result = run(pipeline(tmp_path, raster, str(tiny_checkpoint), tile_size=128, overlap=16))
    assert result.report["windows"]["fitted_tiles"] is True
    # 300 px: 3 tiles of at least (300 + 2 * 16) / 3 px; 200 px: 2 of (200 + 16) / 2: 112 px
    assert result.report["raster"]["largest_tile_px"] == [112, 112]
    assert result.report["raster"]["tiles"] == 6
    assert result.report["raster"]["tiled_pixels_per_pixel"] == round(6 * 112 * 112 / 60000, 4)
