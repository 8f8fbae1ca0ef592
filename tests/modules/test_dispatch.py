"""Sparse dispatch: equal to the dense mixture when nothing overflows, exact overflow accounting,
gradients only where experts ran, and the z-loss."""

import numpy as np
import pytest
import torch

from recsys_moe.config import ModelConfig
from recsys_moe.models.factory import sparse_dispatch
from recsys_moe.models.mmoe import MMoEBody
from recsys_moe.modules import TaskGates
from recsys_moe.modules.dispatch import capacity, combine, dispatch_slots, dispatch_stats
from recsys_moe.modules.experts import grouped_mm_runs
from recsys_moe.training.gate_diagnostics import GateAccumulator


def _pair(num_experts: int, top_k: int, tasks: int = 2, in_dim: int = 20, activation: str = "relu", norm: str | None = None,
          **kw) -> tuple[MMoEBody, MMoEBody]:
    sparse = MMoEBody(in_dim, tasks, num_experts, [16, 12], top_k=top_k, sparse=True, activation=activation, norm=norm, **kw)
    dense = MMoEBody(in_dim, tasks, num_experts, [16, 12], top_k=top_k, sparse=False, activation=activation, norm=norm)
    dense.load_state_dict(sparse.state_dict())
    return sparse, dense


@pytest.mark.parametrize(("num_experts", "top_k"), [(4, 1), (16, 2), (64, 2)])
def test_sparse_equals_dense_when_capacity_is_ample(num_experts, top_k):
    torch.manual_seed(num_experts)
    sparse, dense = _pair(num_experts, top_k, capacity_factor=num_experts, eval_capacity_factor=num_experts)
    x = torch.randn(300, 20)
    for mode in (sparse.eval, sparse.train):
        mode()
        dense.train(sparse.training)
        torch.manual_seed(1)  # the same gate noise in training mode
        got, gates = sparse([x])
        torch.manual_seed(1)
        want, _ = dense([x])
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)
        assert gates.dispatch.dropped.sum() == 0 and gates.dispatch.routed.sum() == 2 * 300 * top_k


def test_overflow_drops_exactly_the_later_pairs_and_counts_them():
    # 6 rows, 3 experts; task 0 sends every row to expert 0, task 1 sends rows 0-2 to expert 0 too
    # (the same pair: it runs once) and rows 3-5 to expert 2. Factor 1: 1 x 2 x 1 x 6 / 3 = 4 rows.
    top_idx = torch.tensor([[[0]] * 6, [[0]] * 3 + [[2]] * 3])  # [T=2, B=6, k=1]
    slot, rows, cap = dispatch_slots(top_idx, num_experts=3, factor=1.0)
    assert cap == 4
    nowhere = 3 * 4
    assert slot[:, 0].tolist() == [0, 1, 2, 3, nowhere, nowhere]  # rows 4 and 5 overflow expert 0
    assert slot[:, 2].tolist() == [nowhere] * 3 + [8, 9, 10]
    assert (slot[:, 1] == nowhere).all()
    assert rows.tolist() == [0, 1, 2, 3, 0, 0, 0, 0, 3, 4, 5, 0]  # empty slots hold row 0, never read
    outputs = torch.arange(1.0, 13.0).view(3, 4, 1)  # slot s holds the value s + 1
    mixed, ran = combine(outputs, slot, top_idx, torch.ones(2, 6, 1))
    assert mixed[0, :, 0].tolist() == [1, 2, 3, 4, 0, 0]  # dropped rows get zeros: their tower's bias
    assert mixed[1, :, 0].tolist() == [1, 2, 3, 9, 10, 11]
    stats = dispatch_stats(top_idx, ran, 3)
    assert stats.routed.tolist() == [[6, 0, 0], [3, 0, 3]] and stats.dropped.tolist() == [[2, 0, 0], [0, 0, 0]]
    acc = GateAccumulator()
    acc.update(torch.zeros(2, 6, 3), stats.routed, stats.dropped)
    summary = acc.summary(["ctr", "watch_time"], 0.05)
    assert summary.task_drop_rate().tolist() == [pytest.approx(2 / 6), 0.0]
    assert summary.metrics("val/")["val/gate/ctr/expert0/drop_rate"] == pytest.approx(2 / 6)


