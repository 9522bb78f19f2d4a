"""Every shell and Python example of README.md and docs/*.md runs as a user runs it.

Each ```bash block runs through ``bash`` and each ```python block as its own ``python
file.py`` process, in a folder laid out like a checkout (``pipelines/``, the demo scene in
``data/sample/``, small copies of it under the names the pages use: ``my.tif``, ``a.tif``,
``orthophotos/``...), with this environment's ``deeplab-geo`` first on ``PATH``. Each must exit
0 and leave the folders it names with ``-o``, ``--output-dir`` or ``--out`` (``plan`` only names
them). A block the suite
cannot run (the network, QGIS's desktop, a long training) has a marker on the line above it,
with the reason: ``<!-- docs-test: skip: REASON -->``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deeplab_geo.checkpoints import metadata_path, resolve
from deeplab_geo.tools.sample import write_sample

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?:<!-- docs-test: skip: (?P<reason>[^>]*?) -->\n)?"
                   r"```(?P<lang>bash|python)\n(?P<body>.*?)```", re.S)
NAMED_OUTPUT = re.compile(r"(?:^|\s)(?:-o|--output-dir|--out)[ =](\S+)")


def examples() -> list:
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start("lang")) + 1
            name = f"{page.relative_to(ROOT)}:{line}"
            marks = [pytest.mark.skip(reason=match["reason"])] if match["reason"] else []
            found.append(pytest.param(match["lang"], match["body"], id=name, marks=marks))
    return found


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A folder laid out like the repository, with the files the examples name."""
    root = tmp_path_factory.mktemp("checkout")
    shutil.copytree(ROOT / "pipelines", root / "pipelines")
    scene = write_sample(root / "data" / "sample", seed=0, size=320)["image"]
    for name in ("my.tif", "a.tif", "b.tif", "scene.tif", "my_ortho.tif",
                 "orthophotos/north.tif", "orthophotos/south/x.tif"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(scene, root / name)
    weights = resolve("builtin:landcover-demo")  # `--model my_model.safetensors`
    shutil.copyfile(weights, root / "my_model.safetensors")
    shutil.copyfile(metadata_path(weights), root / "my_model.json")
    return root


@pytest.mark.parametrize("lang, body", examples())
def test_the_example_runs_as_written(lang, body, checkout, tmp_path):
    work = tmp_path / "checkout"
    shutil.copytree(checkout, work)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    if lang == "python":
        (work / "example.py").write_text(body, encoding="utf-8")
        command = [sys.executable, "example.py"]
    else:
        command = ["bash", "-e", "-o", "pipefail", "-c", body]
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    for line in body.splitlines():
        if "deeplab-geo plan" in line:  # names where outputs would go; writes nothing
            continue
        for named in NAMED_OUTPUT.findall(line):
            assert (work / named).exists(), f"{named} was not written"


def test_every_page_is_looked_at_and_skips_say_why():
    params = examples()
    assert len(params) >= 20
    for param in params:
        for mark in param.marks:
            assert len(mark.kwargs["reason"]) > 10, param.id
