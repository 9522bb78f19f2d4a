"""Vectorize options: min_area (merge, drop), simplify, skip_classes, layout, formats, writing."""

import sqlite3
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely

from deeplab_geo.config import VectorizeSettings, validate_pipeline
from deeplab_geo.errors import ConfigError, InputError, OutputError
from deeplab_geo.pipeline.runner import output_names
from deeplab_geo.vectorize import LAYER, SUFFIXES, polygonize, vectorize
from deeplab_geo.vectorize.small_regions import merge_small_regions
from tests.conftest import write_raster
from tests.test_vectorize import CUSTOM_CRS, NAMES, PIXEL_AREA, class_rasters, count_regions, noisy


def merged(path, min_area, connectivity=8, strip_rows=None, workdir=None):
    """The class raster after merging (as an array) and the rounds run."""
    with rasterio.open(path) as ds:
        pixel_areas = np.full(ds.height, PIXEL_AREA)
    out, rounds = merge_small_regions(path, workdir, min_area=min_area,
                                      connectivity=connectivity, pixel_areas=pixel_areas,
                                      strip_rows=strip_rows)
    with rasterio.open(out) as ds:
        return ds.read(1), rounds


def test_merge_takes_the_class_sharing_the_longest_edge(tmp_path):
    classes = np.zeros((12, 12), np.uint8)
    classes[:, 8:] = 2
    classes[4, 6:8] = 1  # 2 px of class 1: 5 edges with class 0, 1 edge with class 2
    classes[9, 9] = 0  # 1 px of class 0 inside class 2
    cls, _ = class_rasters(tmp_path, classes)
    result, rounds = merged(cls, min_area=1.0, workdir=tmp_path)
    expected = classes.copy()
    expected[4, 6:8] = 0
    expected[9, 9] = 2
    assert (result == expected).all()
    assert rounds == 2  # one round that changes, one that confirms


def test_nested_small_regions_merge_in_rounds(tmp_path):
    classes = np.zeros((15, 15), np.uint8)
    classes[5:10, 5:10] = 1  # 25 px blob: small
    classes[7, 7] = 2  # inside it, touching only the small blob
    cls, cf = class_rasters(tmp_path, classes)
    result, rounds = merged(cls, min_area=8.0, workdir=tmp_path)
    assert (result == 0).all()
    assert rounds == 3
    frame = polygonize(cls, cf, ["a", "b", "c"], VectorizeSettings(min_area=8.0))
    assert len(frame) == 1 and frame["area_m2"].iloc[0] == 225 * PIXEL_AREA


@pytest.mark.parametrize("connectivity", [4, 8])
def test_merge_does_not_depend_on_strips_and_leaves_nothing_small(tmp_path, connectivity):
    classes = noisy(seed=2)
    cls, cf = class_rasters(tmp_path, classes)
    min_area = 3.0  # 12 pixels
    whole, _ = merged(cls, min_area, connectivity, strip_rows=classes.shape[0],
                      workdir=tmp_path)
    for strip_rows in (1, 3, 10):
        assert (merged(cls, min_area, connectivity, strip_rows, tmp_path)[0] == whole).all()
    settings = VectorizeSettings(min_area=min_area, connectivity=connectivity)
    frame = polygonize(cls, cf, NAMES, settings, strip_rows=4)
    assert frame["area_m2"].min() >= min_area
    assert frame["area_m2"].sum() == (classes != 255).sum() * PIXEL_AREA  # nothing lost
    assert frame.geometry.is_valid.all()
    for c in range(4):
        assert (frame["class_id"] == c).sum() == count_regions(whole == c, connectivity)


def test_merge_drops_small_regions_with_only_nodata_around(tmp_path):
    classes = np.full((10, 10), 255, np.uint8)
    classes[:6, :6] = 0
    classes[8:, 8:] = 1  # 4 px island in nodata
    cls, cf = class_rasters(tmp_path, classes)
    frame = polygonize(cls, cf, ["a", "b"], VectorizeSettings(min_area=2.0))
    assert frame["class_id"].tolist() == [0]


def test_drop_leaves_out_exactly_the_small_regions(tmp_path):
    classes = noisy(seed=4)
    cls, cf = class_rasters(tmp_path, classes)
    everything = polygonize(cls, cf, NAMES, VectorizeSettings())
    kept = polygonize(cls, cf, NAMES, VectorizeSettings(min_area=2.0, min_area_mode="drop"),
                      strip_rows=5)
    large = everything[everything["area_m2"] >= 2.0]
    assert 0 < len(kept) == len(large) < len(everything)
    assert sorted(kept["area_m2"]) == sorted(large["area_m2"])
    assert kept.geometry.union_all().equals(large.geometry.union_all())


