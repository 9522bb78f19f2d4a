import numpy as np
import pytest
import rasterio
from pyproj import CRS
from scipy import ndimage

from deeplab_geo.config import VectorizeSettings
from deeplab_geo.vectorize import label_regions, polygonize
from tests.conftest import write_raster

CUSTOM_CRS = ("+proj=tmerc +lat_0=0 +lon_0=15.5 +k=0.9996 +x_0=500000 +y_0=0 "
              "+ellps=GRS80 +units=m +no_defs")


def class_rasters(tmp_path, classes, crs="EPSG:32633"):
    conf = np.full(classes.shape, 0.5, np.float32)
    conf[classes == 1] = 0.9
    cls = write_raster(tmp_path / "c.tif", classes[None].astype(np.uint8), crs=crs, nodata=255)
    cf = write_raster(tmp_path / "f.tif", conf[None], crs=crs)
    return cls, cf


def blobs(seed=0, shape=(60, 50), n=3):
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.normal(size=(n, *shape)), (0, 3, 3))
    return smooth.argmax(0).astype(np.uint8)


@pytest.mark.parametrize("connectivity", [4, 8])
def test_one_polygon_per_connected_region_and_exact_areas(tmp_path, connectivity):
    classes = blobs()
    cls, cf = class_rasters(tmp_path, classes)
    frame = polygonize(cls, cf, ["a", "b", "c"], VectorizeSettings(connectivity=connectivity))
    structure = np.ones((3, 3)) if connectivity == 8 else None
    for c in range(3):
        _, regions = ndimage.label(classes == c, structure=structure)
        assert (frame["class_id"] == c).sum() == regions
        area = frame.loc[frame["class_id"] == c, "area_m2"].sum()
        assert area == pytest.approx((classes == c).sum() * 0.25)
    assert frame.geometry.is_valid.all()


def test_holes_are_kept_and_attributes_filled(tmp_path):
    classes = np.zeros((20, 20), np.uint8)
    classes[5:15, 5:15] = 1
    classes[8:12, 8:12] = 0
    cls, cf = class_rasters(tmp_path, classes)
    frame = polygonize(cls, cf, ["bg", "ring"], VectorizeSettings())
    ring = frame[frame["class_id"] == 1].iloc[0]
    assert len(ring.geometry.geoms[0].interiors) == 1
    assert ring["class_name"] == "ring"
    assert ring["area_m2"] == pytest.approx((100 - 16) * 0.25)
    assert ring["mean_confidence"] == pytest.approx(0.9)
    assert len(frame) == 3  # outer background, ring, inner hole filler


def test_crs_without_epsg_code_is_kept(tmp_path):
    assert CRS.from_proj4(CUSTOM_CRS).to_epsg() is None
    cls, cf = class_rasters(tmp_path, blobs(1), crs=CUSTOM_CRS)
    frame = polygonize(cls, cf, ["a", "b", "c"], VectorizeSettings())
    with rasterio.open(cls) as ds:
        assert CRS.from_wkt(ds.crs.to_wkt()).equals(frame.crs)


def test_nodata_is_not_vectorized_and_min_area_drops_small_regions(tmp_path):
    classes = np.full((10, 10), 255, np.uint8)
    classes[:5, :5] = 0
    classes[8, 8] = 1
    cls, cf = class_rasters(tmp_path, classes)
    frame = polygonize(cls, cf, ["a", "b"], VectorizeSettings(min_area=1.0))
    assert frame["class_id"].tolist() == [0]


def test_label_regions_8_vs_4_connectivity():
    diagonal = np.eye(3, dtype=np.uint8)
    assert label_regions(diagonal, 8)[1].tolist().count(1) == 1
    assert label_regions(diagonal, 4)[1].tolist().count(1) == 3
