"""The OpenVINO backend (plugins/openvino): the same classes as ONNX Runtime at fp32, zoo models
unmodified, bf16 only where the CPU has it, precisions refused where a backend lacks them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from deeplab_geo.config import validate_pipeline
from deeplab_geo.errors import BackendError
from deeplab_geo.pipeline.runner import run
from deeplab_geo.plugins import load_model, registered_backends
from tests.conftest import two_region_image, write_raster

openvino_plugin = pytest.importorskip("deeplab_geo_openvino")


@pytest.fixture
def tiles() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.stack([two_region_image(64, 96, seed=s) for s in range(3)]).astype(np.float32) \
        + rng.normal(0, 3, (3, 3, 64, 96)).astype(np.float32)


def test_fp32_gives_onnx_runtimes_probabilities(tiny_checkpoint, tiles):
    onnx = load_model("onnx", str(tiny_checkpoint), "cpu").predict(tiles)
    predictor = load_model("openvino", str(tiny_checkpoint), "cpu", precision="fp32")
    assert predictor.precision == "fp32"
    openvino = predictor.predict(tiles)
    assert openvino.shape == onnx.shape and openvino.dtype == np.float32
    np.testing.assert_allclose(openvino, onnx, atol=1e-4)
    assert (openvino.argmax(1) == onnx.argmax(1)).mean() > 0.999  # ties aside
    # a batch of one and tiles of another size compile for their own shape
    np.testing.assert_allclose(predictor.predict(tiles[:1, :, :32, :48]),
                               load_model("onnx", str(tiny_checkpoint), "cpu").predict(
                                   tiles[:1, :, :32, :48]), atol=1e-4)


def test_a_zoo_model_with_a_fixed_input_runs_unmodified(tmp_path, tiles):
    from tests.test_zoo import DEEPNESS, Net, export

    model = export(tmp_path / "zoo.onnx", Net(), size=64, batch=1, metadata=DEEPNESS)
    pixels = tiles[:, :, :, :64]
    onnx = load_model("onnx", str(model), "cpu").predict(pixels)
    openvino = load_model("openvino", str(model), "cpu", precision="fp32").predict(pixels)
    np.testing.assert_allclose(openvino, onnx, atol=1e-4)


def test_a_run_on_openvino_writes_onnx_runtimes_classes(tmp_path, tiny_checkpoint):
    raster = write_raster(tmp_path / "scene.tif", two_region_image(96, 128))
    classes = {}
    for backend in ("onnx", "openvino"):
        result = run(validate_pipeline({
            "input": str(raster), "output_dir": str(tmp_path / backend),
            "model": {"checkpoint": str(tiny_checkpoint), "backend": backend,
                      "precision": "fp32"},
            "tiling": {"tile_size": 64, "overlap": 16}, "crf": {"enabled": False},
            "quicklook": False}))
        with rasterio.open(result.outputs["classes"]) as ds:
            classes[backend] = ds.read(1)
    assert (classes["openvino"] == classes["onnx"]).mean() > 0.999


def test_precision_auto_is_fp32_and_bf16_needs_the_cpu_to_have_it():
    choose = openvino_plugin.choose_precision
    assert choose("auto", {"fp32", "bf16"}) == "fp32"  # bf16 is not validated: never by auto
    assert choose("bf16", {"fp32", "bf16"}) == "bf16"
    with pytest.raises(BackendError, match="this CPU has no native bf16 .* use fp32 or auto"):
        choose("bf16", {"fp32"})  # a CPU without AVX-512 BF16 or AMX


def test_bf16_runs_where_the_cpu_has_it(tiny_checkpoint, tiles):
    if "bf16" not in openvino_plugin.native_precisions():
        pytest.skip("this CPU has no native bf16")
    fp32 = load_model("onnx", str(tiny_checkpoint), "cpu").predict(tiles)
    bf16 = load_model("openvino", str(tiny_checkpoint), "cpu", precision="bf16").predict(tiles)
    assert np.abs(bf16 - fp32).max() < 0.1 and (bf16.argmax(1) == fp32.argmax(1)).mean() > 0.95


def test_precisions_a_backend_lacks_and_devices_it_lacks_are_one_line(tiny_checkpoint):
    assert load_model("onnx", str(tiny_checkpoint), "cpu", precision="fp32") is not None
    with pytest.raises(BackendError, match="backend 'onnx' runs fp32 only; .* model.backend: "
                                           "openvino for bf16"):
        load_model("onnx", str(tiny_checkpoint), "cpu", precision="bf16")
    with pytest.raises(BackendError, match="the openvino backend runs on the CPU"):
        load_model("openvino", str(tiny_checkpoint), "cuda")


def test_it_registers_through_the_entry_point_and_is_not_auto_yet():
    backends = registered_backends()
    assert "openvino" in backends
    assert backends["openvino"].backend.auto_priority["cpu"] < \
        backends["onnx"].backend.auto_priority["cpu"]


@pytest.fixture
def calibration(tmp_path):
    return write_raster(tmp_path / "calibration.tif", two_region_image(160, 192, seed=7))


def test_quantize_writes_an_int8_model_that_runs(tmp_path, tiny_checkpoint, calibration, tiles):
    pytest.importorskip("nncf")
    from click.testing import CliRunner

    from deeplab_geo.cli import main

    out = tmp_path / "int8"
    done = CliRunner().invoke(main, ["quantize", str(tiny_checkpoint), "--calibration",
                                     str(calibration), "--out", str(out), "--tile-size", "64",
                                     "--tiles", "12", "--min-agreement", "0.5"])
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in out.iterdir()) == ["model.bin", "model.json", "model.xml",
                                                     "quantize.json"]
    report = json.loads((out / "quantize.json").read_text())
    assert (report["calibration_tiles"], report["held_out_tiles"]) == (8, 4)
    assert 0.5 <= report["agreement"] <= 1
    predictor = load_model("openvino", str(out / "model.xml"), "cpu", precision="int8")
    assert predictor.precision == "int8" and predictor.info.classes == ["water", "land", "road"]
    int8 = predictor.predict(tiles[:, :, :64, :64])
    fp32 = load_model("onnx", str(tiny_checkpoint), "cpu").predict(tiles[:, :, :64, :64])
    assert int8.shape == fp32.shape and np.allclose(int8.sum(1), 1, atol=1e-3)


def test_an_int8_model_below_the_agreement_asked_is_refused_and_nothing_written(
        tmp_path, tiny_checkpoint, calibration):
    pytest.importorskip("nncf")
    from deeplab_geo_openvino.quantize import quantize

    from deeplab_geo.errors import CheckpointError

    kept = quantize(str(tiny_checkpoint), [calibration], tmp_path / "kept", tile=64, tiles=12,
                    min_agreement=0.0)
    with pytest.raises(CheckpointError, match=r"agrees with fp32 on [\d.]+% of 4 held-out "
                                              r"tiles' pixels, below .*; nothing written"):
        quantize(str(tiny_checkpoint), [calibration], tmp_path / "refused", tile=64, tiles=12,
                 min_agreement=kept.agreement + 0.001)  # the same tiles: the same agreement
    assert not (tmp_path / "refused").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".deeplab-geo-")]


def test_int8_asks_for_an_int8_model(tiny_checkpoint):
    with pytest.raises(BackendError, match="is not an INT8 model; make one with `deeplab-geo "
                                           "quantize`"):
        load_model("openvino", str(tiny_checkpoint), "cpu", precision="int8")
