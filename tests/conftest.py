"""Shared fixtures: tiny rasters and checkpoints generated in code (fixed seeds, real CRS)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from deeplab_geo.hookspecs import hookimpl
from deeplab_geo.models.checkpoint import ModelInfo, build_model, save_checkpoint
from deeplab_geo.plugins import get_plugin_manager

TINY_CLASSES = ["water", "land", "road"]
TINY_COLOURS = [[0, 0, 255], [0, 160, 0], [128, 128, 128]]


def pytest_configure(config: pytest.Config) -> None:
    """Exports made by tests go to a cache of their own, not the user's."""
    import os
    import shutil
    import tempfile

    cache = tempfile.mkdtemp(prefix="deeplab-geo-test-cache-")
    os.environ["DEEPLAB_GEO_CACHE"] = cache
    config.add_cleanup(lambda: shutil.rmtree(cache, ignore_errors=True))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow; run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def write_raster(path: Path, data: np.ndarray, *, crs: str | None = "EPSG:32633",
                 pixel: float = 0.5, nodata: float | None = None, **extra) -> Path:
    """Write a (bands, h, w) array as a GeoTIFF at a fixed UTM origin."""
    bands, height, width = data.shape
    profile = {"driver": "GTiff", "width": width, "height": height, "count": bands,
               "dtype": data.dtype.name, "nodata": nodata, **extra}
    if crs is not None:
        profile.update(crs=crs, transform=from_origin(500000.0, 5500000.0, pixel, pixel))
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
    return path


def two_region_image(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """A 3-band uint8 image: a dark blue left part and a green right part, with mild noise."""
    rng = np.random.default_rng(seed)
    image = np.empty((3, height, width), np.float32)
    image[:, :, : width // 2] = np.array([20, 40, 110])[:, None, None]
    image[:, :, width // 2:] = np.array([60, 150, 50])[:, None, None]
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture
def tiny_raster(tmp_path: Path) -> Path:
    return write_raster(tmp_path / "tiny.tif", two_region_image())


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 3-class demo-architecture checkpoint (weights from seed 0)."""
    import torch

    torch.manual_seed(0)
    info = ModelInfo(architecture="deeplabv3_lite_mobilenet_v3_small", num_classes=3,
                     classes=TINY_CLASSES, colours=TINY_COLOURS)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    return save_checkpoint(build_model(info).eval(), info, path)


@pytest.fixture
def tiny_pipeline(tmp_path: Path, tiny_raster: Path, tiny_checkpoint: Path) -> Path:
    """A pipeline YAML for the tiny raster, with small tiles so that several tiles are cut."""
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        f"input: {tiny_raster.name}\n"
        "output_dir: out\n"
        f"model: {{checkpoint: {tiny_checkpoint}, batch_size: 2, device: cpu}}\n"
        "tiling: {tile_size: 32, overlap: 8}\n"
        "crf: {iterations: 3}\n"
    )
    return path


class PixelwisePredictor:
    """Class = index of the brightest band; probability from a softmax over band values."""

    info = ModelInfo(architecture="deeplabv3_lite_mobilenet_v3_small", num_classes=3,
                     classes=["r", "g", "b"], colours=[[255, 0, 0], [0, 255, 0], [0, 0, 255]])

    def __init__(self):
        self.batch_sizes = []

    def predict(self, tiles):
        self.batch_sizes.append(len(tiles))
        logits = tiles.astype(np.float32) / 16.0
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)


class PixelwiseBackend:
    name = "pixelwise"
    description = "test backend: per-pixel argmax over bands"

    def __init__(self):
        self.predictor = PixelwisePredictor()

    def load(self, checkpoint, *, device="auto"):
        return self.predictor


class PixelwisePlugin:
    def __init__(self):
        self.backend = PixelwiseBackend()

    @hookimpl
    def register_backends(self):
        return [self.backend]


@pytest.fixture
def pixelwise():
    pm = get_plugin_manager()
    plugin = PixelwisePlugin()
    pm.register(plugin, name="pixelwise-test")
    yield plugin.backend
    pm.unregister(plugin)


@pytest.fixture
def small_disk(tmp_path):
    """A folder on a 320 KB tmpfs; skipped where mounting is impossible (not root, say)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=320k", "tmpfs", str(mount)],
                          capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.fixture
def fresh_speeds(tmp_path, monkeypatch):
    """This machine's speed measurements (deeplab_geo.pipeline.planning) kept apart for one
    test, so that its first plan measures, whatever ran before it."""
    from deeplab_geo.pipeline import planning

    path = tmp_path / "speed.json"
    monkeypatch.setattr(planning, "_speed_file", lambda: path)
    return path
