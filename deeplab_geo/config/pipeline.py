"""The pipeline schema: what ``deeplab-geo run`` reads, section by section (model, TTA, tiling,
CRF, polygons, execution, cluster, batch, outputs, STAC inputs)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, model_validator

from deeplab_geo.config.base import (
    CheckpointRef,
    ConfigPath,
    Device,
    _Section,
    is_url,
    load_yaml_config,
    top_keys,
    validate,
)
from deeplab_geo.errors import ConfigError

if TYPE_CHECKING:
    from deeplab_geo.crf.features import CRFParams


class ModelSettings(_Section):
    """Which model to run and where.

    ``resolution`` is the ground sampling distance the model works at: ``auto`` takes the
    model's own (its metadata's ``resolution``) and runs at the raster's where it has none,
    ``native`` always runs at the raster's, a number (metres per pixel) sets it. Windows are
    resampled to it before inference and the probabilities back to the raster's grid. A raster
    finer than the model is shrunk to it; one coarser by up to ``max_upsample`` is enlarged with
    a warning; one coarser still is refused (see docs/models.md, "Resolution").
    ``metadata`` adds to or corrects what a foreign model (a zoo ``.onnx``) says of itself,
    with the zoo's keys (``class_names``, ``resolution`` in cm/px, ``tiles_size``,
    ``standardization_mean``, ...; see :mod:`deeplab_geo_onnx.zoo`).
    """

    checkpoint: CheckpointRef = "builtin:landcover-demo"
    """The model: ``builtin:landcover-demo`` (the bundled demo model), a ``.safetensors`` file with
    its ``model.json`` beside it, a ``.pt``/``.pth`` state dict or an ``.onnx`` file (zoo models
    included). Relative paths resolve against the YAML file's folder."""
    backend: str = "auto"
    """Inference backend: ``auto`` picks the fastest installed for the device (ONNX Runtime on the
    CPU when ``deeplab-geo-onnx`` is installed, torch on CUDA), or a backend's name (``torch``,
    ``onnx``, ...; ``deeplab-geo backends`` lists them)."""
    device: Device = "auto"
    """Where the model runs: ``auto`` (a CUDA device when there is one, else the CPU), ``cpu``,
    ``cuda`` or ``cuda:N``."""
    batch_size: int = Field(4, ge=1, le=1024)
    """Tiles per forward pass."""
    resolution: Literal["auto", "native"] | Annotated[float, Field(gt=0)] = "auto"
    """Ground sampling distance the model works at: ``auto`` takes the model's own (its metadata's
    ``resolution``) and runs at the raster's where it has none, ``native`` always runs at the
    raster's, a number (metres per pixel) sets it. Windows are resampled to it before inference
    and the probabilities back to the raster's grid. With ``auto``, a raster coarser than the
    model by more than ``max_upsample`` is refused before anything is read."""
    precision: Literal["auto", "fp32", "bf16", "int8"] = "auto"
    """Arithmetic of inference: ``fp32``; ``bf16`` where the backend and the CPU have it natively
    (the ``openvino`` backend on CPUs with AVX-512 BF16 or AMX); ``int8``: the checkpoint must be
    an INT8 model (``deeplab-geo quantize``, ``openvino`` backend); ``auto``, what the backend
    runs by default (fp32 on CPUs, as validated; an INT8 model runs INT8)."""
    max_upsample: float = Field(2.0, ge=1.0, le=1000.0)
    """With ``resolution: auto``, how much coarser than the model's a raster's pixels may be:
    up to this factor the raster is upsampled to the model's resolution (with a warning);
    beyond it the run is refused, since the job would grow by the factor squared (a 300 m
    scene given to a 0.5 m model: 600 x 600 times the pixels). 1 never upsamples."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    """Adds to or corrects what a foreign model (a zoo ``.onnx``) says of itself, with the zoo's
    keys: ``class_names`` (id -> name), ``resolution`` in cm/px, ``tiles_size``,
    ``tiles_overlap``, ``standardization_mean``, ``standardization_std``, ``seg_thresh``, ..."""


class TTASettings(_Section):
    """Test-time augmentation: input scales (fused per pixel), horizontal flip."""

    scales: list[Annotated[float, Field(ge=0.1, le=4.0)]] = Field(default_factory=lambda: [1.0],
                                                                 min_length=1)
    """Input scales each tile is predicted at, fused per pixel, e.g. ``[0.5, 0.75, 1.0]`` as in the
    paper; each in 0.1..4.0."""
    flip: bool = False
    """Also predict mirrored tiles; flipped and plain predictions are averaged."""
    fusion: Literal["max", "mean"] = "max"
    """How the scales are fused per pixel, on class probabilities: ``max`` (the paper's) or
    ``mean``."""


class TilingSettings(_Section):
    """How the raster is cut into overlapping windows (sizes in pixels).

    ``overlap: auto`` (the default) takes the model's own: twice its measured reach for
    deeplab-geo models, a zoo model's ``tiles_overlap``; tiles then grow where ``tile_size``
    cannot hold it (see :func:`deeplab_geo.pipeline.windows.plan_windows`).
    """

    tile_size: int = Field(512, ge=16, le=8192)
    """Window size in pixels fed to the model at once. For models that take any input size it is
    the largest: tiles shrink to the least multiple of 16 px that covers the raster with as many
    tiles (e.g. 496 px on 8192 px), so fewer pixels are predicted twice."""
    overlap: Literal["auto"] | Annotated[int, Field(ge=0)] = "auto"
    """Pixels shared by neighbouring tiles, smaller than ``tile_size``; each tile keeps its core,
    half the overlap in. ``auto``: the model's own (twice its measured reach, or a zoo model's
    ``tiles_overlap``); tiles too small for it grow to twice it."""

    @model_validator(mode="after")
    def _overlap_below_tile(self) -> TilingSettings:
        if self.overlap != "auto" and self.overlap >= self.tile_size:
            raise ValueError(
                f"overlap ({self.overlap}) must be smaller than tile_size ({self.tile_size})"
            )
        return self


class CRFSettings(_Section):
    """Fully connected CRF (Krähenbühl & Koltun) as used by DeepLab.

    Energy: unary ``-log p``; a bilateral kernel ``w1 exp(-Δp²/2θα² - ΔI²/2θβ²)`` and a Gaussian
    kernel ``w2 exp(-Δp²/2θγ²)`` with Potts compatibility; ``iterations`` mean-field steps.
    Defaults are the released DeepLab ResNet-101 setting: w1=4, theta_alpha=67, theta_beta=3,
    w2=3, theta_gamma=1, 10 iterations. ``theta_alpha`` and ``theta_gamma`` are in pixels, or in
    metres with ``spatial_units: metres``; ``theta_beta`` is in 8-bit colour units. ``bands``
    (1-based, up to three) feed the bilateral kernel's colour; rasters that are not 8-bit are
    stretched linearly between the ``stretch`` percentiles of the whole raster.

    ``refiner`` picks the implementation: ``pydensecrf`` (C++, one tile per process, in a pool
    of ``execution.crf_processes``) or ``torch`` (:mod:`deeplab_geo.crf.lattice`, the same lattice
    approximation in PyTorch, in the calling process). ``device`` is where the torch refiner
    runs: ``auto`` (a CUDA device when there is one, else the CPU), ``cpu``, ``cuda`` or
    ``cuda:N``; it is independent of ``model.device`` and only valid with ``refiner: torch``.

    Validation: weights are finite and >= 0 (0 switches a kernel off), widths finite and > 0,
    1 to 100 iterations, stretch percentiles ``0 <= low < high <= 100``, bands >= 1.
    """

    enabled: bool = True
    """Refine each tile with the fully connected CRF."""
    refiner: Literal["pydensecrf", "torch"] = "pydensecrf"
    """Implementation: ``pydensecrf`` (C++, in a pool of ``execution.crf_processes`` processes) or
    ``torch`` (the same CRF in PyTorch, on the CPU or CUDA, in the calling process)."""
    device: Device = "auto"
    """``torch`` refiner only: ``auto`` (a CUDA device when there is one, else the CPU), ``cpu``,
    ``cuda`` or ``cuda:N``; independent of ``model.device``."""
    iterations: int = Field(10, ge=1, le=100)
    """Mean-field iterations."""
    w1: float = Field(4.0, ge=0, allow_inf_nan=False)
    """Bilateral (appearance) kernel weight; finite, 0 switches the kernel off."""
    theta_alpha: float = Field(67.0, gt=0, allow_inf_nan=False)
    """Bilateral kernel's spatial width, in pixels (67 px = 33.5 m at 0.5 m) or metres with
    ``spatial_units: metres``; finite."""
    theta_beta: float = Field(3.0, gt=0, allow_inf_nan=False)
    """Bilateral kernel's colour width, in 8-bit colour units; finite."""
    w2: float = Field(3.0, ge=0, allow_inf_nan=False)
    """Gaussian (smoothness) kernel weight; finite, 0 switches the kernel off."""
    theta_gamma: float = Field(1.0, gt=0, allow_inf_nan=False)
    """Gaussian kernel's spatial width, in pixels or metres with ``spatial_units: metres``; finite.
    """
    spatial_units: Literal["pixels", "metres"] = "pixels"
    """Units of ``theta_alpha`` and ``theta_gamma``: ``pixels``, or ``metres`` (divided by the
    raster's pixel size; projected CRSs)."""
    bands: list[Annotated[int, Field(ge=1)]] | None = Field(None, min_length=1, max_length=3)
    """1-based bands (up to three) that feed the bilateral kernel's colour, e.g. ``[4, 3, 2]``;
    default: the first three (a single band is repeated)."""
    stretch: tuple[float, float] = (2.0, 98.0)
    """Percentiles of the whole raster mapped to 0..255 for the colour kernel when the raster is not
    8-bit (16-bit, float, multispectral); ``0 <= low < high <= 100``."""

    @model_validator(mode="after")
    def _check(self) -> CRFSettings:
        low, high = self.stretch
        if not 0 <= low < high <= 100:
            raise ValueError(f"stretch must be percentiles 0 <= low < high <= 100, got "
                             f"{self.stretch}")
        if self.device != "auto" and self.refiner != "torch":
            raise ValueError(f"device {self.device!r} only applies to refiner 'torch'; set "
                             f"crf.refiner: torch or leave crf.device out")
        return self

    def params(self, pixel_size_m: float | None = None) -> CRFParams:
        """The plain numbers the refiners take, spatial widths in pixels: widths in metres are
        divided by ``pixel_size_m``, which they need.

        Raises:
            ConfigError: widths in metres and no pixel size.
        """
        from deeplab_geo.crf.features import CRFParams

        scale = 1.0
        if self.spatial_units == "metres":
            if not pixel_size_m:
                raise ConfigError("crf.spatial_units: metres needs a raster with a pixel size in "
                                  "metres; give the widths in pixels (spatial_units: pixels)")
            scale = 1.0 / pixel_size_m
        device = self.device
        if self.refiner == "pydensecrf":
            device = "cpu"
        return CRFParams(self.w1, self.theta_alpha * scale, self.theta_beta, self.w2,
                         self.theta_gamma * scale, self.iterations, self.refiner, device)


