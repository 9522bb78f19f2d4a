"""Plugin manager: built-in plugins and those installed under the ``deeplab_geo`` entry points."""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Any

import pluggy

from deeplab_geo import hookspecs
from deeplab_geo.devices import resolve_device
from deeplab_geo.errors import BackendError
from deeplab_geo.hookspecs import Backend, Predictor

ENTRY_POINT_GROUP = "deeplab_geo"

# Built-in plugins, registered under the same names as their entry points, so that a source
# checkout that is not pip-installed still has them and entry points do not register them twice.
DEFAULT_PLUGINS = {"torch": "deeplab_geo.backends.torch_backend"}


@functools.cache
def get_plugin_manager() -> pluggy.PluginManager:
    """The process's plugin manager: hookspecs, built-in plugins and installed plugins.

    Built on first use, not at import. Tests and applications may ``register`` more plugins on
    it (and ``unregister`` them afterwards).
    """
    pm = pluggy.PluginManager("deeplab_geo")
    pm.add_hookspecs(hookspecs)
    for name, module in DEFAULT_PLUGINS.items():
        pm.register(importlib.import_module(module), name=name)
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    return pm


@dataclass(frozen=True)
class RegisteredBackend:
    """A backend and the plugin that provided it."""

    backend: Backend
    plugin: str
    source: str


def registered_backends(pm: pluggy.PluginManager | None = None) -> dict[str, RegisteredBackend]:
    """All backends by name, with the plugin (and distribution) that registered each."""
    pm = pm or get_plugin_manager()
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    found: dict[str, RegisteredBackend] = {}
    for impl in reversed(pm.hook.register_backends.get_hookimpls()):
        plugin_name = pm.get_name(impl.plugin) or repr(impl.plugin)
        dist = dists.get(id(impl.plugin))
        source = f"{dist.project_name} {dist.version}" if dist else "built-in"
        for backend in impl.function() or []:
            if not isinstance(backend, Backend):
                raise BackendError(
                    f"plugin {plugin_name} registers {backend!r}, which is not a backend: it "
                    "needs name, description and load() (see deeplab_geo.hookspecs.Backend)")
            if backend.name in found:
                raise BackendError(
                    f"backend '{backend.name}' is registered by both "
                    f"{found[backend.name].plugin} and {plugin_name}; uninstall one")
            found[backend.name] = RegisteredBackend(backend, plugin_name, source)
    return found


AUTO = "auto"


def device_type(device: str) -> str:
    """``"cuda"`` or ``"cpu"`` for a ``model.device`` value (``auto``: CUDA when usable)."""
    return (resolve_device(AUTO) if device == AUTO else device).split(":", 1)[0]


def choose_backend(name: str, device: str, pm: pluggy.PluginManager | None = None) -> str:
    """The backend a run uses: ``name`` itself, or for ``auto`` the registered backend with the
    highest ``auto_priority`` for the device type (ties go to the name that sorts first).

    Raises:
        BackendError: ``name`` is not registered, or no backend offers itself for the device.
    """
    backends = registered_backends(pm)
    if name != AUTO:
        get_backend(name, pm)
        return name
    kind = device_type(device)
    ranked = sorted((-priority, backend_name) for backend_name, entry in backends.items()
                    if (priority := getattr(entry.backend, "auto_priority", {}).get(kind))
                    is not None)
    if not ranked:
        raise BackendError(f"no registered backend offers itself for device '{kind}' under "
                           "model.backend: auto; name a backend (see `deeplab-geo backends`)")
    return ranked[0][1]


def get_backend(name: str, pm: pluggy.PluginManager | None = None) -> Backend:
    """The backend registered as ``name``.

    Raises:
        BackendError: no such backend; the message lists the registered ones.
    """
    backends = registered_backends(pm)
    if name not in backends:
        raise BackendError(
            f"no backend named '{name}'; registered: {', '.join(sorted(backends))} "
            "(install the plugin that provides it)")
    return backends[name].backend


def load_model(backend: str, checkpoint: str, device: str,
               metadata: dict[str, Any] | None = None, pm: pluggy.PluginManager | None = None,
               precision: str = "auto") -> Predictor:
    """``get_backend(backend).load(checkpoint, device=device)``, passing ``metadata`` (the
    pipeline's ``model.metadata``) and ``precision`` (``model.precision``, unless ``auto``) to
    backends that take them. A backend that takes no precision runs fp32 on the CPU, so
    ``fp32`` is asked of it as ``auto``.

    Raises:
        BackendError: no such backend, or metadata or a precision for a backend that takes
            none.
    """
    loader = get_backend(backend, pm).load
    options: dict[str, Any] = {"metadata": metadata} if metadata else {}
    if precision != "auto":
        options["precision"] = precision
    try:
        return loader(checkpoint, device=device, **options)
    except TypeError as exc:
        if "metadata" in str(exc):
            raise BackendError(f"backend '{backend}' takes no model.metadata (only foreign "
                               "models on the onnx and openvino backends do); remove it") from None
        if "precision" not in str(exc):
            raise
        if precision == "fp32":
            options.pop("precision")
            return loader(checkpoint, device=device, **options)
        raise BackendError(f"backend '{backend}' runs fp32 only; use model.precision fp32 or "
                           "auto, or model.backend: openvino for bf16") from None
