"""Smaller serving copies: row-wise INT8 tables, expert pruning, their quality gate, the cost."""

import json

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import torch

from recsys_moe.config import ModelConfig, TasksConfig
from recsys_moe.export import quantize
from recsys_moe.export.bundle import export_bundle
from recsys_moe.export.onnx_export import graph_ops, read_metadata
from recsys_moe.export.prune import expert_usage, experts_to_prune, pruned_copy
from recsys_moe.models import build_model
from recsys_moe.models.cost import model_cost, table_bytes
from recsys_moe.pipelines.batch_scoring import run as score
from recsys_moe.training.artifacts import load_model, save_model
from recsys_moe.training.batches import ColumnarSplit
from recsys_moe.training.train import train
from tests.conftest import one_epoch

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("granularity", ["row", "table"])
def test_int8_rows_are_within_one_step_of_float32(granularity):
    rng = np.random.default_rng(0)
    w = (rng.normal(size=(500, 24)) * np.logspace(-3, 1, 500)[:, None]).astype(np.float32)  # rows on very different scales
    w[7] = 0.25  # a constant row
    w[9] = 0.0  # the padding row
    q, scale = quantize.quantize_rows(w, granularity)
    assert q.dtype == np.int8 and scale.shape == ((500,) if granularity == "row" else ())
    err = np.abs(quantize.dequantize_rows(q, scale) - w)
    step = scale[:, None] if granularity == "row" else scale
    assert (err <= step / 2 + 1e-7).all() and (err[9] == 0).all()
    if granularity == "row":  # every row keeps its own precision, the small ones too
        assert (err.max(1) / np.abs(w).max(1).clip(1e-12)).max() < 0.005


@pytest.fixture(scope="module")
def trained(small_features, tmp_path_factory):
    cfg, spec = small_features
    cfg = one_epoch(cfg)
    tmp = tmp_path_factory.mktemp("compress")
    return cfg, spec, train(cfg, output_dir=tmp / "run", progress=False, evaluate_test=False), tmp


def test_int8_copy_passes_the_gate_and_scores_with_the_same_columns(trained, tmp_path):
    cfg, spec, result, _ = trained
    bundle = export_bundle(cfg, model_dir=result.model_dir, output=tmp_path / "export", register=False, int8=True)
    assert bundle.int8_path is not None and bundle.int8_quality.passed, bundle.int8_quality.summary()
    meta = read_metadata(bundle.int8_path)
    assert meta["precision"] == "int8" and meta["int8_scales"] == "per row" and "item=" in meta["int8_tables"]
    assert read_metadata(bundle.int8_path)["spec_hash"] == spec.content_hash
    assert "Loop" not in graph_ops(bundle.int8_path)
    q = bundle.int8_quality.tasks
    assert abs(q["ctr"]["auc_drop"]) <= 0.001 and q["ctr"]["max_abs_diff"] < 0.05
    compression = json.loads((tmp_path / "export" / "compression.json").read_text())
    assert compression["int8"]["bytes"]["int8"] < compression["int8"]["bytes"]["fp32"]
    day = cfg.data.raw_dir / "impressions" / "date=2024-01-04"
    fp32 = score(cfg, str(bundle.onnx_path), day, tmp_path / "s32")
    int8 = score(cfg, str(bundle.int8_path), day, tmp_path / "s8")
    a, b = pl.read_parquet(tmp_path / "s32/*.parquet"), pl.read_parquet(tmp_path / "s8/*.parquet")
    assert a.columns == b.columns and a.height == b.height == fp32.rows == int8.rows
    assert np.abs(a["probs_ctr"].to_numpy() - b["probs_ctr"].to_numpy()).max() < 0.05


