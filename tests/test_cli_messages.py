"""Every error of the CLI is one line of at most 300 characters, over the bad inputs users
bring: broken files, wrong keys and values, the wrong kind of file, a raster the model cannot
take, the wrong weights, a full or unwritable output folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from deeplab_geo.cli import main
from tests.conftest import two_region_image, write_raster

ROOT = Path(__file__).resolve().parents[1]
LANDCOVER = str(ROOT / "pipelines" / "landcover.yaml")
CHIPS = str(ROOT / "pipelines" / "train_chips_demo.yaml")


def bad_inputs(tmp: Path, checkpoint: Path) -> dict[str, list[str]]:
    """Invocations that must fail, by name (files made in ``tmp``)."""
    good = write_raster(tmp / "good.tif", two_region_image(48, 64))
    (tmp / "text.tif").write_text("not a raster")
    truncated = tmp / "truncated.tif"
    truncated.write_bytes(good.read_bytes()[:600])
    no_crs = write_raster(tmp / "no_crs.tif", two_region_image(48, 64), crs=None)
    one_band = write_raster(tmp / "one_band.tif", two_region_image(48, 64)[:1])
    coarse = write_raster(tmp / "coarse.tif", two_region_image(48, 64), pixel=300.0)
    empty = write_raster(tmp / "empty.tif", np.zeros((3, 48, 64), np.uint8), nodata=0)
    torch.save({"conv.weight": torch.zeros(3, 3)}, tmp / "bare.pt")
    (tmp / "blocker").write_text("a file where the output folder should be")
    bad_yaml = tmp / "bad.yaml"
    bad_yaml.write_text("input: good.tif\noutput_dir: out\ntiling: {tile_size: [\n")
    run = ["run", LANDCOVER, "--output-dir", str(tmp / "out"), "--quiet"]
    model = ["--set", f"model.checkpoint={checkpoint}"]
    return {
        "missing input": [*run, "--input", str(tmp / "missing.tif")],
        "not a raster": [*run, "--input", str(tmp / "text.tif")],
        "truncated GeoTIFF": [*run, "--input", str(truncated)],
        "no CRS": [*run, "--input", str(no_crs), *model],
        "band count": [*run, "--input", str(one_band), *model],
        "entirely nodata": [*run, "--input", str(empty), *model, "--set", "crf.enabled=false"],
        "far coarser than the model": [*run, "--input", str(coarse)],
        "unknown key": [*run, "--input", str(good), "--set", "tiling.tile_sise=64"],
        "wrong type": [*run, "--input", str(good), "--set", "tiling.tile_size=big"],
        "out of range": [*run, "--input", str(good), "--set", "tiling.overlap=4096"],
        "bad choice": [*run, "--input", str(good), "--set", "vectorize.format=GPKG"],
        "bad --set": [*run, "--set", "crf.enabled"],
        "invalid YAML": ["run", str(bad_yaml)],
        "missing pipeline": ["run", str(tmp / "nowhere.yaml")],
        "a training config to run": ["run", CHIPS],
        "a pipeline to train": ["train", LANDCOVER],
        "bad union tag": ["train", CHIPS, "--set", "data.kind=chip"],
        "missing checkpoint": [*run, "--input", str(good), "--set",
                               f"model.checkpoint={tmp / 'none.safetensors'}"],
        "bare state dict as --model": ["segment", str(good), "-o", str(tmp / "o"),
                                       "--model", str(tmp / "bare.pt"), "--quiet"],
        "unknown backend": [*run, "--input", str(good), "--set", "model.backend=tensorrt"],
        "output folder is a file": ["run", LANDCOVER, "--input", str(good), "--output-dir",
                                    str(tmp / "blocker" / "out"), "--quiet"],
        "missing labels": ["evaluate", "raster", str(good), "--labels",
                           str(tmp / "missing_labels.tif")],
        "weights of another architecture": [
            "import-model", str(tmp / "bare.pt"), "--architecture", "deeplabv3_resnet50",
            "--classes", "a,b", "--out", str(tmp / "x.safetensors")],
    }


CASES = ["missing input", "not a raster", "truncated GeoTIFF", "no CRS", "band count",
         "entirely nodata", "far coarser than the model", "unknown key", "wrong type",
         "out of range", "bad choice", "bad --set", "invalid YAML", "missing pipeline",
         "a training config to run", "a pipeline to train", "bad union tag",
         "missing checkpoint", "bare state dict as --model", "unknown backend",
         "output folder is a file", "missing labels", "weights of another architecture"]


def test_the_matrix_runs_every_case(tmp_path, tiny_checkpoint):
    assert sorted(bad_inputs(tmp_path, tiny_checkpoint)) == sorted(CASES)


@pytest.mark.parametrize("case", CASES)
def test_every_error_is_one_line_of_at_most_300_characters(case, tmp_path, tiny_checkpoint):
    args = bad_inputs(tmp_path, tiny_checkpoint)[case]
    result = CliRunner().invoke(main, args)
    assert result.exit_code in (1, 2, 3), (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert len(lines[0]) <= 300, f"{len(lines[0])} characters: {lines[0]}"
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
