"""Pipeline configuration: a YAML file validated into typed, immutable settings.

Relative paths in a pipeline file resolve against the folder that holds the YAML file, so a
pipeline runs the same from any working directory. A checkpoint may also name a model shipped
with the package as ``builtin:<name>`` (see :mod:`deeplab_geo.models.checkpoint`).

Unknown keys, wrong types and out-of-range values raise :class:`~deeplab_geo.errors.ConfigError`
with a one-line message naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from deeplab_geo.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


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
    backend: str = "auto"
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    batch_size: int = Field(4, ge=1, le=1024)
    resolution: Literal["auto", "native"] | Annotated[float, Field(gt=0)] = "auto"
    metadata: dict[str, Any] = Field(default_factory=dict)


class TTASettings(_Section):
    """Test-time augmentation: input scales (fused per pixel), horizontal flip."""

    scales: list[float] = Field(default_factory=lambda: [1.0], min_length=1)
    flip: bool = False
    fusion: Literal["max", "mean"] = "max"

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
    overlap: Literal["auto"] | Annotated[int, Field(ge=0)] = "auto"

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
    of ``execution.crf_processes``) or ``torch`` (:mod:`deeplab_geo.crf_torch`, the same lattice
    approximation in PyTorch, in the calling process). ``device`` is where the torch refiner
    runs: ``auto`` (a CUDA device when there is one, else the CPU), ``cpu``, ``cuda`` or
    ``cuda:N``; it is independent of ``model.device`` and only valid with ``refiner: torch``.

    Validation: weights are finite and >= 0 (0 switches a kernel off), widths finite and > 0,
    1 to 100 iterations, stretch percentiles ``0 <= low < high <= 100``, bands >= 1.
    """

    enabled: bool = True
    refiner: Literal["pydensecrf", "torch"] = "pydensecrf"
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    iterations: int = Field(10, ge=1, le=100)
    w1: float = Field(4.0, ge=0, allow_inf_nan=False)
    theta_alpha: float = Field(67.0, gt=0, allow_inf_nan=False)
    theta_beta: float = Field(3.0, gt=0, allow_inf_nan=False)
    w2: float = Field(3.0, ge=0, allow_inf_nan=False)
    theta_gamma: float = Field(1.0, gt=0, allow_inf_nan=False)
    spatial_units: Literal["pixels", "metres"] = "pixels"
    bands: list[int] | None = Field(None, min_length=1, max_length=3)
    stretch: tuple[float, float] = (2.0, 98.0)

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

    def in_pixels(self, pixel_size_m: float) -> CRFSettings:
        """These settings with spatial widths in pixels (converted from metres if needed)."""
        if self.spatial_units == "pixels":
            return self
        return self.model_copy(update={"theta_alpha": self.theta_alpha / pixel_size_m,
                                       "theta_gamma": self.theta_gamma / pixel_size_m,
                                       "spatial_units": "pixels"})


class VectorizeSettings(_Section):
    """Polygon output (see :mod:`deeplab_geo.vectorize`).

    ``simplify`` is a coverage-simplification tolerance in map units (0: exact pixel edges);
    ``min_area`` is in m², and smaller regions are merged into the neighbour they share the
    longest edge with (``min_area_mode: merge``) or left out (``drop``). ``connectivity`` 8 joins
    pixels that touch at a corner, 4 only those sharing an edge. ``skip_classes`` lists class
    names or ids not to vectorize; ``layout`` writes one layer or one per class (GeoPackage);
    ``format`` picks the file type and extension. ``workers`` threads label and trace strips
    of the class raster ahead of the joining (1: one strip at a time, the least memory).
    """

    enabled: bool = True
    simplify: float = Field(0.0, ge=0)
    min_area: float = Field(0.0, ge=0)
    min_area_mode: Literal["merge", "drop"] = "merge"
    connectivity: Literal[4, 8] = 8
    skip_classes: list[str | int] = Field(default_factory=list)
    layout: Literal["single", "per_class"] = "single"
    format: Literal["gpkg", "fgb", "geojson", "parquet"] = "gpkg"
    workers: int = Field(2, ge=1, le=64)

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
    crf_processes: int = Field(2, ge=1, le=256)
    gdal_cache_mb: int = Field(128, ge=16, le=65536)
    in_flight: int | None = Field(None, ge=1, le=4096)
    http_timeout_s: int = Field(30, ge=1, le=3600)


class InputSettings(_Section):
    """How ``input`` is read when it is a STAC Item (a ``.json`` file or URL; see
    :mod:`deeplab_geo.sources`): ``assets`` names the Item's assets that are the model's bands,
    in order (``[B04, B03, B02]``; one multi-band asset gives all its bands). A remote raster
    (``https://``) is read through GDAL's ``/vsicurl/``; ``execution.http_timeout_s`` bounds
    each request."""

    assets: list[str] | None = Field(None, min_length=1)


