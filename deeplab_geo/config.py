"""Pipeline configuration: a YAML file validated into typed, immutable settings.

Relative paths in a pipeline file resolve against the folder that holds the YAML file, so a
pipeline runs the same from any working directory. A checkpoint may also name a model shipped
with the package as ``builtin:<name>`` (see :mod:`deeplab_geo.models.checkpoint`).

Unknown keys, wrong types and out-of-range values raise :class:`~deeplab_geo.errors.ConfigError`
with a one-line message naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from deeplab_geo.errors import ConfigError

if TYPE_CHECKING:
    from deeplab_geo.crf.features import CRFParams

Device = Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")]
"""Where something runs: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False,
                              use_attribute_docstrings=True)


class ModelSettings(_Section):
    """Which model to run and where.

    ``resolution`` is the ground sampling distance the model works at: ``auto`` takes the
    model's own (its metadata's ``resolution``) and runs at the raster's where it has none,
    ``native`` always runs at the raster's, a number (metres per pixel) sets it. Windows are
    resampled to it before inference and the probabilities back to the raster's grid.
    ``metadata`` adds to or corrects what a foreign model (a zoo ``.onnx``) says of itself,
    with the zoo's keys (``class_names``, ``resolution`` in cm/px, ``tiles_size``,
    ``standardization_mean``, ...; see :mod:`deeplab_geo_onnx.zoo`).
    """

    checkpoint: str = "builtin:landcover-demo"
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
    and the probabilities back to the raster's grid."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    """Adds to or corrects what a foreign model (a zoo ``.onnx``) says of itself, with the zoo's
    keys: ``class_names`` (id -> name), ``resolution`` in cm/px, ``tiles_size``,
    ``tiles_overlap``, ``standardization_mean``, ``standardization_std``, ``seg_thresh``, ..."""


class TTASettings(_Section):
    """Test-time augmentation: input scales (fused per pixel), horizontal flip."""

    scales: list[float] = Field(default_factory=lambda: [1.0], min_length=1)
    """Input scales each tile is predicted at, fused per pixel, e.g. ``[0.5, 0.75, 1.0]`` as in the
    paper; each in 0.1..4.0."""
    flip: bool = False
    """Also predict mirrored tiles; flipped and plain predictions are averaged."""
    fusion: Literal["max", "mean"] = "max"
    """How the scales are fused per pixel, on class probabilities: ``max`` (the paper's) or
    ``mean``."""

    @model_validator(mode="after")
    def _positive_scales(self) -> TTASettings:
        if any(not 0.1 <= s <= 4.0 for s in self.scales):
            raise ValueError(f"scales must lie in 0.1..4.0, got {self.scales}")
        return self


class TilingSettings(_Section):
    """How the raster is cut into overlapping windows (sizes in pixels).

    ``overlap: auto`` (the default) takes the model's own: twice its measured reach for
    deeplab-geo models, a zoo model's ``tiles_overlap``; tiles then grow where ``tile_size``
    cannot hold it (see :func:`deeplab_geo.windows.plan_windows`).
    """

    tile_size: int = Field(512, ge=16, le=8192)
    """Window size in pixels fed to the model at once."""
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
    bands: list[int] | None = Field(None, min_length=1, max_length=3)
    """1-based bands (up to three) that feed the bilateral kernel's colour, e.g. ``[4, 3, 2]``;
    default: the first three (a single band is repeated)."""
    stretch: tuple[float, float] = (2.0, 98.0)
    """Percentiles of the whole raster mapped to 0..255 for the colour kernel when the raster is not
    8-bit (16-bit, float, multispectral); ``0 <= low < high <= 100``."""

    @model_validator(mode="after")
    def _check(self) -> CRFSettings:
        if self.bands is not None and any(b < 1 for b in self.bands):
            raise ValueError(f"bands are 1-based band numbers, got {self.bands}")
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


class InputSettings(_Section):
    """How ``input`` is read when it is a STAC Item (a ``.json`` file or URL; see
    :mod:`deeplab_geo.sources`): ``assets`` names the Item's assets that are the model's bands,
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
    """A dask.distributed cluster to run on (see :mod:`deeplab_geo.cluster`).

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
    """Batches (``input`` a folder, glob or list; see :mod:`deeplab_geo.batch`).

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


def is_url(value: Any) -> bool:
    """Whether an ``input`` is a URL (kept as text: a path would fold its ``//``)."""
    return isinstance(value, str) and value.lower().startswith(("http://", "https://"))


class PipelineConfig(_Section):
    """A validated pipeline. Paths are absolute once loaded through :func:`load_pipeline`;
    ``input`` is a path, or a URL kept as a string."""

    input: Path | str
    """Raster to segment (any GDAL raster with a CRS), a folder (its ``.tif``, ``.tiff``, ``.jp2``,
    ``.img`` and ``.vrt`` files), a glob, a ``.txt`` list of paths, a STAC Item (``.json``) or an
    ``https://`` URL. Relative paths resolve against the YAML file's folder."""
    output_dir: Path
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
        ConfigError: the file is missing, not YAML, or does not validate.
    """
    return load_yaml_config(path, PipelineConfig, overrides)


def validate_pipeline(data: dict[str, Any], source: str = "pipeline") -> PipelineConfig:
    """Validate an already-parsed mapping; relative paths are taken as they are."""
    return _validate(PipelineConfig, data, source)


_Model = TypeVar("_Model", bound=BaseModel)


def load_yaml_config(path: str | Path, schema: type[_Model],
                     overrides: dict[str, Any] | None = None) -> _Model:
    """Read a YAML file safely and validate it against ``schema``.

    Fields whose type is a path (``Path`` or ``Path | None``) and checkpoints (``checkpoint``,
    ``init``) resolve against the YAML file's folder; ``builtin:`` checkpoints are left as they
    are.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found; check the path")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: invalid YAML{where}; fix the syntax") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file; give a YAML file") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a YAML mapping of keys to values")
    data = _resolve_paths(schema, data, path.parent.resolve())
    for dotted, value in (overrides or {}).items():
        if isinstance(value, Path):
            value = str(value.resolve())
        set_dotted(data, dotted, value)
    return _validate(schema, data, str(path))


