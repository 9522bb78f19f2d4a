"""Every shipped pipeline runs end to end on CPU, on tiny generated data."""

import json
from pathlib import Path

import rasterio
from click.testing import CliRunner

from deeplab_geo.cli import main
from deeplab_geo.models.checkpoint import load_checkpoint

PIPELINES = Path(__file__).parent.parent / "pipelines"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_sample_command_writes_a_georeferenced_scene(tmp_path):
    result = invoke("sample", "--out", tmp_path / "s", "--seed", 3, "--size", 64)
    assert result.exit_code == 0, result.output
    with rasterio.open(tmp_path / "s" / "orthophoto.tif") as img, \
            rasterio.open(tmp_path / "s" / "labels.tif") as lab:
        assert img.count == 3 and img.dtypes[0] == "uint8"
        assert img.crs.to_epsg() == 32633 and img.res == (0.5, 0.5)
        assert img.profile["tiled"] and img.compression is not None
        assert lab.transform == img.transform and lab.read(1).max() <= 5
    assert (tmp_path / "s" / "labels.gpkg").is_file()


def test_landcover_pipeline_with_the_bundled_model(tmp_path):
    invoke("sample", "--out", tmp_path / "s", "--size", 96)
    result = invoke("run", PIPELINES / "landcover.yaml",
                    "--input", tmp_path / "s" / "orthophoto.tif",
                    "--output-dir", tmp_path / "out", "--quiet",
                    "--set", "tiling.tile_size=64", "--set", "tiling.overlap=16")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "run.json").read_text())
    assert report["raster"] == {"width": 96, "height": 96, "crs": "EPSG:32633", "tiles": 4}
    assert (tmp_path / "out" / "orthophoto_classes.tif").is_file()
    scores = invoke("evaluate", "raster", tmp_path / "out" / "orthophoto_classes.tif",
                    "--labels", tmp_path / "s" / "labels.tif", "--json", tmp_path / "e.json")
    assert scores.exit_code == 0 and "| mIoU |" in scores.output
    assert 0 <= json.loads((tmp_path / "e.json").read_text())[0]["miou"] <= 1


def test_train_demo_config_trains_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "m.safetensors"
    result = invoke("train", PIPELINES / "train_landcover_demo.yaml",
                    "--set", "train.steps=2", "--set", "train.batch_size=2",
                    "--set", "train.crop_size=32", "--set", "data.size=64",
                    "--set", "data.train_seeds=[5]", "--set", "data.val_seeds=[6]",
                    "--set", f"output={out}")
    assert result.exit_code == 0, result.output
    assert "validation mIoU" in result.output
    model, info = load_checkpoint(out)
    assert info.classes[0] == "water" and info.training["config"]["train"]["steps"] == 2