def test_simplify_keeps_neighbours_sharing_their_edges(tmp_path):
    classes = noisy(seed=5, noise=0.05)
    cls, cf = class_rasters(tmp_path, classes)
    exact = polygonize(cls, cf, NAMES, VectorizeSettings())
    simple = polygonize(cls, cf, NAMES, VectorizeSettings(simplify=1.0), strip_rows=6)
    geoms = np.asarray(simple.geometry.array)
    assert len(simple) == len(exact)
    assert simple.geometry.is_valid.all() and not simple.geometry.is_empty.any()
    assert shapely.coverage_is_valid(geoms)  # no overlaps, matching shared edges
    covered = (classes != 255).sum() * PIXEL_AREA
    assert shapely.union_all(geoms).area == pytest.approx(simple["area_m2"].sum(), rel=1e-9)
    assert simple["area_m2"].sum() == pytest.approx(covered, rel=0.02)  # no gaps opened
    assert (shapely.get_num_coordinates(geoms).sum()
            < 0.8 * shapely.get_num_coordinates(np.asarray(exact.geometry.array)).sum())


def test_skip_classes_by_name_or_id(tmp_path):
    classes = noisy(seed=6)
    cls, cf = class_rasters(tmp_path, classes)
    frame = polygonize(cls, cf, NAMES, VectorizeSettings(skip_classes=["b", 3]))
    assert set(frame["class_id"]) == {0, 2}
    assert frame["pixel_count"].sum() == np.isin(classes, [0, 2]).sum()
    with pytest.raises(ConfigError, match="unknown class 'water'; classes are a, b, c, d"):
        polygonize(cls, cf, NAMES, VectorizeSettings(skip_classes=["water"]))


def test_one_layer_per_class(tmp_path):
    classes = noisy(seed=7)
    cls, cf = class_rasters(tmp_path, classes)
    out = tmp_path / "layers.gpkg"
    result = vectorize(cls, out, class_names=NAMES, confidence=cf, strip_rows=5,
                       settings=VectorizeSettings(layout="per_class", skip_classes=["a"]))
    assert [name for name, _ in pyogrio.list_layers(out)] == ["b", "c", "d"]
    for name, count in result.layers.items():
        layer = gpd.read_file(out, layer=name)
        assert len(layer) == count == count_regions(classes == NAMES.index(name), 8)
        assert set(layer["class_name"]) == {name}


