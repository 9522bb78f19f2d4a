"""Every shipped pipeline runs end to end on CPU, on tiny generated data."""

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from deeplab_geo.cli import main
from deeplab_geo.config import is_training_config, load_pipeline, load_train_config
from deeplab_geo.models.checkpoint import load_checkpoint
from tests.test_datasets import make_chips_scene, make_cityscapes, make_voc

PIPELINES = Path(__file__).parent.parent / "pipelines"
SHIPPED = sorted(PIPELINES.glob("*.yaml"))
# Shipped YAMLs and the test below that runs each end to end.
END_TO_END = {
    "landcover.yaml": "test_landcover_pipeline_with_the_bundled_model",
    "train_landcover_demo.yaml": "test_train_demo_config_trains_a_loadable_checkpoint",
    "train_chips_demo.yaml": "test_train_chips_demo_fine_tunes_and_evaluates",
    "voc2012.yaml": "test_benchmark_config_trains_and_evaluates[voc2012]",
    "cityscapes.yaml": "test_benchmark_config_trains_and_evaluates[cityscapes]",
    "train_landsat.yaml": "test_landsat_pipelines_train_run_and_score_a_holdout",
    "train_landsat_polygons.yaml": "test_landsat_pipelines_train_run_and_score_a_holdout",
    "landsat.yaml": "test_landsat_pipelines_train_run_and_score_a_holdout",
}
TINY_MODEL = ("--set", "model.architecture=deeplabv3_lite_mobilenet_v3_small",
              "--set", "model.options={}")


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
    # the demo model's grid is aligned to its 32 px cells, so its tiles are not fitted
    assert report["raster"] == {"width": 96, "height": 96, "crs": "EPSG:32633", "tiles": 4,
                                "largest_tile_px": [64, 64],
                                "tiled_pixels_per_pixel": round(4 * 64 * 64 / 96 ** 2, 4)}
    assert (tmp_path / "out" / "orthophoto_classes.tif").is_file()
    scores = invoke("evaluate", "raster", tmp_path / "out" / "orthophoto_classes.tif",
                    "--labels", tmp_path / "s" / "labels.tif", "--json", tmp_path / "e.json")
    assert scores.exit_code == 0 and "| mIoU |" in scores.output
    with rasterio.open(tmp_path / "out" / "orthophoto_classes.tif") as pred, \
            rasterio.open(tmp_path / "s" / "labels.tif") as truth:
        predicted, labels = pred.read(1), truth.read(1)
    ious = [((predicted == c) & (labels == c)).sum() / ((predicted == c) | (labels == c)).sum()
            for c in np.union1d(np.unique(predicted), np.unique(labels)) if c != 255]
    reported = json.loads((tmp_path / "e.json").read_text())[0]["miou"]
    assert reported == pytest.approx(np.mean(ious), abs=1e-6)  # what the arrays say
    assert reported > 0.5  # the bundled model on the scene kind it was trained for


def test_train_demo_config_trains_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "m.safetensors"
    result = invoke("train", PIPELINES / "train_landcover_demo.yaml",
                    "--set", "train.steps=2", "--set", "train.batch_size=2",
                    "--set", "train.crop_size=32", "--set", "data.size=64",
                    "--set", "data.train_seeds=[5]", "--set", "data.val_seeds=[6]",
                    "--set", "train.threads=1",
                    "--set", f"output={out}")
    assert result.exit_code == 0, result.output
    assert "validation mIoU" in result.output
    model, info = load_checkpoint(out)
    assert info.classes[0] == "water" and info.training["config"]["train"]["steps"] == 2


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_yaml_validates_with_its_own_schema(path):
    if is_training_config(path):
        config = load_train_config(path)
        assert config.output.is_absolute()
        for key in ("root", "raster", "labels"):
            if hasattr(config.data, key):
                assert getattr(config.data, key).is_absolute()
    else:
        config = load_pipeline(path)
        assert config.input.is_absolute() and config.output_dir.is_absolute()


def test_every_shipped_yaml_is_run_end_to_end():
    assert {p.name for p in SHIPPED} == set(END_TO_END)


def _train_then_evaluate(yaml_path, data_overrides, tmp_path, *extra):
    out = tmp_path / "m.safetensors"
    common = [*data_overrides, "--set", f"output={out}"]
    result = invoke("train", yaml_path, *common, "--set", "train.steps=2",
                    "--set", "train.batch_size=2", "--set", "train.crop_size=32",
                    "--set", "train.checkpoint_every=1", "--set", "train.workers=1",
                    "--set", "train.threads=1",
                    "--quiet", *extra)
    assert result.exit_code == 0, result.output
    assert "validation mIoU" in result.output
    assert sorted(p.name for p in (tmp_path / "m.checkpoints").iterdir()) == [
        "step_00000001", "step_00000002"]
    scores = invoke("evaluate", "dataset", yaml_path, *common, "--limit", "1", "--crf", "both",
                    "--set", "evaluate.crf.iterations=2", "--set", "evaluate.device=cpu",
                    "--set", "evaluate.backend=torch",
                    "--json", tmp_path / "s.json", "--markdown", tmp_path / "s.md", "--quiet")
    assert scores.exit_code == 0, scores.output
    report = json.loads((tmp_path / "s.json").read_text())
    assert [r["name"] for r in report] == ["without CRF", "with CRF"]
    assert all(0 <= r["miou"] <= 1 for r in report)
    return load_checkpoint(out)[1], report


