"""Export a trained model to ONNX through its twin, check the graph and check parity.

The export is accepted only when the graph has no control-flow or sequence ops and ONNX Runtime
agrees with the original torchrec model on held-out rows: probabilities within ``1e-5``
(absolute), seconds and scores within ``1e-5`` relative. The file is written to a temporary
name and renamed into place only after both checks pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pyarrow as pa
import torch

from recsys_moe import contract
from recsys_moe.atomic import replacing
from recsys_moe.export.twin import OnnxTwin
from recsys_moe.features.spec import FeatureSpec
from recsys_moe.models import MultiTaskModel
from recsys_moe.serving.inputs import onnx_inputs
from recsys_moe.training.batches import ColumnarSplit

OPSET = 18
FORBIDDEN_OPS = {"Loop", "Scan", "If"}  # plus every Sequence* op


class ExportError(RuntimeError):
    """The export failed a check; nothing was written at the target path."""


@dataclass
class ParityReport:
    rows: int
    max_abs_diff: dict[str, float]
    tolerance: dict[str, str]
    worst_rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    passed: bool = True

    def summary(self) -> str:
        parts = [f"{k}: max |diff| {v:.2e} ({self.tolerance[k]})" for k, v in self.max_abs_diff.items()]
        return f"parity on {self.rows:,} rows {'passed' if self.passed else 'FAILED'}: " + "; ".join(parts)


def graph_ops(path: str | Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


def forbidden_ops(ops: set[str]) -> set[str]:
    return {op for op in ops if op in FORBIDDEN_OPS or op.startswith("Sequence") or op.endswith("Sequence")}


def _export(twin: OnnxTwin, example: dict[str, np.ndarray], path: Path, opset: int) -> None:
    args = tuple(torch.from_numpy(example[name]) for name in twin.input_names)
    batch = torch.export.Dim("batch", min=1)
    dynamic = ({0: batch}, tuple({0: batch} for _ in args[1:]))
    program = torch.onnx.export(
        twin, args, dynamo=True, input_names=twin.input_names, output_names=twin.output_names,
        dynamic_shapes=dynamic, opset_version=opset, verbose=False,
    )
    program.save(str(path))


def _set_metadata(path: Path, meta: dict[str, str]) -> None:
    """Replace the model's metadata with ``meta``; drop the exporter's per-node debug metadata
    (source scopes and FX node text), which is most of a small model's file."""
    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
    del model.metadata_props[:]
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, str(v)
    onnx.save(model, str(path))


