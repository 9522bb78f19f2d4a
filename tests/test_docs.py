"""The code in the docs runs as written (on a small generated scene)."""

from __future__ import annotations

import re
from pathlib import Path

import rasterio

from deeplab_geo.tools.sample import write_sample

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


def test_the_xarray_example_runs(tmp_path, monkeypatch):
    write_sample(tmp_path / "data" / "sample", seed=0, size=320)
    monkeypatch.chdir(tmp_path)
    block = _python_blocks(ROOT / "docs" / "xarray.md")[0]
    namespace: dict = {}
    exec(compile(block, "docs/xarray.md", "exec"), namespace)  # noqa: S102 - our own docs
    paths = namespace["paths"]
    assert sorted(paths) == ["classes", "confidence", "polygons"]
    with rasterio.open(paths["classes"]) as ds, rasterio.open("classes.tif") as other:
        assert (ds.read(1) == other.read(1)).all()
    assert len(namespace["polygons"]) > 0
    assert Path("polygons.gpkg").exists()
    assert 0 <= float(namespace["share"]) <= 1
