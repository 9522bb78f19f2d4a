"""Inputs that are not a local raster file: remote rasters and STAC Items.

A pipeline's ``input`` may be

* a raster file (anything GDAL reads): used as it is;
* an ``https://`` (or ``http://``) URL of a raster, a Cloud-Optimized GeoTIFF at best: read
  through GDAL's ``/vsicurl/`` with HTTP range requests, so only the windows a run needs are
  fetched;
* a STAC Item, as a local ``.json`` file or a URL: the assets ``stac.assets`` names are the
  model's bands, in order (one multi-band asset gives all its bands), read as one raster.
  Relative asset hrefs resolve against the Item's own location.

Either way the run reads a small VRT written to a temporary folder, named after the URL's file
(or the Item's id) so outputs are named as for a local file. ``execution.http_timeout_s``
bounds every HTTP request, and a server that fails or stalls gives one line naming the URL.
The STAC Item a run writes about its outputs is :mod:`deeplab_geo.raster.stac`'s.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from deeplab_geo.config import PipelineConfig, is_url, updated
from deeplab_geo.errors import ConfigError, InputError
from deeplab_geo.raster import io


@dataclass(frozen=True)
class Origin:
    """Where a run's input came from: the ``input`` as given, and the STAC Item read (if any,
    as its JSON mapping)."""

    href: str
    item: dict[str, Any] | None = None


def gdal_options(config: PipelineConfig) -> dict[str, Any]:
    """GDAL options for reading a run's input (HTTP timeouts and retries for remote data)."""
    timeout = config.execution.http_timeout_s
    return {"GDAL_HTTP_TIMEOUT": timeout, "GDAL_HTTP_CONNECTTIMEOUT": min(timeout, 10),
            "GDAL_HTTP_MAX_RETRY": 2, "GDAL_HTTP_RETRY_DELAY": 1,
            "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "CPL_VSIL_CURL_USE_HEAD": "NO",
            "VSI_CACHE": "TRUE"}


def is_stac_item(spec: Path | str) -> bool:
    """Whether ``input`` names a STAC Item (a ``.json`` file or URL)."""
    return PurePosixPath(urlparse(str(spec)).path).suffix.lower() == ".json"


def gdal_path(href: str) -> str:
    """The path GDAL reads ``href`` (a URL or a local path) through."""
    return f"/vsicurl/{href}" if is_url(href) else href


@contextmanager
def local_input(config: PipelineConfig) -> Iterator[tuple[PipelineConfig, Origin]]:
    """``config`` with its ``input`` made a local raster path (see the module docstring), and
    where it came from; the temporary VRT goes when the block ends.

    Raises:
        InputError: an Item or URL that cannot be read, an Item without the assets named.
        ConfigError: a STAC Item without ``stac.assets``.
    """
    spec = config.input
    origin = Origin(str(spec))
    if not is_url(spec) and not is_stac_item(spec):
        yield config, origin
        return
    with tempfile.TemporaryDirectory(prefix="deeplab-geo-input-") as folder:
        if is_stac_item(spec):
            item = read_item(str(spec))
            sources = _asset_sources(item, str(spec), config.stac.assets)
            name = item["id"]
            origin = Origin(str(spec), item)
        else:
            with io.open_raster(gdal_path(spec)) as ds:
                sources = [(gdal_path(spec), band) for band in range(1, ds.count + 1)]
            name = PurePosixPath(urlparse(spec).path).stem or "remote"
        vrt = io.write_vrt(sources, Path(folder) / f"{_safe(name)}.vrt")
        yield updated(config, {"input": vrt}), origin


def read_item(href: str) -> dict[str, Any]:
    """The JSON of a STAC Item at a local path or URL.

    Raises:
        InputError: it cannot be read, is not JSON, or is not a STAC Item.
    """
    import pystac

    try:
        item = pystac.Item.from_file(href)
    except FileNotFoundError:
        raise InputError(f"{href}: STAC Item not found; check the input path") from None
    except json.JSONDecodeError:
        raise InputError(f"{href}: not JSON; give a STAC Item (.json)") from None
    except pystac.STACTypeError:
        raise InputError(f"{href}: not a STAC Item (a Collection or Catalog?); give an Item"
                         ) from None
    except OSError as exc:  # urllib's HTTP and connection errors
        reason = getattr(exc, "reason", None) or exc
        raise InputError(f"{href}: cannot read the STAC Item ({reason}); check the URL and "
                         "that the server answers") from None
    except Exception as exc:  # noqa: BLE001 - pystac raises plain errors on bad Items
        raise InputError(f"{href}: not a valid STAC Item ({exc})") from None
    return item.to_dict(include_self_link=False, transform_hrefs=False)


def _asset_sources(item: dict[str, Any], href: str, names: list[str] | None
                   ) -> list[tuple[str, int]]:
    assets = item.get("assets", {})
    if not names:
        raise ConfigError(f"{href}: a STAC Item input needs stac.assets, the assets that are "
                          f"the model's bands in order (this Item has: {', '.join(assets)})")
    missing = [name for name in names if name not in assets]
    if missing:
        raise InputError(f"{href}: the Item has no asset {', '.join(missing)} (it has: "
                         f"{', '.join(assets)}); fix stac.assets")
    sources: list[tuple[str, int]] = []
    for name in names:
        path = gdal_path(_absolute(assets[name]["href"], href))
        with io.open_raster(path) as ds:
            count = ds.count
        if len(names) > 1 and count > 1:
            raise InputError(f"{href}: asset {name} has {count} bands; name one multi-band "
                             "asset, or single-band assets only")
        sources.extend((path, band) for band in range(1, count + 1))
    return sources


def _absolute(asset: str, item: str) -> str:
    """An asset's href, resolved against the Item's location when relative."""
    if is_url(asset) or Path(asset).is_absolute():
        return asset
    if is_url(item):
        from urllib.parse import urljoin

        return urljoin(item, asset)
    return str((Path(item).resolve().parent / asset).resolve())


def _safe(name: str) -> str:
    """A file-name stem from an Item id or URL (no separators or odd characters)."""
    kept = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._")
    return kept or "input"
