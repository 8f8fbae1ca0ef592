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


@pytest.mark.parametrize("kind", ["mmoe", "ple", "shared_bottom", "single_task"])
def test_same_interface_for_every_model(small_features, batch, kind):
    _, spec = small_features
    model = build_model(ModelConfig(kind=kind), TASKS, spec)
    out = model(batch.sparse, batch.dense)
    assert out["logits_ctr"].shape == out["probs_ctr"].shape == out["pred_watch_time"].shape == (256,)
    assert out["raw_watch_time"].shape == (256, 3)
    assert ((out["probs_ctr"] > 0) & (out["probs_ctr"] < 1)).all()
    assert (out["pred_watch_time"] >= 0).all()
    assert ("gate_weights" in out) == (kind in ("mmoe", "ple"))
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


def test_ple_has_the_same_interface_and_reports_gates_over_its_experts(small_features, batch):
    _, spec = small_features
    model = build_model(ModelConfig(kind="ple", ple={"shared_experts": 2, "task_experts": 1, "levels": 2}), TASKS, spec)
    out = model(batch.sparse, batch.dense)
    assert out["probs_ctr"].shape == out["pred_watch_time"].shape == (256,)
    assert out["gate_weights"].shape == (2, 256, 2 * 1 + 2)
    assert (out["gate_weights"][0][:, 1] == 0).all() and (out["gate_weights"][1][:, 0] == 0).all()


@pytest.mark.parametrize("kind", ["mmoe", "ple", "shared_bottom"])
@pytest.mark.parametrize("cross", [False, True])
def test_a_tasks_own_tables_get_no_gradient_from_another_tasks_loss(small_features, batch, kind, cross):
    """STEM: the watch-time loss trains the shared tables and watch time's own copy, never the
    click task's copy, even when the click task's gate and tower read it (cross, detached)."""
    _, spec = small_features
    model = build_model(ModelConfig(kind=kind, task_tables=["item", "user"], task_tables_cross=cross), TASKS, spec)
    assert [e.feature_order for e in model.task_embeddings] == [("user_id", "item_id", "hist_click_items", "hist_long_watch_items")] * 2
    out = model(batch.sparse, batch.dense)
    wt = model.tasks[1]
    wt.loss(out["raw_watch_time"], batch.labels[wt.label]).backward()
    own = {t: e.table_weights() for t, e in zip(model.task_names, model.task_embeddings, strict=True)}
    for name in ("item", "user"):
        assert own["watch_time"][name].grad.abs().sum() > 0
        assert own["ctr"][name].grad is None or own["ctr"][name].grad.abs().sum() == 0, f"ctr's own {name} table trained by watch time"
        assert model.embeddings[0].table_weights()[name].grad.abs().sum() > 0


def test_task_tables_must_name_tables_and_single_task_has_its_own_already(small_features):
    cfg, _ = small_features
    from recsys_moe.config import ConfigError, config_from_dict

    raw = cfg.to_dict()
    with pytest.raises(ConfigError, match=r"model.task_tables: \['video'\] are not tables"):
        config_from_dict({**raw, "model": {"task_tables": ["video"]}})
    with pytest.raises(ConfigError, match="single_task already gives every task its own tables"):
        config_from_dict({**raw, "model": {"kind": "single_task", "task_tables": ["item"]}})


def _with_position(batch, value: int):
    """``batch`` with every row's ``position`` id set to ``value``."""
    from torchrec import KeyedJaggedTensor

    kjt = batch.sparse
    parts = kjt.to_dict()
    lengths, values = [], []
    for key in kjt.keys():
        jt = parts[key]
        v = torch.full_like(jt.values(), value) if key == "position" else jt.values()
        lengths.append(jt.lengths())
        values.append(v)
    sparse = KeyedJaggedTensor.from_lengths_sync(kjt.keys(), torch.cat(values), torch.cat(lengths))
    return type(batch)(sparse, batch.dense, batch.labels)


def test_position_tower_biases_training_only_and_serves_one_slot(small_features, batch):
    _, spec = small_features
    cfg = ModelConfig(position_tower={"features": ["position", "surface"], "dropout": 0.0})
    model = build_model(cfg, TASKS, spec)
    assert "position" not in model.embeddings[0].feature_order and "surface" not in model.embeddings[0].feature_order
    assert set(model.position_tower.embedding.feature_order) == {"position", "surface"}
    top, low = _with_position(batch, 1), _with_position(batch, 8)
    model.train()
    torch.manual_seed(0)
    a = model(top.sparse, top.dense)["logits_ctr"]
    torch.manual_seed(0)
    b = model(low.sparse, low.dense)["logits_ctr"]
    assert not torch.allclose(a, b), "in training the slot moves the click logit"
    model.eval()
    with torch.no_grad():
        a, b = model(top.sparse, top.dense), model(low.sparse, low.dense)
        model.position_tower.unknown.fill_(0.7)
        c = model(top.sparse, top.dense)
    torch.testing.assert_close(a["logits_ctr"], b["logits_ctr"])
    torch.testing.assert_close(c["logits_ctr"], a["logits_ctr"] + 0.7)
    torch.testing.assert_close(a["pred_watch_time"], c["pred_watch_time"])  # only the click task reads it


def test_position_dropout_hides_the_slot_on_that_share_of_rows(small_features, batch):
    _, spec = small_features
    model = build_model(ModelConfig(position_tower={"features": ["position"], "dropout": 0.3}), TASKS, spec).train()
    with torch.no_grad():
        model.position_tower.unknown.fill_(123.0)
        logit = model.position_tower(batch.sparse)
    share = float((logit == 123.0).float().mean())
    assert 0.2 < share < 0.4


def test_position_tower_features_must_have_tables_of_their_own(small_features):
    cfg, _ = small_features
    from recsys_moe.config import ConfigError, config_from_dict

    raw = cfg.to_dict()
    with pytest.raises(ConfigError, match="are not id features"):
        config_from_dict({**raw, "model": {"position_tower": {"features": ["tags"]}}})
    with pytest.raises(ConfigError, match=r"tables \['item'\] are also read by the main model"):
        config_from_dict({**raw, "model": {"position_tower": {"features": ["item_id"]}}})
