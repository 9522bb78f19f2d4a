"""The code in the docs runs as written (on a small generated scene)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import rasterio

from deeplab_geo.tools.sample import write_sample

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


def test_the_xarray_example_runs_as_a_script(tmp_path):
    """Saved as a file and run with ``python example.py``, as users do: no ``__main__`` guard
    is needed though the CRF runs in helper processes (deeplab_geo.processes.spawn_context)."""
    write_sample(tmp_path / "data" / "sample", seed=0, size=320)
    block = _python_blocks(ROOT / "docs" / "xarray.md")[0]
    report = ("\nimport json\nprint('REPORT', json.dumps({'paths': sorted(paths), "
              "'polygons': len(polygons), 'share': float(share)}))\n")
    (tmp_path / "example.py").write_text(block + report, encoding="utf-8")
    done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    reports = [line for line in done.stdout.splitlines() if line.startswith("REPORT ")]
    assert len(reports) == 1, done.stdout  # the script ran once, not again in each helper
    report = json.loads(reports[0].removeprefix("REPORT "))
    assert report["paths"] == ["classes", "confidence", "polygons"]
    assert report["polygons"] > 0 and 0 <= report["share"] <= 1
    with rasterio.open(tmp_path / "output" / "xarray" / "orthophoto_classes.tif") as ds, \
            rasterio.open(tmp_path / "classes.tif") as other:
        assert (ds.read(1) == other.read(1)).all()
    assert (tmp_path / "polygons.gpkg").exists()


def test_an_unguarded_script_uses_the_crf_helpers(tmp_path):
    """A script without ``if __name__ == "__main__":`` refines several tiles in the CRF's
    process pool; its top level runs once."""
    (tmp_path / "script.py").write_text(
        "import numpy as np\n"
        "from deeplab_geo import crf\n"
        "print('top level')\n"
        "rng = np.random.default_rng(0)\n"
        "items = []\n"
        "for _ in range(4):\n"
        "    p = rng.random((3, 48, 48)).astype(np.float32)\n"
        "    items.append((p / p.sum(0), rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)))\n"
        "params = crf.CRFParams(4, 67, 3, 3, 1, 2, 'pydensecrf', 'cpu')\n"
        "print('refined', len(crf.refine_many(items, params, processes=2)))\n",
        encoding="utf-8")
    done = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["top level", "refined 4"]
