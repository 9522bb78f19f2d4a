"""Vectorization core: one exact, valid feature per connected region, whatever the strips."""

import numpy as np
import pytest
import rasterio
import rasterio.features
import shapely
from pyproj import CRS, Geod
from rasterio.transform import from_origin
from scipy import ndimage

from deeplab_geo import processes
from deeplab_geo.config import VectorizeSettings
from deeplab_geo.errors import InputError
from deeplab_geo.processes import worker_pool
from deeplab_geo.raster.tiling import strip_bounds
from deeplab_geo.vectorize import label_regions, polygonize, vectorize
from deeplab_geo.vectorize.geometry import join_pieces
from deeplab_geo.vectorize.regions import iter_regions
from tests.conftest import write_raster

CUSTOM_CRS = ("+proj=tmerc +lat_0=0 +lon_0=15.5 +k=0.9996 +x_0=500000 +y_0=0 "
              "+ellps=GRS80 +units=m +no_defs")
NAMES = ["a", "b", "c", "d"]
PIXEL_AREA = 0.25  # write_raster's 0.5 m pixels


def class_rasters(tmp_path, classes, crs="EPSG:32633", **extra):
    conf = np.full(classes.shape, 0.5, np.float32)
    conf[classes == 1] = 0.9
    cls = write_raster(tmp_path / "c.tif", classes[None].astype(np.uint8), crs=crs, nodata=255,
                       **extra)
    cf = write_raster(tmp_path / "f.tif", conf[None], crs=crs, **extra)
    return cls, cf


def blobs(seed=0, shape=(60, 50), n=3):
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.normal(size=(n, *shape)), (0, 3, 3))
    return smooth.argmax(0).astype(np.uint8)


def noisy(seed=0, shape=(45, 38), noise=0.25):
    """Blobs of 4 classes, a quarter of the pixels random, a nodata notch in one corner."""
    rng = np.random.default_rng(seed)
    classes = blobs(seed, shape, n=4)
    flip = rng.random(shape) < noise
    classes[flip] = rng.integers(0, 4, int(flip.sum()))
    classes[:4, :7] = 255
    return classes


def count_regions(mask, connectivity):
    structure = np.ones((3, 3)) if connectivity == 8 else None
    return ndimage.label(mask, structure=structure)[1]


def rasterized(frame, shape, transform):
    """Class ids burnt back from the polygons (pixel centres), 255 where none."""
    shapes = zip(frame.geometry, frame["class_id"])
    return rasterio.features.rasterize(shapes, out_shape=shape, transform=transform, fill=255,
                                       dtype=np.uint8)


def same_features(frame, other):
    """Same features (class and geometry, topologically), in any order."""
    def ordered(f):
        key = np.column_stack([f["class_id"], f.geometry.bounds, f["area_m2"]])
        return f.iloc[np.lexsort(key.T[::-1])]

    a, b = ordered(frame), ordered(other)
    return (len(a) == len(b) and (a["class_id"].to_numpy() == b["class_id"].to_numpy()).all()
            and shapely.equals(np.asarray(a.geometry.array), np.asarray(b.geometry.array)).all())


@pytest.mark.parametrize("connectivity", [4, 8])
def test_one_feature_per_region_with_exact_areas_whatever_the_strips(tmp_path, connectivity):
    classes = noisy()
    cls, cf = class_rasters(tmp_path, classes)
    settings = VectorizeSettings(connectivity=connectivity)
    whole = polygonize(cls, cf, NAMES, settings, strip_rows=classes.shape[0])
    with rasterio.open(cls) as ds:
        transform = ds.transform
    for strip_rows in (1, 2, 7, None):
        frame = polygonize(cls, cf, NAMES, settings, strip_rows=strip_rows)
        for c in range(4):
            mask = classes == c
            features = frame[frame["class_id"] == c]
            assert len(features) == count_regions(mask, connectivity)
            assert features["pixel_count"].sum() == mask.sum()
            assert features["area_m2"].sum() == mask.sum() * PIXEL_AREA  # exact, not approx
        assert (frame["area_m2"] == frame["pixel_count"] * PIXEL_AREA).all()
        assert frame.geometry.is_valid.all()
        assert (frame.geometry.geom_type == "MultiPolygon").all()
        assert (rasterized(frame, classes.shape, transform) == classes).all()
        assert same_features(frame, whole)  # no seam: strips change nothing


