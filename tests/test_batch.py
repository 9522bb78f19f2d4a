"""Batches: folders, globs and lists of rasters; manifest, resume after a kill, bad inputs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
from click.testing import CliRunner

from deeplab_geo.cli import main
from deeplab_geo.errors import InputError, OutputError
from deeplab_geo.pipeline import batch
from tests.conftest import two_region_image, write_raster

ROOT = Path(__file__).resolve().parent.parent


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_inputs_from_a_folder_a_glob_and_a_list(tmp_path):
    for name in ("b.tif", "a.TIF", "notes.txt", "c.jp2"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.tif").write_bytes(b"")
    assert [p.name for p in batch.resolve_inputs(tmp_path)] == ["a.TIF", "b.tif", "c.jp2"]
    assert [p.name for p in batch.resolve_inputs(tmp_path / "**" / "*.tif")] == ["b.tif",
                                                                                 "d.tif"]
    listing = tmp_path / "list.txt"
    listing.write_text("# survey 2026\nsub/d.tif\n\nb.tif\n")
    assert batch.resolve_inputs(listing) == [tmp_path / "b.tif", tmp_path / "sub" / "d.tif"]
    listing.write_text("b.tif\nmissing.tif\n")
    with pytest.raises(InputError, match="list.txt:2: missing.tif not found"):
        batch.resolve_inputs(listing)
    with pytest.raises(InputError, match="names no raster"):
        batch.resolve_inputs(tmp_path / "*.png")


def test_same_names_in_different_folders_get_their_own_outputs(tmp_path):
    inputs = [tmp_path / "north" / "x.tif", tmp_path / "south" / "x.tif",
              tmp_path / "south" / "x.jp2"]
    items = batch.plan(sorted(inputs), tmp_path / "out", batch=True)
    folders = [item.output_dir for item in items]
    assert len(set(folders)) == 3
    assert all(f.is_relative_to(tmp_path / "out") for f in folders)
    assert [i.key for i in items] == ["north/x", "south/x", "south/x.tif"]


@pytest.fixture
def three_rasters(tmp_path):
    """Two good rasters with the same name in different folders, and a broken one."""
    folder = tmp_path / "ortho"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    write_raster(folder / "a" / "tile.tif", two_region_image(seed=1))
    write_raster(folder / "b" / "tile.tif", two_region_image(seed=2)[:, :, ::-1].copy())
    (folder / "b" / "broken.tif").write_bytes(b"II*\x00" + b"\x00" * 64)
    return folder


def test_batch_with_one_broken_input(tiny_pipeline, three_rasters):
    out = tiny_pipeline.parent / "batch"
    result = invoke("run", tiny_pipeline, "--input", three_rasters / "**" / "*.tif",
                    "--output-dir", out, "--quiet", "--set", "batch.merge=true")
    assert result.exit_code == 1
    assert "b/broken: FAILED: " in result.stderr
    assert "broken.tif: not a raster GDAL can read" in result.stderr
    assert "3 inputs: 2 done, 0 skipped (finished earlier), 1 failed" in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())["inputs"]
    statuses = {entry["key"]: entry["status"] for entry in manifest.values()}
    assert statuses == {"a/tile": "done", "b/tile": "done", "b/broken": "failed"}
    for key in ("a/tile", "b/tile"):
        assert (out / key / "tile_classes.tif").exists() and (out / key / "tile.gpkg").exists()
    assert not (out / "b" / "broken").exists()
    merged = pyogrio.read_dataframe(out / "merged.gpkg")
    per_input = sum(len(pyogrio.read_dataframe(out / k / "tile.gpkg")) for k in ("a/tile",
                                                                                 "b/tile"))
    assert len(merged) == per_input and set(merged["source"]) == {"a/tile.tif", "b/tile.tif"}

    again = invoke("run", tiny_pipeline, "--input", three_rasters / "**" / "*.tif",
                   "--output-dir", out, "--quiet")
    assert again.exit_code == 1  # the broken input is retried, and fails again
    assert "2 skipped (finished earlier), 1 failed" in again.stdout
    forced = invoke("run", tiny_pipeline, "--input", three_rasters / "a", "--output-dir", out,
                    "--quiet", "--force")
    assert forced.exit_code == 0 and "1 inputs: 1 done" in forced.stdout


def test_changed_settings_or_input_rerun_a_finished_input(tiny_pipeline):
    first = invoke("run", tiny_pipeline, "--quiet")
    assert first.exit_code == 0 and "Segmented" in first.stdout
    assert "Skipped tiny.tif" in invoke("run", tiny_pipeline, "--quiet").stdout
    changed = invoke("run", tiny_pipeline, "--quiet", "--set", "crf.iterations=2")
    assert "Segmented" in changed.stdout
    raster = tiny_pipeline.parent / "tiny.tif"
    os.utime(raster, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert "Segmented" in invoke("run", tiny_pipeline, "--quiet", "--set",
                                 "crf.iterations=2").stdout


def read_outputs(folder):
    """Pixel arrays and polygon records of every output below ``folder``."""
    found = {}
    for path in sorted(folder.rglob("*")):
        key = path.relative_to(folder).as_posix()
        if path.suffix == ".tif":
            with rasterio.open(path) as ds:
                found[key] = ds.read()
        elif path.suffix == ".gpkg":
            frame = pyogrio.read_dataframe(path)
            found[key] = sorted(zip(frame["class_id"], frame.geometry.to_wkt()))
    return found


@pytest.mark.parametrize("sig", [pytest.param(signal.SIGKILL, marks=pytest.mark.slow),
                                 signal.SIGTERM])
def test_interrupted_batch_resumes_to_the_same_outputs(tiny_pipeline, tmp_path, sig):
    """A real run is killed mid-batch (SIGKILL to its whole process group, as `kill -9 -PGID`,
    or SIGTERM to the CLI, as `kill PID`); a rerun finishes it with identical outputs."""
    folder = tmp_path / "many"
    folder.mkdir()
    for seed in range(4):
        image = np.tile(two_region_image(seed=seed), (1, 3, 2))
        write_raster(folder / f"r{seed}.tif", image)
    args = ["run", tiny_pipeline, "--input", folder, "--quiet", "--set", "crf.iterations=5"]
    reference = invoke(*args, "--output-dir", tmp_path / "reference")
    assert reference.exit_code == 0, reference.output

    out = tmp_path / "interrupted"
    log = tmp_path / "cli.log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-c", "from deeplab_geo.cli import main; main()",
             *map(str, args), "--output-dir", str(out)],
            cwd=ROOT, stdout=sink, stderr=sink, start_new_session=True)
    manifest = out / "manifest.json"
    deadline = time.monotonic() + 120
    try:
        while not (manifest.exists() and "done" in manifest.read_text()):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        if sig == signal.SIGKILL:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # leftovers of the job, if any
        except ProcessLookupError:
            pass
    done = [e for e in json.loads(manifest.read_text())["inputs"].values()
            if e["status"] == "done"]
    assert 1 <= len(done) < 4  # interrupted mid-batch
    if sig == signal.SIGTERM:
        assert process.returncode == 130 and "Interrupted" in log.read_text()
        assert not list(out.rglob(".deeplab-geo-*"))  # cleaned up on the way out
    finished = {e["key"] for e in done}
    for key in {f"r{i}" for i in range(4)} - finished:  # nothing half-written under a final name
        assert not (out / key).exists() or not any(p.name.startswith("r")
                                                   for p in (out / key).iterdir())

    resumed = invoke(*args, "--output-dir", out)
    assert resumed.exit_code == 0, resumed.output
    assert f"{len(done)} skipped" in resumed.stdout
    assert not list(out.rglob(".deeplab-geo-*"))
    assert read_outputs(out).keys() == read_outputs(tmp_path / "reference").keys()
    for key, value in read_outputs(tmp_path / "reference").items():
        if isinstance(value, np.ndarray):
            assert np.array_equal(read_outputs(out)[key], value), key
        else:
            assert read_outputs(out)[key] == value, key


def test_a_second_run_into_the_same_folder_is_refused(tiny_pipeline):
    out = tiny_pipeline.parent / "out"
    with batch.locked_output_dir(out):
        result = invoke("run", tiny_pipeline, "--quiet")
    assert result.exit_code == OutputError.exit_code
    assert "another deeplab-geo run is writing here" in result.stderr


# -- bad input: one line naming the problem and the fix, non-zero exit, nothing written ----

def assert_refused(result, message, out):
    assert result.exit_code != 0
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert message in result.stderr
    assert not out.exists() or not any(out.iterdir())


def test_truncated_geotiff(tiny_pipeline, tmp_path):
    good = write_raster(tmp_path / "good.tif", np.tile(two_region_image(), (1, 4, 4)),
                        compress="deflate", tiled=True, blockxsize=64, blockysize=64)
    truncated = tmp_path / "cut.tif"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size * 2 // 3])
    result = invoke("run", tiny_pipeline, "--input", truncated, "--quiet")
    assert_refused(result, "truncated or corrupt", tiny_pipeline.parent / "out")


def test_unsupported_data_type(tiny_pipeline, tmp_path):
    raster = write_raster(tmp_path / "complex.tif", np.ones((3, 20, 20), np.complex64))
    result = invoke("run", tiny_pipeline, "--input", raster, "--quiet")
    assert_refused(result, "data type complex64 is not supported", tiny_pipeline.parent / "out")


def test_entirely_nodata_raster(tiny_pipeline, tmp_path):
    raster = write_raster(tmp_path / "empty.tif", np.zeros((3, 40, 40), np.uint8), nodata=0)
    result = invoke("run", tiny_pipeline, "--input", raster, "--quiet")
    assert_refused(result, "every pixel is nodata", tiny_pipeline.parent / "out")


def test_output_directory_that_cannot_be_created(tiny_pipeline, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = invoke("run", tiny_pipeline, "--output-dir", blocker / "out", "--quiet")
    assert result.exit_code == OutputError.exit_code
    assert "cannot create output directory" in result.stderr


def test_unsafe_pickle_checkpoint_is_refused(tiny_pipeline, tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    bad = tmp_path / "model.pt"
    bad.write_bytes(pickle.dumps({"weights": Evil()}))
    (tmp_path / "model.json").write_text(json.dumps({
        "format": "deeplab-geo/1", "architecture": "deeplabv3_lite_mobilenet_v3_small",
        "num_classes": 3, "classes": ["a", "b", "c"], "colours": [[0, 0, 0]] * 3}))
    result = invoke("run", tiny_pipeline, "--set", f"model.checkpoint={bad}",
                    "--set", "model.backend=torch", "--quiet")
    assert_refused(result, "model.pt", tiny_pipeline.parent / "out")
    assert not (ROOT / "pwned").exists() and not Path("pwned").exists()


def test_negative_crf_weight_and_unknown_backend(tiny_pipeline):
    result = invoke("run", tiny_pipeline, "--set", "crf.w1=-1")
    assert_refused(result, "crf.w1", tiny_pipeline.parent / "out")
    result = invoke("run", tiny_pipeline, "--set", "model.backend=os.system")
    assert_refused(result, "no backend named 'os.system'", tiny_pipeline.parent / "out")


def test_the_environment_is_never_logged(tiny_pipeline, monkeypatch):
    monkeypatch.setenv("DEEPLAB_GEO_TEST_SECRET", "hunter2-secret-value")
    result = invoke("run", tiny_pipeline)
    assert result.exit_code == 0
    out = tiny_pipeline.parent / "out"
    assert "hunter2" not in result.output + result.stderr
    assert "hunter2" not in (out / "run.json").read_text()
    assert "hunter2" not in (out / "manifest.json").read_text()


def test_parallel_inputs_give_the_same_outputs(tiny_pipeline, three_rasters):
    (three_rasters / "b" / "broken.tif").unlink()
    outputs = {}
    for parallel in (1, 2):
        out = tiny_pipeline.parent / f"p{parallel}"
        result = invoke("run", tiny_pipeline, "--input", three_rasters / "**" / "*.tif",
                        "--output-dir", out, "--quiet", "--set", f"batch.parallel={parallel}")
        assert result.exit_code == 0, result.output
        outputs[parallel] = read_outputs(out)
    assert outputs[1].keys() == outputs[2].keys() and len(outputs[1]) == 6
    for key, value in outputs[1].items():
        other = outputs[2][key]
        assert np.array_equal(other, value) if isinstance(value, np.ndarray) else other == value


def test_a_changed_checkpoint_reruns_a_finished_input(tiny_pipeline, tiny_checkpoint, tmp_path):
    import shutil

    own = tmp_path / "own"
    own.mkdir()
    weights = Path(shutil.copy(tiny_checkpoint, own / "m.safetensors"))
    shutil.copy(tiny_checkpoint.with_suffix(".json"), own / "m.json")
    args = ("run", tiny_pipeline, "--quiet", "--set", f"model.checkpoint={weights}")
    assert "Segmented" in invoke(*args).stdout
    assert "Skipped" in invoke(*args).stdout
    later = time.time_ns() + 10**9
    os.utime(own / "m.json", ns=(later, later))  # e.g. new options in the metadata
    assert "Segmented" in invoke(*args).stdout
