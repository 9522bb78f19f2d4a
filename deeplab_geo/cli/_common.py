"""Helpers shared by subcommands: error reporting and option parsing."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click
import yaml

from deeplab_geo.errors import ConfigError, DeepLabGeoError


def reports_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into a one-line message on stderr and the error's exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DeepLabGeoError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted; no outputs were written.", err=True)
            sys.exit(130)

    return wrapper


def parse_overrides(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``("crf.enabled=false", ...)`` to ``{"crf.enabled": False}``; values are YAML scalars."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set crf.enabled=false")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--set {pair!r}: value is not a valid YAML scalar") from None
    return overrides


def tqdm_progress(unit: str) -> Callable[[int], Any]:
    """A progress factory for :func:`deeplab_geo.pipeline.run`: tiles done, rate, ETA."""
    from tqdm import tqdm

    return lambda total: tqdm(total=total, unit=unit, dynamic_ncols=True, file=sys.stderr)
