"""`deeplab-geo run` end to end on a tiny raster with a tiny model, in process."""

import json

import geopandas as gpd
import numpy as np
import pyogrio
import rasterio
from click.testing import CliRunner

from deeplab_geo.cli import main
from tests.conftest import TINY_CLASSES, write_raster


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_run_writes_all_outputs_georeferenced(tiny_pipeline, tiny_raster):
    result = invoke("run", tiny_pipeline, "--quiet")
    assert result.exit_code == 0, result.output
    out = tiny_pipeline.parent / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json", "run.json", "tiny.gpkg", "tiny_classes.tif", "tiny_confidence.tif",
        "tiny_item.json",
        "tiny_quicklook.png"]
    with rasterio.open(tiny_raster) as src, rasterio.open(out / "tiny_classes.tif") as cls, \
            rasterio.open(out / "tiny_confidence.tif") as conf:
        for ds in (cls, conf):
            assert ds.crs == src.crs and ds.transform == src.transform
            assert (ds.width, ds.height) == (src.width, src.height)
            assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert cls.dtypes[0] == "uint8" and cls.nodata == 255
        assert cls.tags()["CLASS_NAMES"] == ",".join(TINY_CLASSES)
        assert cls.colormap(1)[2] == (128, 128, 128, 255)
        classes = cls.read(1)
        assert conf.dtypes[0] == "uint8" and conf.scales == (0.01,) and conf.nodata == 255
        probability = conf.read(1) * conf.scales[0]
    assert classes.max() < len(TINY_CLASSES)
    assert ((probability > 0) & (probability <= 1)).all()

    report = json.loads((out / "run.json").read_text())
    assert report["raster"]["tiles"] == 6
    assert sum(report["pixels_per_class"].values()) == classes.size
    assert report["config"]["tiling"] == {"tile_size": 32, "overlap": 8}
    assert {"predict_and_refine", "vectorize", "total"} <= set(report["timings_s"])

    polygons = gpd.read_file(out / "tiny.gpkg")
    assert polygons.crs == rasterio.open(tiny_raster).crs
    assert list(polygons.columns[:4]) == ["class_id", "class_name", "area_m2", "mean_confidence"]
    assert polygons.geometry.is_valid.all()
    # exact: without simplification polygon areas add up to the raster's pixel area
    assert np.isclose(polygons["area_m2"].sum(), classes.size * 0.25)
    assert pyogrio.read_info(out / "tiny.gpkg")["features"] == len(polygons)


def test_progress_bar_reports_tiles(tiny_pipeline):
    result = CliRunner().invoke(main, ["run", str(tiny_pipeline)])
    assert result.exit_code == 0
    assert "6/6" in result.stderr and "tile/s" in result.stderr


def test_json_progress_lines_for_programs(tiny_pipeline):
    result = CliRunner().invoke(main, ["run", str(tiny_pipeline), "--progress", "json"])
    assert result.exit_code == 0, result.output
    objects = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert "plan" in objects[0]  # first the run's plan (tests/test_planning.py), then progress
    events = [o["progress"] for o in objects[1:]]
    assert events[0] == {"done": 0, "total": 6, "unit": "tile"}
    assert events[-1]["done"] == 6
    assert [e["done"] for e in events] == sorted(e["done"] for e in events)


def test_config_error_is_one_line_exit_2_and_writes_nothing(tiny_pipeline):
    result = invoke("run", tiny_pipeline, "--set", "tiling.overlap=32")
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    assert "tiling: overlap (32) must be smaller than tile_size (32)" in result.stderr
    assert not (tiny_pipeline.parent / "out").exists()


def test_unknown_key_names_it(tiny_pipeline):
    tiny_pipeline.write_text(tiny_pipeline.read_text() + "tilling: {}\n")
    result = invoke("run", tiny_pipeline)
    assert result.exit_code == 2 and "unknown key 'tilling'" in result.stderr


def test_missing_input_names_the_path(tiny_pipeline, tmp_path):
    result = invoke("run", tiny_pipeline, "--input", tmp_path / "nope.tif")
    assert result.exit_code == 2
    assert "nope.tif: input raster not found" in result.stderr
    assert not any((tiny_pipeline.parent / "out").glob("*")) if (
        tiny_pipeline.parent / "out").exists() else True


def test_failure_mid_run_leaves_no_partial_outputs(tiny_pipeline, tmp_path):
    not_a_raster = tmp_path / "fake.tif"
    not_a_raster.write_bytes(b"II*\x00garbage" * 10)
    result = invoke("run", tiny_pipeline, "--input", not_a_raster)
    assert result.exit_code == 2 and "not a raster GDAL can read" in result.stderr
    out = tiny_pipeline.parent / "out"
    assert not out.exists() or list(out.iterdir()) == []


def test_missing_checkpoint(tiny_pipeline, tmp_path):
    result = invoke("run", tiny_pipeline, "--set", f"model.checkpoint={tmp_path}/none.safetensors")
    assert result.exit_code == 2 and "checkpoint not found" in result.stderr


def test_band_count_mismatch(tiny_pipeline, tmp_path):
    single = write_raster(tmp_path / "gray.tif", np.zeros((1, 40, 40), np.uint8))
    result = invoke("run", tiny_pipeline, "--input", single)
    assert result.exit_code == 2
    assert "has 1 band(s) but the model expects 3" in result.stderr


def test_raster_without_crs_is_refused(tiny_pipeline, tmp_path):
    plain = write_raster(tmp_path / "plain.tif", np.zeros((3, 40, 40), np.uint8), crs=None)
    result = invoke("run", tiny_pipeline, "--input", plain)
    assert result.exit_code == 2 and "no CRS or geotransform" in result.stderr


def test_nodata_pixels_stay_nodata(tiny_pipeline, tmp_path):
    image = np.full((3, 40, 40), 90, np.uint8)
    image[:, :, :10] = 0
    raster = write_raster(tmp_path / "nd.tif", image, nodata=0)
    result = invoke("run", tiny_pipeline, "--input", raster, "--quiet")
    assert result.exit_code == 0, result.output
    with rasterio.open(tiny_pipeline.parent / "out" / "nd_classes.tif") as ds:
        classes = ds.read(1)
    assert (classes[:, :10] == 255).all() and (classes[:, 10:] < 3).all()


def test_backends_lists_torch():
    result = invoke("backends")
    assert result.exit_code == 0
    torch_line = next(line for line in result.output.splitlines() if line.startswith("torch "))
    assert "built-in" in torch_line
