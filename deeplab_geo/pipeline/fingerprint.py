"""Fingerprints of runs: what a batch's manifest and the plan's speed measurements are keyed by
(no pipeline module is imported here, so both may use it)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import deeplab_geo
from deeplab_geo.checkpoints import metadata_path, resolve
from deeplab_geo.config import PipelineConfig

# keys that change where or how fast a run happens, not what it produces
_NOT_HASHED = ("input", "output_dir", "execution", "cluster", "batch")


def config_hash(config: PipelineConfig) -> str:
    """A hash of everything that decides a run's outputs, not its paths: the settings, the
    package version, and the checkpoint's weights and metadata files (size and modification
    time; built-in checkpoints included, so a changed model is never mistaken for the old)."""
    settings = json.loads(config.model_dump_json(exclude=set(_NOT_HASHED)))
    weights = resolve(config.model.checkpoint)
    settings["checkpoint_files"] = [file_stamp(path) if path.exists() else None
                                    for path in (weights, metadata_path(weights))]
    settings["version"] = deeplab_geo.__version__
    text = json.dumps(settings, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_stamp(path: Path | str) -> list[int] | str:
    """A file's size and modification time (a URL as it is: nothing to stat)."""
    if isinstance(path, str):
        return path
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]
