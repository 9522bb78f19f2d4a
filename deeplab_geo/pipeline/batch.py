"""Batches of rasters: one pipeline over many inputs, resumable, one bad file at a time.

``input`` names one raster, or a batch:

* a folder: its files ending in ``.tif``, ``.tiff``, ``.jp2``, ``.img`` or ``.vrt`` (any case),
  not recursive;
* a glob pattern (``tiles/*.tif``, ``survey/**/*.tif`` for subfolders);
* a text file (``.txt``) with one raster path per line (relative paths resolve against the
  list's folder; blank lines and lines starting with ``#`` are skipped).

A single raster writes its outputs into ``output_dir`` itself. In a batch, each raster writes
into ``output_dir/<path relative to the batch's common folder, without suffix>/``, so inputs
that share a name in different folders never overwrite each other, and names never leave
``output_dir``.

``output_dir/manifest.json`` records every finished input (its config hash, the input's size
and modification time, its outputs); a rerun skips those unless ``--force``, so an interrupted
batch (Ctrl-C, ``kill``, a crash) resumes where it stopped. Outputs are published atomically
per input (see :func:`deeplab_geo.raster.io.staged_outputs`), so an interrupted input leaves only a
hidden staging folder, which the next run removes; the final outputs are the same as an
uninterrupted run's. A failing input, whatever the exception (Ctrl-C and ``kill`` aside), is
recorded with one line (an unexpected exception's traceback goes to
``output_dir/deeplab-geo.log``), nothing of it is left, and the batch goes on; the command exits
non-zero when any input failed, and a rerun retries it. One run at a time may
write into an output directory (a lock on the folder).

With ``batch.merge``, ``output_dir/merged.gpkg`` gathers every input's polygons with a
``source`` field (the input's path relative to the batch's common folder), in the CRS of the
first input; polygons of inputs in another CRS are reprojected into it.
"""

from __future__ import annotations

import fcntl
import glob
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from deeplab_geo.config import PipelineConfig, updated
from deeplab_geo.errors import DeepLabGeoError, InputError, OutputError
from deeplab_geo.files import atomic_path, write_atomic
from deeplab_geo.pipeline.fingerprint import config_hash, file_stamp
from deeplab_geo.raster.io import STAGING_PREFIX, writing

log = logging.getLogger(__name__)

RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".img", ".vrt")
MANIFEST = "manifest.json"
MERGED = "merged.gpkg"
_MANIFEST_FORMAT = "deeplab-geo-manifest/1"


@dataclass(frozen=True)
class BatchItem:
    """One input of a batch and the folder its outputs go to.

    ``key`` names it in reports (its output folder relative to ``output_dir``); ``source`` is
    its path relative to the batch's common folder (the ``source`` field of merged polygons).
    """

    path: Path
    output_dir: Path
    key: str
    source: str


