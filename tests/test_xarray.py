"""deeplab_geo.xarray: lazy DataArray segmentation that agrees with `deeplab-geo run`."""

from __future__ import annotations

from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import rasterio
import rioxarray
import xarray as xr

import deeplab_geo
import deeplab_geo.xarray as dx
from deeplab_geo.config import load_pipeline
from deeplab_geo.errors import InputError
from deeplab_geo.pipeline.runner import run
from tests.conftest import TINY_CLASSES, write_raster


def _scene(tmp_path: Path, *, float_data: bool = False) -> Path:
    """A 3-band 150 x 230 raster with a nodata corner (several tiles of 64 px)."""
    rng = np.random.default_rng(1)
    image = rng.integers(1, 255, (3, 150, 230)).astype(np.float32)
    image[:, 60:110, 80:170] = [[[30]], [[140]], [[40]]]
    if float_data:
        image = image * 37.5 - 900.0
        image[:, :30, :40] = -99999
        return write_raster(tmp_path / "scene.tif", image.astype(np.float32), nodata=-99999)
    image[:, :30, :40] = 0
    return write_raster(tmp_path / "scene.tif", image.astype(np.uint8), nodata=0)


def _pipeline(tmp_path: Path, checkpoint: Path, crf: bool, model: str = "",
              extra: str = "") -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        "input: scene.tif\noutput_dir: out\n"
        f"model: {{checkpoint: {checkpoint}, batch_size: 2, device: cpu{model}}}\n"
        "tiling: {tile_size: 64, overlap: 16}\n"
        f"crf: {{enabled: {str(crf).lower()}, iterations: 2}}\n"
        "vectorize: {enabled: false}\nquicklook: false\n" + extra)
    return path


def _run_classes(pipeline: Path) -> np.ndarray:
    result = run(load_pipeline(pipeline))
    with rasterio.open(result.outputs["classes"]) as ds:
        return ds.read(1)


@pytest.mark.parametrize("float_data, crf", [(False, True), (True, True), (True, False)])
def test_segment_equals_the_file_pipeline_whatever_the_chunking(tmp_path, tiny_checkpoint,
                                                                float_data, crf):
    raster = _scene(tmp_path, float_data=float_data)
    pipeline = _pipeline(tmp_path, tiny_checkpoint, crf)
    expected = _run_classes(pipeline)
    results = []
    for chunks in ({"x": 50, "y": 33}, {"x": 230, "y": 150}, {"band": 1, "x": 97, "y": 64}):
        image = rioxarray.open_rasterio(raster, chunks=chunks)
        ds = image.deeplab.segment(pipeline=pipeline)
        assert isinstance(ds.classes.data, da.Array)
        results.append(ds.classes.values)
    for classes in results:
        assert (classes == expected).mean() >= 0.999
        np.testing.assert_array_equal(classes, results[0])
    assert (results[0][:30, :40] == 255).all()  # nodata stays nodata


def test_tta_and_a_model_resolution_work_as_in_the_file_pipeline(tmp_path, tiny_checkpoint):
    raster = _scene(tmp_path)
    pipeline = _pipeline(tmp_path, tiny_checkpoint, True, ", resolution: 0.8",
                         "tta: {flip: true, scales: [0.75, 1.0]}\n")
    expected = _run_classes(pipeline)
    ds = rioxarray.open_rasterio(raster, chunks={"x": 77}).deeplab.segment(pipeline=pipeline)
    assert (ds.classes.values == expected).mean() >= 0.999


def test_the_model_is_loaded_once_for_all_blocks(tmp_path, tiny_checkpoint):
    from deeplab_geo.backends import torch_backend

    raster = _scene(tmp_path)
    deeplab_geo.shutdown()
    ds = rioxarray.open_rasterio(raster, chunks={"x": 50}).deeplab.segment(
        checkpoint=str(tiny_checkpoint), tile_size=64, overlap=16, batch_size=1, crf=False,
        device="cpu", backend="torch")
    assert ds.classes.data.npartitions > 8
    ds.compute()
    assert torch_backend._load_cached.cache_info().misses == 1


