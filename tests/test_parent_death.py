"""A ``deeplab-geo`` started with ``DEEPLAB_GEO_PARENT_PID`` ends with that process.

The QGIS plugin starts the CLI in a session of its own (so Cancel can stop its whole process
group); without this link a killed QGIS or ``qgis_process`` would leave the CLI and its CRF
helper processes running. Linux only: the link is ``prctl(PR_SET_PDEATHSIG)`` and the checks
read ``/proc``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
from click.testing import CliRunner

from deeplab_geo.cli import main as cli_main
from tests.conftest import two_region_image, write_raster

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the parent-death link and /proc are Linux's")

CLI = Path(sys.executable).with_name("deeplab-geo")
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 10


# --- /proc helpers (tests/test_qgis.py uses them too) -------------------------------------

def parent_of(pid: int) -> int | None:
    """The parent of process ``pid``, or ``None`` when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[1])


def is_running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (an orphan nobody reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def command_line(pid: int) -> str:
    """The command line of process ``pid``, words joined by spaces; empty when it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace").strip()
    except OSError:
        return ""


def all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdecimal()]


def children_of(pid: int) -> list[int]:
    return [child for child in all_pids() if parent_of(child) == pid]


def spawn_helpers(pid: int) -> list[int]:
    """The ``multiprocessing`` helper processes (CRF workers) that process ``pid`` started."""
    return [child for child in children_of(pid) if "multiprocessing" in command_line(child)]


def mentioning(text: str) -> list[int]:
    """Running processes whose command line contains ``text``."""
    return [pid for pid in all_pids() if is_running(pid) and text in command_line(pid)]


def still_running(pids: Iterable[int], text: str, timeout: float = STOP_TIMEOUT_S) -> list[str]:
    """Wait up to ``timeout`` s for ``pids`` and every process mentioning ``text`` to end; return
    the command lines of those that did not."""
    deadline = time.monotonic() + timeout
    while True:
        left = {pid for pid in pids if is_running(pid)} | set(mentioning(text))
        if not left or time.monotonic() > deadline:
            return [command_line(pid) or str(pid) for pid in sorted(left)]
        time.sleep(0.1)


def kill_all(pids: Iterable[int]) -> None:
    """Clean up after a failed test: SIGKILL the processes it found (CRF helpers then get
    SIGTERM from their link to the CLI)."""
    for pid in pids:
        if is_running(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def wait_for(condition, what: str, timeout: float = START_TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)
    return result


# --- the tests ----------------------------------------------------------------------------

# A parent that starts the CLI with its own pid in DEEPLAB_GEO_PARENT_PID, its stderr into a
# file; it waits for it, or ends at once ("exit").
PARENT = """
import os, subprocess, sys
cli, pipeline, errors, then = sys.argv[1:]
env = {**os.environ, "DEEPLAB_GEO_PARENT_PID": str(os.getpid())}
with open(errors, "w") as stderr:
    process = subprocess.Popen([cli, "run", pipeline, "--progress", "json"], env=env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=stderr, start_new_session=True)  # as the plugin does
    if then == "wait":
        process.wait()
"""


def write_pipeline(folder: Path, checkpoint: Path, *, size: int, tile_size: int,
                   iterations: int) -> Path:
    """A pipeline for a ``size`` px square raster, CRF in 2 helper processes."""
    write_raster(folder / "large.tif", two_region_image(size, size))
    pipeline = folder / "pipeline.yaml"
    pipeline.write_text(
        "input: large.tif\n"
        "output_dir: out\n"
        f"model: {{checkpoint: {checkpoint}, device: cpu}}\n"
        f"tiling: {{tile_size: {tile_size}, overlap: 8}}\n"
        f"crf: {{iterations: {iterations}}}\n"
        "execution: {crf_processes: 2}\n")
    return pipeline


@pytest.fixture
def long_run(tmp_path: Path, tiny_checkpoint: Path) -> Path:
    """About a minute on 2 cores: 7,225 small tiles, each refined in a fraction of a second."""
    return write_pipeline(tmp_path, tiny_checkpoint, size=2048, tile_size=32, iterations=30)


@pytest.fixture
def long_tiles(tmp_path: Path, tiny_checkpoint: Path) -> Path:
    """9 tiles of 688 px, each refined for about 10 s on this 2-core machine."""
    return write_pipeline(tmp_path, tiny_checkpoint, size=2048, tile_size=1024,
                          iterations=100)


def start_parent(pipeline: Path, then: str) -> tuple[subprocess.Popen, Path]:
    errors = pipeline.with_name("cli-stderr.txt")
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(CLI), str(pipeline),
                               str(errors), then])
    return parent, errors


def tiles_done(errors: Path) -> int:
    """The last tile count in the CLI's ``--progress json`` lines."""
    done = 0
    for line in errors.read_text().splitlines() if errors.exists() else []:
        if line.startswith('{"progress"'):
            done = json.loads(line)["progress"]["done"]
    return done


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def refining(cli: int) -> bool:
    """Whether a CRF helper of ``cli`` is busy with a tile (more CPU than its start-up)."""
    return any(cpu_seconds(helper) > 2 for helper in spawn_helpers(cli))


def kill_parent_and_check(pipeline: Path, working, what: str) -> Path:
    """Start the CLI under a parent, wait until ``working(cli, errors)``, SIGKILL the parent;
    the CLI and its helpers must end and leave no outputs. Returns the CLI's stderr file."""
    parent, errors = start_parent(pipeline, "wait")
    found: list[int] = []
    try:
        cli = wait_for(lambda: children_of(parent.pid), "the CLI to start")[0]
        found.append(cli)
        wait_for(lambda: working(cli, errors), what)
        found += children_of(cli)  # the CRF helpers and multiprocessing's resource tracker
        parent.kill()
        parent.wait()
        assert still_running(found, str(pipeline.parent)) == []
        assert "Interrupted" in errors.read_text()
        out = pipeline.parent / "out"
        assert not out.exists() or list(out.iterdir()) == []
        return errors
    finally:
        parent.kill()
        kill_all(found)


def test_killing_the_parent_stops_the_cli_and_its_helpers_and_writes_nothing(long_run):
    errors = kill_parent_and_check(
        long_run, lambda cli, errors: tiles_done(errors) > 0 and spawn_helpers(cli),
        "a tile done and CRF helper processes")
    assert tiles_done(errors) < 7225  # stopped, not finished


def test_helpers_busy_with_a_long_tile_stop_too(long_tiles):
    """SIGTERM alone would stop the CLI only once its helpers finished their tiles."""
    errors = kill_parent_and_check(long_tiles, lambda cli, errors: refining(cli),
                                   "CRF helpers refining a tile")
    assert tiles_done(errors) == 0


def test_a_cli_whose_parent_ended_before_it_started_exits_at_once(tmp_path, long_run):
    parent, errors = start_parent(long_run, "exit")  # gone before the CLI has imported click
    parent.wait()
    try:
        assert still_running([], str(tmp_path)) == []
        message = errors.read_text().strip()
        assert message == (f"Error: process {parent.pid} (DEEPLAB_GEO_PARENT_PID), which "
                           "started deeplab-geo, has ended; nothing was done")
        assert not (tmp_path / "out").exists()
    finally:
        kill_all(mentioning(str(tmp_path)))


def test_follow_parent_accepts_ancestors_only():
    """In a child process: prctl must not touch the test process."""
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())  # no process has this pid
    with subprocess.Popen(["sleep", "30"]) as unrelated:
        try:
            code = ("import os, sys; from deeplab_geo.processes import follow_parent; "
                    "print([follow_parent(int(pid)) for pid in sys.argv[1:]])")
            done = subprocess.run([sys.executable, "-c", code, str(os.getpid()),
                                   str(os.getppid()), str(unrelated.pid), str(pid_max)],
                                  capture_output=True, text=True, timeout=60, check=True)
        finally:
            unrelated.kill()
    # the parent and a grandparent (a wrapper script in between) count; others do not
    assert done.stdout.strip() == "[True, True, False, False]"


def test_a_malformed_parent_pid_is_ignored_with_a_warning():
    result = CliRunner().invoke(cli_main, ["schema"], env={"DEEPLAB_GEO_PARENT_PID": "qgis"})
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        "Warning: DEEPLAB_GEO_PARENT_PID='qgis' is not a process id; ignored"]
    assert "properties" in json.loads(result.stdout)  # the command ran