def _validate(schema: type[_Model], data: dict[str, Any], source: str) -> _Model:
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(schema, exc)}") from None


def _resolve_paths(schema: type[BaseModel], data: dict[str, Any], base: Path) -> dict[str, Any]:
    data = dict(data)
    for name, field in schema.model_fields.items():
        value = data.get(name)
        annotation = field.annotation
        section = _section_model(annotation, value)
        if section is not None:
            if isinstance(value, dict):
                data[name] = _resolve_paths(section, value, base)
        elif isinstance(value, str) and _is_path_field(name, annotation):
            if not value.startswith("builtin:") and not is_url(value):
                data[name] = str((base / value).resolve())
    return data


def _section_model(annotation: Any, value: Any) -> type[BaseModel] | None:
    """The section schema of a field: its model, or for a union of models tagged by ``kind``
    (the training data kinds) the member that ``value["kind"]`` names."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    members = [a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
    kind = value.get("kind") if isinstance(value, dict) else None
    for member in members:
        if "kind" in member.model_fields and kind in get_args(member.model_fields["kind"]
                                                              .annotation):
            return member
    return None


def _is_path_field(name: str, annotation: Any) -> bool:
    return annotation is Path or Path in get_args(annotation) or name in ("checkpoint", "init")


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested mapping, creating sections (``ConfigError`` if one is not)."""
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted}: '{part}' is not a section")
        node[part] = child = dict(child)
        node = child
    node[leaf] = value


def _describe(schema: type[BaseModel], exc: ValidationError) -> str:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in _without_union_tags(schema, err["loc"])) or "pipeline"
    kind = err["type"]
    if kind == "extra_forbidden":
        section = _section_for(schema, err["loc"][:-1])
        allowed = ", ".join(section.model_fields) if section else ""
        return f"unknown key '{key}'; allowed keys here: {allowed}"
    if kind == "missing":
        return f"missing required key '{key}'; add it to the pipeline"
    if kind == "value_error":
        return f"{key}: {err['msg'].removeprefix('Value error, ')}"
    return f"{key}: {err['msg']} (got {err.get('input')!r})"


