"""Helpers shared by subcommands: error reporting and option parsing."""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
            with _native_messages_held() as drop:
                try:
                    return func(*args, **kwargs)
                except DeepLabGeoError:
                    drop()
                    raise
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


@contextmanager
def _native_messages_held() -> Iterator[Callable[[], None]]:
    """Hold what C libraries (GDAL, libtiff, SQLite) print on the process's stderr while a
    command runs, and show it afterwards, unless the command calls the yielded ``drop()``
    because it reports the failure in one line of its own (a full disk makes GDAL print
    several). Python's own stderr (progress, messages) goes to the terminal as usual.
    """
    try:
        sys.stderr.flush()
        python_on_fd2 = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        python_on_fd2 = False
    dropped = []
    held = tempfile.TemporaryFile()
    terminal = os.dup(2)
    os.dup2(held.fileno(), 2)
    previous = sys.stderr
    if python_on_fd2:
        sys.stderr = open(os.dup(terminal), "w", buffering=1, encoding=previous.encoding,
                          errors=previous.errors)
    try:
        yield lambda: dropped.append(True)
    finally:
        if python_on_fd2:
            sys.stderr.close()
            sys.stderr = previous
        os.dup2(terminal, 2)
        os.close(terminal)
        held.seek(0)
        messages = held.read()
        held.close()
        if messages and not dropped:
            sys.stderr.flush()
            os.write(2, messages)


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
    """A progress factory for :func:`deeplab_geo.pipeline.runner.run`: tiles done, rate, ETA. On a
    terminal a bar; elsewhere (CI logs, files) plain lines (:class:`LineProgress`)."""
    if not _is_terminal(sys.stderr):
        return lambda total: LineProgress(total, unit)
    from tqdm import tqdm

    return lambda total: tqdm(total=total, unit=unit, dynamic_ncols=True, file=sys.stderr)


def _is_terminal(stream: Any) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class LineProgress:
    """Progress as plain lines on stderr, at most one every ``every`` seconds and at the end:
    ``tiles 120/2025 (5.9%), 3.1 tile/s, 10:15 left``. No carriage returns: logs stay
    readable."""

    def __init__(self, total: int, unit: str, every: float = 10.0) -> None:
        import time

        self.total, self.unit, self.done, self.every = total, unit, 0, every
        self._clock = time.monotonic
        self._started = self._last = self._clock()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = self._clock()
        if now - self._last >= self.every or self.done >= self.total:
            self._last = now
            click.echo(self.line(now - self._started), err=True)

    def line(self, elapsed: float) -> str:
        rate = self.done / elapsed if elapsed > 0 else 0.0
        share = 100.0 * self.done / self.total if self.total else 100.0
        text = f"{self.unit}s {self.done}/{self.total} ({share:.1f}%), {rate:.1f} {self.unit}/s"
        if 0 < self.done < self.total and rate > 0:
            left = int((self.total - self.done) / rate)
            text += f", {left // 60}:{left % 60:02d} left"
        return text

    def close(self) -> None:
        pass


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


def plan_printer(style: str) -> Callable[[Any], None] | None:
    """What prints a run's plan before its tiles (see :mod:`deeplab_geo.pipeline.planning`):
    its one line on stderr, or for ``--progress json`` a JSON object ``{"plan": {...}, "text":
    "Plan: ..."}`` on one line (the QGIS plugin shows its text in the log); nothing with
    ``none``."""
    if style == "none":
        return None
    if style == "json":
        return lambda plan: click.echo(json.dumps({"plan": plan.report(), "text": plan.text()}),
                                       err=True)
    return lambda plan: click.echo(plan.text(), err=True)


def progress_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--progress bar|json|none`` (and ``--quiet``, the same as ``--progress none``)."""
    func = click.option("--quiet", is_flag=True, help="No progress output (= --progress none).")(
        func)
    return click.option("--progress", "progress_style", type=click.Choice(PROGRESS_STYLES),
                        default="bar", show_default=True,
                        help="Progress on stderr: a bar, JSON lines for programs, or none.")(func)
