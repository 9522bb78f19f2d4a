"""What every configuration schema shares: the section base class, typed fields (devices,
paths that resolve against the YAML file's folder), safe YAML loading, dotted-key overrides and
one-line error messages."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypeVar, get_args

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo

from deeplab_geo.errors import ConfigError

Device = Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")]
"""Where something runs: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""

_BASE = "base"  # the validation context's key: the folder relative paths resolve against


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False,
                              use_attribute_docstrings=True)


def is_url(value: Any) -> bool:
    """Whether an ``input`` is a URL (kept as text: a path would fold its ``//``)."""
    return isinstance(value, str) and value.lower().startswith(("http://", "https://"))


def _resolved(value: str | Path, base: Path) -> str | Path:
    """``value`` resolved against ``base``, unless it is a ``builtin:`` name or a URL."""
    text = str(value)
    if text.startswith("builtin:") or is_url(text):
        return value
    resolved = (base / text).resolve()
    return resolved if isinstance(value, Path) else str(resolved)


def _in_context(value: Any, info: ValidationInfo) -> Any:
    base = (info.context or {}).get(_BASE)
    return value if base is None or value is None else _resolved(value, base)


_RESOLVE = AfterValidator(_in_context)

ConfigPath = Annotated[Path, _RESOLVE]
"""A path; relative ones resolve against the folder of the YAML file it was read from."""

CheckpointRef = Annotated[str, _RESOLVE]
"""A checkpoint: ``builtin:<name>``, or a path that resolves like :data:`ConfigPath`."""


_Model = TypeVar("_Model", bound=BaseModel)


def load_yaml_config(path: str | Path, schema: type[_Model],
                     overrides: dict[str, Any] | None = None) -> _Model:
    """Read a YAML file safely and validate it against ``schema``.

    Path fields (:data:`ConfigPath`, :data:`CheckpointRef`) resolve against the YAML file's
    folder, through the validation context; ``builtin:`` checkpoints and URLs are left as they
    are. Relative paths in ``overrides`` resolve against the working directory.
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
    data = with_overrides(schema, data, overrides or {}, Path.cwd())
    return validate(schema, data, str(path), path.parent.resolve(), overrides)


def top_keys(path: str | Path) -> set[str]:
    """The top-level keys of a YAML mapping file (empty where it is none), to tell a pipeline
    from a training config in messages."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return set()
    return set(data) if isinstance(data, dict) else set()


def with_overrides(schema: type[BaseModel], data: dict[str, Any], overrides: dict[str, Any],
                   base: Path | None) -> dict[str, Any]:
    """``data`` with dotted-key ``overrides`` set; relative paths among them made absolute
    against ``base`` (``None``: left as they are)."""
    data = dict(data)
    for dotted, value in overrides.items():
        if isinstance(value, (str, Path)) and base is not None \
                and _is_path_field(_field_at(schema, dotted, data)):
            value = _resolved(value, base)
        elif isinstance(value, Path):
            value = str(value)
        set_dotted(data, dotted, value)
    return data


def updated(config: _Model, changes: dict[str, Any]) -> _Model:
    """A copy of ``config`` with dotted-key ``changes`` (``{"crf.enabled": False}``), validated
    again as a whole (unlike ``model_copy(update=...)``, which skips validation).

    Raises:
        ConfigError: the changed config does not validate.
    """
    # Only what was set, so that the copy knows which keys a user gave (defaults stay defaults).
    data = with_overrides(type(config), config.model_dump(exclude_unset=True), changes, None)
    return validate(type(config), data, "changed configuration")


def validate(schema: type[_Model], data: dict[str, Any], source: str,
              base: Path | None = None, overrides: dict[str, Any] | None = None) -> _Model:
    """``data`` validated against ``schema`` (relative paths resolved against ``base`` where
    given), or a one-line :class:`ConfigError` naming ``source`` and the key; or naming the
    ``--set`` that gave the key, where one of ``overrides`` did."""
    try:
        return schema.model_validate(data, context={_BASE: base} if base is not None else None)
    except ValidationError as exc:
        key = ".".join(str(p) for p in _without_union_tags(schema, exc.errors()[0]["loc"]))
        given = [k for k in overrides or {} if key == k or key.startswith(k + ".")
                 or k.startswith(key + ".")]
        if given:
            source = f"--set {given[0]}={overrides[given[0]]}"
        raise ConfigError(f"{source}: {_describe(schema, exc)}") from None


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


def _field_at(schema: type[BaseModel], dotted: str, data: dict[str, Any]) -> Any:
    """The field a dotted key names (``None`` where no field has that name)."""
    *parents, leaf = dotted.split(".")
    model: type[BaseModel] | None = schema
    node: Any = data
    for part in parents:
        field = model.model_fields.get(part) if model is not None else None
        node = node.get(part) if isinstance(node, dict) else None
        model = _section_model(field.annotation, node) if field is not None else None
    return model.model_fields.get(leaf) if model is not None else None


def _is_path_field(field: Any) -> bool:
    """Whether a field holds a path that resolves (:data:`ConfigPath`, :data:`CheckpointRef`,
    alone or in a union)."""
    if field is None:
        return False
    markers = list(field.metadata)
    for member in get_args(field.annotation):
        markers += getattr(member, "__metadata__", ())
    return _RESOLVE in markers


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
    got = err.get("ctx", {}).get("tag") if kind == "union_tag_invalid" else err.get("input")
    shown = repr(got)
    return f"{key}: {err['msg']} (got {shown if len(shown) <= 60 else shown[:57] + '...'})"


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
