import pytest
import torch

from recsys_moe.config import ModelConfig, TasksConfig
from recsys_moe.models import build_model
from recsys_moe.training.batches import ColumnarSplit

TASKS = TasksConfig.model_validate({"tasks": [
    {"name": "ctr", "kind": "binary"}, {"name": "watch_time", "kind": "watch_time", "loss": "ziln"},
]})


@pytest.fixture(scope="module")
def batch(small_features):
    cfg, spec = small_features
    split = ColumnarSplit.read(cfg.experiment.work_dir / "features/data/train", spec)
    return split.batch(torch.arange(256))


@pytest.mark.parametrize("kind", ["mmoe", "shared_bottom", "single_task"])
def test_same_interface_for_every_model(small_features, batch, kind):
    _, spec = small_features
    model = build_model(ModelConfig(kind=kind), TASKS, spec)
    out = model(batch.sparse, batch.dense)
    assert out["logits_ctr"].shape == out["probs_ctr"].shape == out["pred_watch_time"].shape == (256,)
    assert out["raw_watch_time"].shape == (256, 3)
    assert ((out["probs_ctr"] > 0) & (out["probs_ctr"] < 1)).all()
    assert (out["pred_watch_time"] >= 0).all()
    assert ("gate_weights" in out) == (kind == "mmoe")
    if kind == "mmoe":
        assert out["gate_weights"].shape == (2, 256, 4)


@pytest.mark.parametrize("top_k", [None, 2])
def test_gradient_reaches_every_expert_gate_and_table(small_features, batch, top_k):
    _, spec = small_features
    model = build_model(ModelConfig(kind="mmoe", num_experts=3, gate={"top_k": top_k}), TASKS, spec)
    out = model(batch.sparse, batch.dense)
    loss = sum(t.loss(out[f"raw_{t.name}"], batch.labels[t.label]) for t in model.tasks) + out["balance_loss"]
    loss.backward()
    experts = model.body.experts
    for p in [*experts.weights, *experts.biases]:
        assert (p.grad.flatten(1).abs().sum(1) > 0).all(), "an expert got no gradient"
    gate_grad = model.body.gates.logits.weight.grad.view(2, 3, -1)
    assert (gate_grad.abs().sum(-1) > 0).all(), "a task gate row got no gradient"
    for name, w in model.embeddings[0].table_weights().items():
        assert w.grad is not None and w.grad.abs().sum() > 0, f"table {name} got no gradient"


def test_single_task_shares_nothing_between_tasks(small_features, batch):
    _, spec = small_features
    model = build_model(ModelConfig(kind="single_task"), TASKS, spec)
    out = model(batch.sparse, batch.dense)
    out["logits_ctr"].sum().backward()
    tables = [e.table_weights()["item"] for e in model.embeddings]
    assert tables[0].grad.abs().sum() > 0
    assert tables[1].grad is None or tables[1].grad.abs().sum() == 0


def test_list_features_sharing_a_table_must_agree_on_pooling(small_features):
    cfg, spec = small_features
    feats = [f.model_copy(update={"pooling": "sum"}) if f.name == "hist_click_items" else f for f in spec.features.features]
    bad = type(spec)(**{**spec.__dict__, "features": spec.features.model_copy(update={"features": feats})})
    with pytest.raises(ValueError, match="disagree on pooling"):
        build_model(ModelConfig(), TASKS, bad)