def test_result_carries_grid_crs_nodata_and_class_attributes(tmp_path, tiny_checkpoint):
    raster = _scene(tmp_path)
    image = rioxarray.open_rasterio(raster, chunks={"x": 128, "y": 128})
    ds = dx.segment(image, str(tiny_checkpoint), tile_size=64, overlap=16, crf=False,
                    device="cpu")
    assert set(ds.data_vars) == {"classes", "confidence"}
    assert ds.classes.dtype == np.uint8 and ds.confidence.dtype == np.uint8
    np.testing.assert_array_equal(ds.x, image.x)
    np.testing.assert_array_equal(ds.y, image.y)
    assert ds.classes.rio.crs == image.rio.crs
    assert ds.classes.rio.nodata == 255
    assert ds.classes.rio.transform() == image.rio.transform()
    assert ds.classes.attrs["class_names"] == TINY_CLASSES
    assert len(ds.classes.attrs["class_colours"]) == 3
    confidence = ds.confidence.values
    assert ((confidence <= 100) | (confidence == 255)).all()


def test_nothing_is_computed_before_it_is_asked_for(tmp_path, tiny_checkpoint):
    reads = []

    def counted(block):
        reads.append(block.shape)
        return block

    raster = _scene(tmp_path)
    image = rioxarray.open_rasterio(raster, chunks={"x": 64, "y": 64})
    image = image.copy(data=image.data.map_blocks(
        counted, dtype=image.dtype, meta=np.empty((0, 0, 0), image.dtype)))
    ds = image.deeplab.segment(checkpoint=str(tiny_checkpoint), tile_size=64, overlap=16,
                               crf={"iterations": 1}, device="cpu")  # a delayed CRF stretch
    assert reads == []
    ds.classes[:10, :10].compute()
    assert reads


def test_numpy_input_gives_a_computed_result_and_2d_arrays_take_one_band(tmp_path,
                                                                         tiny_checkpoint):
    raster = _scene(tmp_path)
    image = rioxarray.open_rasterio(raster).load()
    ds = dx.segment(image, str(tiny_checkpoint), tile_size=64, overlap=16, device="cpu")
    assert isinstance(ds.classes.data, np.ndarray)
    with pytest.raises(InputError, match="3"):
        dx.segment(image.isel(band=0), str(tiny_checkpoint), device="cpu")
    with pytest.raises(InputError, match=r"segment one \(band, y, x\) image at a time: select "
                                          r"the others \(time\) first, e.g. \.isel\(time=0\)"):
        dx.segment(image.expand_dims(time=2), str(tiny_checkpoint), device="cpu")
    with pytest.raises(InputError, match="DataArray"):
        dx.segment(image.to_dataset(name="image"), str(tiny_checkpoint))


def test_vectorize_gives_the_cli_polygons(tmp_path, tiny_checkpoint):
    import geopandas

    raster = _scene(tmp_path)
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        f"input: scene.tif\noutput_dir: out\nmodel: {{checkpoint: {tiny_checkpoint}, "
        "device: cpu}\ntiling: {tile_size: 64, overlap: 16}\ncrf: {enabled: false}\n"
        "vectorize: {enabled: true}\nquicklook: false\n")
    cli = geopandas.read_file(run(load_pipeline(pipeline)).outputs["polygons"])
    ds = rioxarray.open_rasterio(raster, chunks={"x": 100}).deeplab.segment(pipeline=pipeline)
    frame = dx.vectorize(ds.classes)
    assert len(frame) == len(cli)
    assert frame.crs == cli.crs
    assert sorted(frame["class_name"]) == sorted(cli["class_name"])
    assert abs(frame.area.sum() - cli.area.sum()) < 1e-6
    result = ds.classes.deeplab.vectorize(tmp_path / "array.gpkg")
    assert result.polygons == len(cli)
    assert len(geopandas.read_file(tmp_path / "array.gpkg")) == len(cli)


@pytest.mark.slow  # SIGKILL / cluster / 1536 px: make test PYTEST_ARGS=--run-slow
@pytest.mark.parametrize("crf", [False, True])
def test_runs_on_a_distributed_cluster(tmp_path, tiny_checkpoint, crf):
    """With the CRF too: a worker process may not start the CRF's helpers (it refines its
    tiles itself; it used to fail: daemonic processes are not allowed to have children)."""
    from distributed import Client, LocalCluster

    raster = _scene(tmp_path)
    pipeline = _pipeline(tmp_path, tiny_checkpoint, crf=crf)
    expected = _run_classes(pipeline)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        ds = rioxarray.open_rasterio(raster, chunks={"x": 64}).deeplab.segment(
            pipeline=pipeline)
        classes = client.compute(ds.classes.data).result()
        assert len(client.nthreads()) == 2
    assert (classes == expected).mean() >= 0.999