def test_an_int8_copy_that_fails_the_gate_is_not_written(trained, tmp_path, monkeypatch):
    cfg, _, result, _ = trained
    monkeypatch.setattr(quantize, "LEVELS", 1)  # three levels per row (-1, 0, 1): far too coarse
    bundle = export_bundle(cfg, model_dir=result.model_dir, output=tmp_path / "export", register=False, int8=True)
    assert bundle.int8_path is None and not bundle.int8_quality.passed
    assert not (tmp_path / "export" / "model.int8.onnx").exists() and (tmp_path / "export" / "model.onnx").is_file()
    note = next(n for n in bundle.notes if n.startswith("no INT8 copy written"))
    assert "FAILED" in note and "drops by" in note and "(at most 0.00" in note  # AUC or Spearman, whichever fell


def test_pruning_an_expert_no_gate_uses_changes_nothing(small_features):
    cfg, spec = small_features
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_experts=4), TasksConfig(), spec).eval()
    with torch.no_grad():  # expert 2 gets no weight from any task
        bias = model.body.gates.logits.bias.view(2, 4)
        bias[:, 2] = -1e4
    rows = pq.read_table(cfg.experiment.work_dir / "features/data/validation")
    usage = expert_usage(model, spec, rows)
    assert usage.shape == (2, 4) and usage[:, 2].max() < 1e-9
    assert experts_to_prune(usage, 0.01) == [2]
    pruned = pruned_copy(model, [2])
    assert pruned.body.num_experts == 3 and model.body.num_experts == 4
    batch = ColumnarSplit(spec, rows, "rows", ()).batch(torch.arange(rows.num_rows))
    with torch.no_grad():
        a, b = model(batch.sparse, batch.dense), pruned(batch.sparse, batch.dense)
    for name in ("probs_ctr", "pred_watch_time"):
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-5)
    before, after = model_cost(model), model_cost(pruned)
    assert after["flops_per_row"]["experts"] == before["flops_per_row"]["experts"] * 3 // 4
    assert after["bytes"]["fp32"]["experts"] == before["bytes"]["fp32"]["experts"] * 3 // 4


def test_prune_at_export_serves_the_pruned_graph(trained, tmp_path):
    cfg, spec, result, _ = trained
    model, _, meta = load_model(result.model_dir)
    with torch.no_grad():  # a trained model whose expert 1 no task uses
        model.body.gates.logits.bias.view(2, -1)[:, 1] = -1e4
    folder = save_model(tmp_path / "model", model, cfg.model, cfg.tasks, spec, extra={"mlflow_run_id": None})
    bundle = export_bundle(cfg, model_dir=folder, output=tmp_path / "export", register=False, prune_experts=True, int8=True)
    assert bundle.pruned_experts == [1] and bundle.prune_quality.passed and bundle.parity.passed
    assert read_metadata(bundle.onnx_path)["pruned_experts"] == "1"
    assert bundle.cost["dense_params"]["experts"] * 4 == bundle.cost["before_pruning"]["dense_params"]["experts"] * 3
    assert any(n.startswith("pruned experts [1]") and "FLOPs per row saved" in n for n in bundle.notes)
    assert read_metadata(bundle.int8_path)["pruned_experts"] == "1"  # the INT8 copy is of the pruned model

    every = cfg.model_copy(update={"export": cfg.export.model_copy(update={"prune_threshold": 0.99})})
    with pytest.raises(ValueError, match="nothing would be left"):
        export_bundle(every, model_dir=folder, output=tmp_path / "x", register=False, prune_experts=True)
    none = cfg.model_copy(update={"export": cfg.export.model_copy(update={"prune_threshold": 0.0})})
    kept = export_bundle(none, model_dir=folder, output=tmp_path / "y", register=False, prune_experts=True)
    assert kept.pruned_experts == [] and "nothing pruned" in kept.notes[0]


def test_cost_counts_tables_row_wise():
    assert table_bytes(50_000_000, 64, "fp32") == 12_800_000_000
    assert table_bytes(50_000_000, 64, "fp16") == 6_400_000_000
    assert table_bytes(50_000_000, 64, "int8") == 50_000_000 * 68
    assert table_bytes(1000, 8, "int8") == table_bytes(1000, 8, "fp32")  # narrow tables stay float32
