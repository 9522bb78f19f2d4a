"""Build the installable QGIS plugin archive ``deeplab_geo_qgis-<version>.zip``.

The archive holds one top-level folder, ``deeplab_geo_qgis/``, as QGIS's "Install from ZIP"
expects; bytecode caches are left out and timestamps are fixed, so a build is reproducible::

    python3 plugins/qgis/build_zip.py dist      # what `make qgis-plugin` runs
"""

import configparser
import sys
import zipfile
from pathlib import Path

PLUGIN = Path(__file__).resolve().parent / "deeplab_geo_qgis"
_EPOCH = (1980, 1, 1, 0, 0, 0)


def plugin_version(plugin=PLUGIN):
    """The ``version`` in the plugin's metadata.txt."""
    metadata = configparser.ConfigParser()
    metadata.read(plugin / "metadata.txt", encoding="utf-8")
    return metadata["general"]["version"]


def plugin_files(plugin=PLUGIN):
    """The files that ship: everything in the plugin folder except bytecode caches."""
    return sorted(path for path in plugin.rglob("*")
                  if path.is_file() and "__pycache__" not in path.parts
                  and path.suffix not in (".pyc", ".pyo"))


def build(dist, plugin=PLUGIN):
    """Write ``<dist>/<folder>-<version>.zip`` and return its path."""
    dist = Path(dist)
    dist.mkdir(parents=True, exist_ok=True)
    archive = dist / f"{plugin.name}-{plugin_version(plugin)}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        for path in plugin_files(plugin):
            info = zipfile.ZipInfo(f"{plugin.name}/{path.relative_to(plugin).as_posix()}",
                                   date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            bundle.writestr(info, path.read_bytes())
    return archive


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: build_zip.py DIST_FOLDER")
    print(build(sys.argv[1]))
