import torch
from torch import nn

from recsys_moe.training.optim import SplitOptimizer, build_optimizer


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embeddings = nn.ModuleList([nn.Embedding(10, 3)])
        self.dense = nn.Linear(3, 1)


def test_closure_runs_once_and_both_groups_step():
    torch.manual_seed(0)
    m = Tiny()
    opt = build_optimizer(m.named_parameters(), 0.01, 0.0, "adagrad", 0.1)
    assert isinstance(opt, SplitOptimizer)
    assert isinstance(opt.optimizers["embeddings"], torch.optim.Adagrad)
    assert len(opt.param_groups) == 2
    calls = []
    before_e, before_d = m.embeddings[0].weight.clone(), m.dense.weight.clone()

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = m.dense(m.embeddings[0](torch.tensor([1, 2]))).sum()
        loss.backward()
        return loss

    opt.step(closure)
    assert len(calls) == 1
    e = m.embeddings[0].weight
    assert not torch.equal(e[1], before_e[1]) and torch.equal(e[5], before_e[5])  # unseen rows stay put
    assert not torch.equal(m.dense.weight, before_d)
    state = opt.state_dict()
    fresh = build_optimizer(m.named_parameters(), 0.01, 0.0, "adagrad", 0.1)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.optimizers["embeddings"].state_dict()["state"][0]["sum"], opt.optimizers["embeddings"].state_dict()["state"][0]["sum"])
