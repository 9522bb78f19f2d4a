"""Foreign ONNX models run unmodified, and models at their own resolution.

Fixtures are tiny convolutional nets exported to ONNX here, with the metadata the Deepness and
GeoDeep zoos write (``metadata_props``, JSON strings)."""

import json

import numpy as np
import pytest
import rasterio
import torch

from deeplab_geo.config import validate_pipeline
from deeplab_geo.errors import CheckpointError, ConfigError
from deeplab_geo.pipeline.runner import run
from deeplab_geo.raster import resample
from tests.conftest import write_raster

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
zoo = pytest.importorskip("deeplab_geo_onnx.zoo")

DEEPNESS = {"model_type": "Segmentor", "class_names": {"0": "water", "1": "land", "2": "road"},
            "standardization_mean": [0.5, 0.5, 0.5], "standardization_std": [0.25, 0.25, 0.25]}


class Net(torch.nn.Module):
    """Two 3x3 convolutions (reach 2 px) to ``classes`` maps, then ``head``."""

    def __init__(self, classes=3, head="softmax", padding=1):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=padding),
                                        torch.nn.ReLU(),
                                        torch.nn.Conv2d(8, classes, 3, padding=padding))
        self.head = head

    def forward(self, x):
        scores = self.body(x) * 4
        if self.head == "softmax":
            return torch.softmax(scores, 1)
        if self.head == "sigmoid":
            return torch.sigmoid(scores)
        return scores


