"""The QGIS Processing plugin, run in real QGIS (Debian's 3.22).

Most tests install the plugin zip that ``make qgis-plugin`` builds into a throwaway QGIS profile
and run the algorithms through ``qgis_process.bin`` (the ``qgis_process`` wrapper is broken on
Debian 12). Tests of styling, progress and cancellation run the algorithms in-process in
QGIS's own Python with ``plugins/qgis/harness.py``. All point the plugin at this environment's
``deeplab-geo``.
"""

from __future__ import annotations

import ast
import configparser
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
from click.testing import CliRunner
from scipy import ndimage

from deeplab_geo.cli import main as cli_main
from tests.conftest import TINY_CLASSES, TINY_COLOURS, two_region_image, write_raster
from tests.test_parent_death import (
    children_of,
    command_line,
    kill_all,
    refining,
    still_running,
    wait_for,
)

QGIS_PROCESS = Path("/usr/bin/qgis_process.bin")
QGIS_PYTHON = Path("/usr/bin/python3")
ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIR = ROOT / "plugins" / "qgis"
CLI = Path(sys.executable).with_name("deeplab-geo")
PROFILE_PLUGINS = Path(".local/share/QGIS/QGIS3/profiles/default/python/plugins")
TIMEOUT_S = 300

needs_qgis = pytest.mark.skipif(
    not QGIS_PROCESS.exists() or not QGIS_PYTHON.exists(),
    reason="QGIS not installed (/usr/bin/qgis_process.bin missing); `make test` installs "
           "Debian's qgis and python3-qgis where apt-get can")


def build_plugin_zip(dist: Path) -> Path:
    """Build the plugin zip exactly as `make qgis-plugin` does."""
    done = subprocess.run([sys.executable, str(PLUGIN_DIR / "build_zip.py"), str(dist)],
                          capture_output=True, text=True, check=True)
    return Path(done.stdout.strip())


def load_build_zip():
    spec = importlib.util.spec_from_file_location("build_zip", PLUGIN_DIR / "build_zip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plugin_zip_leaves_out_bytecode_and_is_reproducible(tmp_path):
    plugin = tmp_path / "deeplab_geo_qgis"
    shutil.copytree(PLUGIN_DIR / "deeplab_geo_qgis", plugin)
    (plugin / "__pycache__").mkdir(exist_ok=True)
    (plugin / "__pycache__" / "runner.cpython-311.pyc").write_bytes(b"\0")
    build_zip = load_build_zip()
    archive = build_zip.build(tmp_path / "dist", plugin=plugin)
    with zipfile.ZipFile(archive) as bundle:
        names = bundle.namelist()
    assert "deeplab_geo_qgis/runner.py" in names
    assert not [n for n in names if "__pycache__" in n]
    assert build_zip.build(tmp_path / "again", plugin=plugin).read_bytes() == \
        archive.read_bytes()


def test_plugin_zip_holds_the_plugin_and_nothing_heavy(tmp_path):
    archive = build_plugin_zip(tmp_path)
    assert archive.name == "deeplab_geo_qgis-0.1.0.zip"
    with zipfile.ZipFile(archive) as bundle:
        names = bundle.namelist()
        metadata = configparser.ConfigParser()
        metadata.read_string(bundle.read("deeplab_geo_qgis/metadata.txt").decode())
        sources = {n: bundle.read(n).decode() for n in names if n.endswith(".py")}
    assert {"deeplab_geo_qgis/__init__.py", "deeplab_geo_qgis/metadata.txt",
            "deeplab_geo_qgis/provider.py", "deeplab_geo_qgis/algorithms.py"} <= set(names)
    assert all(n.startswith("deeplab_geo_qgis/") and "__pycache__" not in n for n in names)
    assert metadata["general"]["hasProcessingProvider"] == "yes"
    assert metadata["general"]["qgisMinimumVersion"] == "3.22"
    # QGIS's Python must never load torch or deeplab-geo itself: the plugin only runs the CLI
    for name, source in sources.items():
        for node in ast.walk(ast.parse(source, name)):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module]
            else:
                continue
            roots = {m.split(".")[0] for m in modules}
            assert not roots & {"torch", "deeplab_geo", "numpy", "rasterio"}, (name, modules)


