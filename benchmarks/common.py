"""Helpers shared by the benchmark scripts: machine description and atomic result files."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
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


def run_cli(*args: str) -> tuple[float, float]:
    """Run `recsys-moe ARGS` in a fresh process from the repo root; return (seconds, peak RSS MiB).

    Peak RSS is that child's own maximum resident set (wait4; ru_maxrss is KiB on Linux)."""
    cmd = [sys.executable, "-m", "recsys_moe.cli", *args]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    secs = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"recsys-moe {' '.join(args)} failed:\n{proc.stderr.read().decode()}")
    return secs, usage.ru_maxrss / 1024.0
