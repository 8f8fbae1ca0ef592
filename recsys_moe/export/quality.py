"""The quality gate a smaller serving copy (INT8, pruned experts) must pass against the float32
export: not parity to 1e-5, which a compressed model cannot meet, but the metrics a user ranks
by, on the labelled validation split.

Per binary task: AUC of both models and the drop (at most ``export.max_auc_drop``), and the mean
and largest absolute difference of the probabilities. Per watch-time task: Spearman of both and
the drop (at most ``export.max_spearman_drop``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from recsys_moe import contract
from recsys_moe.features.spec import FeatureSpec
from recsys_moe.metrics.functions import auc, spearman
from recsys_moe.serving.inputs import onnx_inputs
from recsys_moe.serving.session import make_session


@dataclass
class QualityReport:
    what: str
    """``int8`` or ``pruned``."""
    rows: int
    tasks: dict[str, dict[str, float]] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        parts = []
        for t, m in self.tasks.items():
            if "auc_drop" in m:
                parts.append(f"{t} AUC {m['auc_reference']:.5f} -> {m['auc']:.5f} (drop {m['auc_drop']:+.5f}), "
                             f"|delta p| mean {m['mean_abs_diff']:.2e} max {m['max_abs_diff']:.2e}")
            else:
                parts.append(f"{t} Spearman {m['spearman_reference']:.5f} -> {m['spearman']:.5f} (drop {m['spearman_drop']:+.5f})")
        verdict = "passed" if self.passed else "FAILED: " + "; ".join(self.failed)
        return f"{self.what} quality gate on {self.rows:,} validation rows {verdict}. " + "; ".join(parts)

    def failures(self, max_auc_drop: float, max_spearman_drop: float) -> list[str]:
        """The limits these figures break, one line each (the gate's verdict for other limits)."""
        out = []
        for task, m in self.tasks.items():
            if "auc_drop" in m and m["auc_drop"] > max_auc_drop:
                out.append(f"{task} AUC drops by {m['auc_drop']:.5f} (at most {max_auc_drop:g})")
            if "spearman_drop" in m and m["spearman_drop"] > max_spearman_drop:
                out.append(f"{task} Spearman drops by {m['spearman_drop']:.5f} (at most {max_spearman_drop:g})")
        return out

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def _predict(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = make_session(path, providers="cpu")
    return dict(zip(session.output_names, session.run(feeds), strict=True))


def quality_gate(reference: str | Path, candidate: str | Path, spec: FeatureSpec, rows: pa.Table, what: str,
                 max_auc_drop: float, max_spearman_drop: float) -> QualityReport:
    """Score ``rows`` (model-ready, with labels) with both ONNX models and compare."""
    feeds = onnx_inputs(rows, spec)
    ref, got = _predict(Path(reference), feeds), _predict(Path(candidate), feeds)
    report = QualityReport(what, rows.num_rows)
    for name in ref:
        found = contract.task_of_output(name)
        if found is None:
            continue
        task, kind = found
        label = np.asarray(rows.column(contract.label_column(kind)).combine_chunks(), dtype=np.float64)
        a, b = ref[name].astype(np.float64), got[name].astype(np.float64)
        if kind == contract.BINARY:
            m = {"auc_reference": auc(a, label), "auc": auc(b, label)}
            m["auc_drop"] = m["auc_reference"] - m["auc"]
            diff = np.abs(a - b)
            m["mean_abs_diff"], m["max_abs_diff"] = float(diff.mean()), float(diff.max())
        else:
            m = {"spearman_reference": spearman(a, label), "spearman": spearman(b, label)}
            m["spearman_drop"] = m["spearman_reference"] - m["spearman"]
        report.tasks[task] = m
    report.failed = report.failures(max_auc_drop, max_spearman_drop)
    return report
