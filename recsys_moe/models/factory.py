"""Build a model from the config's ``model`` and ``tasks`` sections and a fitted FeatureSpec."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import torch

from recsys_moe.config import ModelConfig, TasksConfig
from recsys_moe.features.spec import FeatureSpec
from recsys_moe.models.mmoe import MMoEBody
from recsys_moe.models.multitask import MultiTaskModel
from recsys_moe.models.ple import PLEBody
from recsys_moe.models.shared_bottom import SharedBottomBody
from recsys_moe.models.single_task import SingleTaskBody
from recsys_moe.modules import MLP, DotInteraction, PositionTower, SparseEmbedding, TableDef
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


def build_model(model: ModelConfig, tasks: TasksConfig, spec: FeatureSpec, embedding_device: torch.device | str | None = None,
                resize: Mapping[str, tuple[int, int]] | None = None) -> MultiTaskModel:
    """MMoE, PLE, SharedBottom or SingleTask with the same inputs, towers and outputs, plus the
    optional task-specific tables (``model.task_tables``) and position tower. ``embedding_device``
    ``"meta"`` builds the tables without memory, for the planner and for torchrec's sharding to
    allocate only each rank's shards. ``resize``: table name -> (rows, dim) instead of the
    FeatureSpec's (to plan for a catalogue larger than the one at hand, on ``meta``)."""
    dev = torch.device(embedding_device) if embedding_device is not None else None
    task_objs = build_tasks(tasks.tasks)
    n_tasks = len(task_objs)
    defs = [replace(t, num_embeddings=resize[t.name][0], dim=resize[t.name][1]) if resize and t.name in resize else t
            for t in table_defs(spec)]
    id_feats = [f for f in spec.features.features if f.kind != "numeric"]
    slot_feats = set(model.position_tower.features) if model.position_tower else set()
    order = [f.name for f in id_feats if f.name not in slot_feats]
    main_defs = [t for t in defs if set(t.feature_names) - slot_feats]
    n_sets = n_tasks if model.kind == "single_task" else 1
    embeddings = [SparseEmbedding(main_defs, order, model.embedding_init_std, dev) for _ in range(n_sets)]
    interaction = DotInteraction(embeddings[0].feature_dims) if model.interaction == "dot" else None
    in_dim = embeddings[0].out_dim + len(spec.dense_columns) + (interaction.out_dim if interaction else 0)

    task_embeddings: list[SparseEmbedding] = []
    task_interaction = None
    task_dim = 0
    if model.task_tables:
        own = [t for t in defs if t.name in model.task_tables]
        own_order = [f for f in order if any(f in t.feature_names for t in own)]
        task_embeddings = [SparseEmbedding(own, own_order, model.embedding_init_std, dev) for _ in range(n_tasks)]
        dims = task_embeddings[0].feature_dims
        task_interaction = DotInteraction(dims) if model.interaction == "dot" else None
        task_dim = task_embeddings[0].out_dim + (task_interaction.out_dim if task_interaction else 0)
        if model.task_tables_cross:
            task_dim *= n_tasks

    norm = None if model.expert_norm == "none" else model.expert_norm
    g = model.gate
    if model.kind == "mmoe":
        body = MMoEBody(in_dim, n_tasks, model.num_experts, model.expert_hidden, model.dropout, g.temperature, g.top_k, g.noise,
                        sparse_dispatch(model, n_tasks), g.capacity_factor, g.eval_capacity_factor,
                        model.expert_activation, norm, task_dim)
    elif model.kind == "ple":
        p = model.ple
        body = PLEBody(in_dim, n_tasks, p.shared_experts, p.task_experts, model.expert_hidden, p.levels, model.dropout,
                       g.temperature, model.expert_activation, norm, task_dim)
    elif model.kind == "shared_bottom":
        body = SharedBottomBody(in_dim, n_tasks, model.expert_hidden, model.dropout)
    else:
        body = SingleTaskBody(in_dim, n_tasks, model.expert_hidden, model.dropout)
    towers = {t.name: MLP(body.out_dim + task_dim, model.tower_hidden, out_dim=t.output_dim, dropout=model.dropout) for t in task_objs}

    position = None
    if model.position_tower is not None:
        pt = model.position_tower
        slot_defs = [t for t in defs if set(t.feature_names) & slot_feats]
        slot_embedding = SparseEmbedding(slot_defs, [f.name for f in id_feats if f.name in slot_feats], model.embedding_init_std, dev)
        position = PositionTower(slot_embedding, pt.hidden, pt.dropout)
    return MultiTaskModel(model.kind, embeddings, body, towers, task_objs, interaction, task_embeddings, task_interaction,
                          position, model.position_tower.task if model.position_tower else None, model.task_tables_cross)
