"""Predictions of any saved model form on model-ready rows, behind one interface.

* a model folder (``state_dict.pt`` + ``model.json`` + ``feature_spec/``) or a Lightning
  checkpoint (``.ckpt`` inside a training run folder): torchrec model, gate weights available;
* an exported ONNX file with ``feature_spec/`` beside it: ONNX Runtime, no gate outputs (the
  graph returns predictions and the score only).

Task kinds of an ONNX model come from its output names (:func:`recsys_moe.contract.task_of_output`).
Every form also gives the ranking score: the ONNX model's own ``score`` output (its exponents
checked against the config's), or :func:`recsys_moe.contract.ranking_score` for a torch model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from recsys_moe import contract
from recsys_moe.features.spec import FeatureSpec

log = logging.getLogger(__name__)


class PredictError(ValueError):
    """A model cannot be loaded or run on the rows (torch-free, so callers can catch it without
    importing torch)."""


@dataclass
class ModelPredictions:
    tasks: dict[str, np.ndarray]
    """Task name -> prediction in user units (click probability, watch seconds)."""
    score: np.ndarray
    """The ranking score per row (see the module docstring)."""
    gates: dict[str, Any] | None = None
    """Gate summary (:meth:`GateSummary.to_json`) when the model form exposes gate weights."""


class Predictor(Protocol):
    label: str
    kind: str
    """``torch`` or ``onnx``."""
    spec: FeatureSpec
    task_kinds: dict[str, str]
    training_run_id: str | None
    cost: dict[str, Any] | None
    """What the model costs to serve (:func:`recsys_moe.models.cost.model_cost`), when known."""

    def predict(self, table: pa.Table) -> ModelPredictions: ...


@dataclass
class TorchPredictor:
    """A torchrec model in eval mode; batches of ``batch_rows`` through the training batcher."""

    label: str
    spec: FeatureSpec
    task_kinds: dict[str, str]
    training_run_id: str | None
    model: Any
    collapse_threshold: float
    exponents: dict[str, float] = field(default_factory=dict)
    cost: dict[str, Any] | None = None
    batch_rows: int = 4_096  # torch eager is fastest near 4k rows (benchmarks/bench_onnx.py)
    kind: str = field(default="torch")

    @classmethod
    def load(cls, path: str | Path, label: str | None = None, exponents: Mapping[str, float] | None = None) -> TorchPredictor:
        """``path``: a model folder, or a ``.ckpt`` (file, or a sharded run's folder) whose run
        folder holds ``model/`` (its weights with the run's calibration, which was fitted for the
        best checkpoint)."""
        import torch

        from recsys_moe.training.artifacts import ModelLoadError, load_model

        path = Path(path)
        try:
            if path.suffix == ".ckpt":
                model, spec, meta = load_model(path.parent.parent / "model")
                try:
                    if path.is_dir():  # a sharded run's checkpoint (torch.distributed.checkpoint), read whole here
                        from recsys_moe.training.sharding.checkpoint import read_model_state

                        state = read_model_state(path, model)
                    else:
                        ckpt = torch.load(path, map_location="cpu", weights_only=True)
                        state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
                    # a checkpoint is the training state: it keeps the run's calibration (model/)
                    state |= {k: v for k, v in model.state_dict().items() if k.startswith("calibration_")}
                    model.load_state_dict(state)
                except (OSError, RuntimeError, KeyError, EOFError) as exc:
                    raise ModelLoadError(f"{path}: cannot load the checkpoint's weights ({exc})") from exc
            else:
                model, spec, meta = load_model(path)
        except ModelLoadError as exc:
            raise PredictError(str(exc)) from exc
        kinds = {t.name: t.cfg.kind for t in model.tasks}
        threshold = float(meta.get("model", {}).get("gate", {}).get("collapse_threshold", 0.05))
        try:
            exps = contract.exponents_for(kinds, exponents if exponents is not None else dict.fromkeys(kinds, 1.0))
        except contract.ContractError as exc:
            raise PredictError(f"{path}: {exc}") from exc
        from recsys_moe.models.cost import model_cost

        return cls(label or str(path), spec, kinds, meta.get("mlflow_run_id"), model.eval(), threshold, exps, model_cost(model))

    def predict(self, table: pa.Table) -> ModelPredictions:
        import torch

        from recsys_moe.training.batches import ColumnarSplit, DataError
        from recsys_moe.training.gate_diagnostics import GateAccumulator

        try:
            split = ColumnarSplit(self.spec, table, self.label, ())
        except DataError as exc:
            raise PredictError(str(exc)) from exc
        names = {t.name: t.prediction_name for t in self.model.tasks}
        outs: dict[str, list[np.ndarray]] = {t: [] for t in names}
        gates = GateAccumulator()
        with torch.inference_mode():
            for start in range(0, split.num_rows, self.batch_rows):
                idx = torch.arange(start, min(start + self.batch_rows, split.num_rows))
                batch = split.batch(idx)
                out = self.model(batch.sparse, batch.dense)
                for t, key in names.items():
                    outs[t].append(out[key].float().numpy())
                if "gate_weights" in out:
                    gates.update(out["gate_weights"], out.get("dispatch_routed"), out.get("dispatch_dropped"))
        summary = gates.summary(list(names), self.collapse_threshold)
        tasks = {t: np.concatenate(v) for t, v in outs.items()}
        return ModelPredictions(tasks, contract.ranking_score(tasks, self.exponents), summary.to_json() if summary else None)


@dataclass
class OnnxPredictor:
    """An exported model on ONNX Runtime (CPU here, GPU providers when a GPU is visible)."""

    label: str
    spec: FeatureSpec
    task_kinds: dict[str, str]
    training_run_id: str | None
    session: Any
    outputs: dict[str, str]
    cost: dict[str, Any] | None = None
    batch_rows: int = 65_536
    kind: str = field(default="onnx")

    @classmethod
    def load(cls, onnx_path: str | Path, spec_dir: str | Path, label: str | None = None, providers: str = "auto",
             exponents: Mapping[str, float] | None = None, cost_path: Path | None = None) -> OnnxPredictor:
        """Open the model; with ``exponents``, refuse one whose ``score`` uses others; ``cost_path``:
        the export's cost.json."""
        from recsys_moe.serving.session import make_session

        session = make_session(onnx_path, providers)
        spec = FeatureSpec.load(spec_dir)
        outputs: dict[str, str] = {}
        kinds: dict[str, str] = {}
        for name in session.output_names:
            found = contract.task_of_output(name)
            if found is not None:
                outputs[found[0]] = name
                kinds[found[0]] = found[1]
        if contract.SCORE not in session.output_names:
            raise PredictError(f"{onnx_path}: no {contract.SCORE!r} output; re-export it with `recsys-moe export`")
        meta = session.metadata()
        if exponents is not None:
            contract.check_exponents(contract.parse_exponents(meta.get("score_exponents", ""), str(onnx_path)), exponents, str(onnx_path))
        cost = json.loads(Path(cost_path).read_text()) if cost_path is not None else None
        return cls(label or str(onnx_path), spec, kinds, meta.get("trained_run_id") or None, session, outputs, cost)

    def predict(self, table: pa.Table) -> ModelPredictions:
        from concurrent.futures import ThreadPoolExecutor

        from recsys_moe.serving.inputs import onnx_inputs

        names = [*self.outputs.values(), contract.SCORE]
        outs: dict[str, list[np.ndarray]] = {t: [] for t in [*self.outputs, contract.SCORE]}

        def inputs(start: int) -> dict[str, np.ndarray]:
            return onnx_inputs(table.slice(start, self.batch_rows), self.spec)

        # the next batch's inputs are built on a thread while ONNX Runtime scores this one
        with ThreadPoolExecutor(1, thread_name_prefix="inputs") as pool:
            pending = pool.submit(inputs, 0) if table.num_rows else None
            for start in range(0, table.num_rows, self.batch_rows):
                feeds = pending.result()
                nxt = start + self.batch_rows
                pending = pool.submit(inputs, nxt) if nxt < table.num_rows else None
                got = self.session.run(feeds, names)
                for t, arr in zip(outs, got, strict=True):
                    outs[t].append(np.asarray(arr, dtype=np.float64).reshape(-1))
        score = np.concatenate(outs.pop(contract.SCORE))
        return ModelPredictions({t: np.concatenate(v) for t, v in outs.items()}, score)