@pytest.fixture(scope="session")
def qgis_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A HOME whose default QGIS profile has the plugin zip installed and enabled."""
    if not CLI.exists():
        pytest.skip(f"{CLI} missing: install deeplab-geo into this environment (make)")
    home = tmp_path_factory.mktemp("qgis-home")
    plugins = home / PROFILE_PLUGINS
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(build_plugin_zip(home / "dist")) as bundle:
        bundle.extractall(plugins)
    enabled = qgis_process(qgis_env(home, home / "tmp"), "plugins", "enable", "deeplab_geo_qgis")
    assert enabled.returncode == 0, enabled.stderr
    return home


def qgis_env(home: Path, tmp: Path, **extra: str) -> dict[str, str]:
    """Environment for QGIS: the test HOME and TMPDIR, offscreen Qt, this deeplab-geo."""
    runtime = home / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(tmp), "QT_QPA_PLATFORM": "offscreen",
           "XDG_RUNTIME_DIR": str(runtime), "DEEPLAB_GEO_EXECUTABLE": str(CLI),
           "PYTHONDONTWRITEBYTECODE": "1"}
    env.update(extra)
    return env


def qgis_process(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(QGIS_PROCESS), *args], env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)


def run_algorithm(env: dict[str, str], algorithm: str, **params) -> subprocess.CompletedProcess:
    """``qgis_process.bin --json run ALGORITHM -- KEY=VALUE...``."""
    return qgis_process(env, "--json", "run", algorithm, "--",
                        *(f"{key}={value}" for key, value in params.items()))


def run_in_qgis(env: dict[str, str], tmp_path: Path, **request) -> dict:
    """Run an algorithm in-process in QGIS's Python (see plugins/qgis/harness.py).

    QGIS settings (the provider setting among them) go to a HOME of this test's own.
    """
    request["report"] = str(tmp_path / "harness-report.json")
    request_path = tmp_path / "harness-request.json"
    request_path.write_text(json.dumps(request))
    home = tmp_path / "harness-home"
    home.mkdir()
    done = subprocess.run([str(QGIS_PYTHON), str(PLUGIN_DIR / "harness.py"), str(request_path)],
                          env={**env, "HOME": str(home)}, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    return json.loads(Path(request["report"]).read_text())


@pytest.fixture
def sample_scene(tmp_path: Path) -> Path:
    """The demo's synthetic scene (seed 0) at 96 x 96 px: the bundled model finds regions."""
    result = CliRunner().invoke(cli_main, ["sample", "--out", str(tmp_path / "scene"),
                                           "--size", "96"])
    assert result.exit_code == 0, result.output
    return tmp_path / "scene" / "orthophoto.tif"


def assert_same_grid(path: Path, reference: Path) -> None:
    with rasterio.open(path) as out, rasterio.open(reference) as ref:
        assert out.crs == ref.crs and out.transform == ref.transform
        assert (out.width, out.height) == (ref.width, ref.height)


def region_sizes(classes: np.ndarray) -> list[int]:
    """Sizes (pixels) of the 8-connected single-class regions of a class map."""
    sizes = []
    for value in np.unique(classes[classes != 255]):
        labels, _ = ndimage.label(classes == value, structure=np.ones((3, 3)))
        sizes += np.bincount(labels.ravel())[1:].tolist()
    return sorted(sizes)


@pytest.mark.qgis
@needs_qgis
def test_both_algorithms_are_in_the_toolbox(qgis_home, tmp_path):
    listed = qgis_process(qgis_env(qgis_home, tmp_path), "list")
    assert listed.returncode == 0, listed.stderr
    assert "deeplab_geo:segment_raster\tSegment raster" in listed.stdout
    assert "deeplab_geo:run_pipeline\tRun pipeline" in listed.stdout


