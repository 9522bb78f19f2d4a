"""The STAC Item each run writes beside its outputs (``<stem>_item.json``).

The Item is what a catalogue (a STAC API, stac-browser, QGIS's STAC source) needs to list the
run: its footprint in WGS 84, the time of its input (the input Item's ``datetime`` when the
input was a STAC Item, else the time of the run), the projection extension (code or WKT2,
shape, transform, bbox in the raster's CRS) and one asset per output with hrefs relative to the
Item, so the output folder can move. The class raster's asset carries the classification
extension: each class's value, name and colour, and 255 as nodata. An input Item is linked as
``derived_from``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from deeplab_geo.raster.sources import Origin

_MEDIA = {
    ".tif": "image/tiff; application=geotiff; profile=cloud-optimized",
    ".gpkg": "application/geopackage+sqlite3",
    ".fgb": "application/vnd.flatgeobuf",
    ".geojson": "application/geo+json",
    ".parquet": "application/vnd.apache.parquet",
    ".png": "image/png",
    ".json": "application/json",
}
_ROLES = {"classes": ["data"], "confidence": ["data"], "polygons": ["data"],
          "quicklook": ["overview", "visual"], "report": ["metadata"]}


def run_item(stem: str, outputs: dict[str, str], profile: dict[str, Any],
             class_names: list[str], colours: list[list[int]] | None, origin: Origin,
             nodata: int = 255) -> dict[str, Any]:
    """The STAC Item (as JSON) of a run whose outputs are ``outputs`` (key to file name)."""
    import pystac
    from pystac.extensions.classification import Classification, ClassificationExtension
    from pystac.extensions.projection import ProjectionExtension
    from rasterio.warp import transform_bounds, transform_geom
    from shapely.geometry import box, mapping

    crs, transform = profile["crs"], profile["transform"]
    width, height = profile["width"], profile["height"]
    left, top = transform * (0, 0)
    right, bottom = transform * (width, height)
    bounds = (min(left, right), min(top, bottom), max(left, right), max(top, bottom))
    footprint = transform_geom(crs, "EPSG:4326", mapping(box(*bounds)), precision=7)
    bbox = list(transform_bounds(crs, "EPSG:4326", *bounds, densify_pts=21))
    when = _input_datetime(origin) or dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    item = pystac.Item(id=stem, geometry=footprint, bbox=bbox, datetime=when,
                       properties={"deeplab_geo:input": origin.href})
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    epsg = crs.to_epsg()
    if epsg is not None:
        proj.code = f"EPSG:{epsg}"
    else:
        proj.wkt2 = crs.to_wkt()
    proj.shape = [height, width]
    proj.transform = list(transform)[:6]
    proj.bbox = list(bounds)
    ClassificationExtension.add_to(item)
    for key, name in outputs.items():
        suffix = Path(name).suffix.lower()
        asset = pystac.Asset(href=f"./{name}", media_type=_MEDIA.get(suffix),
                             roles=_ROLES.get(key, ["data"]), title=key)
        item.add_asset(key, asset)
        if key == "classes":
            classes = [Classification.create(
                value=value, name=_name(label), description=label,
                color_hint=("{:02X}{:02X}{:02X}".format(*colours[value][:3])
                            if colours else None))
                for value, label in enumerate(class_names)]
            classes.append(Classification.create(value=nodata, name="nodata",
                                                 description="no data", nodata=True))
            ClassificationExtension.ext(asset).classes = classes
    if origin.item is not None:
        item.add_link(pystac.Link("derived_from", origin.href, media_type="application/json"))
    return item.to_dict(include_self_link=False, transform_hrefs=False)


def _input_datetime(origin: Origin) -> dt.datetime | None:
    if origin.item is None:
        return None
    value = origin.item.get("properties", {}).get("datetime")
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _name(label: str) -> str:
    """A class name as the classification extension wants it (no spaces)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in label) or "class"
