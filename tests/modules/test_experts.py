import torch
from torch import nn

from recsys_moe.modules import MLP, BatchedExperts


def reference_expert(experts: BatchedExperts, e: int) -> nn.Sequential:
    """Expert ``e`` as a plain loop-able stack of nn.Linear + ReLU with copied weights."""
    layers: list[nn.Module] = []
    for w, b in zip(experts.weights, experts.biases, strict=True):
        lin = nn.Linear(w.shape[1], w.shape[2])
        with torch.no_grad():
            lin.weight.copy_(w[e].T)
            lin.bias.copy_(b[e])
        layers += [lin, nn.ReLU()]
    return nn.Sequential(*layers)


def test_batched_experts_equal_a_loop_over_separate_mlps():
    torch.manual_seed(0)
    experts = BatchedExperts(num_experts=5, in_dim=12, hidden=[16, 8, 6])
    x = torch.randn(33, 12)
    out = experts(x)
    assert out.shape == (5, 33, 6)
    for e in range(5):
        torch.testing.assert_close(out[e], reference_expert(experts, e)(x), rtol=1e-5, atol=1e-6)


def test_experts_start_different():
    experts = BatchedExperts(num_experts=4, in_dim=10, hidden=[8])
    w = experts.weights[0]
    for a in range(4):
        for b in range(a + 1, 4):
            assert not torch.allclose(w[a], w[b])


def test_every_expert_gets_gradient():
    experts = BatchedExperts(num_experts=3, in_dim=6, hidden=[5, 4])
    experts(torch.randn(20, 6)).sum().backward()
    for p in [*experts.weights, *experts.biases]:
        assert p.grad is not None
        assert (p.grad.flatten(1).abs().sum(1) > 0).all()  # per expert


def test_mlp_shapes_and_head():
    m = MLP(7, [5, 3], out_dim=2)
    assert m(torch.randn(4, 7)).shape == (4, 2)
    assert MLP(7, [5, 3]).out_dim == 3