@pytest.mark.qgis
@needs_qgis
def test_segment_raster_writes_georeferenced_classes_and_polygons(qgis_home, tmp_path,
                                                                   sample_scene):
    out = tmp_path / "result"
    out.mkdir()
    min_area = 600.0  # m²; 2400 px at 0.5 m
    done = run_algorithm(qgis_env(qgis_home, tmp_path / "tmp"), "deeplab_geo:segment_raster",
                         INPUT=sample_scene, TILE_SIZE=64, OVERLAP=16, CRF="true",
                         CRF_ITERATIONS=2, MIN_AREA=min_area, OUTPUT=out / "classes.tif",
                         OUTPUT_POLYGONS=out / "polygons.gpkg",
                         OUTPUT_CONFIDENCE=out / "confidence.tif")
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)["results"]
    assert results == {"OUTPUT": str(out / "classes.tif"),
                       "OUTPUT_POLYGONS": str(out / "polygons.gpkg"),
                       "OUTPUT_CONFIDENCE": str(out / "confidence.tif")}
    assert sorted(p.name for p in out.iterdir()) == ["classes.tif", "confidence.tif",
                                                    "polygons.gpkg"]
    assert_same_grid(out / "classes.tif", sample_scene)
    assert_same_grid(out / "confidence.tif", sample_scene)
    with rasterio.open(out / "classes.tif") as ds:  # the bundled demo model (no CHECKPOINT)
        assert ds.dtypes[0] == "uint8" and ds.nodata == 255
        assert ds.tags()["CLASS_NAMES"].split(",")[0] == "water"
        assert ds.colormap(1)[0][:3] != (0, 0, 0)
        classes = ds.read(1)

    info = pyogrio.read_info(out / "polygons.gpkg")
    with rasterio.open(sample_scene) as ds:
        assert info["crs"] == ds.crs.to_string()
    assert list(info["fields"][:4]) == ["class_id", "class_name", "area_m2", "mean_confidence"]
    polygons = pyogrio.read_dataframe(out / "polygons.gpkg")
    assert len(polygons) > 0
    # MIN_AREA reached the CLI: the class map has a region below it, and no polygon is
    assert min(region_sizes(classes)) * 0.25 < min_area, "no region below MIN_AREA to act on"
    assert (polygons["area_m2"] >= min_area).all()
    assert set(polygons["class_id"]) <= set(np.unique(classes))


@pytest.mark.qgis
@needs_qgis
def test_segment_raster_runs_a_zoo_onnx_model_at_its_own_tiles(qgis_home, tmp_path,
                                                               sample_scene):
    """A Deepness-style .onnx with a fixed 64 px input: the dialog's default tiles give way to
    the model's, and its class names reach the class raster."""
    from tests.test_zoo import DEEPNESS, Net, export

    model = export(tmp_path / "zoo.onnx", Net(), size=64, batch=1, metadata=DEEPNESS)
    out = tmp_path / "result"
    out.mkdir()
    done = run_algorithm(qgis_env(qgis_home, tmp_path / "tmp"), "deeplab_geo:segment_raster",
                         INPUT=sample_scene, CHECKPOINT=model, TILE_SIZE=1024, OVERLAP=-1,
                         CRF="false", OUTPUT=out / "classes.tif")
    assert done.returncode == 0, done.stderr
    assert_same_grid(out / "classes.tif", sample_scene)
    with rasterio.open(out / "classes.tif") as ds:
        assert ds.tags()["CLASS_NAMES"] == "water,land,road"


@pytest.mark.qgis
@needs_qgis
def test_run_pipeline_publishes_into_the_pipelines_output_dir(qgis_home, tmp_path,
                                                              tiny_pipeline):
    other = write_raster(tmp_path / "other.tif", two_region_image(40, 56, seed=3))
    done = run_algorithm(qgis_env(qgis_home, tmp_path / "tmp"), "deeplab_geo:run_pipeline",
                         PIPELINE=tiny_pipeline, INPUT=other, OVERRIDES="crf.enabled=false")
    assert done.returncode == 0, done.stderr
    out = tiny_pipeline.parent / "out"  # the pipeline's output_dir
    results = json.loads(done.stdout)["results"]
    assert results == {"OUTPUT_DIR": str(out), "CLASSES": str(out / "other_classes.tif"),
                       "CONFIDENCE": str(out / "other_confidence.tif"),
                       "POLYGONS": str(out / "other.gpkg"), "REPORT": str(out / "run.json")}
    assert sorted(p.name for p in out.iterdir()) == [
        "other.gpkg", "other_classes.tif", "other_confidence.tif", "other_quicklook.png",
        "run.json"]
    assert_same_grid(out / "other_classes.tif", other)
    report = json.loads((out / "run.json").read_text())
    assert report["config"]["crf"]["enabled"] is False
    assert report["config"]["tiling"] == {"tile_size": 32, "overlap": 8}
    assert pyogrio.read_info(out / "other.gpkg")["features"] == report["polygons"] > 0


