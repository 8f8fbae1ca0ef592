"""Build a model from the config's ``model`` and ``tasks`` sections and a fitted FeatureSpec."""

from __future__ import annotations

from recsys_moe.config import ModelConfig, TasksConfig
from recsys_moe.features.spec import FeatureSpec
from recsys_moe.models.mmoe import MMoEBody
from recsys_moe.models.multitask import MultiTaskModel
from recsys_moe.models.shared_bottom import SharedBottomBody
from recsys_moe.models.single_task import SingleTaskBody
from recsys_moe.modules import MLP, DotInteraction, SparseEmbedding, TableDef
from recsys_moe.tasks import build_tasks


def table_defs(spec: FeatureSpec) -> list[TableDef]:
    """One TableDef per spec table, with the features that share it.

    torchrec pools per table, so list features sharing a table must agree on pooling (single
    ids have one value, where sum and mean agree)."""
    defs = []
    for name, table in spec.tables.items():
        feats = [f for f in spec.features.features if f.kind != "numeric" and f.table_name == name]
        poolings = {f.pooling for f in feats if f.kind == "id_list"}
        if len(poolings) > 1:
            raise ValueError(
                f"table {name!r}: list features {[f.name for f in feats if f.kind == 'id_list']} "
                f"disagree on pooling {sorted(poolings)}; torchrec pools per table"
            )
        defs.append(TableDef(name, table.dim, table.num_embeddings, tuple(f.name for f in feats), poolings.pop() if poolings else "sum"))
    return defs


def sparse_dispatch(model: ModelConfig, num_tasks: int) -> bool:
    """Whether the experts run with sparse dispatch (see ``model.gate.dispatch``)."""
    g = model.gate
    if g.top_k is None or g.dispatch == "dense":
        return False
    return g.dispatch == "sparse" or 2 * g.capacity_factor * num_tasks * g.top_k <= model.num_experts


def build_model(model: ModelConfig, tasks: TasksConfig, spec: FeatureSpec) -> MultiTaskModel:
    """MMoE, SharedBottom or SingleTask with the same inputs, towers and outputs."""
    task_objs = build_tasks(tasks.tasks)
    n_tasks = len(task_objs)
    defs = table_defs(spec)
    order = [f.name for f in spec.features.features if f.kind != "numeric"]
    n_sets = n_tasks if model.kind == "single_task" else 1
    embeddings = [SparseEmbedding(defs, order, model.embedding_init_std) for _ in range(n_sets)]
    interaction = DotInteraction(embeddings[0].feature_dims) if model.interaction == "dot" else None
    in_dim = embeddings[0].out_dim + len(spec.dense_columns) + (interaction.out_dim if interaction else 0)
    if model.kind == "mmoe":
        g = model.gate
        body = MMoEBody(in_dim, n_tasks, model.num_experts, model.expert_hidden, model.dropout, g.temperature, g.top_k, g.noise,
                        sparse_dispatch(model, n_tasks), g.capacity_factor, g.eval_capacity_factor)
    elif model.kind == "shared_bottom":
        body = SharedBottomBody(in_dim, n_tasks, model.expert_hidden, model.dropout)
    else:
        body = SingleTaskBody(in_dim, n_tasks, model.expert_hidden, model.dropout)
    towers = {t.name: MLP(body.out_dim, model.tower_hidden, out_dim=t.output_dim, dropout=model.dropout) for t in task_objs}
    return MultiTaskModel(model.kind, embeddings, body, towers, task_objs, interaction)