def test_exact_areas_on_a_larger_noisy_raster_across_block_sizes(tmp_path):
    rng = np.random.default_rng(3)
    classes = rng.integers(0, 5, (160, 130)).astype(np.uint8)
    cls, cf = class_rasters(tmp_path, classes, tiled=True, blockxsize=16, blockysize=16)
    for strip_rows in (16, 48, None):
        frame = polygonize(cls, cf, list("abcde"), VectorizeSettings(), strip_rows=strip_rows)
        counts = frame.groupby("class_id")["area_m2"].sum()
        assert counts.to_dict() == {c: (classes == c).sum() * PIXEL_AREA for c in range(5)}
        assert len(frame) == sum(count_regions(classes == c, 8) for c in range(5))


@pytest.mark.parametrize(("connectivity", "features"), [(8, 1), (4, 9)])
def test_diagonal_chain_crossing_every_strip(tmp_path, connectivity, features):
    classes = np.zeros((9, 9), np.uint8)
    classes[np.arange(9), np.arange(9)] = 1
    cls, cf = class_rasters(tmp_path, classes)
    frame = polygonize(cls, cf, ["bg", "line"], VectorizeSettings(connectivity=connectivity),
                       strip_rows=1)
    line = frame[frame["class_id"] == 1]
    assert len(line) == features
    assert line["pixel_count"].sum() == 9
    assert frame.geometry.is_valid.all()
    # 8-connectivity: the background is cut in two by the diagonal only for 4-connectivity
    assert (frame["class_id"] == 0).sum() == (1 if connectivity == 8 else 2)


def test_self_touching_region_is_valid_with_exact_area(tmp_path):
    classes = np.zeros((8, 8), np.uint8)
    classes[1:7, 1:7] = (np.indices((6, 6)).sum(0) % 2).astype(np.uint8)  # checkerboard
    cls, cf = class_rasters(tmp_path, classes)
    frame = polygonize(cls, cf, ["a", "b"], VectorizeSettings(), strip_rows=3)
    assert frame.geometry.is_valid.all()
    assert len(frame) == count_regions(classes == 0, 8) + count_regions(classes == 1, 8)
    for c in (0, 1):
        assert frame.loc[frame["class_id"] == c, "area_m2"].sum() == (classes == c).sum() / 4


def test_holes_are_kept_and_attributes_filled(tmp_path):
    classes = np.zeros((20, 20), np.uint8)
    classes[5:15, 5:15] = 1
    classes[8:12, 8:12] = 0
    cls, cf = class_rasters(tmp_path, classes)
    frame = polygonize(cls, cf, ["bg", "ring"], VectorizeSettings(), source="scene.tif",
                       strip_rows=4)
    assert list(frame.columns) == ["class_id", "class_name", "area_m2", "mean_confidence",
                                   "perimeter_m", "pixel_count", "source", "geometry"]
    ring = frame[frame["class_id"] == 1].iloc[0]
    assert len(ring.geometry.geoms[0].interiors) == 1
    assert ring["class_name"] == "ring"
    assert ring["area_m2"] == (100 - 16) * PIXEL_AREA
    assert ring["perimeter_m"] == pytest.approx((40 + 16) * 0.5)
    assert ring["pixel_count"] == 84
    assert ring["mean_confidence"] == pytest.approx(0.9)
    assert ring["source"] == "scene.tif"
    assert len(frame) == 3  # outer background, ring, inner hole filler


def test_without_confidence_the_field_is_omitted_and_source_defaults_to_the_file(tmp_path):
    cls, _ = class_rasters(tmp_path, blobs())
    frame = polygonize(cls, None, ["a", "b", "c"])
    assert "mean_confidence" not in frame.columns
    assert set(frame["source"]) == {"c.tif"}