def check_parity(model: MultiTaskModel, spec: FeatureSpec, onnx_path: str | Path, rows: pa.Table,
                 atol: float = 1e-5, rtol: float = 1e-5, providers: list[str] | None = None) -> ParityReport:
    """Compare ONNX Runtime on ``rows`` (model-ready Arrow) with the original torchrec model."""
    import onnxruntime as ort

    split = ColumnarSplit(spec, rows, "parity rows", label_columns=())
    with torch.no_grad():
        ref = model.eval()(*_sparse_dense(split))
    session = ort.InferenceSession(str(onnx_path), providers=providers or ["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, onnx_inputs(rows, spec)), strict=True))
    ids = rows.column("impression_id").to_numpy() if "impression_id" in rows.column_names else np.arange(rows.num_rows)
    report = ParityReport(rows=rows.num_rows, max_abs_diff={}, tolerance={})
    for task in model.tasks:
        name = task.prediction_name
        want = ref[name].numpy().astype(np.float64)
        diff = np.abs(got[name].astype(np.float64) - want)
        is_prob = task.cfg.kind == contract.BINARY
        limit = np.full_like(want, atol) if is_prob else atol + rtol * np.abs(want)
        report.tolerance[name] = f"<= {atol:g}" if is_prob else f"<= {atol:g} + {rtol:g} x |value|"
        report.max_abs_diff[name] = float(diff.max(initial=0.0))
        bad = diff > limit
        if bad.any():
            report.passed = False
            worst = np.argsort(-diff)[:5]
            report.worst_rows[name] = [{"row": int(i), "impression_id": int(ids[i]), "torch": float(want[i]),
                                        "onnx": float(got[name][i])} for i in worst]
    return report


def _sparse_dense(split: ColumnarSplit):
    batch = split.batch(torch.arange(split.num_rows))
    return batch.sparse, batch.dense


def export_onnx(
    model: MultiTaskModel, spec: FeatureSpec, path: str | Path, parity_rows: pa.Table,
    metadata: dict[str, str] | None = None, score_exponents: dict[str, float] | None = None, opset: int = OPSET,
) -> tuple[Path, ParityReport]:
    """Export, check ops and parity, then move the file to ``path``; raise :class:`ExportError`."""
    path = Path(path)
    model = model.eval()
    twin = OnnxTwin(model, spec, score_exponents).eval()
    example = onnx_inputs(parity_rows.slice(0, min(parity_rows.num_rows, 64)), spec)
    with replacing(path) as tmp:
        _export(twin, example, tmp, opset)
        bad = forbidden_ops(graph_ops(tmp))
        if bad:
            raise ExportError(f"the ONNX graph has control-flow or sequence ops {sorted(bad)}; it would be slow and TensorRT cannot run it")
        _set_metadata(tmp, {
            "spec_hash": spec.content_hash, "features_hash": spec.features_hash, "opset": str(opset),
            "outputs": ",".join(twin.output_names), "inputs": ",".join(twin.input_names),
            "score_exponents": contract.format_exponents(dict(zip(model.task_names, twin.exponents, strict=True))),
            **(metadata or {}),
        })
        report = check_parity(model, spec, tmp, parity_rows)
        if not report.passed:
            raise ExportError(f"{report.summary()}; worst rows: {report.worst_rows}")
    return path, report


def export_int8(fp32_path: str | Path, path: str | Path, granularity: str = "row") -> tuple[Path, dict[str, tuple[int, int]]]:
    """The INT8 serving copy of an exported float32 model: its embedding tables row-wise INT8
    (:mod:`recsys_moe.export.quantize`; ``granularity``: a scale per ``row`` or per ``table``),
    everything else unchanged, metadata ``precision=int8``.
    No parity check here (INT8 cannot meet 1e-5): the caller runs the quality gate of
    :mod:`recsys_moe.export.quality` before keeping the file. Returns the path and the quantised
    tables' shapes."""
    from recsys_moe.export.quantize import quantize_tables

    path = Path(path)
    model = onnx.load(str(fp32_path))
    tables = quantize_tables(model, granularity)
    if not tables:
        raise ExportError(f"{fp32_path}: no embedding table of width 16 or more to quantise; an INT8 copy would save nothing")
    with replacing(path) as tmp:
        onnx.save(model, str(tmp))
        bad = forbidden_ops(graph_ops(tmp))
        if bad:
            raise ExportError(f"the INT8 graph has control-flow or sequence ops {sorted(bad)}")
        _set_metadata(tmp, {**read_metadata(fp32_path), "precision": "int8", "int8_scales": f"per {granularity}",
                            "int8_tables": ",".join(f"{t}={v}x{d}" for t, (v, d) in tables.items())})
    return path, tables


def read_metadata(path: str | Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


FP16_TOLERANCE = 2e-3


def export_fp16(model: MultiTaskModel, spec: FeatureSpec, fp32_path: str | Path, path: str | Path, parity_rows: pa.Table,
                tolerance: float = FP16_TOLERANCE) -> tuple[Path, ParityReport]:
    """A float16 copy of an exported fp32 graph for GPU serving (inputs and outputs stay int64 /
    float32), accepted only when ONNX Runtime on it agrees with the fp32 torchrec model within
    ``tolerance``: absolute on probabilities, relative on seconds and scores. The check runs on the
    provider serving would use (CUDA on a GPU machine, else CPU, where fp16 is slower)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from recsys_moe.serving.session import choose_providers

    path = Path(path)
    with replacing(path) as tmp:
        fp16 = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
        meta = {p.key: p.value for p in fp16.metadata_props}
        onnx.save(fp16, str(tmp))
        _set_metadata(tmp, {**meta, "precision": "fp16"})
        report = check_parity(model, spec, tmp, parity_rows, atol=tolerance, rtol=tolerance, providers=choose_providers("auto"))
        if not report.passed:
            raise ExportError(f"fp16 {report.summary()}; worst rows: {report.worst_rows}")
    return path, report