@pytest.mark.parametrize("suffix", sorted(SUFFIXES.values()))
def test_every_format_holds_the_same_features(tmp_path, suffix):
    classes = noisy(seed=8)
    cls, cf = class_rasters(tmp_path, classes)
    out = tmp_path / f"polygons{suffix}"
    result = vectorize(cls, out, class_names=NAMES, confidence=cf, strip_rows=6)
    frame = gpd.read_parquet(out) if suffix == ".parquet" else gpd.read_file(out)
    assert len(frame) == result.polygons == result.layers[LAYER]
    assert frame.crs.to_epsg() == 32633
    assert frame["area_m2"].sum() == (classes != 255).sum() * PIXEL_AREA
    assert frame.geometry.area.sum() == pytest.approx(frame["area_m2"].sum())
    assert frame.geometry.is_valid.all()
    assert list(frame.columns[:4]) == ["class_id", "class_name", "area_m2", "mean_confidence"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_geopackage_has_a_spatial_index(tmp_path):
    cls, cf = class_rasters(tmp_path, noisy())
    out = tmp_path / "p.gpkg"
    vectorize(cls, out, class_names=NAMES, confidence=cf)
    with sqlite3.connect(out) as db:
        extensions = db.execute("SELECT table_name, column_name FROM gpkg_extensions WHERE "
                                "extension_name = 'gpkg_rtree_index'").fetchall()
        assert [table for table, _ in extensions] == [LAYER]
        column = extensions[0][1]
        indexed = db.execute(f"SELECT count(*) FROM rtree_{LAYER}_{column}").fetchone()[0]
    assert indexed == pyogrio.read_info(out)["features"]


def test_geojson_refuses_a_crs_without_epsg_code(tmp_path):
    cls, cf = class_rasters(tmp_path, noisy(), crs=CUSTOM_CRS)
    with pytest.raises(OutputError, match="GeoJSON can only name a CRS by EPSG code"):
        vectorize(cls, tmp_path / "p.geojson", class_names=NAMES)
    assert not (tmp_path / "p.geojson").exists()


def test_unknown_extension_missing_folder_and_layout_mismatch_are_refused(tmp_path):
    cls, _ = class_rasters(tmp_path, noisy())
    with pytest.raises(OutputError, match="missing: not a writable folder"):
        vectorize(cls, tmp_path / "missing" / "p.gpkg", class_names=NAMES)
    with pytest.raises(OutputError, match="unsupported polygon format '.shp'"):
        vectorize(cls, tmp_path / "p.shp", class_names=NAMES)
    with pytest.raises(OutputError, match="one layer per class needs a GeoPackage"):
        vectorize(cls, tmp_path / "p.fgb", class_names=NAMES,
                  settings=VectorizeSettings.model_construct(
                      **{**VectorizeSettings().model_dump(), "layout": "per_class"}))


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    cls, cf = class_rasters(tmp_path, noisy())
    out = tmp_path / "p.gpkg"
    vectorize(cls, out, class_names=NAMES, confidence=cf, strip_rows=4)
    before = out.read_bytes()
    with pytest.raises(InputError, match="class id 3 has no name"):
        vectorize(cls, out, class_names=NAMES[:3], confidence=cf, strip_rows=4)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.tif", "f.tif", "p.gpkg"]


def test_empty_result_is_a_valid_empty_file(tmp_path):
    classes = np.full((6, 6), 255, np.uint8)
    cls, cf = class_rasters(tmp_path, classes)
    for suffix in (".gpkg", ".fgb", ".parquet"):
        out = tmp_path / f"empty{suffix}"
        assert vectorize(cls, out, class_names=["a"], confidence=cf).polygons == 0
        frame = gpd.read_parquet(out) if suffix == ".parquet" else gpd.read_file(out)
        assert len(frame) == 0


@pytest.mark.parametrize(("section", "message"), [
    ({"layout": "per_class", "format": "fgb"}, "vectorize: layout per_class needs format gpkg"),
    ({"min_area_mode": "sieve"}, "vectorize.min_area_mode: Input should be 'merge' or 'drop'"),
    ({"skip_classes": [-1]}, "vectorize: skip_classes are class names or ids >= 0"),
    ({"format": "shp"}, "vectorize.format: Input should be 'gpkg', 'fgb', 'geojson' or"),
    ({"simplify": -1}, "vectorize.simplify: Input should be greater than or equal to 0"),
    ({"connectivity": 6}, "vectorize.connectivity"),
    ({"layers": "single"}, "unknown key 'vectorize.layers'"),
])
def test_settings_are_validated_with_one_line_messages(section, message):
    with pytest.raises(ConfigError) as err:
        validate_pipeline({"input": "a.tif", "output_dir": "out", "vectorize": section})
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_old_keys_still_work_and_output_name_follows_the_format():
    settings = validate_pipeline({"input": "a.tif", "output_dir": "o", "vectorize": {
        "enabled": True, "simplify": 0.5, "min_area": 2, "connectivity": 4}}).vectorize
    assert (settings.simplify, settings.min_area, settings.connectivity) == (0.5, 2.0, 4)
    assert output_names(Path("d/scene.tif"))["polygons"] == "scene.gpkg"
    assert output_names(Path("d/scene.tif"), "parquet")["polygons"] == "scene.parquet"
    assert output_names(Path("d/scene.tif"), "fgb")["polygons"] == "scene.fgb"


def test_pipeline_writes_the_chosen_format(tiny_pipeline):
    from deeplab_geo.config import load_pipeline
    from deeplab_geo.pipeline.runner import run

    config = load_pipeline(tiny_pipeline, {"crf.enabled": False, "quicklook": False,
                                           "vectorize.format": "fgb",
                                           "vectorize.skip_classes": ["water"]})
    result = run(config)
    frame = gpd.read_file(result.outputs["polygons"])
    assert result.outputs["polygons"].name == "tiny.fgb"
    assert result.report["polygons"] == len(frame)
    assert "water" not in set(frame["class_name"])
    assert set(frame["source"]) == {"tiny.tif"}
    with rasterio.open(result.outputs["classes"]) as ds:
        classes = ds.read(1)
    assert frame["pixel_count"].sum() == (classes != 0).sum()


def test_write_polygons_writes_a_frame_by_extension(tmp_path):
    from deeplab_geo.vectorize import write_polygons

    cls = write_raster(tmp_path / "l.tif", noisy()[None], nodata=255)
    frame = polygonize(cls, None, NAMES)
    write_polygons(frame, tmp_path / "l.fgb")
    assert len(gpd.read_file(tmp_path / "l.fgb")) == len(frame)


def test_every_path_names_its_outputs_as_the_cli_does(tmp_path):
    """One source for output names: the QGIS plugin (which cannot import deeplab_geo) keeps
    the same suffixes, checked here against ``output_names``."""
    import ast

    source = (Path(__file__).resolve().parents[1] / "plugins" / "qgis" / "deeplab_geo_qgis"
              / "algorithms.py").read_text(encoding="utf-8")
    assignment = next(node for node in ast.walk(ast.parse(source))
                      if isinstance(node, ast.Assign)
                      and getattr(node.targets[0], "id", "") == "OUTPUT_SUFFIXES")
    suffixes = ast.literal_eval(assignment.value)
    names = output_names(Path("d/scene.tif"))
    assert {key: "scene" + suffix if key != "report" else suffix
            for key, suffix in suffixes.items()} == {key: names[key] for key in suffixes}
