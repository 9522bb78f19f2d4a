"""Datasets: VOC 2012, Cityscapes and raster chips, built tiny in each standard layout."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.windows import Window
from shapely.geometry import box

from deeplab_geo.config import ChipsDataSettings, CityscapesDataSettings, VOCDataSettings
from deeplab_geo.datasets import build, read_label_png
from deeplab_geo.datasets.chips import RasterChips, axis_starts, chip_windows, split_blocks
from deeplab_geo.datasets.cityscapes import LABEL_TO_TRAIN_ID
from deeplab_geo.datasets.labels import Grid, open_labels
from deeplab_geo.datasets.voc import voc_palette
from deeplab_geo.errors import DatasetError, InputError
from tests.conftest import write_raster


def _regions(height: int, width: int, seed: int, values: list[int]) -> np.ndarray:
    """A label map of a few axis-aligned regions, each filled with one of ``values``."""
    rng = np.random.default_rng(seed)
    labels = np.full((height, width), values[0], np.uint8)
    for value in values[1:]:
        r, c = rng.integers(0, height // 2), rng.integers(0, width // 2)
        labels[r:r + height // 2, c:c + width // 2] = value
    return labels


def _image_for(labels: np.ndarray, seed: int) -> np.ndarray:
    """An RGB image whose colour follows the labels, with noise: (H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (256, 3))
    image = colours[labels].astype(np.float32) + rng.normal(0, 5, (*labels.shape, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def make_voc(root: Path, *, train: int = 3, val: int = 2, size: tuple[int, int] = (40, 48),
             aug: bool = True) -> Path:
    """A VOC2012 folder: JPEGImages, palette PNGs, split lists (and SegmentationClassAug)."""
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationClassAug",
                "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    palette = [v for rgb in voc_palette() for v in rgb]
    ids = [f"2007_{i:06d}" for i in range(train + val)]
    for index, name in enumerate(ids):
        labels = _regions(*size, index, [0, 15, 12 if index % 2 else 7])
        labels[0, :] = 255  # void border, as VOC marks object outlines
        Image.fromarray(_image_for(labels, index)).save(voc / "JPEGImages" / f"{name}.jpg",
                                                        quality=95)
        png = Image.fromarray(labels, mode="P")
        png.putpalette(palette)
        png.save(voc / "SegmentationClass" / f"{name}.png")
        png.save(voc / "SegmentationClassAug" / f"{name}.png")
    lists = voc / "ImageSets" / "Segmentation"
    (lists / "train.txt").write_text("\n".join(ids[:train]) + "\n")
    (lists / "val.txt").write_text("\n".join(ids[train:]) + "\n")
    (lists / "trainval.txt").write_text("\n".join(ids) + "\n")
    if aug:
        (lists / "train_aug.txt").write_text("".join(
            f"/JPEGImages/{n}.jpg /SegmentationClassAug/{n}.png\n" for n in ids[:train]))
    return voc


def make_cityscapes(root: Path, *, train: int = 3, val: int = 2,
                    size: tuple[int, int] = (32, 64)) -> Path:
    """A Cityscapes folder: leftImg8bit/<split>/<city>/ and gtFine/<split>/<city>/ labelIds."""
    root = root / "cityscapes"
    for split, count, city in (("train", train, "aachen"), ("val", val, "frankfurt")):
        for folder in ("leftImg8bit", "gtFine"):
            (root / folder / split / city).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            stem = f"{city}_{index:06d}_000019"
            label_ids = _regions(*size, index, [7, 26, 21, 0, 1])  # road car vegetation void
            Image.fromarray(_image_for(label_ids, index)).save(
                root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
            Image.fromarray(label_ids, mode="L").save(
                root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")
    return root


def make_chips_scene(folder: Path, size: int = 64) -> dict[str, Path]:
    """A georeferenced RGB raster, its class raster (255 = unlabelled) and the same labels as
    GeoPackage polygons (field class_id) in another CRS (WGS 84)."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = np.full((size, size), 255, np.uint8)
    labels[:, : size // 2] = 0
    labels[:, size // 2:] = 1
    labels[size // 4: size // 2, size // 4: 3 * size // 4] = 2
    labels[-4:, :] = 255  # an unlabelled strip
    image = _image_for(np.where(labels == 255, 3, labels), 0).transpose(2, 0, 1)
    raster = write_raster(folder / "image.tif", image)
    label_raster = write_raster(folder / "labels.tif", labels[None], nodata=255)
    with rasterio.open(label_raster, "r+") as ds:
        ds.update_tags(CLASS_NAMES="water,land,road")
    x0, y0, px = 500000.0, 5500000.0, 0.5

    def cells(r0, r1, c0, c1):
        return box(x0 + c0 * px, y0 - r1 * px, x0 + c1 * px, y0 - r0 * px)

    rows = size - 4
    frame = gpd.GeoDataFrame(
        {"class_id": [0, 1, 2]},
        geometry=[cells(0, rows, 0, size // 2), cells(0, rows, size // 2, size),
                  cells(size // 4, size // 2, size // 4, 3 * size // 4)],
        crs="EPSG:32633").to_crs("EPSG:4326")
    vector = folder / "labels.gpkg"
    frame.to_file(vector, driver="GPKG", engine="pyogrio")
    return {"raster": raster, "labels": label_raster, "vector": vector}


# -- VOC -----------------------------------------------------------------------------------

def test_voc_reads_palette_pngs_as_class_ids(tmp_path):
    voc = make_voc(tmp_path)
    data = build(VOCDataSettings(kind="voc", root=voc, train_split="train"), "train")
    assert len(data) == 3 and len(data.classes) == 21 and data.classes[15] == "person"
    image, labels = data[0]
    assert image.dtype == np.uint8 and image.shape == (3, 40, 48)
    assert labels.dtype == np.uint8 and labels.shape == (40, 48)
    assert set(np.unique(labels)) <= {0, 7, 12, 15, 255} and (labels[0] == 255).all()
    assert data.colours[15] == [192, 128, 128]  # VOC's person colour


def test_voc_augmented_list_with_paths_and_val_split(tmp_path):
    voc = make_voc(tmp_path)
    settings = VOCDataSettings(kind="voc", root=voc)  # train_aug by default
    train, val = build(settings, "train"), build(settings, "val")
    assert train.ids == ["2007_000000", "2007_000001", "2007_000002"]
    assert "SegmentationClassAug" in str(train.labels[0])
    assert val.ids == ["2007_000003", "2007_000004"]


def test_voc_errors_name_the_problem(tmp_path):
    voc = make_voc(tmp_path, aug=False)
    with pytest.raises(DatasetError, match="train_aug.txt: split list not found"):
        build(VOCDataSettings(kind="voc", root=voc), "train")
    with pytest.raises(DatasetError, match="JPEGImages"):
        build(VOCDataSettings(kind="voc", root=tmp_path), "val")
    bad = voc / "SegmentationClass" / "2007_000003.png"
    Image.fromarray(np.full((40, 48), 30, np.uint8), mode="L").save(bad)
    with pytest.raises(DatasetError, match="class id 30"):
        build(VOCDataSettings(kind="voc", root=voc), "val")[0]
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(bad)
    with pytest.raises(DatasetError, match="mode RGB"):
        read_label_png(bad)


# -- Cityscapes ----------------------------------------------------------------------------

def test_cityscapes_maps_label_ids_to_train_ids(tmp_path):
    root = make_cityscapes(tmp_path)
    settings = CityscapesDataSettings(kind="cityscapes", root=root)
    train, val = build(settings, "train"), build(settings, "val")
    assert (len(train), len(val)) == (3, 2) and len(train.classes) == 19
    raw = np.array(Image.open(train.labels[0]))
    image, labels = train[0]
    assert image.shape == (3, 32, 64)
    for label_id in np.unique(raw):
        expected = LABEL_TO_TRAIN_ID.get(int(label_id), 255)
        assert set(np.unique(labels[raw == label_id])) == {expected}
    assert {0, 13, 8, 255} <= set(np.unique(np.concatenate([train[i][1].ravel()
                                                            for i in range(3)])))


def test_cityscapes_missing_split(tmp_path):
    with pytest.raises(DatasetError, match="leftImg8bit"):
        build(CityscapesDataSettings(kind="cityscapes", root=tmp_path, val_split="test"), "val")


# -- chips ---------------------------------------------------------------------------------

def test_axis_starts_cover_every_pixel():
    assert axis_starts(10, 4, 4) == [0, 4, 6]
    assert axis_starts(8, 4, 4) == [0, 4]
    assert axis_starts(3, 4, 4) == [0]
    assert axis_starts(10, 4, 3) == [0, 3, 6]


def test_blocks_split_the_area_and_chips_stay_inside_their_block():
    split = split_blocks(100, 130, 32, 0.25, seed=3)
    assert len(split["train"]) + len(split["val"]) == 4 * 5 and len(split["val"]) == 5
    covered = {"train": np.zeros((100, 130), int), "val": np.zeros((100, 130), int)}
    for name, blocks in split.items():
        for block in blocks:
            for chip in chip_windows(block, 16, 16):
                rows = slice(chip.row_off, chip.row_off + chip.height)
                cols = slice(chip.col_off, chip.col_off + chip.width)
                assert chip.row_off >= block.row_off and chip.col_off >= block.col_off
                assert chip.row_off + chip.height <= block.row_off + block.height
                assert chip.col_off + chip.width <= block.col_off + block.width
                covered[name][rows, cols] += 1
    assert not ((covered["train"] > 0) & (covered["val"] > 0)).any()
    assert ((covered["train"] > 0) | (covered["val"] > 0)).all()
    assert split_blocks(100, 130, 32, 0.25, seed=3) == split
    with pytest.raises(DatasetError, match="lower data.block_size"):
        split_blocks(20, 20, 32, 0.2, seed=0)


def test_vector_labels_rasterize_like_the_class_raster(tmp_path):
    scene = make_chips_scene(tmp_path)
    with rasterio.open(scene["raster"]) as ds:
        grid = Grid.of(ds)
    raster = open_labels(scene["labels"], grid)
    vector = open_labels(scene["vector"], grid)
    window = Window(5, 3, 50, 61)
    expected = raster.read(window)
    got = vector.read(window)
    # reprojected through WGS 84 and back: edges may move by a pixel at most
    assert (got == expected).mean() > 0.97
    assert (got[expected == 255] == 255).mean() > 0.9
    assert (vector.read(Window(0, 0, 64, 64)) != 255).sum() == pytest.approx(
        (raster.read(Window(0, 0, 64, 64)) != 255).sum(), rel=0.03)


@pytest.mark.parametrize("key", ["labels", "vector"])
def test_chips_from_raster_or_vector_labels(tmp_path, key):
    scene = make_chips_scene(tmp_path)
    settings = ChipsDataSettings(kind="chips", raster=scene["raster"], labels=scene[key],
                                 chip_size=16, block_size=32, val_fraction=0.25,
                                 classes=None if key == "labels" else ["w", "l", "r"])
    train, val = RasterChips(settings, "train"), RasterChips(settings, "val")
    assert len(train) == 12 and len(val) == 4
    assert train.classes == (["water", "land", "road"] if key == "labels" else ["w", "l", "r"])
    image, labels = train[0]
    assert image.shape == (3, 16, 16) and labels.shape == (16, 16)
    assert set(np.unique(labels)) <= {0, 1, 2, 255}
    train_pixels = {(w.row_off + r, w.col_off + c) for w in train.windows
                    for r in range(w.height) for c in range(w.width)}
    val_pixels = {(w.row_off + r, w.col_off + c) for w in val.windows
                  for r in range(w.height) for c in range(w.width)}
    assert not train_pixels & val_pixels


def test_chips_skip_unlabelled_chips_and_check_class_ids(tmp_path):
    scene = make_chips_scene(tmp_path)
    base = {"kind": "chips", "raster": scene["raster"], "labels": scene["labels"],
            "chip_size": 8, "block_size": 64, "val_fraction": 0.0}
    every = RasterChips(ChipsDataSettings(**base, min_labelled=0.0), "train")
    mostly = RasterChips(ChipsDataSettings(**base, min_labelled=0.75), "train")
    assert len(every) == 64 and len(mostly) == 56  # the last row of chips is half unlabelled
    with pytest.raises(DatasetError, match="class id 2"):
        RasterChips(ChipsDataSettings(**base, classes=["a", "b"]), "train")[20]


def test_label_errors_are_one_line(tmp_path):
    scene = make_chips_scene(tmp_path)
    with rasterio.open(scene["raster"]) as ds:
        grid = Grid.of(ds)
    with pytest.raises(InputError, match="no field 'cls'"):
        open_labels(scene["vector"], grid, class_field="cls")
    frame = gpd.read_file(scene["vector"])
    frame["class_id"] = 300
    frame.to_file(tmp_path / "bad.geojson", driver="GeoJSON")
    with pytest.raises(InputError, match="0..254"):
        open_labels(tmp_path / "bad.geojson", grid)
    unplaced = Grid(grid.width, grid.height, grid.transform, None)
    with pytest.raises(InputError, match="no CRS to place vector labels"):
        open_labels(scene["vector"], unplaced)
    other = write_raster(tmp_path / "small.tif", np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(InputError, match="not on the raster's grid"):
        open_labels(other, grid)


def test_small_chip_sets_are_read_once_and_kept(tmp_path, monkeypatch):
    from deeplab_geo.datasets import chips

    scene = make_chips_scene(tmp_path)
    settings = ChipsDataSettings(kind="chips", raster=scene["raster"], labels=scene["labels"],
                                 chip_size=16, block_size=32, val_fraction=0.0)
    dataset = RasterChips(settings, "train")
    opened = []
    real_open = chips.rasterio.open
    monkeypatch.setattr(chips.rasterio, "open", lambda *a, **k: opened.append(a) or
                        real_open(*a, **k))
    first = dataset[3]
    reads = len(opened)
    first[0][:] = 0  # what a caller does to its sample stays its own
    again = dataset[3]
    assert reads >= 1 and len(opened) == reads and again[0].any()
    assert np.array_equal(again[1], first[1])
    monkeypatch.setattr(chips, "KEEP_BYTES", 0)  # a large set is read every time
    large = RasterChips(settings, "train")
    opened.clear()
    large[3], large[3]
    assert len(opened) == 2 * reads
