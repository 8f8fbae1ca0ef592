import math

import pytest
import torch

from recsys_moe.modules import TaskGates


def test_dense_gates_sum_to_one_per_task_and_row():
    g = TaskGates(in_dim=8, num_tasks=3, num_experts=5)
    out = g(torch.randn(40, 8))
    assert out.weights.shape == (3, 40, 5)
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(3, 40))
    assert (out.weights > 0).all()
    assert float(out.balance_loss) == 0.0


def test_temperature_flattens_the_gate():
    torch.manual_seed(1)
    x = torch.randn(64, 8)
    sharp = TaskGates(8, 2, 4, temperature=0.1)
    flat = TaskGates(8, 2, 4, temperature=10.0)
    flat.load_state_dict(sharp.state_dict())
    def entropy(w):
        return -(w * w.log()).sum(-1).mean()
    assert entropy(flat(x).weights) > entropy(sharp(x).weights)
    assert entropy(flat(x).weights) < math.log(4) + 1e-6


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("training", [True, False])
def test_top_k_keeps_exactly_k_experts(k, training):
    torch.manual_seed(2)
    g = TaskGates(8, 2, 4, top_k=k, noise=True)
    with torch.no_grad():
        g.noise.bias.fill_(0.5)  # non-zero noise while training
    g.train(training)
    out = g(torch.randn(100, 8))
    assert ((out.weights > 0).sum(-1) == k).all()
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(2, 100))


def test_balance_loss_is_one_when_even_and_grows_when_concentrated():
    g = TaskGates(4, 1, 4, top_k=1, noise=False)
    with torch.no_grad():
        g.logits.weight.zero_()
        g.logits.bias.zero_()
        g.logits.weight[:, :] = torch.eye(4)
    with torch.no_grad():
        even = g(torch.eye(4) * 10)  # row i routes to expert i
    assert float(even.balance_loss) == pytest.approx(1.0, abs=1e-3)
    with torch.no_grad():
        skewed = g(torch.tensor([[10.0, 0, 0, 0]] * 4))  # all rows to expert 0
    assert float(skewed.balance_loss) == pytest.approx(4.0, abs=1e-2)


def test_top_k_larger_than_experts_is_refused():
    with pytest.raises(ValueError, match="top_k"):
        TaskGates(4, 1, 3, top_k=4)


@pytest.mark.parametrize("k", [1, 2, 3, 6])
def test_top_k_equals_torch_topk(k):
    from recsys_moe.modules.gates import top_k

    x = torch.randn(3, 50, 8, requires_grad=True)
    values, indices = top_k(x, k)
    want_v, want_i = x.topk(k, dim=-1)
    assert torch.equal(indices, want_i) and torch.equal(values, want_v)
    values.sum().backward()
    assert x.grad.sum() == 3 * 50 * k  # gradient reaches exactly the chosen logits
