"""ONNX twin export: parity with the torchrec model, op check, dynamic batch, metadata."""

import subprocess
import sys

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recsys_moe import contract
from recsys_moe.config import ModelConfig, TasksConfig
from recsys_moe.export.onnx_export import (
    ExportError,
    check_parity,
    export_fp16,
    export_onnx,
    forbidden_ops,
    graph_ops,
    read_metadata,
)
from recsys_moe.models import build_model
from recsys_moe.serving.inputs import onnx_inputs, padded_ids
from recsys_moe.serving.session import make_session
from recsys_moe.training.batches import ColumnarSplit

pytestmark = pytest.mark.slow
ZILN = TasksConfig.model_validate({"tasks": [{"name": "ctr", "kind": "binary"},
                                             {"name": "watch_time", "kind": "watch_time", "loss": "ziln"}]})


def rows(cfg, split: str) -> pa.Table:
    return pq.read_table(cfg.experiment.work_dir / "features/data" / split)


@pytest.fixture(scope="module")
def exported(small_features, tmp_path_factory):
    cfg, spec = small_features
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="mmoe", gate={"top_k": 2}), ZILN, spec).eval()
    path, report = export_onnx(model, spec, tmp_path_factory.mktemp("onnx") / "model.onnx", rows(cfg, "validation"),
                               metadata={"model_version": "7"})
    return model, spec, cfg, path, report


def test_parity_and_graph_ops(exported):
    model, spec, cfg, path, report = exported
    assert report.passed and report.rows > 1000
    assert report.max_abs_diff["probs_ctr"] <= 1e-5
    ops = graph_ops(path)
    assert not forbidden_ops(ops)
    assert "Gather" in ops and not any("Bag" in op for op in ops)


def test_metadata(exported):
    _, spec, _, path, _ = exported
    meta = read_metadata(path)
    assert meta["spec_hash"] == spec.content_hash and meta["model_version"] == "7"
    assert meta["outputs"] == "probs_ctr,pred_watch_time,score"


@pytest.mark.parametrize("n", [1, 7, 10_000])
def test_dynamic_batch_matches_torch(exported, n):
    model, spec, cfg, path, _ = exported
    table = pa.concat_tables([rows(cfg, "train")] * 2).slice(0, n)
    assert table.num_rows == n
    report = check_parity(model, spec, path, table)
    assert report.passed, report.worst_rows


@pytest.mark.parametrize("kind", ["shared_bottom", "single_task"])
def test_baselines_export_with_parity(small_features, tmp_path, kind):
    cfg, spec = small_features
    model = build_model(ModelConfig(kind=kind), TasksConfig(), spec).eval()
    _, report = export_onnx(model, spec, tmp_path / "m.onnx", rows(cfg, "validation").slice(0, 500))
    assert report.passed


@pytest.mark.parametrize("model_cfg", [
    {"kind": "ple", "ple": {"shared_experts": 2, "task_experts": 1, "levels": 2}, "expert_activation": "swish", "expert_norm": "layer"},
    {"kind": "ple", "task_tables": ["item", "user"], "task_tables_cross": True, "expert_norm": "batch"},
    {"kind": "mmoe", "task_tables": ["user"], "position_tower": {"features": ["position", "surface"]}},
], ids=["ple-2-levels-swish", "ple-stem", "mmoe-stem-position"])
def test_moe_family_options_export_with_parity(small_features, tmp_path, model_cfg):
    """PLE, task-specific tables and the position tower pass the same parity gate as MMoE; the
    graph reads no slot feature (a position tower serves its one unknown-slot constant)."""
    cfg, spec = small_features
    torch.manual_seed(3)
    model = build_model(ModelConfig.model_validate(model_cfg), ZILN, spec)
    with torch.no_grad():  # calibration and a trained slot constant must reach the graph too
        model.calibration_scale.copy_(torch.tensor([1.3, 1.0]))
        model.calibration_shift.copy_(torch.tensor([-0.2, 0.4]))
        if model.position_tower is not None:
            model.position_tower.unknown.fill_(-0.5)
    model.eval()
    path, report = export_onnx(model, spec, tmp_path / "m.onnx", rows(cfg, "validation"))
    assert report.passed and report.max_abs_diff["probs_ctr"] <= 1e-5
    assert not forbidden_ops(graph_ops(path))
    for n in (1, 7):
        assert check_parity(model, spec, path, rows(cfg, "train").slice(0, n)).passed