def test_nodata_is_not_vectorized(tmp_path):
    classes = np.full((10, 10), 255, np.uint8)
    classes[:5, :5] = 0
    classes[8, 8] = 1
    cls, cf = class_rasters(tmp_path, classes)
    frame = polygonize(cls, cf, ["a", "b"])
    assert sorted(frame["pixel_count"]) == [1, 25]
    assert frame["area_m2"].sum() == 26 * PIXEL_AREA


def test_crs_without_epsg_code_is_kept_in_every_format(tmp_path):
    import geopandas as gpd

    assert CRS.from_proj4(CUSTOM_CRS).to_epsg() is None
    cls, cf = class_rasters(tmp_path, blobs(1), crs=CUSTOM_CRS)
    with rasterio.open(cls) as ds:
        crs = CRS.from_wkt(ds.crs.to_wkt())
    assert crs.equals(polygonize(cls, cf, ["a", "b", "c"]).crs)
    for name in ("p.gpkg", "p.fgb", "p.parquet"):
        vectorize(cls, tmp_path / name, class_names=["a", "b", "c"], confidence=cf)
        read = gpd.read_parquet if name.endswith("parquet") else gpd.read_file
        assert crs.equals(read(tmp_path / name).crs), name


def test_geographic_crs_gives_geodesic_areas(tmp_path):
    classes = np.zeros((20, 20), np.uint8)
    classes[:, 10:] = 1
    cls = tmp_path / "geo.tif"
    with rasterio.open(cls, "w", driver="GTiff", width=20, height=20, count=1, dtype="uint8",
                       nodata=255, crs="EPSG:4326",
                       transform=from_origin(15.0, 48.0, 0.001, 0.001)) as ds:
        ds.write(classes[None])
        left, bottom, right, top = ds.bounds
    frame = polygonize(cls, None, ["a", "b"])
    geod = Geod(ellps="WGS84")
    whole = abs(geod.polygon_area_perimeter([left, right, right, left],
                                            [top, top, bottom, bottom])[0])
    assert frame["area_m2"].sum() == pytest.approx(whole, rel=1e-6)
    assert frame["area_m2"].min() > 1e5  # square metres, not square degrees


@pytest.mark.parametrize("connectivity", [4, 8])
def test_run_labelling_matches_scipy_on_random_arrays(connectivity):
    rng = np.random.default_rng(connectivity)
    for _ in range(60):
        shape = tuple(rng.integers(1, 14, 2))
        k = int(rng.integers(1, 4))
        classes = rng.integers(0, k, shape).astype(np.uint8)
        valid = rng.random(shape) < 0.85
        regions = label_regions(classes, valid, connectivity)
        expected = sum(count_regions((classes == c) & valid, connectivity) for c in range(k))
        assert regions.count == expected
        assert ((regions.labels > 0) == valid).all()
        for label in range(1, regions.count + 1):
            mask = regions.labels == label
            assert count_regions(mask, connectivity) == 1
            assert (classes[mask] == regions.label_class[label]).all()
        values = rng.random(shape)
        sums = np.bincount(regions.labels.ravel(), weights=values.ravel())
        assert regions.sum_of(values)[1:] == pytest.approx(sums[1:])
        assert (regions.pixel_count()[1:] == np.bincount(regions.labels.ravel())[1:]).all()


def test_join_pieces_keeps_holes_and_pieces_inside_them():
    # A: a 6 x 5 block with a hole (a 3 x 3 square less its upper-left pixel, which is A's);
    # P: the hole's centre pixel, touching A only at that pixel's corner (8-connected);
    # B: the rows below, sharing A's lower edge, with a hole of its own
    hole = [(2, 1), (4, 1), (4, 4), (1, 4), (1, 2), (2, 2), (2, 1)]
    a = shapely.Polygon([(0, 0), (6, 0), (6, 5), (0, 5)], [hole])
    p = shapely.box(2, 2, 3, 3)
    b = shapely.Polygon([(1, 5), (5, 5), (5, 8), (1, 8)], [[(2, 6), (3, 6), (3, 7), (2, 7)]])
    pieces = np.array([shapely.MultiPolygon([a, p]), shapely.MultiPolygon([b])], dtype=object)
    joined = join_pieces(pieces)
    assert joined.is_valid
    assert joined.equals(shapely.union_all(pieces))
    assert joined.area == a.area + p.area + b.area
    assert sorted(len(g.interiors) for g in joined.geoms) == [0, 2]