def test_weights_renormalise_over_the_experts_that_ran():
    top_idx = torch.tensor([[[0, 1], [0, 1], [1, 0]]])  # one task, top-2 of 2 experts, 3 rows
    slot, _, cap = dispatch_slots(top_idx, num_experts=2, factor=0.6)  # experts 0 and 1 take rows 0-1 only
    assert cap == 2
    outputs = torch.tensor([[[10.0], [20.0]], [[1.0], [2.0]]])
    mixed, ran = combine(outputs, slot, top_idx, torch.tensor([[[0.75, 0.25], [0.5, 0.5], [0.9, 0.1]]]))
    assert ran.tolist() == [[[True, True], [True, True], [False, False]]]
    assert mixed[0, :, 0].tolist() == pytest.approx([0.75 * 10 + 0.25 * 1, 0.5 * 20 + 0.5 * 2, 0.0])


def test_without_a_factor_nothing_is_dropped_and_buffers_fit_the_busiest_expert():
    top_idx = torch.tensor([[[0]] * 6, [[0]] * 3 + [[2]] * 3])
    slot, rows, cap = dispatch_slots(top_idx, num_experts=3, factor=None)
    assert cap == 6 and (slot[:, 0] < 3 * 6).all() and rows[:6].tolist() == list(range(6))


def test_capacity_is_the_even_share_times_the_factor():
    assert capacity(4096, 2, 2, 64, 1.25) == 320  # ceil(1.25 * 2 * 2 * 4096 / 64)
    assert capacity(4096, 2, 2, 4, 2.0) == 4096  # never more than the batch
    assert capacity(3, 1, 1, 64, 1.0) == 1  # never empty


def test_gradients_reach_only_the_experts_that_ran():
    torch.manual_seed(0)
    body = MMoEBody(8, 2, 6, [5], top_k=1, sparse=True, noise=False, capacity_factor=6.0)
    with torch.no_grad():  # route every row of both tasks to expert 4 (logit bias), the rest nowhere
        body.gates.logits.weight.zero_()
        body.gates.logits.bias.copy_(torch.tensor([0, 0, 0, 0, 5.0, 0] * 2))
    out, gates = body([torch.randn(32, 8)])
    sum(o.sum() for o in out).backward()
    grads = body.experts.weights[0].grad.abs().sum((1, 2))
    assert grads[4] > 0 and (grads[[0, 1, 2, 3, 5]] == 0).all()
    assert (body.experts.biases[0].grad[[0, 1, 2, 3, 5]] == 0).all()  # padding slots teach nothing
    assert gates.dispatch.routed[:, 4].tolist() == [32, 32]


def test_z_loss_is_the_mean_squared_logsumexp():
    torch.manual_seed(2)
    g = TaskGates(8, 2, 4, temperature=2.0, top_k=2, noise=False)
    x = torch.randn(10, 8)
    logits = g.logits(x).view(10, 2, 4).transpose(0, 1) / 2.0
    torch.testing.assert_close(g(x).z_loss, torch.logsumexp(logits, -1).square().mean())


@pytest.mark.parametrize(("experts", "top_k", "dispatch", "sparse"), [
    (64, 2, "auto", True), (16, 2, "auto", True), (4, 2, "auto", False), (4, 1, "auto", False),
    (4, 1, "sparse", True), (64, 2, "dense", False), (64, None, "auto", False),
])
def test_auto_dispatch_is_sparse_only_where_it_computes_less(experts, top_k, dispatch, sparse):
    cfg = ModelConfig(num_experts=experts, gate={"top_k": top_k, "dispatch": dispatch})
    assert sparse_dispatch(cfg, num_tasks=2) is sparse


def test_outside_training_a_rows_output_does_not_depend_on_its_batch():
    torch.manual_seed(3)
    body = MMoEBody(20, 2, 16, [12], top_k=2, sparse=True).eval()  # eval_capacity_factor None: dropless
    x = torch.randn(300, 20)
    with torch.no_grad():
        whole, gates = body([x])
        parts = [body([x[i: i + 37]])[0] for i in range(0, 300, 37)]
    for t in range(2):
        torch.testing.assert_close(torch.cat([p[t] for p in parts]), whole[t], rtol=1e-6, atol=1e-6)
    assert gates.dispatch.dropped.sum() == 0


