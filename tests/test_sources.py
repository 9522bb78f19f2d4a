"""Inputs beyond local files (remote COGs over HTTP range requests, STAC Items) and the STAC
Item every run writes."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from deeplab_geo.cli import main
from deeplab_geo.config import load_pipeline
from deeplab_geo.errors import ConfigError, InputError
from deeplab_geo.pipeline.runner import run
from tests.conftest import TINY_CLASSES, two_region_image, write_raster


class _Server:
    """A local HTTP server on 127.0.0.1 serving ``root`` with range requests; ``mode``
    ``"stall"`` never answers, ``"fail"`` answers 500."""

    def __init__(self, root: Path, mode: str = "ok") -> None:
        self.ranges: list[str] = []
        self.stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

            def _answer(self, body: bool):
                if mode == "stall":
                    server.stop.wait(60)
                    return
                if mode == "fail":
                    self.send_error(500, "broken")
                    return
                path = root / self.path.lstrip("/").split("?")[0]
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                match = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                if match:
                    start = int(match.group(1))
                    stop = min(int(match.group(2) or len(data) - 1), len(data) - 1)
                    server.ranges.append(f"{start}-{stop}")
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{stop}/{len(data)}")
                    data = data[start:stop + 1]
                else:
                    self.send_response(200)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _cog(path: Path) -> Path:
    """A tiled 3-band GeoTIFF (64 px blocks), as a COG is laid out."""
    return write_raster(path, two_region_image(96, 128), tiled=True, blockxsize=64,
                        blockysize=64)


def _pipeline(folder: Path, checkpoint: Path, input_: str, extra: str = "") -> Path:
    path = folder / "pipeline.yaml"
    path.write_text(f"input: {input_}\noutput_dir: out\n"
                    f"model: {{checkpoint: {checkpoint}, device: cpu}}\n"
                    "tiling: {tile_size: 64, overlap: 16}\ncrf: {enabled: false}\n"
                    "execution: {http_timeout_s: 2}\n" + extra)
    return path


def _classes(folder: Path, stem: str) -> np.ndarray:
    with rasterio.open(folder / f"{stem}_classes.tif") as ds:
        return ds.read(1)


def test_remote_cog_is_read_with_range_requests_and_matches_the_local_run(tmp_path,
                                                                          tiny_checkpoint):
    served = tmp_path / "served"
    served.mkdir()
    _cog(served / "scene.tif")
    local = run(load_pipeline(_pipeline(tmp_path, tiny_checkpoint, "served/scene.tif")))
    expected = _classes(local.outputs["classes"].parent, "scene")
    with _Server(served) as server:
        url = f"{server.url}/scene.tif"
        result = run(load_pipeline(_pipeline(tmp_path, tiny_checkpoint, url),
                                   {"output_dir": tmp_path / "remote"}))
    assert server.ranges, "GDAL read the COG without range requests"
    np.testing.assert_array_equal(_classes(tmp_path / "remote", "scene"), expected)
    item = json.loads(result.outputs["item"].read_text())
    assert item["properties"]["deeplab_geo:input"] == url


@pytest.mark.parametrize("mode, reason", [("fail", "500|HTTP"), ("stall", "")])
def test_a_failing_or_stalled_server_gives_one_line_and_no_output(tmp_path, tiny_checkpoint,
                                                                  mode, reason):
    served = tmp_path / "served"
    served.mkdir()
    _cog(served / "scene.tif")
    with _Server(served, mode) as server:
        pipeline = _pipeline(tmp_path, tiny_checkpoint, f"{server.url}/scene.tif")
        started = time.perf_counter()
        result = CliRunner().invoke(main, ["run", str(pipeline), "--quiet"])
        took = time.perf_counter() - started
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "scene.tif" in lines[0] and "check the URL" in lines[0]
    assert re.search(reason, lines[0])
    assert took < 30
    out = tmp_path / "out"
    assert not out.exists() or not any(p.suffix in (".tif", ".gpkg") for p in out.rglob("*"))


def _item(folder: Path, assets: dict[str, str], item_id: str = "scene-2026") -> Path:
    with rasterio.open(folder / next(iter(assets.values()))) as ds:
        left, bottom, right, top = ds.bounds
        crs = ds.crs.to_epsg()
    item = {
        "type": "Feature", "stac_version": "1.0.0", "id": item_id,
        "geometry": {"type": "Polygon", "coordinates": [[[15, 49.6], [15.01, 49.6],
                                                         [15.01, 49.61], [15, 49.61],
                                                         [15, 49.6]]]},
        "bbox": [15, 49.6, 15.01, 49.61],
        "properties": {"datetime": "2026-06-01T10:30:00Z", "proj:code": f"EPSG:{crs}",
                       "proj:bbox": [left, bottom, right, top]},
        "links": [],
        "assets": {name: {"href": href, "type": "image/tiff"} for name, href in
                   assets.items()},
        "stac_extensions": [],
    }
    path = folder / "item.json"
    path.write_text(json.dumps(item))
    return path


def _band_files(folder: Path) -> dict[str, str]:
    image = two_region_image(96, 128)
    names = {}
    for band, name in zip(image, ["red", "green", "blue"]):
        write_raster(folder / f"{name}.tif", band[None])
        names[name] = f"{name}.tif"
    write_raster(folder / "rgb.tif", image)
    return names


def test_stac_item_input_reads_the_named_assets_as_one_raster(tmp_path, tiny_checkpoint):
    assets = _band_files(tmp_path)
    item = _item(tmp_path, {**assets, "visual": "rgb.tif"})
    direct = run(load_pipeline(_pipeline(tmp_path, tiny_checkpoint, "rgb.tif"),
                               {"output_dir": tmp_path / "direct"}))
    result = run(load_pipeline(_pipeline(tmp_path, tiny_checkpoint, "item.json",
                                         "stac: {assets: [red, green, blue]}\n")))
    assert result.outputs["classes"].name == "scene-2026_classes.tif"
    np.testing.assert_array_equal(_classes(tmp_path / "out", "scene-2026"),
                                  _classes(direct.outputs["classes"].parent, "rgb"))
    one = run(load_pipeline(_pipeline(tmp_path, tiny_checkpoint, str(item),
                                      "stac: {assets: [visual]}\n"),
                            {"output_dir": tmp_path / "visual"}))
    np.testing.assert_array_equal(_classes(tmp_path / "visual", "scene-2026"),
                                  _classes(direct.outputs["classes"].parent, "rgb"))
    written = json.loads(one.outputs["item"].read_text())
    assert written["properties"]["datetime"] == "2026-06-01T10:30:00Z"
    assert any(link["rel"] == "derived_from" for link in written["links"])


def test_stac_item_over_http_with_relative_assets(tmp_path, tiny_checkpoint):
    served = tmp_path / "served"
    served.mkdir()
    _band_files(served)
    _item(served, {"visual": "rgb.tif"})
    with _Server(served) as server:
        result = run(load_pipeline(_pipeline(tmp_path, tiny_checkpoint,
                                             f"{server.url}/item.json",
                                             "stac: {assets: [visual]}\n")))
    assert result.outputs["classes"].exists()
    assert server.ranges


def test_stac_item_errors_name_the_fix(tmp_path, tiny_checkpoint):
    assets = _band_files(tmp_path)
    _item(tmp_path, assets)
    with pytest.raises(ConfigError, match="stac.assets.*red, green, blue"):
        run(load_pipeline(_pipeline(tmp_path, tiny_checkpoint, "item.json")))
    with pytest.raises(InputError, match="no asset nir"):
        run(load_pipeline(_pipeline(tmp_path, tiny_checkpoint, "item.json",
                                    "stac: {assets: [red, nir]}\n")))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="not JSON"):
        run(load_pipeline(_pipeline(tmp_path, tiny_checkpoint, "bad.json")))
    with pytest.raises(InputError, match="not found"):
        run(load_pipeline(_pipeline(tmp_path, tiny_checkpoint, "missing.json")))
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.tif"))


def test_every_run_writes_a_stac_item_of_its_outputs(tmp_path, tiny_checkpoint):
    write_raster(tmp_path / "scene.tif", two_region_image(96, 128))
    result = run(load_pipeline(_pipeline(tmp_path, tiny_checkpoint, "scene.tif",
                                         "vectorize: {enabled: true}\n")))
    import pystac

    item = pystac.Item.from_file(str(result.outputs["item"]))
    assert item.id == "scene"
    assert set(item.assets) == {"classes", "confidence", "polygons", "quicklook", "report"}
    for asset in item.assets.values():
        assert (tmp_path / "out" / Path(asset.href).name).exists()
        assert asset.href.startswith("./")
    assert item.properties["proj:code"] == "EPSG:32633"
    with rasterio.open(result.outputs["classes"]) as ds:
        assert item.properties["proj:shape"] == [ds.height, ds.width]
        assert item.properties["proj:transform"] == list(ds.transform)[:6]
    classes = item.assets["classes"].extra_fields["classification:classes"]
    assert [c["description"] for c in classes[:-1]] == TINY_CLASSES
    assert [c["value"] for c in classes] == [0, 1, 2, 255]
    assert classes[-1]["nodata"] is True
    assert all(re.fullmatch(r"[0-9A-F]{6}", c["color_hint"]) for c in classes[:-1])
    west, south, east, north = item.bbox
    assert 14.9 < west < east < 15.1 and 49.6 < south < north < 49.7  # UTM 33N near 15E
