"""Helpers shared by the benchmark scripts: machine description and atomic result files."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}"


def has_ray() -> bool:
    """Whether the optional Ray extra is installed (the benchmarks' Ray columns need it)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def write_results(path: Path, payload: dict) -> None:
    """Write benchmark JSON atomically (temp file, then rename) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)
    print(f"wrote {path}")


# A child forked from this (often large) benchmark process inherits its resident-set high-water
# mark: Linux keeps ru_maxrss across fork and exec, so a plain Popen + wait4 reports at least the
# parent's RSS. A small launcher process in between is forked fresh, and its own child's figure is
# the command's alone.
LAUNCHER = (
    "import os, subprocess, sys\n"
    "p = subprocess.Popen(sys.argv[1:])\n"
    "_, status, usage = os.wait4(p.pid, 0)\n"
    "sys.stderr.write(f'\\nRECSYS_MAXRSS_KB={usage.ru_maxrss}\\nRECSYS_CPU_S={usage.ru_utime + usage.ru_stime}\\n')\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


@dataclass(frozen=True)
class CliRun:
    """One command's wall seconds, peak resident set (MiB) and CPU seconds (user + system, all
    its threads)."""

    seconds: float
    peak_rss_mib: float
    cpu_s: float
    stderr: str = ""


def run_cli(*args: str) -> CliRun:
    """Run `recsys-moe ARGS` in a fresh process from the repo root and measure it.

    Peak RSS is the command's own maximum resident set (ru_maxrss, KiB on Linux) and CPU its own
    rusage, both measured through a launcher so that the benchmark's own figures do not leak into
    them (see LAUNCHER)."""
    cmd = [sys.executable, "-c", LAUNCHER, sys.executable, "-m", "recsys_moe.cli", *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    secs = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"recsys-moe {' '.join(args)} failed:\n{proc.stderr}")
    tagged = dict(line.split("=", 1) for line in proc.stderr.splitlines() if line.startswith("RECSYS_") and "=" in line)
    return CliRun(secs, int(tagged["RECSYS_MAXRSS_KB"]) / 1024.0, float(tagged["RECSYS_CPU_S"]), proc.stderr)


def _tree(root: int) -> list[int]:
    """``root`` and every process below it, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def _rss_and_cpu(pid: int) -> tuple[int, float] | None:
    """(resident KiB, CPU seconds so far) of one process, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            rss = next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return rss, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def run_cli_tree(*args: str, interval_s: float = 0.2) -> CliRun:
    """Like :func:`run_cli`, for commands that start other processes (Ray's head, raylet and
    workers): peak RSS is the largest sum of the resident sets of the command and every process
    below it, sampled every ``interval_s``; CPU is the sum over those processes of the last CPU
    time seen (a process's final fraction of a sample interval is missed)."""
    cmd = [sys.executable, "-m", "recsys_moe.cli", *args]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak_kib, cpu = 0, {}
    stderr_chunks: list[str] = []
    import threading

    reader = threading.Thread(target=lambda: stderr_chunks.append(proc.stderr.read()), daemon=True)
    reader.start()
    while proc.poll() is None:
        total = 0
        for pid in _tree(proc.pid):
            seen = _rss_and_cpu(pid)
            if seen is not None:
                total += seen[0]
                cpu[pid] = seen[1]
        peak_kib = max(peak_kib, total)
        time.sleep(interval_s)
    secs = time.perf_counter() - start
    reader.join()
    stderr = "".join(stderr_chunks)
    if proc.returncode != 0:
        raise SystemExit(f"recsys-moe {' '.join(args)} failed:\n{stderr[-4000:]}")
    return CliRun(secs, peak_kib / 1024.0, sum(cpu.values()), stderr)