def test_writes_with_rioxarray(tmp_path, tiny_checkpoint):
    raster = _scene(tmp_path)
    ds = rioxarray.open_rasterio(raster, chunks=True).deeplab.segment(
        checkpoint=str(tiny_checkpoint), tile_size=64, overlap=16, device="cpu")
    with dask.config.set(scheduler="threads"):
        ds.classes.rio.to_raster(tmp_path / "classes.tif", tiled=True)
    with rasterio.open(tmp_path / "classes.tif") as out, rasterio.open(raster) as src:
        assert out.crs == src.crs and out.transform == src.transform
        assert out.nodata == 255
        np.testing.assert_array_equal(out.read(1), ds.classes.values)


def test_accessor_is_registered_on_import():
    assert hasattr(xr.DataArray, "deeplab")


def test_write_gives_the_cli_outputs_in_one_pass(tmp_path, tiny_checkpoint):
    import geopandas

    raster = _scene(tmp_path)
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        f"input: scene.tif\noutput_dir: cli\nmodel: {{checkpoint: {tiny_checkpoint}, "
        "device: cpu}\ntiling: {tile_size: 64, overlap: 16}\ncrf: {enabled: false}\n"
        "quicklook: false\n")
    cli = run(load_pipeline(pipeline)).outputs
    ds = rioxarray.open_rasterio(raster, chunks={"x": 100}).deeplab.segment(pipeline=pipeline)
    outputs = dx.write(ds, tmp_path / "xr", stem="scene")
    assert sorted(p.name for p in (tmp_path / "xr").iterdir()) == [
        "scene.gpkg", "scene_classes.tif", "scene_confidence.tif"]
    for key in ("classes", "confidence"):
        with rasterio.open(outputs[key]) as mine, rasterio.open(cli[key]) as theirs:
            np.testing.assert_array_equal(mine.read(1), theirs.read(1))
            assert mine.crs == theirs.crs and mine.transform == theirs.transform
            assert mine.nodata == theirs.nodata == 255
            assert mine.tags(1).get("CLASS_NAMES") == theirs.tags(1).get("CLASS_NAMES")
    with rasterio.open(outputs["classes"]) as mine:
        assert mine.colormap(1)[0] == (*[int(ds.classes.attrs["class_colours"][0][i:i + 2], 16)
                                         for i in (1, 3, 5)], 255)
    assert len(geopandas.read_file(outputs["polygons"])) == \
        len(geopandas.read_file(cli["polygons"]))
    # another polygon format takes the CLI's name for it too
    flat = dx.write(ds, tmp_path / "fgb", stem="scene", polygons={"format": "fgb"})
    assert flat["polygons"].name == "scene.fgb"
    assert len(geopandas.read_file(flat["polygons"])) == len(geopandas.read_file(cli["polygons"]))


def test_a_failed_write_leaves_nothing_behind(tmp_path, tiny_checkpoint):
    raster = _scene(tmp_path)
    calls = []

    def breaks(block):
        calls.append(1)
        if len(calls) > 2:
            raise OSError("the disk went away")
        return block

    image = rioxarray.open_rasterio(raster, chunks={"y": 40})
    image = image.copy(data=image.data.map_blocks(
        breaks, dtype=image.dtype, meta=np.empty((0, 0, 0), image.dtype)))
    ds = image.deeplab.segment(checkpoint=str(tiny_checkpoint), tile_size=64, overlap=16,
                               crf=False, device="cpu")
    with pytest.raises(OSError, match="went away"):
        dx.write(ds, tmp_path / "xr", stem="scene")
    assert list((tmp_path / "xr").iterdir()) == []


def test_strips_are_block_aligned_and_each_chunk_row_is_computed_once():
    computed = []

    def counted(block, block_info=None):
        computed.append(block_info[0]["chunk-location"])
        return block

    values = np.random.default_rng(0).integers(0, 3, (1300, 70)).astype(np.uint8)
    values[:600] = 255  # the first strip is all nodata
    array = da.from_array(values, chunks=((448, 448, 404), (30, 40)))
    array = array.map_blocks(counted, dtype=np.uint8, meta=np.empty((0, 0), np.uint8))
    classes = xr.DataArray(array, dims=("y", "x"))
    strips = list(dx._strips(classes, None))
    assert [(s.row0, s.row1) for s in strips] == [(0, 512), (512, 1300)]  # the last: the rest
    assert strips[0].classes is None
    np.testing.assert_array_equal(np.concatenate([s.classes for s in strips[1:]]),
                                  values[512:])
    assert sorted(computed) == sorted({loc for loc in computed})  # no chunk twice
    assert len(computed) == 6