class OutputSettings(_Section):
    """Optional outputs: ``confidence`` writes the per-pixel confidence raster (uint8 percent,
    scale 0.01) and the polygons' ``mean_confidence``."""

    confidence: bool = True


class ClusterSettings(_Section):
    """A dask.distributed cluster to run on (see :mod:`deeplab_geo.cluster`).

    ``address`` names a running scheduler (``tcp://host:8786``); ``local_workers`` starts a
    ``LocalCluster`` of that many worker processes for the run. Neither: local threads. The
    batches submitted at once are bounded by ``execution.in_flight``.
    """

    address: str | None = Field(None, min_length=1)
    local_workers: int | None = Field(None, ge=1, le=256)
    threads_per_worker: int = Field(1, ge=1, le=256)

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
    merge: bool = False


def is_url(value: Any) -> bool:
    """Whether an ``input`` is a URL (kept as text: a path would fold its ``//``)."""
    return isinstance(value, str) and value.lower().startswith(("http://", "https://"))


class PipelineConfig(_Section):
    """A validated pipeline. Paths are absolute once loaded through :func:`load_pipeline`;
    ``input`` is a path, or a URL kept as a string."""

    input: Path | str
    output_dir: Path
    model: ModelSettings = ModelSettings()
    tta: TTASettings = TTASettings()
    tiling: TilingSettings = TilingSettings()
    crf: CRFSettings = CRFSettings()
    vectorize: VectorizeSettings = VectorizeSettings()
    execution: ExecutionSettings = ExecutionSettings()
    cluster: ClusterSettings = ClusterSettings()
    batch: BatchSettings = BatchSettings()
    outputs: OutputSettings = OutputSettings()
    quicklook: bool = True
    stac: InputSettings = InputSettings()

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
    train_seeds: list[int] = Field(min_length=1)
    val_seeds: list[int] = Field(default_factory=list)
    size: int = Field(1024, ge=64, le=8192)

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
    root: Path
    train_split: Literal["train", "train_aug", "trainval"] = "train_aug"
    val_split: Literal["val", "train", "trainval"] = "val"


class CityscapesDataSettings(_Section):
    """Cityscapes in its standard layout under ``root``: ``leftImg8bit/<split>/<city>/`` and
    ``gtFine/<split>/<city>/*_gtFine_labelIds.png``, mapped to the 19 train ids (others 255)."""

    kind: Literal["cityscapes"]
    root: Path
    train_split: Literal["train", "val", "test"] = "train"
    val_split: Literal["train", "val", "test"] = "val"


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
    raster: Path
    labels: Path
    class_field: str = "class_id"
    layer: str | None = None
    classes: list[str] | None = Field(None, min_length=1, max_length=255)
    class_values: list[Annotated[int, Field(ge=0, le=254)]] | None = None
    region: tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)],
                  Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] | None = None
    chip_size: int = Field(256, ge=8, le=8192)
    stride: int | None = Field(None, ge=1)
    block_size: int = Field(1024, ge=8)
    val_fraction: float = Field(0.2, ge=0, lt=1)
    split_seed: int = 0
    min_labelled: float = Field(0.5, ge=0, le=1)

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
    output_stride: Literal[8, 16] | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    init: str | None = None


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
    batch_size: int = Field(10, ge=1)
    crop_size: int = Field(321, ge=16)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(2.5e-4, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    poly_power: float = Field(0.9, ge=0)
    head_lr_multiplier: float = Field(1.0, gt=0)
    aux_loss_weight: float = Field(0.5, ge=0)
    scale_range: tuple[float, float] = (0.5, 1.5)
    augment: Literal["auto", "hflip", "dihedral"] = "auto"
    freeze_bn: bool = False
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    amp: bool = True
    workers: int = Field(2, ge=0, le=64)
    seed: int = 0
    threads: int | None = Field(None, ge=1)
    log_every: int = Field(50, ge=1)
    checkpoint_every: int | None = Field(None, ge=1)
    checkpoint_dir: Path | None = None
    keep_checkpoints: int = Field(3, ge=1)
    resume: bool = False
    trim_taps: bool = False
    class_weights: Literal["none", "inverse", "sqrt_inverse"] | list[
        Annotated[float, Field(ge=0, allow_inf_nan=False)]] = "none"

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
    checkpoint: str | None = None
    backend: str = "auto"
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    tta: TTASettings = TTASettings()
    crf: CRFSettings = CRFSettings(enabled=False)
    limit: int | None = Field(None, ge=1)


class TrainConfig(_Section):
    """A training run: data, architecture, optimisation, the checkpoint to write, and how
    ``deeplab-geo evaluate dataset`` scores it."""

    data: DataSettings
    model: ModelSpec = ModelSpec()
    train: OptimSettings = OptimSettings()
    evaluate: DatasetEvalSettings = DatasetEvalSettings()
    output: Path

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
