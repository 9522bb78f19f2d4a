"""Measuring a command in a fresh process: wall time, the peak RSS of its largest process and
of its whole process tree (helper processes included)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Measured:
    wall_s: float
    peak_rss_mb: float  # the largest process (``ru_maxrss`` of the child and its waited children)
    tree_rss_mb: float  # summed RSS of the process and its descendants, sampled every 50 ms
    returncode: int
    stderr: str
    stdout: str = ""


def measure(args: list[str], env: dict[str, str] | None = None) -> Measured:
    """Run ``args`` and measure it (see :class:`Measured`); its output is kept."""
    started = time.perf_counter()
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    tree_peak = [0.0]
    sampler = threading.Thread(target=_sample_tree_rss, args=(process, tree_peak), daemon=True)
    sampler.start()
    streams: dict[str, bytes] = {}
    readers = [threading.Thread(target=lambda n=n, f=f: streams.update({n: f.read()}),
                                daemon=True)
               for n, f in (("out", process.stdout), ("err", process.stderr))]
    for reader in readers:
        reader.start()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    sampler.join()
    for reader in readers:
        reader.join()
    return Measured(wall, usage.ru_maxrss / 1024, tree_peak[0], process.returncode,
                    streams["err"].decode(errors="replace"),
                    streams["out"].decode(errors="replace"))


def _sample_tree_rss(process: subprocess.Popen, peak: list[float]) -> None:
    while process.returncode is None and Path(f"/proc/{process.pid}").exists():
        total, stack = 0, [process.pid]
        while stack:
            pid = stack.pop()
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                total += next(int(line.split()[1]) for line in status.splitlines()
                              if line.startswith("VmRSS:"))
                for task in Path(f"/proc/{pid}/task").iterdir():
                    stack += [int(c) for c in (task / "children").read_text().split()]
            except (OSError, StopIteration, ValueError):
                continue
        peak[0] = max(peak[0], total / 1024)
        time.sleep(0.05)
