"""The one error tree of deeplab-geo.

Every error the library raises on purpose derives from :class:`DeepLabGeoError`. Leaves also
subclass the builtin they refine, so callers may catch ``ValueError`` or ``OSError`` as usual.
Messages are one line: what is wrong, and how to fix it. The CLI prints them and exits non-zero.
"""


class DeepLabGeoError(Exception):
    """Root of all deeplab-geo errors."""

    exit_code = 1


class ConfigError(DeepLabGeoError, ValueError):
    """A pipeline file or option is invalid (unknown key, wrong type, out-of-range value)."""

    exit_code = 2


class InputError(DeepLabGeoError, ValueError):
    """An input file is missing or unusable (not a raster, wrong band count, no CRS...)."""

    exit_code = 2


class RasterReadError(InputError, OSError):
    """A raster could not be opened or read (missing, corrupt, truncated)."""


class CheckpointError(DeepLabGeoError, ValueError):
    """A model checkpoint is missing, unsafe, or does not match its declared architecture."""

    exit_code = 2


class BackendError(DeepLabGeoError, LookupError):
    """No backend of that name is registered, or a backend failed to load a model."""

    exit_code = 2


class OutputError(DeepLabGeoError, OSError):
    """An output could not be written (directory not writable, path outside output_dir)."""

    exit_code = 3


class ClusterError(DeepLabGeoError, ConnectionError):
    """A dask.distributed cluster could not be reached or started."""

    exit_code = 4


class DatasetError(DeepLabGeoError, ValueError):
    """A training or evaluation dataset is missing files, empty, or holds unusable labels."""

    exit_code = 2


class WorkerError(DeepLabGeoError, RuntimeError):
    """A helper process (CRF, vectorizing) died twice on the same work, e.g. killed by the
    out-of-memory killer."""