@pytest.mark.qgis
@needs_qgis
def test_cli_errors_reach_qgis_verbatim(qgis_home, tmp_path, tiny_pipeline):
    bad = tiny_pipeline.with_name("bad.yaml")
    bad.write_text(tiny_pipeline.read_text().replace("overlap: 8", "overlapp: 8"))
    direct = subprocess.run([str(CLI), "run", str(bad), "--quiet"], capture_output=True,
                            text=True, timeout=TIMEOUT_S)
    message = direct.stderr.strip().splitlines()[-1]
    assert direct.returncode == 2 and message.startswith("Error:") and "overlapp" in message

    done = run_algorithm(qgis_env(qgis_home, tmp_path / "tmp"), "deeplab_geo:run_pipeline",
                         PIPELINE=bad)
    assert done.returncode != 0
    assert message in done.stderr.splitlines()
    assert not (bad.parent / "out").exists()


@pytest.mark.qgis
@needs_qgis
def test_a_missing_executable_is_a_clear_error(qgis_home, tmp_path, tiny_pipeline):
    wrong = qgis_env(qgis_home, tmp_path, DEEPLAB_GEO_EXECUTABLE=str(tmp_path / "nowhere"))
    done = run_algorithm(wrong, "deeplab_geo:run_pipeline", PIPELINE=tiny_pipeline)
    assert done.returncode != 0
    assert (f"deeplab-geo executable '{tmp_path / 'nowhere'}' (from $DEEPLAB_GEO_EXECUTABLE) "
            "is not an executable file") in done.stderr

    unset = qgis_env(qgis_home, tmp_path, PATH="/usr/bin:/bin")
    del unset["DEEPLAB_GEO_EXECUTABLE"]
    done = run_algorithm(unset, "deeplab_geo:run_pipeline", PIPELINE=tiny_pipeline)
    assert done.returncode != 0
    assert "deeplab-geo executable not found: set 'deeplab-geo executable' under Settings > " \
           "Options > Processing > Providers > deeplab-geo, or the environment variable " \
           "DEEPLAB_GEO_EXECUTABLE" in done.stderr
    assert not (tiny_pipeline.parent / "out").exists()


def hex_colours(colours: list[list[int]]) -> list[str]:
    return ["#{:02x}{:02x}{:02x}".format(*c) for c in colours]


@pytest.mark.qgis
@needs_qgis
def test_segment_raster_streams_progress_and_loads_styled_outputs(qgis_home, tmp_path,
                                                                  tiny_raster, tiny_checkpoint):
    # the provider setting names the CLI and wins over a wrong environment variable
    env = qgis_env(qgis_home, tmp_path / "tmp", DEEPLAB_GEO_EXECUTABLE="/nonexistent")
    out = tmp_path / "result"
    out.mkdir()
    report = run_in_qgis(env, tmp_path, algorithm="deeplab_geo:segment_raster", load=True,
                         executable=str(CLI),
                         parameters={"INPUT": str(tiny_raster),
                                     "CHECKPOINT": str(tiny_checkpoint), "TILE_SIZE": 32,
                                     "OVERLAP": 8, "CRF": False,
                                     "OUTPUT": str(out / "classes.tif"),
                                     "OUTPUT_POLYGONS": str(out / "polygons.gpkg")})
    assert report["exception"] is None and report["errors"] == []
    assert [i for i in report["infos"] if i.startswith("Plan: ")]  # the CLI's plan, as info
    assert report["commands"][0].startswith(f"{CLI} run ")
    progress = report["progress"]
    assert progress == sorted(progress) and progress[-1] == 100
    assert any(0 < p < 90 for p in progress), progress  # tiles, while the CLI was running
    assert report["workdirs_left"] == [] and report["processes_left"] == []

    expected = [[i, name, colour]
                for i, (name, colour) in enumerate(zip(TINY_CLASSES, hex_colours(TINY_COLOURS)))]
    layers = {layer["renderer"]: layer for layer in report["layers"]}
    assert sorted(layers) == ["categorizedSymbol", "paletted"]
    raster, vector = layers["paletted"], layers["categorizedSymbol"]
    assert raster["source"] == str(out / "classes.tif") and raster["classes"] == expected
    assert vector["source"].startswith(str(out / "polygons.gpkg"))
    assert vector["attribute"] == "class_id"
    assert vector["categories"] == expected and vector["feature_count"] > 0


