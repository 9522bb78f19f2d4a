"""Pipeline mechanics checked with a per-pixel backend registered as a plugin."""

import numpy as np
import pytest
import rasterio
import rasterio.features
import torch

from deeplab_geo.config import validate_pipeline
from deeplab_geo.hookspecs import hookimpl
from deeplab_geo.pipeline.runner import run
from deeplab_geo.plugins import get_backend, get_plugin_manager, registered_backends
from tests.conftest import PixelwisePredictor, write_raster


def config(tmp_path, raster, **sections):
    return validate_pipeline({
        "input": str(raster), "output_dir": str(tmp_path / "out"),
        "model": {"backend": "pixelwise", "batch_size": 3},
        "tiling": {"tile_size": 32, "overlap": 8}, "crf": {"enabled": False},
        "quicklook": False, **sections,
    })


def test_plugin_registered_in_fixture_is_found_and_removed(pixelwise):
    assert get_backend("pixelwise") is pixelwise
    assert registered_backends()["pixelwise"].plugin == "pixelwise-test"


def test_unregistered_backend_is_a_clear_error():
    from deeplab_geo.errors import BackendError

    with pytest.raises(BackendError, match="no backend named 'pixelwise'; registered: .*torch"):
        get_backend("pixelwise")


def test_stitched_map_equals_whole_image_reference(tmp_path, pixelwise):
    """Tiles (with odd edge sizes) reassemble exactly: no seams, shifts, or gaps."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (3, 101, 77), dtype=np.uint8)
    raster = write_raster(tmp_path / "rgb.tif", image)
    result = run(config(tmp_path, raster))
    with rasterio.open(result.outputs["classes"]) as ds:
        classes = ds.read(1)
    assert (classes == image.argmax(0)).all()
    # batches of at most batch_size tiles went to the backend
    assert max(pixelwise.predictor.batch_sizes) == 3
    counts = np.bincount(image.argmax(0).ravel(), minlength=3)
    assert list(result.report["pixels_per_class"].values()) == counts.tolist()


def test_raster_smaller_than_one_tile(tmp_path, pixelwise):
    image = np.random.default_rng(2).integers(0, 255, (3, 9, 13), dtype=np.uint8)
    result = run(config(tmp_path, write_raster(tmp_path / "small.tif", image)))
    with rasterio.open(result.outputs["classes"]) as ds:
        assert (ds.read(1) == image.argmax(0)).all()


def test_all_nodata_tiles_cost_no_inference(tmp_path, pixelwise):
    image = np.zeros((3, 64, 64), np.uint8)
    image[:, :20, :20] = 200
    raster = write_raster(tmp_path / "sparse.tif", image, nodata=0)
    run(config(tmp_path, raster, model={"backend": "pixelwise", "batch_size": 1}))
    tiles = 9
    assert len(pixelwise.predictor.batch_sizes) < tiles


class SmallCNN(torch.nn.Module):
    """Three 3x3 convolutions (receptive radius 3 px), fixed random weights, 3 classes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 3, 3, padding=1))

    def forward(self, x):
        return {"out": self.net(x)}


class SmallCNNPlugin:
    def __init__(self):
        from deeplab_geo.backends.torch_backend import TorchPredictor

        predictor = TorchPredictor(SmallCNN().eval(), PixelwisePredictor.info,
                                   torch.device("cpu"))

        class Backend:
            name, description = "smallcnn", "test backend: a 3-layer CNN"

            def load(self, checkpoint, *, device="auto"):
                return predictor

        self.backend = Backend()

    @hookimpl
    def register_backends(self):
        return [self.backend]


@pytest.mark.slow  # SIGKILL / cluster / 1536 px: make test PYTEST_ARGS=--run-slow
def test_demo_model_tiled_run_agrees_with_one_whole_image_prediction(tmp_path):
    """The demo model (windowed pooling, trimmed taps) with the demo pipeline's tiles."""
    from deeplab_geo.plugins import choose_backend
    from deeplab_geo.tools.sample import synthesize_scene

    image, _ = synthesize_scene(0, 1536)
    raster = write_raster(tmp_path / "scene.tif", image)
    backend = choose_backend("auto", "cpu")
    whole = get_backend(backend).load("builtin:landcover-demo", device="cpu").predict(
        image[None].astype(np.float32))[0].argmax(0)
    result = run(config(tmp_path, raster, model={"backend": backend, "device": "cpu"},
                        tiling={"tile_size": 1024, "overlap": 128}))
    assert result.report["raster"]["tiles"] == 4
    with rasterio.open(result.outputs["classes"]) as cls:
        classes = cls.read(1)
    assert len(np.unique(whole)) >= 5
    assert (classes == whole).mean() >= 0.999


