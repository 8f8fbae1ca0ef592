"""ONNX Runtime session factory: TensorRT -> CUDA -> CPU by availability, with CPU threading.

``onnxruntime-gpu`` lists the TensorRT and CUDA providers even on machines without a GPU and then
fails to load them noisily, so GPU providers are only asked for when a GPU is visible
(``nvidia-smi -L`` lists one). The provider that actually runs is logged and returned.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

GPU_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
CPU = "CPUExecutionProvider"
SHORT = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider", "cpu": CPU}


class ModelFileError(ValueError):
    """The ONNX file is missing or ONNX Runtime cannot load it."""


@functools.cache
def gpu_visible() -> bool:
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return False
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def choose_providers(requested: str = "auto") -> list[str]:
    """``auto``: TensorRT and CUDA (when built in and a GPU is visible), then CPU. Or one of
    ``tensorrt``, ``cuda``, ``cpu`` (CPU is always kept last as the fallback)."""
    available = ort.get_available_providers()
    if requested != "auto":
        if requested not in SHORT:
            raise ValueError(f"provider {requested!r}: choose auto, tensorrt, cuda or cpu")
        wanted = SHORT[requested]
        if wanted not in available:
            raise ValueError(f"provider {requested!r} is not built into this onnxruntime ({available})")
        return [wanted] if wanted == CPU else [wanted, CPU]
    gpu = [p for p in GPU_ORDER if p in available] if gpu_visible() else []
    return [*gpu, CPU]


GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


CPU_CHUNK_ROWS = 2048
"""Rows per ONNX Runtime call on CPU, where the session's threads each run their own chunks."""


def parallel_chunk_rows(rows: int, workers: int, chunk_rows: int = CPU_CHUNK_ROWS) -> int:
    """Rows per chunk when ``rows`` are spread over ``workers`` threads: at most ``chunk_rows``,
    and small enough that every worker gets rows, even on a small batch."""
    return min(chunk_rows, -(-rows // workers))


@dataclass
class Session:
    session: ort.InferenceSession
    provider: str
    path: Path
    io_binding: bool = False
    """Run through an IOBinding: inputs copied to the provider's device once, outputs bound to host
    memory. On by default on GPU providers (see :func:`make_session`)."""
    workers: int = 1
    """Row chunks run concurrently on this many threads (CPU, single-threaded runs; see
    :func:`make_session`)."""
    _pool: ThreadPoolExecutor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.workers > 1:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="onnxruntime")

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def run(self, feeds: dict[str, np.ndarray], names: list[str] | None = None, chunk_rows: int | None = None) -> list[np.ndarray]:
        """Outputs for ``feeds``, computed in row chunks of at most ``chunk_rows`` (default: 2,048
        on CPU, where the chunks run ``workers`` at a time, each single-threaded; 8,192 otherwise).
        Rows are independent, so chunking changes no value."""
        rows = next(iter(feeds.values())).shape[0]
        if self._pool is not None:
            size = parallel_chunk_rows(rows, self.workers, chunk_rows or CPU_CHUNK_ROWS)
        else:
            size = chunk_rows or 8192
        if rows <= size:
            return self._run(feeds, names)
        chunks = [{k: v[i: i + size] for k, v in feeds.items()} for i in range(0, rows, size)]
        if self._pool is not None:
            parts = list(self._pool.map(lambda chunk: self._run(chunk, names), chunks))
        else:
            parts = [self._run(chunk, names) for chunk in chunks]
        return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]

    def _run(self, feeds: dict[str, np.ndarray], names: list[str] | None) -> list[np.ndarray]:
        if not self.io_binding:
            return self.session.run(names, feeds)
        device = "cuda" if self.provider in GPU_PROVIDERS else "cpu"
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), device, 0))
        for name in names or self.output_names:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()


def make_session(
    path: str | Path, providers: str = "auto", threads: int | None = None, io_binding: bool | None = None,
    spin: bool = True, parallel_chunks: bool = True,
) -> Session:
    """Open ``path`` with graph optimisation at its highest level.

    On CPU, ``threads`` (default: the machine's cores) is how many cores ONNX Runtime uses. With
    ``parallel_chunks`` (the default) each run is single-threaded and :meth:`Session.run` runs row
    chunks of 2,048 on that many threads at once: faster on this model than one run at a time
    spread over the cores by ONNX Runtime's intra-op threads, whose small ops (gathers, concats,
    reductions on a few floats per row) pay more in synchronisation than they gain (measured in
    docs/design.md). Without it, runs take one batch at a time on ``threads`` intra-op threads, and
    ``spin=False`` stops idle intra-op threads from busy-waiting between runs and ops (better when
    other work shares the cores). GPU providers run one batch at a time through an IOBinding."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: ONNX model not found")
    cores = threads or os.cpu_count() or 1
    chosen = choose_providers(providers)
    on_cpu = chosen[0] == CPU
    workers = cores if on_cpu and parallel_chunks and cores > 1 else 1
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = 1 if workers > 1 else cores
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(path), opts, providers=chosen)
    except Exception as exc:  # onnxruntime raises its own untyped errors for unreadable models
        raise ModelFileError(f"{path}: ONNX Runtime cannot load it ({exc})") from exc
    running = session.get_providers()[0]
    log.info("ONNX Runtime runs %s on %s (asked for %s; %d concurrent run(s))", path.name, running, chosen, workers)
    return Session(session, running, path, running in GPU_PROVIDERS if io_binding is None else io_binding, workers)
