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