class VectorizeSettings(_Section):
    """Polygon output (see :mod:`deeplab_geo.vectorize`).

    ``simplify`` is a coverage-simplification tolerance in map units (0: exact pixel edges);
    ``min_area`` is in m², and smaller regions are merged into the neighbour they share the
    longest edge with (``min_area_mode: merge``) or left out (``drop``). ``connectivity`` 8 joins
    pixels that touch at a corner, 4 only those sharing an edge. ``skip_classes`` lists class
    names or ids not to vectorize; ``layout`` writes one layer or one per class (GeoPackage);
    ``format`` picks the file type and extension. ``workers`` processes label and trace strips
    of the class raster ahead of the joining (1: this process alone, the least memory).
    """

    enabled: bool = True
    """Write polygons: one per connected region of a class, holes kept, in the input's CRS."""
    simplify: float = Field(0.0, ge=0)
    """Coverage simplification tolerance in map units (0: exact pixel edges); shared edges are
    simplified once, so no gaps or overlaps appear."""
    min_area: float = Field(0.0, ge=0)
    """Minimum region area in m²; smaller regions are merged or dropped (``min_area_mode``). 0 keeps
    all."""
    min_area_mode: Literal["merge", "drop"] = "merge"
    """``merge``: a small region takes the class of the neighbour it shares the longest edge with;
    ``drop``: it is left out (a gap)."""
    connectivity: Literal[4, 8] = 8
    """8: pixels touching at a corner join a region (diagonal neighbours); 4: shared edges only."""
    skip_classes: list[str | int] = Field(default_factory=list)
    """Class names or ids (>= 0) not vectorized, e.g. ``[water]``."""
    layout: Literal["single", "per_class"] = "single"
    """``single``: one layer ``landcover``; ``per_class``: one layer per class, named after it
    (GeoPackage only)."""
    format: Literal["gpkg", "fgb", "geojson", "parquet"] = "gpkg"
    """Polygon file type and extension: ``gpkg`` (GeoPackage), ``fgb`` (FlatGeobuf), ``geojson``
    (CRSs with an EPSG code only), ``parquet`` (GeoParquet)."""
    workers: int = Field(2, ge=1, le=64)
    """Processes that label and trace strips of class rasters from 16 Mpx ahead of the joining: 1 is
    this process alone (the least memory); from 2, that many helper processes while this one
    joins."""

    @model_validator(mode="after")
    def _check(self) -> VectorizeSettings:
        bad = [s for s in self.skip_classes if isinstance(s, int) and s < 0 or s == ""]
        if bad:
            raise ValueError(f"skip_classes are class names or ids >= 0, got {bad}")
        if self.layout == "per_class" and self.format != "gpkg":
            raise ValueError(f"layout per_class needs format gpkg ({self.format} files hold "
                             "one layer); use layout single or format gpkg")
        return self


