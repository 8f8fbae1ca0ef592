"""CGC / PLE: each task mixes only its own and the shared experts, all experts run batched."""

import pytest
import torch
import torch.nn.functional as F

from recsys_moe.models.ple import PLEBody
from recsys_moe.modules import CGCLayer
from tests.modules.test_experts import reference_expert


def test_cgc_equals_a_loop_over_each_tasks_own_and_shared_experts():
    torch.manual_seed(0)
    layer = CGCLayer(in_dim=10, num_tasks=2, shared_experts=2, task_experts=3, hidden=[8, 6])
    x = torch.randn(17, 10)
    outs, shared, gates = layer([x])
    assert shared is None and len(outs) == 2 and outs[0].shape == (17, 6)
    assert gates.weights.shape == (2, 17, 2 * 3 + 2)
    experts = [reference_expert(layer.experts, e)(x) for e in range(layer.num_experts)]
    for t in range(2):
        own = [*range(t * 3, (t + 1) * 3), 6, 7]
        logits = x @ layer.gate_weight[t] + layer.gate_bias[t]
        w = torch.softmax(logits, dim=-1)
        expected = sum(w[:, j: j + 1] * experts[e] for j, e in enumerate(own))
        torch.testing.assert_close(outs[t], expected, rtol=1e-5, atol=1e-6)
        other = sorted(set(range(8)) - set(own))
        assert (gates.weights[t][:, other] == 0).all()
        torch.testing.assert_close(gates.weights[t].sum(-1), torch.ones(17))


def test_a_tasks_loss_never_trains_another_tasks_experts():
    torch.manual_seed(1)
    layer = CGCLayer(in_dim=6, num_tasks=2, shared_experts=1, task_experts=2, hidden=[5])
    outs, _, _ = layer([torch.randn(30, 6)])
    outs[0].sum().backward()
    grad = layer.experts.weights[0].grad.flatten(1).abs().sum(1)  # per expert
    assert (grad[[0, 1, 4]] > 0).all(), "task 0's own and the shared experts learn from task 0"
    assert (grad[[2, 3]] == 0).all(), "task 1's experts got gradient from task 0's loss"
    assert (layer.gate_weight.grad[1] == 0).all()


def test_ple_levels_feed_the_next_levels_task_and_shared_experts():
    torch.manual_seed(2)
    body = PLEBody(in_dim=12, num_tasks=2, shared_experts=2, task_experts=1, hidden=[8], levels=2)
    x = torch.randn(9, 12)
    hidden, gates = body([x])
    assert [h.shape for h in hidden] == [(9, 8), (9, 8)]
    assert gates.weights.shape == (2, 9, 4) and body.num_experts == 4
    # the second level's experts read the first level's outputs: perturbing one task's first-level
    # experts changes both tasks' outputs (through the shared gate), as PLE intends
    first = body.layers[0]
    assert first.shared_gate is not None and body.layers[1].shared_gate is None
    with torch.no_grad():
        first.experts.weights[0][0].add_(1.0)  # task 0's first-level expert
    again, _ = body([x])
    assert not torch.allclose(again[0], hidden[0]) and not torch.allclose(again[1], hidden[1])


def test_upper_level_experts_read_their_own_groups_input():
    """Above the first level, each expert reads its task's (or the shared) input: one batched
    call equals running each expert on its group's tensor."""
    torch.manual_seed(3)
    layer = CGCLayer(in_dim=5, num_tasks=2, shared_experts=1, task_experts=1, hidden=[4], shared_gate=True)
    inputs = [torch.randn(7, 5) for _ in range(3)]  # task 0's, task 1's, shared
    outs, shared, gates = layer(inputs)
    per_expert = [reference_expert(layer.experts, e)(inputs[g]) for e, g in enumerate([0, 1, 2])]
    for t in range(2):
        w = torch.softmax(torch.baddbmm(layer.gate_bias.unsqueeze(1), torch.stack(inputs[:2]), layer.gate_weight)[t], -1)
        torch.testing.assert_close(outs[t], w[:, :1] * per_expert[t] + w[:, 1:] * per_expert[2], rtol=1e-5, atol=1e-6)
    all_w = torch.softmax(layer.shared_gate(inputs[2]), dim=-1)
    torch.testing.assert_close(shared, sum(all_w[:, e: e + 1] * per_expert[e] for e in range(3)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_swish_and_expert_norm(norm):
    torch.manual_seed(4)
    layer = CGCLayer(in_dim=6, num_tasks=2, shared_experts=1, task_experts=1, hidden=[5], activation="swish", norm=norm)
    layer.eval()
    x = torch.randn(11, 6)
    h = layer.experts(x)
    w, b = layer.experts.weights[0], layer.experts.biases[0]
    raw = F.silu(torch.einsum("bi,eio->ebo", x, w) + b.unsqueeze(1))
    if norm == "layer":
        expected = F.layer_norm(raw, (5,))  # scale 1, shift 0 at initialisation
    else:
        bn = layer.experts.norm.bn
        mean, var = bn.running_mean.view(3, 1, 5), bn.running_var.view(3, 1, 5)
        expected = (raw - mean) / torch.sqrt(var + bn.eps)
    torch.testing.assert_close(h, expected, rtol=1e-5, atol=1e-5)


def test_cgc_layer_needs_an_expert():
    with pytest.raises(ValueError, match="at least one expert"):
        CGCLayer(in_dim=4, num_tasks=2, shared_experts=0, task_experts=0, hidden=[3])