def test_strips_cover_every_row_once():
    assert strip_bounds(10, 100, block_rows=4, strip_rows=4) == [(0, 4), (4, 8), (8, 10)]
    assert strip_bounds(3, 5, block_rows=1, strip_rows=7) == [(0, 3)]
    # default: whole blocks holding about STRIP_PIXELS pixels, at least one block
    assert strip_bounds(8192, 8192, block_rows=512)[0] == (0, 1024)
    assert strip_bounds(100, 1 << 24, block_rows=16)[0] == (0, 16)


def test_label_regions_8_vs_4_connectivity():
    diagonal = np.eye(3, dtype=np.uint8)
    valid = np.ones((3, 3), bool)
    assert label_regions(diagonal, valid, 8).label_class.tolist().count(1) == 1
    assert label_regions(diagonal, valid, 4).label_class.tolist().count(1) == 3


def test_bad_rasters_and_class_names_are_refused(tmp_path):
    floats = write_raster(tmp_path / "f.tif", np.zeros((1, 4, 4), np.float32))
    with pytest.raises(InputError, match="integer class ids"):
        polygonize(floats, None, ["a"])
    no_crs = write_raster(tmp_path / "n.tif", np.zeros((1, 4, 4), np.uint8), crs=None)
    with pytest.raises(InputError, match="no CRS"):
        polygonize(no_crs, None, ["a"])
    cls, _ = class_rasters(tmp_path, blobs())
    with pytest.raises(InputError, match="class id 2 has no name"):
        polygonize(cls, None, ["a", "b"])


def test_helper_processes_give_the_same_regions_in_the_same_order(tmp_path, monkeypatch):
    """Large rasters get a helper process; here the threshold is lowered to a small raster."""
    from deeplab_geo.vectorize import regions as regions_module

    classes = noisy()
    cls, cf = class_rasters(tmp_path, classes)

    def collect(workers):
        with rasterio.open(cls) as ds, rasterio.open(cf) as conf:
            batches = list(iter_regions(ds, confidence=conf, strip_rows=2, workers=workers))
        return (np.concatenate([b.geometry for b in batches]),
                np.concatenate([b.class_id for b in batches]),
                np.concatenate([b.confidence_sum for b in batches]))

    serial = collect(1)
    monkeypatch.setattr(regions_module, "HELPER_MIN_PIXELS", 1)
    processes.shutdown()
    in_helpers = []
    imap = processes.WorkerPool.imap
    monkeypatch.setattr(processes.WorkerPool, "imap",
                        lambda pool, function, tasks, **kw: in_helpers.extend(tasks)
                        or imap(pool, function, tasks, **kw))
    geometry, class_id, confidence = collect(2)
    helpers = worker_pool(2, role="vectorize").executor()._processes
    assert len(in_helpers) >= 3 and helpers  # strips went there
    assert shapely.equals(geometry, serial[0]).all()
    assert (class_id == serial[1]).all() and np.allclose(confidence, serial[2])


@pytest.mark.slow  # SIGKILL / cluster / 1536 px: make test PYTEST_ARGS=--run-slow
def test_a_killed_helper_process_changes_nothing(tmp_path, monkeypatch):
    import os
    import signal

    from deeplab_geo.vectorize import regions as regions_module

    classes = noisy(seed=2)
    cls, _ = class_rasters(tmp_path, classes)

    def collect():
        with rasterio.open(cls) as ds:
            return np.concatenate([b.geometry for b in iter_regions(ds, strip_rows=2)])

    serial = collect()
    monkeypatch.setattr(regions_module, "HELPER_MIN_PIXELS", 1)
    pool = worker_pool(2, role="vectorize").executor()
    pool.submit(int).result()
    for pid in list(pool._processes):  # the helpers die between two vectorize calls
        os.kill(pid, signal.SIGKILL)
    assert shapely.equals(collect(), serial).all()
    assert shapely.equals(collect(), serial).all()  # and a new helper serves the next call
