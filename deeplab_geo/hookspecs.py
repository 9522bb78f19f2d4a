"""The public plugin contract of deeplab-geo.

Plugins are Python modules (or objects) with functions marked ``@hookimpl``; they are found
through the ``deeplab_geo`` entry-point group, exactly like the built-in torch backend::

    # pyproject.toml of a plugin package
    [project.entry-points.deeplab_geo]
    mybackend = "my_package.backend"

A backend is any object with (typed as :class:`Backend`):

* ``name`` (str): the value users put in ``model.backend``;
* ``description`` (str): one line shown by ``deeplab-geo backends``;
* ``load(checkpoint, *, device) -> Predictor``: load a model once (per process);
* ``auto_priority`` (optional, ``dict[str, int]``): how much this backend should be preferred
  by ``model.backend: auto`` on each device type (``"cpu"``, ``"cuda"``); the highest wins, and a
  backend without an entry for the device is never picked automatically;
* ``release()`` (optional): forget the models ``load`` keeps (:func:`deeplab_geo.shutdown`
  calls it).

A predictor is any object with (typed as :class:`Predictor`):

* ``info`` (:class:`deeplab_geo.models.checkpoint.ModelInfo`): classes, colours, bands;
* ``predict(tiles) -> probabilities``: ``tiles`` is a float32 array ``(B, bands, H, W)`` of raw
  pixel values (the predictor normalises them); the result is a float32 array
  ``(B, num_classes, H, W)`` of class probabilities that sum to 1 over the class axis.

Helpers for predictors: :func:`checked_tiles` (the shape check and dtype every backend needs)
and :func:`normalized_tiles` (that, normalised as the checkpoint's metadata says, for backends
that compute in NumPy; :meth:`~deeplab_geo.checkpoints.ModelInfo.input_statistics` gives the
mean and std for those that normalise on a device themselves).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import pluggy

if TYPE_CHECKING:
    import numpy as np

    from deeplab_geo.models.checkpoint import ModelInfo


@runtime_checkable
class Predictor(Protocol):
    """A loaded model (see the module docstring)."""

    info: ModelInfo

    def predict(self, tiles: np.ndarray) -> np.ndarray:
        """``(B, bands, H, W)`` float32 raw pixels to ``(B, classes, H, W)`` probabilities."""
        ...


@runtime_checkable
class Backend(Protocol):
    """A way to run models (see the module docstring); ``auto_priority`` is optional."""

    name: str
    description: str

    def load(self, checkpoint: str, *, device: str = "auto") -> Predictor:
        """Load a model once per process and return its predictor."""
        ...


def checked_tiles(tiles: np.ndarray, info: ModelInfo) -> np.ndarray:
    """``tiles`` as a C-contiguous float32 ``(B, bands, H, W)`` array.

    Raises:
        BackendError: not four axes, or not the model's band count.
    """
    import numpy as np

    from deeplab_geo.errors import BackendError

    if tiles.ndim != 4 or tiles.shape[1] != info.in_channels:
        raise BackendError(f"expected tiles of shape (B, {info.in_channels}, H, W), "
                           f"got {tiles.shape}")
    return np.ascontiguousarray(tiles, dtype=np.float32)


def normalized_tiles(tiles: np.ndarray, info: ModelInfo) -> np.ndarray:
    """:func:`checked_tiles`, normalised: ``(tiles - mean) / std`` per band, float32."""
    mean, std = info.input_statistics()
    return (checked_tiles(tiles, info) - mean) / std


hookspec = pluggy.HookspecMarker("deeplab_geo")
hookimpl = pluggy.HookimplMarker("deeplab_geo")


@hookspec
def register_backends():
    """Return a list of backend objects this plugin provides.

    Called once when the plugin manager is built (:func:`deeplab_geo.plugins.get_plugin_manager`).
    Backend names must be unique across all plugins.
    """