class ExecutionSettings(_Section):
    """Execution: dask threads, processes for the CRF (which holds the GIL), how many batches
    may be in flight, and GDAL's block cache (bounded so that memory does not grow with the
    raster; GDAL's own default is 5% of RAM).

    ``in_flight`` bounds the batches that are being computed or wait to be written, locally as
    on a cluster, so memory stays bounded whichever side is slower (default: twice the threads
    that compute batches: ``workers`` locally, all worker threads on a cluster).
    """

    workers: int = Field(2, ge=1, le=256)
    """Local dask threads."""
    crf_processes: int = Field(2, ge=1, le=256)
    """Processes for the ``pydensecrf`` refiner (it holds the GIL)."""
    gdal_cache_mb: int = Field(128, ge=16, le=65536)
    """GDAL block cache in MB, bounded so that memory does not grow with the raster (GDAL's own
    default is 5% of RAM)."""
    in_flight: int | None = Field(None, ge=1, le=4096)
    """Batches computed or waiting to be written at a time, locally and on a cluster (default: twice
    the threads that compute batches: ``workers`` locally, all worker threads on a cluster)."""
    http_timeout_s: int = Field(30, ge=1, le=3600)
    """Seconds allowed for each HTTP request of a remote input (``https://``, STAC)."""

    def batches_in_flight(self, threads: int) -> int:
        """Batches allowed in flight: ``in_flight``, or twice the ``threads`` that compute
        batches."""
        return self.in_flight or max(2, 2 * threads)