def _section_for(schema: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    return _walk(schema, loc)[1]


def _without_union_tags(schema: type[BaseModel], loc: tuple[Any, ...]) -> tuple[Any, ...]:
    return _walk(schema, loc)[0]


def _walk(schema: type[BaseModel], loc: tuple[Any, ...]) -> tuple[tuple[Any, ...],
                                                                 type[BaseModel] | None]:
    """Follow an error location through the schema: the location with the tags pydantic inserts
    after tagged-union fields removed (``data.voc.root`` -> ``data.root``), and the section it
    ends in (``None`` past a plain value)."""
    plain: list[Any] = []
    model: type[BaseModel] | None = schema
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        plain.append(part)
        field = model.model_fields.get(str(part)) if model is not None else None
        annotation = getattr(field, "annotation", None)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        elif field is not None and parts and _section_model(annotation, {"kind": parts[0]}):
            model = _section_model(annotation, {"kind": parts.pop(0)})
        else:
            model = None
    return tuple(plain), model


class SyntheticDataSettings(_Section):
    """Generated land-cover scenes (``deeplab-geo sample``) as training data.

    Seeds used for training must differ from validation seeds and from the demo scene (seed 0).
    """

    kind: Literal["synthetic"] = "synthetic"
    """Generated land-cover scenes (``deeplab-geo sample``); the default kind."""
    train_seeds: list[int] = Field(min_length=1)
    """Seeds of the training scenes; they must differ from ``val_seeds`` (and should not include 0,
    the demo's held-out scene)."""
    val_seeds: list[int] = Field(default_factory=list)
    """Seeds of the validation scenes."""
    size: int = Field(1024, ge=64, le=8192)
    """Side of each generated scene, in pixels."""

    @model_validator(mode="after")
    def _disjoint(self) -> SyntheticDataSettings:
        if set(self.train_seeds) & set(self.val_seeds):
            raise ValueError("train_seeds and val_seeds overlap; keep validation scenes unseen")
        return self


class VOCDataSettings(_Section):
    """PASCAL VOC 2012 in its standard layout under ``root`` (the ``VOC2012`` folder).

    ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (palette PNGs whose pixel values are
    class ids, 255 = void) and ``ImageSets/Segmentation/<split>.txt``. The split ``train_aug``
    is the SBD-augmented training list (10,582 images): ``ImageSets/Segmentation/train_aug.txt``
    with labels in ``SegmentationClassAug/``.
    """

    kind: Literal["voc"]
    """PASCAL VOC 2012 in its standard layout."""
    root: Path
    """The ``VOC2012`` folder (``JPEGImages``, ``SegmentationClass``, ``ImageSets/Segmentation``).
    """
    train_split: Literal["train", "train_aug", "trainval"] = "train_aug"
    """Training list; ``train_aug`` is the SBD-augmented list (10,582 images, labels in
    ``SegmentationClassAug/``)."""
    val_split: Literal["val", "train", "trainval"] = "val"
    """Validation list."""


class CityscapesDataSettings(_Section):
    """Cityscapes in its standard layout under ``root``: ``leftImg8bit/<split>/<city>/`` and
    ``gtFine/<split>/<city>/*_gtFine_labelIds.png``, mapped to the 19 train ids (others 255)."""

    kind: Literal["cityscapes"]
    """Cityscapes in its standard layout (gtFine, mapped to the 19 train ids)."""
    root: Path
    """The folder holding ``leftImg8bit/`` and ``gtFine/``."""
    train_split: Literal["train", "val", "test"] = "train"
    """Training split."""
    val_split: Literal["train", "val", "test"] = "val"
    """Validation split."""


class ChipsDataSettings(_Section):
    """Chips cut from a georeferenced raster and its labels.

    ``labels`` is a class raster on the raster's grid (nodata and 255 ignored) or a vector file
    (GeoPackage, GeoJSON, ...) whose polygons carry a class id in ``class_field``; polygons are
    rasterized on the fly in the raster's CRS (reprojected if needed), unlabelled pixels are
    ignored. The raster is cut into square blocks of ``block_size`` pixels; ``val_fraction`` of
    them, drawn with ``split_seed``, are the validation area and the rest the training area.
    Each block is tiled into ``chip_size`` chips (``stride`` apart, the last row and column
    flush with the block's edge), so no chip crosses from one area into the other; chips with
    less than ``min_labelled`` of their pixels labelled are skipped.

    ``region`` (``[col_off, row_off, width, height]`` in pixels) limits training and
    validation to that part of the raster, so that the rest stays unseen for a hold-out score;
    blocks are cut from its top-left corner. ``class_values`` gives the label value of each
    class in ``classes`` order (``[1, 2, 3]`` for labels coded from 1; other values are not
    labelled); by default a label is the class id. A vector ``class_field`` may hold class names
    instead of ids; they are matched against ``classes``. Nodata pixels of the raster are
    ignored and set to 0 in the images, as inference does.
    """

    kind: Literal["chips"]
    """Chips cut from a georeferenced raster and its labels."""
    raster: Path
    """The image raster."""
    labels: Path
    """A class raster on the raster's grid (nodata and 255 ignored) or a vector file (GeoPackage,
    GeoJSON, ...) rasterized on the fly in the raster's CRS."""
    class_field: str = "class_id"
    """Vector labels' field holding each polygon's class id (or class name, matched against
    ``classes``)."""
    layer: str | None = None
    """Vector labels' layer (default: the first)."""
    classes: list[str] | None = Field(None, min_length=1, max_length=255)
    """Class names, in class-id order."""
    class_values: list[Annotated[int, Field(ge=0, le=254)]] | None = None
    """Label value of each class, in ``classes`` order (``[1, 2, 3]`` for labels coded from 1; other
    values are not labelled); default: the class id."""
    region: tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)],
                  Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] | None = None
    """``[col_off, row_off, width, height]`` in pixels: training and validation use only this part
    of the raster, so the rest stays unseen for a hold-out score."""
    chip_size: int = Field(256, ge=8, le=8192)
    """Side of each chip, in pixels."""
    stride: int | None = Field(None, ge=1)
    """Distance between chips within a block (default: ``chip_size``)."""
    block_size: int = Field(1024, ge=8)
    """Side of the square blocks the raster is cut into, at least ``chip_size``; a block is wholly
    training or wholly validation area."""
    val_fraction: float = Field(0.2, ge=0, lt=1)
    """Share of the blocks that are the validation area."""
    split_seed: int = 0
    """Seed that draws the validation blocks."""
    min_labelled: float = Field(0.5, ge=0, le=1)
    """Chips with a smaller share of labelled pixels are skipped."""

    @model_validator(mode="after")
    def _sizes(self) -> ChipsDataSettings:
        if self.block_size < self.chip_size:
            raise ValueError(f"block_size ({self.block_size}) must be at least chip_size "
                             f"({self.chip_size})")
        if self.class_values is not None:
            if self.classes is None or len(self.class_values) != len(self.classes):
                raise ValueError("class_values needs classes, one value per class")
            if len(set(self.class_values)) != len(self.class_values):
                raise ValueError(f"class_values must be distinct, got {self.class_values}")
        return self