def export(path, net, size=None, batch=None, metadata=None, dtype=torch.float32):
    """``net`` as ONNX at ``path``: fixed height/width/batch where given, else dynamic."""
    sample = torch.rand(batch or 1, 3, size or 32, size or 32, dtype=dtype)
    dynamic = {}
    if size is None:
        dynamic = {0: "b", 2: "h", 3: "w"} if batch is None else {2: "h", 3: "w"}
    elif batch is None:
        dynamic = {0: "b"}
    torch.onnx.export(net.eval(), (sample,), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": dynamic, "output": dynamic} if dynamic else None)
    model = onnx.load(str(path))
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.save(model, str(path))
    return path


def reference(path, image, metadata=DEEPNESS):
    """The graph run once on the whole image, normalised as Deepness does."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    mean = np.asarray(metadata.get("standardization_mean", [0, 0, 0]), np.float32)
    std = np.asarray(metadata.get("standardization_std", [1, 1, 1]), np.float32)
    x = ((image.astype(np.float32) / 255 - mean[:, None, None]) / std[:, None, None])[None]
    return session.run(None, {"input": x})[0][0]


def config(tmp_path, raster, checkpoint, **sections):
    return validate_pipeline({
        "input": str(raster), "output_dir": str(tmp_path / "out"),
        "model": {"checkpoint": str(checkpoint), "backend": "onnx", "device": "cpu",
                  **sections.pop("model", {})},
        "crf": {"enabled": False}, "quicklook": False, "vectorize": {"enabled": False},
        **sections})


def classes_of(result):
    with rasterio.open(result.outputs["classes"]) as ds:
        return ds.read(1), ds.tags()


@pytest.fixture
def scene(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, (3, 150, 170), dtype=np.uint8)
    return write_raster(tmp_path / "scene.tif", image), image


def test_fixed_shape_zoo_model_sets_tile_and_batch_and_equals_a_whole_image_run(tmp_path,
                                                                                scene):
    raster, image = scene
    path = export(tmp_path / "fixed.onnx", Net(), size=64, batch=2,
                  metadata={**DEEPNESS, "tiles_overlap": 25})
    result = run(config(tmp_path, raster, path))
    windows = result.report["windows"]
    assert (windows["tile_px"], windows["overlap_px"], windows["batch_size"]) == (64, 16, 2)
    assert windows["fitted_tiles"] is False  # padded back to 64 px anyway
    assert result.report["raster"]["largest_tile_px"] == [64, 64]
    whole = export(tmp_path / "whole.onnx", Net(), metadata=DEEPNESS)  # same weights, dynamic
    expected = reference(whole, image).argmax(0)
    classes, tags = classes_of(result)
    inner = (slice(2, -2), slice(2, -2))  # away from the outer frame (padding differs)
    assert (classes[inner] == expected[inner]).all()
    assert tags["CLASS_NAMES"] == "water,land,road"


def test_logits_output_gets_a_softmax_and_dynamic_shapes_take_the_pipeline_tiles(tmp_path,
                                                                                 scene):
    raster, image = scene
    path = export(tmp_path / "logits.onnx", Net(head="logits"), metadata=DEEPNESS)
    info, spec = zoo.read_zoo_model(path)
    assert spec.output == "logits" and info.input_size is None and info.batch_size is None
    result = run(config(tmp_path, raster, path, tiling={"tile_size": 48, "overlap": 16}))
    expected = reference(path, image).argmax(0)
    assert (classes_of(result)[0][2:-2, 2:-2] == expected[2:-2, 2:-2]).all()
    with rasterio.open(result.outputs["confidence"]) as ds:
        assert ds.read(1).max() <= 100  # probabilities, not logits


def test_a_sigmoid_binary_model_gives_two_classes(tmp_path, scene):
    raster, image = scene
    metadata = {"model_type": "Segmentor", "class_names": {"0": "building"}}
    path = export(tmp_path / "binary.onnx", Net(classes=1, head="sigmoid"), metadata=metadata)
    info, spec = zoo.read_zoo_model(path)
    assert spec.output == "sigmoid" and info.classes == ["background", "building"]
    result = run(config(tmp_path, raster, path, tiling={"tile_size": 64, "overlap": 16}))
    expected = (reference(path, image, metadata)[0] >= 0.5).astype(np.uint8)
    assert (classes_of(result)[0][2:-2, 2:-2] == expected[2:-2, 2:-2]).all()


def test_an_output_smaller_than_the_input_is_centre_aligned(tmp_path, scene):
    raster, image = scene
    path = export(tmp_path / "valid.onnx", Net(padding=0), size=64, batch=1, metadata=DEEPNESS)
    _, spec = zoo.read_zoo_model(path)
    assert spec.size == (64, 64) and spec.output_size == (60, 60)
    result = run(config(tmp_path, raster, path, tiling={"overlap": 16}))
    whole = export(tmp_path / "whole.onnx", Net(padding=0), metadata=DEEPNESS)
    expected = reference(whole, image).argmax(0)  # 2 px smaller on every side
    assert (classes_of(result)[0][8:-8, 8:-8] == expected[6:-6, 6:-6]).all()


def test_seg_thresh_zeroes_weak_probabilities_before_the_argmax(tmp_path):
    path = export(tmp_path / "t.onnx", Net(), metadata={**DEEPNESS, "seg_thresh": 0.9})
    info, spec = zoo.read_zoo_model(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    predictor = zoo.ZooPredictor(session, info, spec)
    tiles = np.random.default_rng(1).integers(0, 255, (2, 3, 20, 20)).astype(np.float32)
    probs = predictor.predict(tiles)
    assert ((probs == 0) | (probs >= 0.9)).all() and (probs == 0).any()


@pytest.mark.parametrize("metadata, message", [
    ({"model_type": "Detector", "class_names": {"0": "car"}}, "model_type is 'Detector'"),
    ({"model_type": "Segmentor"}, "no class_names .* model.metadata.class_names"),
    ({"class_names": {"0": "a", "1": "b"}}, "lists 2 classes but the model outputs 3"),
])
def test_bad_metadata_is_refused_in_one_line(tmp_path, metadata, message):
    path = export(tmp_path / "bad.onnx", Net(), metadata=metadata)
    with pytest.raises(CheckpointError, match=message) as error:
        zoo.read_zoo_model(path)
    assert "\n" not in str(error.value)


def test_metadata_can_come_from_a_json_beside_the_model_or_the_pipeline(tmp_path, scene):
    raster, _ = scene
    path = export(tmp_path / "bare.onnx", Net(), metadata={"model_type": "Segmentor"})
    names = {"class_names": {"0": "a", "1": "b", "2": "c"}}
    result = run(config(tmp_path / "one", raster, path, model={"metadata": names}))
    assert classes_of(result)[1]["CLASS_NAMES"] == "a,b,c"
    path.with_suffix(".json").write_text(json.dumps({"class_names": ["x", "y", "z"]}))
    result = run(config(tmp_path / "two", raster, path))
    assert classes_of(result)[1]["CLASS_NAMES"] == "x,y,z"


def test_metadata_for_a_backend_that_takes_none_is_refused(tmp_path, scene, tiny_checkpoint):
    from deeplab_geo.errors import BackendError

    raster, _ = scene
    with pytest.raises(BackendError, match="takes no model.metadata"):
        run(config(tmp_path, raster, tiny_checkpoint,
                   model={"backend": "torch", "metadata": {"resolution": 50}}))


def test_a_fixed_model_refuses_another_explicit_tile_size(tmp_path, scene):
    raster, _ = scene
    path = export(tmp_path / "fixed.onnx", Net(), size=64, batch=1, metadata=DEEPNESS)
    with pytest.raises(ConfigError, match="takes only 64 px tiles"):
        run(config(tmp_path, raster, path, tiling={"tile_size": 128, "overlap": 16}))


def test_a_model_at_100_cm_runs_on_a_50_cm_raster_at_its_own_resolution(tmp_path):
    """The window is shrunk 2x by area averaging, predicted, and its probabilities enlarged
    back (bilinear): the class raster stays on the input grid."""
    image = np.random.default_rng(2).integers(0, 255, (3, 128, 128), dtype=np.uint8)
    image = np.repeat(np.repeat(image[:, ::4, ::4], 4, 1), 4, 2)  # structure at 2 m
    raster = write_raster(tmp_path / "half_metre.tif", image, pixel=0.5)
    path = export(tmp_path / "metre.onnx", Net(), metadata={**DEEPNESS, "resolution": 100})
    result = run(config(tmp_path, raster, path, tiling={"tile_size": 256, "overlap": 16}))
    windows = result.report["windows"]
    assert windows["model_m_per_px"] == 1.0 and windows["raster_m_per_px"] == 0.5
    assert windows["source"] == "model metadata" and windows["model_px_per_raster_px"] == 0.5
    small = resample.resize(image.astype(np.float32), (64, 64))
    probs = resample.resize(reference(path, small), (128, 128))
    classes, _ = classes_of(result)
    assert classes.shape == (128, 128)
    assert (classes == probs.argmax(0)).mean() > 0.999
    native = run(config(tmp_path / "native", raster, path, model={"resolution": "native"}))
    assert native.report["windows"]["model_px_per_raster_px"] == 1.0


def test_resize_rules():
    block = np.arange(16, dtype=np.float32).reshape(4, 4)
    assert np.allclose(resample.resize(block, (2, 2)),
                       block.reshape(2, 2, 2, 2).mean((1, 3)))  # area: block means
    small = np.random.default_rng(3).random((2, 5, 7)).astype(np.float32)
    expected = torch.nn.functional.interpolate(torch.from_numpy(small)[None], size=(11, 16),
                                               mode="bilinear", align_corners=False)[0]
    assert np.allclose(resample.resize(small, (11, 16)), expected.numpy(), atol=1e-5)
    uneven = resample.resize(np.ones((7, 9), np.float32), (3, 4))
    assert np.allclose(uneven, 1.0)  # weights sum to one for uneven factors


def test_geographic_rasters_measure_pixels_in_metres_at_their_centre(tmp_path):
    from rasterio.transform import from_origin

    from deeplab_geo.raster import io

    path = tmp_path / "wgs84.tif"
    with rasterio.open(path, "w", driver="GTiff", width=10, height=10, count=1, dtype="uint8",
                       crs="EPSG:4326", transform=from_origin(10.0, 60.0005, 0.0001,
                                                              0.0001)) as ds:
        ds.write(np.zeros((1, 10, 10), np.uint8))
    with rasterio.open(path) as ds:
        size = io.ground_pixel_size_m(ds)
    # at 60 degrees north a degree of longitude is about half a degree of latitude
    assert 8.0 < size < 8.6


def test_the_models_overlap_applies_unless_the_pipeline_gives_one(tmp_path, scene):
    raster, _ = scene
    path = export(tmp_path / "m.onnx", Net(), size=64, batch=1,
                  metadata={**DEEPNESS, "tiles_overlap": 50})
    own = run(config(tmp_path / "own", raster, path))
    assert own.report["windows"]["overlap_px"] == 32
    given = run(config(tmp_path / "given", raster, path, tiling={"overlap": 8}))
    assert given.report["windows"]["overlap_px"] == 8
    with pytest.raises(ConfigError, match="tiling.overlap 64: the model's tiles are 64 px"):
        run(config(tmp_path / "bad", raster, path, tiling={"overlap": 64}))