@dataclass
class ItemOutcome:
    item: BatchItem
    status: str  # "done", "skipped" or "failed"
    seconds: float = 0.0
    error: str | None = None
    outputs: dict[str, Path] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class BatchResult:
    outcomes: list[ItemOutcome]
    batch: bool
    merged: Path | None = None

    @property
    def failed(self) -> list[ItemOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


def is_batch(spec: Path | str) -> bool:
    """Whether an ``input`` names a batch (folder, glob or list) rather than one raster (a URL
    is one raster or STAC Item)."""
    if isinstance(spec, str):
        return False
    return spec.is_dir() or spec.suffix.lower() == ".txt" or glob.has_magic(str(spec))


def resolve_inputs(spec: Path | str) -> list[Path | str]:
    """The rasters an ``input`` names, sorted, as absolute paths (a URL as it is).

    Raises:
        InputError: a folder, pattern or list that names no raster; a list that names a missing
            file.
    """
    if isinstance(spec, str):
        return [spec]
    if spec.suffix.lower() == ".txt" and spec.is_file():
        paths = []
        for number, line in enumerate(spec.read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            path = (spec.parent / line).resolve()
            if not path.is_file():
                raise InputError(f"{spec}:{number}: {line} not found; fix the list")
            paths.append(path)
    elif spec.is_dir():
        paths = [p for p in spec.iterdir() if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES]
    elif glob.has_magic(str(spec)):
        paths = [Path(p) for p in glob.glob(str(spec), recursive=True) if Path(p).is_file()]
    else:
        return [spec.resolve()]
    if not paths:
        raise InputError(f"{spec}: names no raster; check the folder, pattern or list")
    return sorted({p.resolve() for p in paths})


def plan(inputs: list[Path | str], output_dir: Path, *, batch: bool) -> list[BatchItem]:
    """Where each input's outputs go (pure; see the module docstring)."""
    if not batch:
        name = inputs[0].name if isinstance(inputs[0], Path) else str(inputs[0])
        return [BatchItem(inputs[0], output_dir, name, name)]
    root = Path(os.path.commonpath([p.parent for p in inputs]))
    items: list[BatchItem] = []
    taken: set[str] = set()
    for path in inputs:
        relative = path.relative_to(root)
        key = relative.with_suffix("").as_posix()
        if key in taken:  # x.tif beside x.jp2: keep the suffix in the second's folder name
            key = relative.as_posix()
        taken.add(key)
        items.append(BatchItem(path, output_dir / key, key, relative.as_posix()))
    return items


class Manifest:
    """``manifest.json`` of an output directory, rewritten atomically after every change."""

    def __init__(self, output_dir: Path) -> None:
        self.path = output_dir / MANIFEST
        self._lock = threading.Lock()
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                self.entries = dict(data["inputs"])
            except (ValueError, KeyError, TypeError):
                raise OutputError(f"{self.path}: not a deeplab-geo manifest; move it away or "
                                  "choose another output_dir") from None

    def finished(self, item: BatchItem, digest: str) -> bool:
        """Whether ``item`` is done with this config and input, and its outputs still exist."""
        entry = self.entries.get(str(item.path))
        if not entry or entry.get("status") != "done" or entry.get("config_hash") != digest:
            return False
        if entry.get("input") != file_stamp(item.path):
            return False
        root = self.path.parent
        return all((root / rel).exists() for rel in entry.get("outputs", {}).values())

    def record(self, item: BatchItem, outcome: ItemOutcome, digest: str) -> None:
        root = self.path.parent
        entry: dict[str, Any] = {
            "status": outcome.status, "key": item.key, "config_hash": digest,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(outcome.seconds, 2),
        }
        if outcome.status == "done":
            entry["input"] = file_stamp(item.path)
            entry["outputs"] = {k: p.relative_to(root).as_posix()
                                for k, p in outcome.outputs.items()}
        else:
            entry["error"] = outcome.error
        with self._lock, writing(root):
            self.entries[str(item.path)] = entry
            data = {"format": _MANIFEST_FORMAT, "inputs": self.entries}
            write_atomic(self.path, json.dumps(data, indent=2) + "\n", fixed=True)


@contextmanager
def locked_output_dir(output_dir: Path, folders: list[Path] | None = None) -> Iterator[None]:
    """Create (if needed) and lock ``output_dir`` for this run.

    Staging folders left in ``output_dir`` and ``folders`` by an earlier run that was killed
    are removed.

    A folder this run created is removed again if the run leaves it empty.

    Raises:
        OutputError: the folder cannot be created, or another run holds it.
    """
    created = not output_dir.exists()
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        handle = os.open(output_dir, os.O_RDONLY)
    except OSError as exc:
        raise OutputError(f"{output_dir}: cannot create output directory ({exc.strerror}); "
                          "choose a writable output_dir") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(f"{output_dir}: another deeplab-geo run is writing here; wait "
                              "for it or choose another output_dir") from None
        for folder in {output_dir, *(folders or [])}:
            for stale in folder.glob(f"{STAGING_PREFIX}*"):
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
        yield
    finally:
        os.close(handle)
        if created and output_dir.is_dir() and not any(output_dir.iterdir()):
            output_dir.rmdir()


OnOutcome = Callable[[int, int, ItemOutcome], None]
LOG = "deeplab-geo.log"


def failure_line(exc: Exception, item: BatchItem, output_dir: Path) -> str:
    """One line for an input's failure in a batch. A library error is its own message; any
    other exception (a bug, an exhausted resource) is named by type and first line, and its
    traceback is appended to ``output_dir/deeplab-geo.log``."""
    if isinstance(exc, DeepLabGeoError):
        log.debug("%s failed: %s", item.key, exc)
        return str(exc)
    import traceback

    path = output_dir / LOG
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    text = "".join(traceback.format_exception(exc))
    try:
        with writing(output_dir), open(path, "a", encoding="utf-8") as stream:
            stream.write(f"{stamp} {item.key}\n{text}\n")
        where = f"traceback in {path}"
    except OutputError:
        where = "no room to write its traceback"
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"unexpected {type(exc).__name__}: {first} ({where})"


def run_batch(config: PipelineConfig, *, force: bool = False,
              progress: Callable[[int], Any] | None = None, on_outcome: OnOutcome | None = None,
              on_plan: Callable[[Any], None] | None = None) -> BatchResult:
    """Run ``config`` over every raster its ``input`` names (see the module docstring).

    Args:
        config: a validated pipeline.
        force: redo inputs the manifest records as finished.
        progress: tile progress factory for each input (see
            :func:`~deeplab_geo.pipeline.runner.run`); used only when inputs run one at a time.
        on_outcome: called with ``(index, total, outcome)`` as each input ends.
        on_plan: given to :func:`~deeplab_geo.pipeline.runner.run` for each input.

    Raises:
        DeepLabGeoError: for a single raster, its error (nothing is written); for a batch,
            only errors that stop the whole batch (no input matched, output directory).
    """
    batch = is_batch(config.input)
    items = plan(resolve_inputs(config.input), config.output_dir, batch=batch)
    digest = config_hash(config)
    with locked_output_dir(config.output_dir, [item.output_dir for item in items]):
        manifest = Manifest(config.output_dir)
        parallel = min(config.batch.parallel, len(items))

        def process(index: int, item: BatchItem) -> ItemOutcome:
            if not force and manifest.finished(item, digest):
                outcome = ItemOutcome(item, "skipped")
            else:
                outcome = _run_item(config, item, batch,
                                    progress=progress if parallel == 1 else None,
                                    on_plan=on_plan)
                if batch or outcome.status == "done":
                    manifest.record(item, outcome, digest)
            if on_outcome is not None:
                on_outcome(index, len(items), outcome)
            return outcome

        if parallel == 1:
            outcomes = [process(i, item) for i, item in enumerate(items)]
        else:
            with ThreadPoolExecutor(parallel) as pool:
                outcomes = list(pool.map(process, range(len(items)), items))
        merged = None
        if config.batch.merge and config.vectorize.enabled:
            merged = merge_polygons(config.output_dir, manifest, items)
    return BatchResult(outcomes, batch, merged)


def _run_item(config: PipelineConfig, item: BatchItem, batch: bool, *,
              progress: Callable[[int], Any] | None, on_plan: Callable[[Any], None] | None
              ) -> ItemOutcome:
    """Run one input; in a batch, any failure is its outcome (see :func:`failure_line`), and a
    folder made for it is removed again."""
    from deeplab_geo.pipeline.runner import run

    started = time.perf_counter()
    fresh = not item.output_dir.exists()
    try:
        result = run(updated(config, {"input": item.path, "output_dir": item.output_dir}),
                     progress=progress, on_plan=on_plan)
    except Exception as exc:  # noqa: BLE001 - a batch isolates each input's failure
        if not batch:
            raise
        if fresh and item.output_dir.is_dir() and not any(item.output_dir.iterdir()):
            item.output_dir.rmdir()
        return ItemOutcome(item, "failed", time.perf_counter() - started,
                           error=failure_line(exc, item, config.output_dir))
    return ItemOutcome(item, "done", time.perf_counter() - started, outputs=result.outputs,
                       report=result.report)


def merge_polygons(output_dir: Path, manifest: Manifest, items: list[BatchItem]) -> Path | None:
    """Write ``merged.gpkg``: the polygons of every finished input of ``items``, in order.

    Read one input at a time (all its layers), written by appending; atomic (temporary file,
    then rename).
    """
    import pyogrio

    done = [(item, manifest.entries.get(str(item.path), {})) for item in items]
    sources = [(item, output_dir / entry["outputs"]["polygons"]) for item, entry in done
               if entry.get("status") == "done" and "polygons" in entry.get("outputs", {})]
    if not sources:
        return None
    final = output_dir / MERGED
    crs = None
    with atomic_path(final, fixed=True) as tmp:
        for item, path in sources:
            for layer, _ in pyogrio.list_layers(path):
                frame = pyogrio.read_dataframe(path, layer=layer)
                if crs is None:
                    crs = frame.crs
                elif frame.crs is not None and frame.crs != crs:
                    log.info("merged.gpkg: %s reprojected into the first input's CRS", item.key)
                    frame = frame.to_crs(crs)
                frame["source"] = item.source
                pyogrio.write_dataframe(frame, tmp, layer="polygons", driver="GPKG",
                                        append=tmp.exists(), SPATIAL_INDEX="YES")
    return final