DataSettings = Annotated[
    SyntheticDataSettings | VOCDataSettings | CityscapesDataSettings | ChipsDataSettings,
    Field(discriminator="kind"),
]


class ModelSpec(_Section):
    """Architecture to train (see ``deeplab_geo.models.available()``), and its initial weights.

    ``init`` is a checkpoint to fine-tune (``builtin:landcover-demo``, a ``.safetensors`` with
    its ``.json``) or a bare state dict (``.safetensors``, ``.pt``/``.pth``, e.g. torchvision's
    ImageNet ResNet weights, whose keys are matched under ``backbone.`` too). Tensors whose name
    and shape fit are loaded; the rest (a classifier for other classes) keep their fresh
    initialisation. Without ``architecture`` and ``output_stride``, a checkpoint's own are used.
    """

    architecture: str | None = None
    """Architecture to train (``deeplab_geo.models.available()``); default: ``init``'s."""
    output_stride: Literal[8, 16] | None = None
    """8 or 16: the backbone's dilation and the atrous rates; default: the architecture's or
    ``init``'s."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Builder options, e.g. ``{pooling_window: 256}`` (default: ``init``'s)."""
    init: str | None = None
    """Initial weights: a checkpoint to fine-tune (``builtin:landcover-demo``, a ``.safetensors``
    with its ``.json``) or a bare state dict (``.safetensors``, ``.pt``/``.pth``, e.g. ImageNet
    ResNet weights); tensors that do not fit stay freshly initialised."""