@pytest.mark.qgis
@needs_qgis
def test_run_pipeline_loads_styled_outputs_from_a_chosen_folder(qgis_home, tmp_path,
                                                                 tiny_pipeline):
    chosen = tmp_path / "chosen"
    report = run_in_qgis(qgis_env(qgis_home, tmp_path / "tmp"), tmp_path,
                         algorithm="deeplab_geo:run_pipeline", load=True,
                         parameters={"PIPELINE": str(tiny_pipeline), "OUTPUT_DIR": str(chosen),
                                     "OVERRIDES": "crf.iterations=1\n\nquicklook=false"})
    assert report["exception"] is None, report["exception"]
    assert report["results"]["CLASSES"] == str(chosen / "tiny_classes.tif")
    assert sorted(p.name for p in chosen.iterdir()) == [
        "run.json", "tiny.gpkg", "tiny_classes.tif", "tiny_confidence.tif"]
    assert not (tiny_pipeline.parent / "out").exists()
    renderers = {Path(layer["source"].split("|")[0]).name: layer["renderer"]
                 for layer in report["layers"]}
    assert renderers == {"tiny_classes.tif": "paletted", "tiny.gpkg": "categorizedSymbol"}


@pytest.mark.qgis
@needs_qgis
def test_cancelling_stops_the_cli_and_leaves_no_outputs(qgis_home, tmp_path, tiny_checkpoint):
    big = write_raster(tmp_path / "big.tif", two_region_image(256, 256))  # 121 tiles of 32 px
    out = tmp_path / "result"
    out.mkdir()
    report = run_in_qgis(qgis_env(qgis_home, tmp_path / "tmp"), tmp_path,
                         algorithm="deeplab_geo:segment_raster", cancel_on_progress=True,
                         parameters={"INPUT": str(big), "CHECKPOINT": str(tiny_checkpoint),
                                     "TILE_SIZE": 32, "OVERLAP": 8, "CRF_ITERATIONS": 2,
                                     "OUTPUT": str(out / "classes.tif"),
                                     "OUTPUT_POLYGONS": str(out / "polygons.gpkg")})
    assert report["cancelled"] and report["results"] is None
    assert report["exception"] == "Cancelled: deeplab-geo was stopped and no outputs were " \
                                  "written."
    assert 0 < report["progress"][-1] < 90  # stopped while tiles were being processed
    assert list(out.iterdir()) == []
    assert report["workdirs_left"] == [] and report["processes_left"] == []


