"""Find and run the ``deeplab-geo`` command line, streaming its progress into QGIS.

The CLI runs with ``--progress json``: each stderr line ``{"progress": {"done": d, "total": t,
"unit": "tile"}}`` moves the progress bar, a line ``{"plan": {...}, "text": "Plan: ..."}`` puts
its text in the log as information; every other stderr line is a message from the CLI and is
reported verbatim. Cancelling stops the whole process group of the CLI. The CLI gets this
process's id in ``DEEPLAB_GEO_PARENT_PID`` and ends itself, and its helper processes, when this
process dies (QGIS or ``qgis_process`` killed).
"""

import json
import os
import queue
import shlex
import shutil
import signal
import subprocess
import threading

from qgis.core import QgsProcessingException

ENV_VAR = "DEEPLAB_GEO_EXECUTABLE"
PARENT_PID_VAR = "DEEPLAB_GEO_PARENT_PID"
EXECUTABLE_SETTING = "DEEPLAB_GEO_EXECUTABLE"
DEFAULT_EXECUTABLE = "deeplab-geo"

# Variables QGIS sets for its own Python, GDAL and PROJ; the CLI's environment brings its own.
_QGIS_ONLY_VARIABLES = ("PYTHONHOME", "PYTHONPATH", "GDAL_DATA", "GDAL_DRIVER_PATH", "PROJ_LIB",
                        "PROJ_DATA")
_POLL_SECONDS = 0.1
_TERMINATE_GRACE_SECONDS = 10


def find_executable(setting_value, environ=None):
    """The ``deeplab-geo`` program to run.

    Order: the provider setting, then the ``DEEPLAB_GEO_EXECUTABLE`` environment variable, then
    ``deeplab-geo`` on ``PATH``.

    Args:
        setting_value: the provider setting (``None`` or blank when unset).
        environ: environment to read; ``os.environ`` by default.

    Raises:
        QgsProcessingException: nothing configured is an executable file, or none is on PATH.
    """
    environ = os.environ if environ is None else environ
    candidates = [("the provider setting 'deeplab-geo executable'", setting_value),
                  (f"${ENV_VAR}", environ.get(ENV_VAR))]
    for source, value in candidates:
        value = (value or "").strip()
        if value:
            found = shutil.which(os.path.expanduser(value), path=environ.get("PATH"))
            if found is None:
                raise QgsProcessingException(
                    f"deeplab-geo executable {value!r} (from {source}) is not an executable "
                    "file; point it at the deeplab-geo program of the environment where "
                    "deeplab-geo is installed, e.g. /path/to/.venv/bin/deeplab-geo")
            return found
    found = shutil.which(DEFAULT_EXECUTABLE, path=environ.get("PATH"))
    if found is None:
        raise QgsProcessingException(
            "deeplab-geo executable not found: set 'deeplab-geo executable' under Settings > "
            "Options > Processing > Providers > deeplab-geo, or the environment variable "
            f"{ENV_VAR}, to the deeplab-geo program of its environment "
            "(e.g. /path/to/.venv/bin/deeplab-geo)")
    return found


def child_environment(environ=None):
    """The environment for the CLI: QGIS's own Python, GDAL and PROJ variables removed, and
    this process's id in ``DEEPLAB_GEO_PARENT_PID`` (the CLI ends when this process does)."""
    env = dict(os.environ if environ is None else environ)
    for name in _QGIS_ONLY_VARIABLES:
        env.pop(name, None)
    env[PARENT_PID_VAR] = str(os.getpid())
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def parse_progress(line):
    """``(done, total)`` from a ``--progress json`` line, or ``None`` for any other line."""
    try:
        progress = _json_object(line)["progress"]
        return int(progress["done"]), int(progress["total"])
    except (ValueError, KeyError, TypeError):
        return None


def parse_plan(line):
    """The text of a plan line, ``{"plan": {...}, "text": "Plan: ..."}``, or ``None`` for any
    other line."""
    message = _json_object(line) or {}
    text = message.get("text")
    return text if "plan" in message and isinstance(text, str) else None


def _json_object(line):
    """The JSON object on ``line``, or ``None``."""
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def run_cli(executable, args, feedback, *, cwd, progress_span=(0.0, 100.0)):
    """Run ``executable args... --progress json`` to completion, or until cancelled.

    Args:
        executable: the program, from :func:`find_executable`.
        args: arguments after the program name (a subcommand and its options).
        feedback: the algorithm's ``QgsProcessingFeedback``; ``None`` runs silently.
        cwd: working directory of the CLI.
        progress_span: the part of the progress bar (percent) the CLI's progress fills.

    Returns:
        The CLI's stdout lines.

    Raises:
        QgsProcessingException: the run was cancelled (the process group is terminated), or
            the CLI failed; then the message is the CLI's error line, verbatim.
    """
    command = [executable, *args, "--progress", "json"]
    if feedback is not None:
        feedback.pushCommandInfo(" ".join(shlex.quote(part) for part in command))
    try:
        process = subprocess.Popen(
            command, cwd=cwd, env=child_environment(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8", errors="replace",
            start_new_session=(os.name == "posix"))
    except OSError as exc:
        raise QgsProcessingException(f"cannot start {executable}: {exc.strerror}") from None
    lines = queue.Queue()
    readers = [threading.Thread(target=_read_lines, args=(stream, name, lines), daemon=True)
               for stream, name in ((process.stdout, "stdout"), (process.stderr, "stderr"))]
    for reader in readers:
        reader.start()
    stdout, messages = [], []
    try:
        open_streams = len(readers)
        while open_streams:
            if feedback is not None and feedback.isCanceled():
                _terminate(process)
                raise QgsProcessingException(
                    "Cancelled: deeplab-geo was stopped and no outputs were written.")
            try:
                name, line = lines.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                continue
            if line is None:
                open_streams -= 1
            elif name == "stdout":
                stdout.append(line)
            else:
                _handle_stderr(line, feedback, progress_span, messages)
        returncode = process.wait()
    finally:
        if process.poll() is None:
            _terminate(process)
        for reader in readers:
            reader.join(timeout=_TERMINATE_GRACE_SECONDS)
        process.stdout.close()
        process.stderr.close()
    if returncode != 0:
        raise QgsProcessingException(_failure_message(messages, returncode))
    return stdout


def _read_lines(stream, name, lines):
    for line in stream:
        lines.put((name, line.rstrip("\r\n")))
    lines.put((name, None))


def _handle_stderr(line, feedback, progress_span, messages):
    progress = parse_progress(line)
    if progress is not None:
        done, total = progress
        if feedback is not None and total > 0:
            low, high = progress_span
            feedback.setProgress(low + (high - low) * min(done, total) / total)
        return
    plan = parse_plan(line)
    if plan is not None:
        if feedback is not None:
            feedback.pushInfo(plan)
        return
    if line.strip():
        messages.append(line)
        if feedback is not None:
            feedback.reportError(line)


def _failure_message(messages, returncode):
    errors = [m for m in messages if m.startswith("Error:")]
    if errors:
        return errors[-1]
    if messages:
        return messages[-1]
    return f"deeplab-geo exited with status {returncode} and no message"


def _terminate(process):
    """Stop the CLI and everything it started (dask threads, the CRF process pool)."""
    _signal(process, signal.SIGTERM)
    try:
        process.wait(timeout=_TERMINATE_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        _signal(process, signal.SIGKILL if os.name == "posix" else signal.SIGTERM)
        process.wait()


def _signal(process, signum):
    try:
        if os.name == "posix":
            os.killpg(process.pid, signum)
        else:
            process.terminate()
    except ProcessLookupError:
        pass