class OptimSettings(_Section):
    """DeepLab's recipe by default: SGD, momentum 0.9, weight decay 5e-4, poly lr (power 0.9),
    random scale 0.5-1.5, random crop and flip, cross-entropy ignoring 255.

    ``augment``: ``dihedral`` adds vertical flips and 90-degree rotations (aerial images have
    no canonical "up"), ``hflip`` is the paper's horizontal flip; ``auto`` picks ``dihedral`` for
    synthetic scenes and chips, ``hflip`` for VOC and Cityscapes. ``head_lr_multiplier`` scales
    the learning rate of the head (``classifier``), 10 in the released DeepLab recipe.
    Checkpoints are written every ``checkpoint_every`` steps to ``checkpoint_dir`` (default:
    ``<output stem>.checkpoints`` beside ``output``), the newest ``keep_checkpoints`` kept;
    ``resume`` continues from the newest one. ``trim_taps`` zeroes, after training, the
    convolution taps further than half a crop from their kernel's centre (large-rate ASPP taps
    that mostly saw padding; see :mod:`deeplab_geo.models.reach`).

    ``class_weights`` weighs the cross-entropy per class against imbalance: ``inverse`` or
    ``sqrt_inverse`` frequency of each class among the training labels (scaled so that the
    average labelled pixel weighs 1, and capped at 50), or one weight per class. Training logs
    each class's share of the labels and warns of classes that have none.
    """

    steps: int = Field(20000, ge=1)
    """Optimisation steps."""
    batch_size: int = Field(10, ge=1)
    """Crops per step."""
    crop_size: int = Field(321, ge=16)
    """Side of the random training crops, in pixels."""
    optimizer: Literal["sgd", "adamw"] = "sgd"
    """``sgd`` (with ``momentum``) or ``adamw``."""
    lr: float = Field(2.5e-4, gt=0)
    """Base learning rate, decayed by the poly schedule."""
    momentum: float = Field(0.9, ge=0, lt=1)
    """SGD momentum."""
    weight_decay: float = Field(5e-4, ge=0)
    """Weight decay."""
    poly_power: float = Field(0.9, ge=0)
    """Power of the poly learning-rate schedule."""
    head_lr_multiplier: float = Field(1.0, gt=0)
    """Learning-rate factor of the head (``classifier``); 10 in the released DeepLab recipe."""
    aux_loss_weight: float = Field(0.5, ge=0)
    """Weight of the auxiliary head's loss (models built with ``aux_loss``)."""
    scale_range: tuple[float, float] = (0.5, 1.5)
    """Random scale range of the training crops, ``0 < low <= high``."""
    augment: Literal["auto", "hflip", "dihedral"] = "auto"
    """``dihedral``: flips and 90-degree rotations; ``hflip``: the paper's horizontal flip;
    ``auto``: ``dihedral`` for synthetic scenes and chips, ``hflip`` for VOC and Cityscapes."""
    freeze_bn: bool = False
    """Keep batch-norm layers in eval mode with frozen affine parameters."""
    device: Device = "auto"
    """``auto`` (a CUDA device when there is one), ``cpu``, ``cuda`` or ``cuda:N``."""
    amp: bool = True
    """Mixed precision on CUDA (bf16, else fp16 with a gradient scaler); no effect on the CPU."""
    workers: int = Field(2, ge=0, le=64)
    """Threads that prepare the next batch while the current one trains (0: in the training thread).
    """
    seed: int = 0
    """Seed of the initialisation and of each step's crops."""
    threads: int | None = Field(None, ge=1)
    """torch's intra-op threads (default: torch's choice)."""
    log_every: int = Field(50, ge=1)
    """Steps between log lines."""
    checkpoint_every: int | None = Field(None, ge=1)
    """Write a resumable checkpoint every this many steps."""
    checkpoint_dir: Path | None = None
    """Where checkpoints go (default: ``<output stem>.checkpoints`` beside ``output``)."""
    keep_checkpoints: int = Field(3, ge=1)
    """How many of the newest checkpoints are kept."""
    resume: bool = False
    """Continue from the newest checkpoint (``--resume``)."""
    trim_taps: bool = False
    """After training, zero the convolution taps further than half a crop from their kernel's centre
    (large-rate ASPP taps that mostly saw padding)."""
    class_weights: Literal["none", "inverse", "sqrt_inverse"] | list[
        Annotated[float, Field(ge=0, allow_inf_nan=False)]] = "none"
    """Cross-entropy weight per class: ``none``, ``inverse`` or ``sqrt_inverse`` frequency among the
    training labels (the average labelled pixel weighs 1, capped at 50), or one finite weight >=
    0 per class."""

    @model_validator(mode="after")
    def _scales(self) -> OptimSettings:
        low, high = self.scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {self.scale_range}")
        return self


