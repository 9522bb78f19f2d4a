"""The training schema: what ``deeplab-geo train`` reads (data, architecture, optimisation,
the checkpoint written) and how ``deeplab-geo evaluate dataset`` scores the result."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, model_validator

from deeplab_geo.config.base import (
    CheckpointRef,
    ConfigPath,
    Device,
    _Section,
    load_yaml_config,
    top_keys,
    validate,
    with_overrides,
)
from deeplab_geo.config.pipeline import CRFSettings, TTASettings
from deeplab_geo.errors import ConfigError


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
    root: ConfigPath
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
    root: ConfigPath
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
    raster: ConfigPath
    """The image raster."""
    labels: ConfigPath
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
    init: CheckpointRef | None = None
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
    checkpoint_dir: ConfigPath | None = None
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
    checkpoint: CheckpointRef | None = None
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
    output: ConfigPath
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

    output: ConfigPath | None = None  # type: ignore[assignment]
    """The trained checkpoint; may be left out when ``evaluate.checkpoint`` names the model."""


def load_train_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read and validate a training YAML file (paths relative to its folder).

    Raises:
        ConfigError: as :func:`~deeplab_geo.config.base.load_yaml_config`; a pipeline file
            given instead is named as such.
    """
    try:
        return load_yaml_config(path, TrainConfig, overrides)
    except ConfigError:
        if top_keys(path) >= {"input", "output_dir"} and not is_training_config(path):
            raise ConfigError(f"{path}: a pipeline for `deeplab-geo run`, not a training config "
                              "(it has no data section); give a training config such as "
                              "pipelines/train_chips_demo.yaml") from None
        raise


def load_dataset_eval_config(path: str | Path | None,
                             overrides: dict[str, Any] | None = None) -> DatasetEvalConfig:
    """A dataset evaluation from a training YAML, or from ``overrides`` alone when ``path`` is
    ``None`` (relative paths in overrides are taken as they are)."""
    if path is not None:
        return load_yaml_config(path, DatasetEvalConfig, overrides)
    data = with_overrides(DatasetEvalConfig, {}, overrides or {}, None)
    return validate(DatasetEvalConfig, data, "evaluate dataset")


def is_training_config(path: str | Path) -> bool:
    """Whether a YAML file is a training config (it has ``data``) rather than a pipeline."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and "data" in data
