"""Helpers shared by subcommands: error reporting and option parsing."""

from __future__ import annotations

import functools
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import click
import yaml

from deeplab_geo.errors import ConfigError, DeepLabGeoError


def reports_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into a one-line message on stderr and the error's exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = _terminate_as_interrupt()
        try:
            return func(*args, **kwargs)
        except DeepLabGeoError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted; outputs of unfinished inputs were not written (a rerun "
                       "resumes).", err=True)
            sys.exit(130)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper


def _terminate_as_interrupt() -> Any:
    """Make SIGTERM (``kill``) unwind like Ctrl-C, so staging folders are cleaned up.

    Returns the previous handler, or ``None`` outside the main thread (where signals cannot be
    handled).
    """
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


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


def show_log_messages() -> None:
    """Print the library's informational messages (e.g. the dask dashboard link) on stderr."""
    logger = logging.getLogger("deeplab_geo")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def tqdm_progress(unit: str) -> Callable[[int], Any]:
    """A progress factory for :func:`deeplab_geo.pipeline.run`: tiles done, rate, ETA."""
    from tqdm import tqdm

    return lambda total: tqdm(total=total, unit=unit, dynamic_ncols=True, file=sys.stderr)


class JsonProgress:
    """Progress as one JSON object per line on stderr, for programs that run the CLI.

    Each line reads ``{"progress": {"done": 3, "total": 25, "unit": "tile"}}``; the QGIS
    plugin turns these into its progress bar.
    """

    def __init__(self, total: int, unit: str) -> None:
        self.total, self.unit, self.done = total, unit, 0
        self._emit()

    def update(self, n: int = 1) -> None:
        self.done += n
        self._emit()

    def close(self) -> None:
        pass

    def _emit(self) -> None:
        line = {"progress": {"done": self.done, "total": self.total, "unit": self.unit}}
        click.echo(json.dumps(line), err=True)


PROGRESS_STYLES = ("bar", "json", "none")


def progress_factory(style: str, unit: str) -> Callable[[int], Any] | None:
    """The progress factory for ``--progress bar|json|none``."""
    if style == "bar":
        return tqdm_progress(unit)
    if style == "json":
        return lambda total: JsonProgress(total, unit)
    return None


def progress_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--progress bar|json|none`` (and ``--quiet``, the same as ``--progress none``)."""
    func = click.option("--quiet", is_flag=True, help="No progress output (= --progress none).")(
        func)
    return click.option("--progress", "progress_style", type=click.Choice(PROGRESS_STYLES),
                        default="bar", show_default=True,
                        help="Progress on stderr: a bar, JSON lines for programs, or none.")(func)