class DatasetEvalSettings(_Section):
    """How ``deeplab-geo evaluate dataset`` scores a checkpoint on a dataset split.

    ``checkpoint`` defaults to the training config's ``output``; ``limit`` scores only the first
    images of the split (quick checks). The CRF is off unless enabled (``--crf`` overrides).
    """

    split: Literal["train", "val"] = "val"
    """The split scored."""
    checkpoint: str | None = None
    """Checkpoint scored (default: the training config's ``output``)."""
    backend: str = "auto"
    """Inference backend, as ``model.backend`` in a pipeline."""
    device: Device = "auto"
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    tta: TTASettings = TTASettings()
    """Test-time augmentation, as in a pipeline."""
    crf: CRFSettings = CRFSettings(enabled=False)
    """The dense CRF, as in a pipeline but off unless enabled (``--crf`` overrides)."""
    limit: int | None = Field(None, ge=1)
    """Score only the split's first images (quick checks)."""


class TrainConfig(_Section):
    """A training run: data, architecture, optimisation, the checkpoint to write, and how
    ``deeplab-geo evaluate dataset`` scores it."""

    data: DataSettings
    """Training data; ``kind`` picks ``synthetic`` (the default), ``voc``, ``cityscapes`` or
    ``chips``."""
    model: ModelSpec = ModelSpec()
    """Architecture to train and its initial weights."""
    train: OptimSettings = OptimSettings()
    """Optimisation, augmentation and checkpoints."""
    evaluate: DatasetEvalSettings = DatasetEvalSettings()
    """How ``deeplab-geo evaluate dataset`` scores the result."""
    output: Path
    """The checkpoint written: ``<name>.safetensors`` with ``<name>.json`` beside it."""

    @model_validator(mode="before")
    @classmethod
    def _default_kind(cls, data: Any) -> Any:
        """``data.kind`` may be left out for generated scenes (the first data kind)."""
        if isinstance(data, dict) and isinstance(data.get("data"), dict) \
                and "kind" not in data["data"]:
            return {**data, "data": {**data["data"], "kind": "synthetic"}}
        return data


class DatasetEvalConfig(TrainConfig):
    """What ``deeplab-geo evaluate dataset`` reads: a training config whose ``output`` may be
    left out when ``evaluate.checkpoint`` names the model."""

    output: Path | None = None  # type: ignore[assignment]
    """The trained checkpoint; may be left out when ``evaluate.checkpoint`` names the model."""


def load_train_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read and validate a training YAML file (paths relative to its folder)."""
    return load_yaml_config(path, TrainConfig, overrides)


def load_dataset_eval_config(path: str | Path | None,
                             overrides: dict[str, Any] | None = None) -> DatasetEvalConfig:
    """A dataset evaluation from a training YAML, or from ``overrides`` alone when ``path`` is
    ``None`` (relative paths in overrides are taken as they are)."""
    if path is not None:
        return load_yaml_config(path, DatasetEvalConfig, overrides)
    data: dict[str, Any] = {}
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, str(value) if isinstance(value, Path) else value)
    return _validate(DatasetEvalConfig, data, "evaluate dataset")


def is_training_config(path: str | Path) -> bool:
    """Whether a YAML file is a training config (it has ``data``) rather than a pipeline."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and "data" in data


def json_schema(kind: str = "pipeline") -> dict[str, Any]:
    """The JSON Schema of pipeline (``"pipeline"``) or training (``"train"``) YAML files, with
    each key's type, default, range and description (from the schema's docstrings)."""
    schema = (PipelineConfig if kind == "pipeline" else TrainConfig).model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = f"deeplab-geo {kind}"
    return schema