@pytest.mark.parametrize(("activation", "norm"), [("relu", None), ("swish", "layer")])
def test_grouped_kernel_equals_the_padded_buffers_and_dense_under_an_imbalanced_router(monkeypatch, activation, norm):
    """Outside training the experts run on jagged groups (no padding up to the busiest expert);
    the result is the padded buffers' and the dense mixture's, with empty experts too (and with
    HoME's Swish and per-expert layer norm, whose scale and shift each row takes from its expert)."""
    torch.manual_seed(5)
    sparse, dense = _pair(16, 2, activation=activation, norm=norm)
    if norm:
        with torch.no_grad():  # experts' norms differ, so a row normalised as another expert's shows
            sparse.experts.norm.weight.uniform_(0.5, 2.0)
            sparse.experts.norm.bias.uniform_(-1.0, 1.0)
    for body in (sparse, dense):
        body.eval()
    with torch.no_grad():  # most rows to experts 0-2, none to 10-15
        sparse.gates.logits.bias[:] = torch.tensor([4.0, 3.0, 2.0] + [0.0] * 7 + [-30.0] * 6).repeat(2)
    dense.load_state_dict(sparse.state_dict())
    x = torch.randn(500, 20)
    ran_groups = []
    forward_groups = sparse.experts.forward_groups
    monkeypatch.setattr(sparse.experts, "forward_groups", lambda h, c: ran_groups.append(c.tolist()) or forward_groups(h, c))
    with torch.no_grad():
        grouped, gates = sparse([x])
        sparse.grouped = False
        padded, _ = sparse([x])
        want, _ = dense([x])
    (counts,) = ran_groups
    assert counts[0] > 5 * sum(counts) / 16 and counts[-1] == 0  # imbalanced, with empty groups
    for g, p, w in zip(grouped, padded, want, strict=True):
        torch.testing.assert_close(g, p, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    assert gates.dispatch.dropped.sum() == 0


def test_batch_norm_over_experts_needs_dense_dispatch():
    with pytest.raises(ValueError, match="layer norm with sparse dispatch"):
        MMoEBody(8, 2, 4, [6], top_k=2, sparse=True, norm="batch")


def test_widths_the_grouped_kernel_cannot_take_fall_back_to_the_buffers():
    torch.manual_seed(6)
    sparse, dense = _pair(8, 2, in_dim=10)  # 10 float32 values: 40 bytes, not a multiple of 16
    assert not grouped_mm_runs(torch.zeros(1, 10), sparse.experts)
    assert grouped_mm_runs(torch.zeros(1, 20), _pair(8, 2)[0].experts)
    x = torch.randn(64, 10)
    with torch.no_grad():
        got, _ = sparse.eval()([x])
        want, _ = dense.eval()([x])
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


class _Mixtures(torch.nn.Module):
    def __init__(self, body: MMoEBody) -> None:
        super().__init__()
        self.body = body

    def forward(self, x):
        return torch.stack(self.body([x])[0])


def test_the_export_keeps_the_buffers_and_matches_the_grouped_kernel(tmp_path):
    """Traced for ONNX, the body takes the padded buffers (the grouped kernel's sizes depend on the
    data); ONNX Runtime then matches eager torch, which runs the groups."""
    import onnxruntime as ort

    torch.manual_seed(7)
    body = MMoEBody(20, 2, 16, [16, 12], top_k=2, sparse=True).eval()
    x = torch.randn(300, 20)
    assert grouped_mm_runs(x, body.experts)
    program = torch.onnx.export(_Mixtures(body), (x,), dynamo=True, input_names=["x"], output_names=["mixed"],
                                dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}}, verbose=False)
    program.save(str(tmp_path / "body.onnx"))
    session = ort.InferenceSession(str(tmp_path / "body.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = _Mixtures(body)(x).numpy()
    for n in (1, 300):
        got = session.run(None, {"x": x[:n].numpy()})[0]
        np.testing.assert_allclose(got, want[:, :n], rtol=1e-5, atol=1e-5)