class InputSettings(_Section):
    """How ``input`` is read when it is a STAC Item (a ``.json`` file or URL; see
    :mod:`~deeplab_geo.raster.sources`): ``assets`` names the Item's assets that are the model's
    bands,
    in order (``[B04, B03, B02]``; one multi-band asset gives all its bands). A remote raster
    (``https://``) is read through GDAL's ``/vsicurl/``; ``execution.http_timeout_s`` bounds
    each request."""

    assets: list[str] | None = Field(None, min_length=1)
    """A STAC Item input's assets that are the model's bands, in order, e.g. ``[B04, B03, B02]``
    (one multi-band asset gives all its bands)."""


class OutputSettings(_Section):
    """Optional outputs: ``confidence`` writes the per-pixel confidence raster (uint8 percent,
    scale 0.01) and the polygons' ``mean_confidence``."""

    confidence: bool = True
    """Write the confidence raster (the chosen class's probability, uint8 percent, scale 0.01) and
    the polygons' ``mean_confidence``."""


class ClusterSettings(_Section):
    """A dask.distributed cluster to run on (see :mod:`deeplab_geo.pipeline.cluster`).

    ``address`` names a running scheduler (``tcp://host:8786``); ``local_workers`` starts a
    ``LocalCluster`` of that many worker processes for the run. Neither: local threads. The
    batches submitted at once are bounded by ``execution.in_flight``.
    """

    address: str | None = Field(None, min_length=1)
    """A running dask scheduler, ``tcp://host:8786`` (or ``--scheduler``); its workers must see the
    input and checkpoint under the same paths."""
    local_workers: int | None = Field(None, ge=1, le=256)
    """Start a ``LocalCluster`` of this many worker processes for the run (on CUDA each worker is
    pinned to one GPU, round robin); not with ``address``."""
    threads_per_worker: int = Field(1, ge=1, le=256)
    """Threads of each worker process that ``local_workers`` starts."""

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "in_flight" in data:
            raise ValueError("in_flight moved to the execution section (it bounds local runs "
                             "too); write execution.in_flight instead")
        return data

    @model_validator(mode="after")
    def _one_kind(self) -> ClusterSettings:
        if self.address is not None and self.local_workers is not None:
            raise ValueError("give either address (an existing cluster) or local_workers "
                             "(start one), not both")
        return self


