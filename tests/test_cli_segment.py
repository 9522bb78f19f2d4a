"""`deeplab-geo segment` (no YAML) and `deeplab-geo schema`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
import yaml
from click.testing import CliRunner

from deeplab_geo.cli import main
from deeplab_geo.config import json_schema, load_pipeline

ROOT = Path(__file__).resolve().parents[1]


def test_segment_runs_without_yaml_and_prints_a_pipeline_that_reruns(tmp_path, tiny_raster,
                                                                      tiny_checkpoint):
    result = CliRunner().invoke(main, [
        "segment", str(tiny_raster), "-o", str(tmp_path / "out"), "--model",
        str(tiny_checkpoint), "--device", "cpu", "--tile-size", "32", "--no-crf",
        "--format", "fgb", "--set", "tiling.overlap=8", "--quiet"])
    assert result.exit_code == 0, result.output
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {
        "tiny_classes.tif", "tiny_confidence.tif", "tiny.fgb", "run.json"}
    result = CliRunner().invoke(main, [
        "segment", str(tiny_raster), "-o", str(tmp_path / "again"), "--model",
        str(tiny_checkpoint), "--device", "cpu", "--tile-size", "32", "--no-crf",
        "--no-polygons", "--set", "tiling.overlap=8", "--progress", "none"])
    assert result.exit_code == 0, result.output
    assert "Segmented tiny.tif" in result.stderr and "Segmented" not in result.stdout
    saved = tmp_path / "saved.yaml"
    saved.write_text(result.stdout)  # `segment ... > saved.yaml`: the pipeline, nothing else
    config = load_pipeline(saved)
    assert config.tiling.tile_size == 32 and config.tiling.overlap == 8
    assert not config.crf.enabled and not config.vectorize.enabled
    rerun = CliRunner().invoke(main, ["run", str(saved), "--output-dir", str(tmp_path / "rerun"),
                                      "--quiet"])
    assert rerun.exit_code == 0, rerun.output
    with rasterio.open(tmp_path / "out" / "tiny_classes.tif") as a, \
            rasterio.open(tmp_path / "rerun" / "tiny_classes.tif") as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))


def test_segment_of_several_rasters_gives_a_folder_each_and_bad_input_one_line(
        tmp_path, tiny_raster, tiny_checkpoint):
    other = tmp_path / "other.tif"
    other.write_bytes(tiny_raster.read_bytes())
    result = CliRunner().invoke(main, [
        "segment", str(tiny_raster), str(other), "-o", str(tmp_path / "out"), "--model",
        str(tiny_checkpoint), "--device", "cpu", "--no-crf", "--quiet"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "tiny" / "tiny_classes.tif").exists()
    assert (tmp_path / "out" / "other" / "other_classes.tif").exists()
    result = CliRunner().invoke(main, ["segment", str(tmp_path / "missing.tif"), "-o",
                                       str(tmp_path / "bad"), "--quiet"])
    assert result.exit_code != 0
    assert len(result.output.strip().splitlines()) == 1
    assert "missing.tif" in result.output


def test_schema_matches_the_shipped_files_and_checks_keys():
    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert schema == json_schema("pipeline")
    assert {"input", "output_dir", "model", "tiling", "crf", "stac"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False
    for kind in ("pipeline", "train"):
        shipped = json.loads((ROOT / "pipelines" / "schema" / f"{kind}.json").read_text())
        assert shipped == json_schema(kind), f"pipelines/schema/{kind}.json: run make schema"
    for path in (ROOT / "pipelines").glob("*.yaml"):
        first = path.read_text().splitlines()[0]
        data = yaml.safe_load(path.read_text())
        kind = "train" if "data" in data else "pipeline"
        assert first == f"# yaml-language-server: $schema=schema/{kind}.json", path.name


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(tmp_path, tiny_pipeline):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", "from deeplab_geo.cli import main; main()", "run",
         str(tiny_pipeline)], capture_output=True, text=True, check=True)
    assert "\r" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("tiles ")]
    assert lines and lines[-1].startswith("tiles 6/6 (100.0%)"), done.stderr


def test_a_default_segment_warns_of_nothing_the_user_did_not_ask(tmp_path, tiny_raster):
    """The bundled model's overlap (384 px) grows the default tiles, silently: the user set
    no tile size."""
    result = CliRunner().invoke(main, ["segment", str(tiny_raster), "-o", str(tmp_path / "out"),
                                       "--no-crf"])
    assert result.exit_code == 0, result.output
    assert "cannot hold" not in result.stderr and "Warning" not in result.stderr
    assert json.loads((tmp_path / "out" / "run.json").read_text())["windows"]["tile_px"] == 768
