"""First contact with real rasters: the resolution policy and the plan every run makes first.

Rasters at 5 cm, 0.5 m, 10 m and 300 m (and in degrees) meet the bundled model (0.5 m): finer
ones are shrunk to it, slightly coarser ones enlarged with a warning, far coarser ones refused
before the model loads or anything is written; the plan a run prints first agrees with what it
then does.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.transform import from_origin

from deeplab_geo.checkpoints import read_info
from deeplab_geo.cli import main as cli_main
from deeplab_geo.config import validate_pipeline
from deeplab_geo.errors import InputError
from deeplab_geo.pipeline import runner
from deeplab_geo.pipeline.windows import model_resolution, plan_windows
from deeplab_geo.raster import io
from tests.conftest import two_region_image, write_raster

DEMO = "builtin:landcover-demo"


def scene(tmp_path: Path, pixel: float, *, crs: str | None = "EPSG:32633", size: int = 64,
          name: str | None = None) -> Path:
    path = write_raster(tmp_path / (name or f"scene_{pixel}.tif"),
                        two_region_image(size, size), pixel=pixel, crs=crs)
    if crs == "EPSG:4326":  # a real place on the equator (Gabon), where a degree is 111 km
        with rasterio.open(path, "r+") as ds:
            ds.transform = from_origin(10.0, 0.2, pixel, pixel)
    return path


def config(raster: Path | str, out: Path, **model) -> object:
    return validate_pipeline({"input": str(raster), "output_dir": str(out),
                              "model": {"checkpoint": DEMO, "device": "cpu", **model},
                              "crf": {"enabled": False}, "quicklook": False})


def resolution_of(raster: Path, **model) -> tuple:
    with io.open_raster(raster) as ds:
        return model_resolution(config(raster, raster.parent / "out", **model),
                                read_info(DEMO), ds)


@pytest.mark.parametrize("pixel, factor", [(0.05, 0.1), (0.5, 1.0), (0.8, 1.6)])
def test_finer_and_slightly_coarser_rasters_run_at_the_models_resolution(tmp_path, pixel,
                                                                         factor, caplog):
    raster = scene(tmp_path, pixel)
    raster_m, model_m, source = resolution_of(raster)
    assert (raster_m, model_m, source) == (pytest.approx(pixel), 0.5, "model metadata")
    with io.open_raster(raster) as ds, caplog.at_level(logging.WARNING, "deeplab_geo"):
        plan = plan_windows(config(raster, tmp_path / "out"), read_info(DEMO), ds)
    assert plan.scale == pytest.approx(factor, rel=0.02)
    upsampled = [r.getMessage() for r in caplog.records if "upsampled" in r.getMessage()]
    if factor > 1:  # coarser than the model: one warning line naming both and the size
        assert upsampled == ["scene_0.8.tif: its pixels (0.8 m) are 1.6x coarser than the "
                             "model's (0.5 m): upsampled to 102 x 102 px "
                             "(model.max_upsample: 2)"]
    else:
        assert upsampled == []


@pytest.mark.parametrize("pixel, factor, size, tiles", [
    (10, "20x", "1,280 x 1,280 px", ", 9 tiles;"),
    (300, "600x", "38,400 x 38,400 px", ", 9,801 tiles;"),
])
def test_far_coarser_rasters_are_refused_naming_both_resolutions_and_the_ways_out(
        tmp_path, pixel, factor, size, tiles):
    raster = scene(tmp_path, pixel)
    with pytest.raises(InputError) as refused:
        resolution_of(raster)
    message = str(refused.value)
    assert "\n" not in message and len(message) <= 300
    assert message.startswith(f"scene_{pixel}.tif: pixels of {pixel} m, {factor} coarser than "
                              "the model's 0.5 m (model.max_upsample: 2): the job would grow to ")
    for part in (size, tiles, "set model.resolution: native (or <m/px>)",
                 f"or use a model made for about {pixel} m"):
        assert part in message


def test_the_ways_out_work(tmp_path):
    raster = scene(tmp_path, 10)
    assert resolution_of(raster, resolution="native") == (10, 10, "raster (native)")
    assert resolution_of(raster, resolution=2.0) == (10, 2.0, "model.resolution")
    assert resolution_of(raster, max_upsample=25)[1:] == (0.5, "model metadata")


def test_rasters_in_degrees_are_measured_in_metres_and_without_a_crs_run_natively(tmp_path):
    near = scene(tmp_path, 0.5 / 111_320, crs="EPSG:4326", name="degrees_fine.tif")
    raster_m, model_m, _ = resolution_of(near)
    assert raster_m == pytest.approx(0.5, rel=0.01) and model_m == 0.5
    with pytest.raises(InputError, match=r"degrees_coarse.tif: pixels of 3\d\d m, "):
        resolution_of(scene(tmp_path, 0.003, crs="EPSG:4326", name="degrees_coarse.tif"))
    assert resolution_of(scene(tmp_path, 300, crs=None, name="no_crs.tif")) == \
        (None, None, "raster (native)")


def test_a_300_m_scene_is_refused_before_the_model_loads_and_leaves_nothing(tmp_path,
                                                                           monkeypatch):
    raster = scene(tmp_path, 300, size=791)
    loaded = []
    monkeypatch.setattr(runner, "load_model", lambda *a, **k: loaded.append(a))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli_main, ["segment", str(raster), "-o", str(out), "--quiet"])
    assert result.exit_code == 2
    error = result.output.strip().splitlines()[-1]
    assert error.startswith("Error: scene_300.tif: pixels of 300 m, 600x coarser than the "
                            "model's 0.5 m (model.max_upsample: 2): the job would grow to "
                            "474,600 x 474,600 px, ")
    assert loaded == [] and not out.exists()


def test_a_run_prints_its_plan_first_and_keeps_it_in_run_json(tmp_path):
    raster = scene(tmp_path, 0.25, size=96)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli_main, ["segment", str(raster), "-o", str(out), "--no-crf",
                                           "--set", "tiling.tile_size=256",
                                           "--set", "tiling.overlap=32"])
    assert result.exit_code == 0, result.output
    plan_lines = [line for line in result.stderr.splitlines() if line.startswith("Plan: ")]
    assert plan_lines == [plan_lines[0]] and plan_lines[0].startswith(
        "Plan: scene_0.25.tif 96 x 96 px at 0.25 m, resampled x0.5 to the model's 0.5 m "
        "(48 x 48 px), 1 tile of 48 px, overlap 32, ")
    report = json.loads((out / "run.json").read_text())
    assert report["plan"]["tiles"] == report["raster"]["tiles"] == 1
    assert report["plan"]["factor"] == pytest.approx(0.5)
    assert "plan" in report["timings_s"]


def test_plan_agrees_with_the_run_on_tiles_and_nodata(tmp_path, tiny_checkpoint):
    """A mostly-nodata raster: the plan counts the tiles the run cuts, and the tiles holding
    data exactly (its mask is looked at in full below 1,024 px)."""
    image = two_region_image(200, 300)
    image[:, :, 100:] = 0  # two thirds nodata
    raster = write_raster(tmp_path / "sparse.tif", image, nodata=0)
    pipeline = {"input": str(raster), "output_dir": str(tmp_path / "out"),
                "model": {"checkpoint": str(tiny_checkpoint), "device": "cpu",
                          "batch_size": 2},
                "tiling": {"tile_size": 64, "overlap": 16}, "crf": {"iterations": 2},
                "quicklook": False}
    made = runner.plan(validate_pipeline(pipeline))
    grid = runner._prepare(validate_pipeline(pipeline)).grid
    valid = np.any(image != 0, axis=0)
    with_data = sum(bool(valid[t.core_row.start:t.core_row.stop,
                                  t.core_col.start:t.core_col.stop].any()) for t in grid)
    assert made.tiles == len(grid) and made.tiles_with_data == with_data < len(grid)
    assert made.nodata_share == pytest.approx(1 - valid.mean(), abs=0.01)
    assert made.memory_mb > 0 and made.seconds > 0
    assert "nodata 67%" in made.text() and f"({with_data:,} with data)" in made.text()
    result = runner.run(validate_pipeline(pipeline))
    assert result.report["plan"]["tiles"] == result.report["raster"]["tiles"] == len(grid)


def test_a_finished_run_times_the_next_plan(tmp_path, tiny_pipeline, fresh_speeds):
    runner_cli = CliRunner()
    first = runner_cli.invoke(cli_main, ["plan", str(tiny_pipeline), "--json"])
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["speed_source"] == "measured on one batch"
    assert not (tiny_pipeline.parent / "out").exists()  # planning writes no output
    ran = runner_cli.invoke(cli_main, ["run", str(tiny_pipeline), "--quiet"])
    assert ran.exit_code == 0, ran.output
    again = json.loads(runner_cli.invoke(cli_main, ["plan", str(tiny_pipeline),
                                                    "--json"]).stdout)
    assert again["speed_source"].startswith("the last run of these settings here, ")
    remeasured = json.loads(runner_cli.invoke(cli_main, ["plan", str(tiny_pipeline), "--json",
                                                         "--remeasure"]).stdout)
    assert remeasured["speed_source"] == "measured on one batch"


def test_json_progress_carries_the_plan_for_programs(tiny_pipeline):
    result = CliRunner().invoke(cli_main, ["run", str(tiny_pipeline), "--progress", "json"])
    assert result.exit_code == 0, result.output
    objects = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    plans = [o for o in objects if "plan" in o]
    assert len(plans) == 1 and plans[0]["text"].startswith("Plan: tiny.tif 64 x 48 px")
    assert plans[0]["plan"]["tiles"] == json.loads(
        (tiny_pipeline.parent / "out" / "run.json").read_text())["raster"]["tiles"]
    assert objects.index(plans[0]) < next(i for i, o in enumerate(objects) if "progress" in o)


def test_outputs_larger_than_the_free_space_are_refused_up_front(tmp_path, small_disk,
                                                                  pixelwise, fresh_speeds):
    """A 320 KB disk and a 1024 px raster: refused before a tile is predicted, in one line."""
    raster = write_raster(tmp_path / "noisy.tif", np.random.default_rng(4).integers(
        0, 255, (3, 1024, 1024), dtype=np.uint8))
    out = small_disk / "out"
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(f"input: {raster}\noutput_dir: {out}\n"
                        "model: {backend: pixelwise}\ncrf: {enabled: false}\n")
    result = CliRunner().invoke(cli_main, ["run", str(pipeline), "--quiet"])
    assert result.exit_code == 3
    assert result.output.strip().splitlines() == [
        f"Error: {out}: the outputs of noisy.tif need about 3 MB and the disk has 0 MB free; "
        "free some space or choose another output_dir"]
    assert pixelwise.predictor.batch_sizes == [4]  # the plan's probe only
    assert not out.exists()
    planned = CliRunner().invoke(cli_main, ["plan", str(pipeline)])
    assert planned.exit_code == 3 and planned.output == result.output


def test_plan_refuses_what_the_run_would(tmp_path):
    raster = scene(tmp_path, 300)
    result = CliRunner().invoke(cli_main, ["plan", str(raster)])
    assert result.exit_code == 2 and "600x coarser" in result.output
    native = CliRunner().invoke(cli_main, ["plan", str(raster), "--no-crf",
                                           "--set", "model.resolution=native"])
    assert native.exit_code == 0, native.output
    assert native.stdout.startswith("Plan: scene_300.tif 64 x 64 px at 300 m, model at 300 m "
                                    "(the raster's), 1 tile of 64 px")