class BatchSettings(_Section):
    """Batches (``input`` a folder, glob or list; see :mod:`deeplab_geo.pipeline.batch`).

    ``parallel`` inputs run at once (each still uses the execution settings; on this kind of
    2-core machine 1 is fastest, on a cluster more keep its workers busy). ``merge`` writes
    ``merged.gpkg`` with every input's polygons and a ``source`` field.
    """

    parallel: int = Field(1, ge=1, le=64)
    """Inputs processed at once (each still uses the execution settings; on a 2-core machine 1 is
    fastest, on a cluster more keep its workers busy)."""
    merge: bool = False
    """Also write ``merged.gpkg`` with every input's polygons and a ``source`` field, in the first
    input's CRS."""


class PipelineConfig(_Section):
    """A validated pipeline. Paths are absolute once loaded through :func:`load_pipeline`;
    ``input`` is a path, or a URL kept as a string."""

    input: ConfigPath | str
    """Raster to segment (any GDAL raster with a CRS), a folder (its ``.tif``, ``.tiff``, ``.jp2``,
    ``.img`` and ``.vrt`` files), a glob, a ``.txt`` list of paths, a STAC Item (``.json``) or an
    ``https://`` URL. Relative paths resolve against the YAML file's folder."""
    output_dir: ConfigPath
    """Where outputs go; created if missing. Outputs appear only when the run succeeds; in a batch
    each input writes into a folder of its own below it."""
    model: ModelSettings = ModelSettings()
    """Which model to run and where."""
    tta: TTASettings = TTASettings()
    """Test-time augmentation: input scales and flips."""
    tiling: TilingSettings = TilingSettings()
    """How the raster is cut into overlapping windows."""
    crf: CRFSettings = CRFSettings()
    """The fully connected CRF that refines each tile."""
    vectorize: VectorizeSettings = VectorizeSettings()
    """Polygon output."""
    execution: ExecutionSettings = ExecutionSettings()
    """Threads, processes, in-flight batches and caches."""
    cluster: ClusterSettings = ClusterSettings()
    """A dask.distributed cluster to run on; neither key: local threads."""
    batch: BatchSettings = BatchSettings()
    """Batches: when ``input`` is a folder, glob or ``.txt`` list."""
    outputs: OutputSettings = OutputSettings()
    """Optional outputs."""
    quicklook: bool = True
    """Write ``<stem>_quicklook.png``: the input beside the coloured classes, with a legend."""
    stac: InputSettings = InputSettings()
    """How a STAC Item input is read."""

    @model_validator(mode="before")
    @classmethod
    def _input_path(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("input"), str) \
                and not is_url(data["input"]):
            data = {**data, "input": Path(data["input"])}
        return data


def load_pipeline(path: str | Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Read, validate and resolve a pipeline YAML file.

    Args:
        path: the YAML file. Relative paths inside it resolve against its folder.
        overrides: dotted keys (``"crf.enabled"``) to values, applied before validation; relative
            paths given here resolve against the working directory.

    Raises:
        ConfigError: the file is missing, not YAML, or does not validate (a training config
            given instead is named as such).
    """
    try:
        return load_yaml_config(path, PipelineConfig, overrides)
    except ConfigError:
        if "data" in top_keys(path) and "input" not in top_keys(path):
            raise ConfigError(f"{path}: a training config for `deeplab-geo train`, not a "
                              "pipeline (it has a data section and no input); give a pipeline "
                              "such as pipelines/landcover.yaml") from None
        raise


def validate_pipeline(data: dict[str, Any], source: str = "pipeline") -> PipelineConfig:
    """Validate an already-parsed mapping; relative paths are taken as they are."""
    return validate(PipelineConfig, data, source)
