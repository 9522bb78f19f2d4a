"""Configuration: YAML files validated into typed, immutable settings.

Two schemas: pipelines (:mod:`deeplab_geo.config.pipeline`, what ``deeplab-geo run`` reads) and
training runs (:mod:`deeplab_geo.config.train`); what they share (typed fields, loading,
overrides, error messages) is :mod:`deeplab_geo.config.base`. Every name is importable from
here.

Relative paths in a file resolve against the folder that holds the YAML file (through the
validation context), so a pipeline runs the same from any working directory. A changed copy of
a config is made with :func:`updated`, which validates it again. A checkpoint may also name a
model shipped with the package as ``builtin:<name>`` (see :mod:`deeplab_geo.models.checkpoint`).

Unknown keys, wrong types and out-of-range values raise :class:`~deeplab_geo.errors.ConfigError`
with a one-line message naming the key.
"""

from __future__ import annotations

from typing import Any

from deeplab_geo.config.base import (
    CheckpointRef,
    ConfigPath,
    Device,
    is_url,
    load_yaml_config,
    set_dotted,
    updated,
    validate,
    with_overrides,
)
from deeplab_geo.config.pipeline import (
    BatchSettings,
    ClusterSettings,
    CRFSettings,
    ExecutionSettings,
    InputSettings,
    ModelSettings,
    OutputSettings,
    PipelineConfig,
    TilingSettings,
    TTASettings,
    VectorizeSettings,
    load_pipeline,
    validate_pipeline,
)
from deeplab_geo.config.train import (
    ChipsDataSettings,
    CityscapesDataSettings,
    DatasetEvalConfig,
    DatasetEvalSettings,
    DataSettings,
    ModelSpec,
    OptimSettings,
    SyntheticDataSettings,
    TrainConfig,
    VOCDataSettings,
    is_training_config,
    load_dataset_eval_config,
    load_train_config,
)

__all__ = [
    "BatchSettings", "CRFSettings", "CheckpointRef", "ChipsDataSettings",
    "CityscapesDataSettings", "ClusterSettings", "ConfigPath", "DataSettings",
    "DatasetEvalConfig", "DatasetEvalSettings", "Device", "ExecutionSettings", "InputSettings",
    "ModelSettings", "ModelSpec", "OptimSettings", "OutputSettings", "PipelineConfig",
    "SyntheticDataSettings", "TTASettings", "TilingSettings", "TrainConfig", "VOCDataSettings",
    "VectorizeSettings", "is_training_config", "is_url", "json_schema", "load_dataset_eval_config",
    "load_pipeline", "load_train_config", "load_yaml_config", "set_dotted", "updated",
    "validate", "validate_pipeline", "with_overrides",
]


def json_schema(kind: str = "pipeline") -> dict[str, Any]:
    """The JSON Schema of pipeline (``"pipeline"``) or training (``"train"``) YAML files, with
    each key's type, default, range and description (from the schema's docstrings)."""
    schema = (PipelineConfig if kind == "pipeline" else TrainConfig).model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = f"deeplab-geo {kind}"
    return schema