def test_parity_gate_catches_a_different_model(exported, tmp_path):
    model, spec, cfg, path, _ = exported
    other = build_model(ModelConfig(kind="mmoe", gate={"top_k": 2}), ZILN, spec).eval()
    with torch.no_grad():
        other.load_state_dict(model.state_dict())
        other.towers["ctr"].net[-1].bias.add_(0.01)
    report = check_parity(other, spec, path, rows(cfg, "validation").slice(0, 300))
    assert not report.passed
    assert len(report.worst_rows["probs_ctr"]) == 5 and "impression_id" in report.worst_rows["probs_ctr"][0]


def test_failed_export_leaves_nothing(small_features, tmp_path, monkeypatch):
    cfg, spec = small_features
    model = build_model(ModelConfig(), TasksConfig(), spec).eval()
    import recsys_moe.export.onnx_export as ex

    monkeypatch.setattr(ex, "FORBIDDEN_OPS", {"Gather"})  # pretend a plain op were forbidden
    with pytest.raises(ExportError, match="control-flow"):
        export_onnx(model, spec, tmp_path / "m.onnx", rows(cfg, "validation").slice(0, 50))
    assert list(tmp_path.iterdir()) == []


def test_padded_ids_cut_and_pad():
    col = pa.array([[3, 4, 5], [], [7]], type=pa.list_(pa.int64()))
    np.testing.assert_array_equal(padded_ids(col, 2), [[3, 4], [-1, -1], [7, -1]])  # cut
    np.testing.assert_array_equal(padded_ids(col, 3), [[3, 4, 5], [-1, -1, -1], [7, -1, -1]])  # fast path
    sliced = pa.array([[1, 2], [3], [4, 5, 6], []], type=pa.list_(pa.int64())).slice(1, 3)  # offsets start at 2
    np.testing.assert_array_equal(padded_ids(sliced, 3), [[3, -1, -1], [4, 5, 6], [-1, -1, -1]])


def test_session_runs_on_cpu_here(exported):
    _, spec, cfg, path, _ = exported
    s = make_session(path)
    assert s.provider == "CPUExecutionProvider"  # no GPU on the CI machine
    out = s.session.run(None, onnx_inputs(rows(cfg, "test").slice(0, 3), spec))
    assert [o.shape for o in out] == [(3,)] * 3