def test_tiled_run_equals_a_whole_image_prediction_when_overlap_covers_the_reach(tmp_path):
    """Seams: with cores at least the model's reach (3 px) from tile borders, tiling is exact."""
    pm = get_plugin_manager()
    plugin = SmallCNNPlugin()
    pm.register(plugin, name="smallcnn-test")
    try:
        image = np.random.default_rng(4).integers(0, 255, (3, 90, 70), dtype=np.uint8)
        raster = write_raster(tmp_path / "cnn.tif", image)
        whole = plugin.backend.load("").predict(image[None].astype(np.float32))[0]
        result = run(config(tmp_path, raster, model={"backend": "smallcnn", "batch_size": 2},
                            tiling={"tile_size": 32, "overlap": 8}))
        assert result.report["raster"]["tiles"] > 9
    finally:
        pm.unregister(plugin)
    with rasterio.open(result.outputs["classes"]) as cls, \
            rasterio.open(result.outputs["confidence"]) as conf:
        classes, confidence = cls.read(1), conf.read(1) * conf.scales[0]
        assert conf.dtypes[0] == "uint8"
    assert len(np.unique(classes)) == 3
    assert (classes == whole.argmax(0)).mean() == 1.0
    assert np.abs(confidence - whole.max(0)).max() <= 0.005 + 1e-6  # stored in percent


def test_confidence_is_one_byte_per_pixel_and_polygons_average_what_is_stored(tmp_path,
                                                                              pixelwise):
    import geopandas as gpd

    image = np.random.default_rng(6).integers(0, 255, (3, 70, 90), dtype=np.uint8)
    image[:, :, :45] = np.array([200, 10, 10])[:, None, None]  # a large region of class 0
    raster = write_raster(tmp_path / "rgb.tif", image)
    result = run(config(tmp_path, raster, vectorize={"enabled": True}))
    with rasterio.open(result.outputs["confidence"]) as conf, \
            rasterio.open(result.outputs["classes"]) as cls:
        assert conf.dtypes[0] == "uint8" and conf.scales == (0.01,) and conf.offsets == (0.0,)
        stored, classes = conf.read(1), cls.read(1)
    polygons = gpd.read_file(result.outputs["polygons"])
    big = polygons.loc[polygons["pixel_count"].idxmax()]
    with rasterio.open(raster) as ds:
        region = rasterio.features.geometry_mask([big.geometry], classes.shape, invert=True,
                                                 transform=ds.transform)
    assert region[:, :45].all() and (classes[region] == big["class_id"]).all()
    assert region.sum() == big["pixel_count"]
    assert big["mean_confidence"] == pytest.approx(stored[region].mean() * 0.01, abs=1e-6)


def test_without_confidence_there_is_no_raster_and_no_mean(tmp_path, pixelwise):
    import geopandas as gpd

    image = np.random.default_rng(7).integers(0, 255, (3, 40, 40), dtype=np.uint8)
    raster = write_raster(tmp_path / "rgb.tif", image)
    result = run(config(tmp_path, raster, vectorize={"enabled": True},
                        outputs={"confidence": False}))
    assert "confidence" not in result.outputs
    assert not list((tmp_path / "out").glob("*_confidence.tif"))
    assert "mean_confidence" not in gpd.read_file(result.outputs["polygons"]).columns


def test_best_class_is_argmax_and_its_probability():
    from deeplab_geo.pipeline.windows import best_class

    rng = np.random.default_rng(5)
    probabilities = rng.random((6, 40, 50), dtype=np.float32)
    probabilities[:, :10] = 0.25  # ties: the lowest class wins, as with argmax
    probabilities[3:, 10:20] = 1.5  # above every other value
    core = probabilities[:, 3:37, 4:45]  # a tile's core: a strided view
    classes, top = best_class(core)
    expected = core.argmax(0)
    assert classes.dtype == np.uint8
    np.testing.assert_array_equal(classes, expected)
    np.testing.assert_array_equal(top, np.take_along_axis(core, expected[None], 0)[0])
    assert (classes[:7] == 0).all() and (classes[7:17] == 3).all()