@pytest.mark.parametrize("name", ["voc2012", "cityscapes"])
def test_benchmark_config_trains_and_evaluates(tmp_path, name):
    root = make_voc(tmp_path) if name == "voc2012" else make_cityscapes(tmp_path)
    overrides = ["--set", f"data.root={root}", *TINY_MODEL]
    if name == "voc2012":
        overrides += ["--set", "data.train_split=train"]
    info, report = _train_then_evaluate(PIPELINES / f"{name}.yaml", overrides, tmp_path)
    assert info.num_classes == (21 if name == "voc2012" else 19)
    recipe = info.training["config"]["train"]
    assert (recipe["optimizer"], recipe["momentum"], recipe["weight_decay"]) == ("sgd", 0.9,
                                                                                 5e-4)
    assert recipe["scale_range"] == [0.5, 1.5] and recipe["freeze_bn"] is True
    assert len(report[0]["iou"]) == info.num_classes


@pytest.mark.slow
def test_voc2012_config_with_its_resnet101(tmp_path):
    root = make_voc(tmp_path, train=2, val=1)
    info, _ = _train_then_evaluate(PIPELINES / "voc2012.yaml",
                                   ["--set", f"data.root={root}",
                                    "--set", "data.train_split=train"], tmp_path)
    assert info.architecture == "deeplabv2_resnet101" and info.output_stride == 8


def test_train_chips_demo_fine_tunes_and_evaluates(tmp_path):
    scene = make_chips_scene(tmp_path / "scene", size=128)
    overrides = ["--set", f"data.raster={scene['raster']}",
                 "--set", f"data.labels={scene['vector']}",
                 "--set", "data.chip_size=64", "--set", "data.block_size=64"]
    info, report = _train_then_evaluate(PIPELINES / "train_chips_demo.yaml", overrides,
                                        tmp_path)
    assert info.classes[0] == "water" and len(info.classes) == 6  # from builtin:landcover-demo
    assert info.training["config"]["model"]["init"] == "builtin:landcover-demo"


def test_landsat_pipelines_train_run_and_score_a_holdout(tmp_path):
    import geopandas as gpd
    from shapely.geometry import box

    from tests.test_real_data import ORIGIN, PIXEL, landsat_like

    (tmp_path / "scene").mkdir()
    scene = landsat_like(tmp_path / "scene", height=64, width=96)
    x0, y0 = ORIGIN
    polygons = tmp_path / "scene" / "polygons.shp"
    gpd.GeoDataFrame({"label": ["forest", "developed", "water"]}, geometry=[
        box(x0 + 10 * PIXEL, y0 - 20 * PIXEL, x0 + 40 * PIXEL, y0 - 2 * PIXEL),
        box(x0 + 10 * PIXEL, y0 - 60 * PIXEL, x0 + 40 * PIXEL, y0 - 40 * PIXEL),
        box(x0 + 10 * PIXEL, y0 - 34 * PIXEL, x0 + 40 * PIXEL, y0 - 32 * PIXEL)],
        crs="EPSG:3358").to_file(polygons, engine="pyogrio")
    small = ["--set", "data.region=[0,0,64,64]", "--set", "data.chip_size=32",
             "--set", "data.block_size=32", "--set", "train.steps=2",
             "--set", "train.crop_size=32", "--set", "train.batch_size=2",
             "--set", "train.workers=0", "--set", f"data.raster={scene['image']}"]
    model = tmp_path / "model.safetensors"
    result = invoke("train", PIPELINES / "train_landsat.yaml", *small,
                    "--set", f"data.labels={scene['labels']}", "--set", f"output={model}",
                    "--progress", "none")
    assert result.exit_code == 0, result.output
    net, info = load_checkpoint(model)
    assert info.classes[-1] == "sediment"
    assert info.options["members"] == 3 and len(net.members) == 3  # they run as one model
    poly_model = tmp_path / "polygons.safetensors"
    result = invoke("train", PIPELINES / "train_landsat_polygons.yaml", *small,
                    "--set", f"data.labels={polygons}", "--set", f"output={poly_model}",
                    "--progress", "none")
    assert result.exit_code == 0, result.output
    run_set = ["--set", f"input={scene['image']}", "--set", f"output_dir={tmp_path / 'out'}",
               "--set", f"model.checkpoint={model}"]
    result = invoke("run", PIPELINES / "landsat.yaml", *run_set, "--progress", "none")
    assert result.exit_code == 0, result.output
    with rasterio.open(tmp_path / "out" / "stack_classes.tif") as ds:
        classes = ds.read(1, masked=True)  # the scene's nodata corner stays nodata
    assert classes.count() > 0 and classes.max() < 7
    holdout = tmp_path / "holdout.json"
    result = invoke("evaluate", "pipeline", PIPELINES / "landsat.yaml", *run_set,
                    "--labels", scene["labels"], "--label-values", "1,2,3,4,5,6,7",
                    "--window", "64,0,32,64", "--json", holdout)
    assert result.exit_code == 0, result.output
    rows = json.loads(holdout.read_text())
    assert [r["name"] for r in rows] == ["without CRF", "with CRF"]
    assert sum(map(sum, rows[0]["confusion_matrix"])) == 32 * 64