@pytest.mark.parametrize("parallel", [True, False])
def test_chunked_run_equals_one_run(exported, parallel):
    """Row chunks, run two at a time on single-threaded runs or one after another on intra-op
    threads, give the outputs of one run over all rows, in row order."""
    _, spec, cfg, path, _ = exported
    s = make_session(path, threads=2, parallel_chunks=parallel)
    assert s.workers == (2 if parallel else 1)
    assert s.session.get_session_options().intra_op_num_threads == (1 if parallel else 2)
    one = make_session(path, threads=1)
    feeds = onnx_inputs(rows(cfg, "test").slice(0, 1000), spec)
    whole = one.session.run(None, feeds)
    for chunk_rows in (300, None):  # 4 chunks, the last one short; the default: 2 x 500 in parallel
        chunked = s.run(feeds, chunk_rows=chunk_rows)
        assert [c.shape for c in chunked] == [(1000,)] * 3
        for a, b in zip(whole, chunked, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    small = s.run({k: v[:3] for k, v in feeds.items()})  # 3 rows: chunks of 2 and 1
    np.testing.assert_allclose(small[0], whole[0][:3], rtol=1e-6, atol=1e-7)


def test_io_binding_path_gives_the_same_outputs(exported):
    """The GPU path binds inputs on the provider's device; here the device is the CPU (no GPU on
    this machine), which runs the same binding code."""
    _, spec, cfg, path, _ = exported
    plain, bound = make_session(path, io_binding=False), make_session(path, io_binding=True)
    assert not plain.io_binding and bound.io_binding
    feeds = onnx_inputs(rows(cfg, "test").slice(0, 500), spec)
    for a, b in zip(plain.run(feeds), bound.run(feeds, chunk_rows=128), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    only = bound.run(feeds, names=["score"])
    assert len(only) == 1 and only[0].shape == (500,)


def test_sparse_dispatch_exports_without_control_flow_and_matches_torch(small_features, tmp_path):
    """Capacity comes from the batch size inside the graph, so every batch size matches torch."""
    cfg, spec = small_features
    torch.manual_seed(4)
    model = build_model(ModelConfig(num_experts=16, gate={"top_k": 2, "dispatch": "sparse", "eval_capacity_factor": 1.0}),
                        TasksConfig(), spec).eval()
    assert model.body.sparse
    path, report = export_onnx(model, spec, tmp_path / "sparse.onnx", rows(cfg, "validation"))
    ops = graph_ops(path)
    assert report.passed and not forbidden_ops(ops) and {"CumSum", "ScatterElements"} <= ops
    table = pa.concat_tables([rows(cfg, "train")] * 2)
    for n in (1, 7, 5000):
        assert check_parity(model, spec, path, table.slice(0, n)).passed
    with torch.no_grad():  # a capacity factor of 1 drops pairs here: the graph drops the same ones
        split_rows = table.slice(0, 5000)
        batch = ColumnarSplit(spec, split_rows, "rows", ()).batch(torch.arange(5000))
        assert model(batch.sparse, batch.dense)["dispatch_dropped"].sum() > 0
    # the default outside training: capacity from the busiest expert in the graph, nothing dropped
    model.body.eval_capacity_factor = None
    path, report = export_onnx(model, spec, tmp_path / "dropless.onnx", rows(cfg, "validation"))
    for n in (1, 7, 5000):
        assert check_parity(model, spec, path, table.slice(0, n)).passed
    with torch.no_grad():
        assert model(batch.sparse, batch.dense)["dispatch_dropped"].sum() == 0


def test_score_output_is_the_contracts_ranking_score(small_features, tmp_path):
    """The graph's score uses the exponents it was exported with, as evaluation computes it."""
    cfg, spec = small_features
    torch.manual_seed(1)
    model = build_model(ModelConfig(), TasksConfig(), spec).eval()
    exps = {"ctr": 2.0, "watch_time": 0.5}
    path, _ = export_onnx(model, spec, tmp_path / "model.onnx", rows(cfg, "validation"), score_exponents=exps)
    assert contract.parse_exponents(read_metadata(path)["score_exponents"]) == exps
    session = make_session(path)
    probs, seconds, score = session.run(onnx_inputs(rows(cfg, "test"), spec))
    want = contract.ranking_score({"ctr": probs, "watch_time": seconds}, exps)
    np.testing.assert_allclose(score, want, rtol=1e-5)
    assert not np.allclose(score, probs * seconds, rtol=1e-3)  # really not the default exponents


def test_serving_and_scoring_job_import_without_torch():
    code = ("import sys; sys.modules['torch'] = None; import recsys_moe.serving.session, recsys_moe.serving.inputs, "
            "recsys_moe.serving.candidates, recsys_moe.serving.scoring, recsys_moe.features, recsys_moe.pipelines.batch_scoring, "
            "recsys_moe.contract, recsys_moe.registry, recsys_moe.layout; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.fixture(scope="module")
def dense_exported(small_features, tmp_path_factory):
    """A dense-gate MMoE: sparse top-k gates can route a row to other experts once fp16 rounding
    reorders near-tied gate logits, which the fp16 parity gate then (rightly) refuses."""
    cfg, spec = small_features
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="mmoe"), ZILN, spec).eval()
    path, _ = export_onnx(model, spec, tmp_path_factory.mktemp("dense") / "model.onnx", rows(cfg, "validation"))
    return model, spec, cfg, path


def test_fp16_copy_is_half_precision_and_within_tolerance(dense_exported, tmp_path):
    model, spec, cfg, path = dense_exported
    out, report = export_fp16(model, spec, path, tmp_path / "model.fp16.onnx", rows(cfg, "validation"))
    graph = onnx.load(str(out)).graph
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.initializer)
    assert [i.type.tensor_type.elem_type for i in graph.input] == [i.type.tensor_type.elem_type for i in onnx.load(str(path)).graph.input]
    assert read_metadata(out)["precision"] == "fp16" and read_metadata(out)["spec_hash"] == spec.content_hash
    assert report.passed and 0 < report.max_abs_diff["probs_ctr"] <= 2e-3  # really rounded, and close


def test_fp16_copy_outside_tolerance_is_refused_and_not_written(dense_exported, tmp_path):
    model, spec, cfg, path = dense_exported
    with pytest.raises(ExportError, match="fp16 parity"):
        export_fp16(model, spec, path, tmp_path / "model.fp16.onnx", rows(cfg, "validation"), tolerance=1e-9)
    assert list(tmp_path.iterdir()) == []