@pytest.mark.qgis
@needs_qgis
def test_killing_qgis_process_stops_the_cli_and_its_helpers(qgis_home, tmp_path,
                                                            tiny_checkpoint):
    """The CLI runs in a session of its own (for Cancel); its link to the plugin's process
    (DEEPLAB_GEO_PARENT_PID) ends it, and its CRF helpers with it, when qgis_process dies.

    Tiles of 784 px refined for 100 iterations: the CLI prints nothing for about 50 s, so a
    write into the dead qgis_process's pipe cannot be what stops it."""
    large = write_raster(tmp_path / "large.tif", two_region_image(3072, 3072))
    out, tmp = tmp_path / "result", tmp_path / "tmp"
    out.mkdir()
    destinations = {"OUTPUT": out / "classes.tif", "OUTPUT_POLYGONS": out / "polygons.gpkg",
                    "OUTPUT_CONFIDENCE": out / "confidence.tif"}
    params = {"INPUT": large, "CHECKPOINT": tiny_checkpoint, "TILE_SIZE": 1024, "OVERLAP": 8,
              "CRF": "true", "CRF_ITERATIONS": 100, **destinations}
    qgis = subprocess.Popen([str(QGIS_PROCESS), "run", "deeplab_geo:segment_raster", "--",
                             *(f"{key}={value}" for key, value in params.items())],
                            env=qgis_env(qgis_home, tmp), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    found = []
    try:
        cli = wait_for(lambda: [pid for pid in children_of(qgis.pid)
                                if "deeplab-geo" in command_line(pid)], "the CLI to start")[0]
        found.append(cli)
        wait_for(lambda: refining(cli), "CRF helpers refining tiles", timeout=TIMEOUT_S)
        found += children_of(cli)  # the CRF helpers and multiprocessing's resource tracker
        qgis.kill()
        qgis.wait()
        assert still_running(found, str(tmp)) == []
        assert not any(path.exists() for path in destinations.values())
        assert list(out.iterdir()) == []
        # and the CLI removed what it had staged in the plugin's working folder
        assert [p for p in tmp.rglob("*") if p.suffix in {".tif", ".gpkg"}] == []
    finally:
        qgis.kill()
        kill_all(found)


@pytest.mark.qgis
@needs_qgis
def test_plan_lines_reach_the_log_as_information(qgis_home, tmp_path, tiny_raster):
    """A stand-in CLI prints a plan line, then fails: the plan is information, not an error,
    and the failure is still the CLI's Error line. It also shows the parent pid it got."""
    fake = tmp_path / "fake-deeplab-geo"
    fake.write_text(
        "#!/bin/sh\n"
        "echo '{\"progress\": {\"done\": 0, \"total\": 4, \"unit\": \"tile\"}}' >&2\n"
        "echo '{\"plan\": {\"width\": 48}, \"text\": \"Plan: 64 x 48 px, 4 tiles\"}' >&2\n"
        "echo \"Error: started by $DEEPLAB_GEO_PARENT_PID\" >&2\n"
        "exit 1\n")
    fake.chmod(0o755)
    report = run_in_qgis(qgis_env(qgis_home, tmp_path / "tmp"), tmp_path,
                         algorithm="deeplab_geo:segment_raster", executable=str(fake),
                         parameters={"INPUT": str(tiny_raster),
                                     "OUTPUT": str(tmp_path / "classes.tif")})
    assert report["exception"] == f"Error: started by {report['pid']}"
    assert "Plan: 64 x 48 px, 4 tiles" in report["infos"]
    assert report["errors"] == [f"Error: started by {report['pid']}"]


@pytest.mark.qgis
@needs_qgis
def test_runner_parses_progress_and_plan_lines():
    """The runner's pure parsers, in QGIS's Python (the runner imports qgis.core)."""
    lines = ['{"plan": {"tiles": 4}, "text": "Plan: 64 x 48 px, 4 tiles"}',
             '{"progress": {"done": 1, "total": 4, "unit": "tile"}}',
             '{"plan": {"tiles": 4}}', '{"plan": {}, "text": 3}', '{"text": "no plan"}',
             '["plan"]', '{"plan": ', "Plan: 64 x 48 px", ""]
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); "
            "from deeplab_geo_qgis.runner import parse_plan, parse_progress; "
            "lines = json.loads(sys.argv[2]); "
            "print(json.dumps([[parse_plan(l), parse_progress(l)] for l in lines]))")
    done = subprocess.run([str(QGIS_PYTHON), "-c", code, str(PLUGIN_DIR), json.dumps(lines)],
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [["Plan: 64 x 48 px, 4 tiles", None], [None, [1, 4]],
                                       *[[None, None]] * 7]


@pytest.mark.qgis
@needs_qgis
def test_a_raster_far_coarser_than_the_model_fails_at_once_with_one_line(qgis_home, tmp_path):
    """A 300 m scene given to Segment raster with its defaults (the 0.5 m bundled model): the
    algorithm fails with the CLI's one-line reason, not a traceback, and writes nothing."""
    coarse = write_raster(tmp_path / "coarse.tif", two_region_image(72, 80), pixel=300.0)
    out = tmp_path / "result"
    out.mkdir()
    report = run_in_qgis(qgis_env(qgis_home, tmp_path / "tmp"), tmp_path,
                         algorithm="deeplab_geo:segment_raster",
                         parameters={"INPUT": str(coarse), "OUTPUT": str(out / "classes.tif")})
    assert report["results"] is None
    assert report["exception"].startswith("Error: coarse.tif: pixels of 300 m, 600x coarser "
                                           "than the model's 0.5 m (model.max_upsample: 2): "
                                           "the job would grow to 48,000 x 43,200 px, ")
    assert "model.resolution: native" in report["exception"]
    assert "\n" not in report["exception"] and "Traceback" not in " ".join(report["errors"])
    assert list(out.iterdir()) == [] and report["workdirs_left"] == []
