"""The ONNX twin: the trained model with torchrec's EmbeddingBagCollection swapped for plain
``nn.Embedding`` lookups pooled over padded ids (padding reads an all-zero row).

Exporting an ``EmbeddingBag`` (torchrec's or torch's) yields ONNX ``Loop`` ops, which ONNX Runtime
runs far slower and TensorRT cannot run at all (docs/design.md). The twin's
graph is Gather / Mul / ReduceSum / Gemm only. Inputs:

- ``ids``: int64 ``[B, F]``, the single-id features in FeatureSpec order;
- ``list_<name>``: int64 ``[B, max_len]`` per id-list feature, padded with ``-1`` (most recent first);
- ``dense``: float32 ``[B, D]``, the FeatureSpec's dense columns in order.

Outputs: each task's prediction (``probs_ctr``, ``pred_watch_time`` in seconds) and ``score``,
the ranking score ``prod_t max(prediction_t, floor) ** exponent_t``: the same product as
:func:`recsys_moe.contract.ranking_score`, which evaluation uses (names and rule from
:mod:`recsys_moe.contract`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from recsys_moe import contract
from recsys_moe.features.spec import FeatureSpec
from recsys_moe.models import MultiTaskModel
from recsys_moe.models.multitask import ModelInputs
from recsys_moe.modules import SparseEmbedding


class PaddedEmbedding(nn.Module):
    """Same lookups and pooling as a :class:`SparseEmbedding`, from padded dense id tensors."""

    def __init__(self, sparse: SparseEmbedding, id_features: list[str], list_features: list[str]) -> None:
        super().__init__()
        weights = sparse.table_weights()
        # One extra all-zero row per table: padding ids point there, so pooling is a plain
        # ReduceSum with no mask multiply.
        self.tables = nn.ModuleDict({
            name: nn.Embedding.from_pretrained(torch.cat([w.detach(), w.new_zeros(1, w.shape[1])]), freeze=True)
            for name, w in weights.items()
        })
        self.pad_rows = {name: w.shape[0] for name, w in weights.items()}
        table_of = {f: t.name for t in sparse.tables for f in t.feature_names}
        pooling_of = {t.name: t.pooling for t in sparse.tables}
        # (kind, position, table, mean) per feature in the model's feature order
        self.plan: list[tuple[str, int, str, bool]] = []
        for f in sparse.feature_order:
            if f in id_features:
                self.plan.append(("id", id_features.index(f), table_of[f], False))
            else:
                self.plan.append(("list", list_features.index(f), table_of[f], pooling_of[table_of[f]] == "mean"))

    def forward(self, ids: Tensor, lists: list[Tensor]) -> list[Tensor]:
        """Each feature's pooled ``[B, dim]`` embedding, in the model's feature order."""
        pooled = []
        for kind, pos, table, mean in self.plan:
            emb = self.tables[table]
            if kind == "id":
                pooled.append(emb(ids[:, pos]))
                continue
            x = lists[pos]
            valid = x >= 0
            summed = emb(torch.where(valid, x, self.pad_rows[table])).sum(1)
            if mean:
                summed = summed / valid.to(summed.dtype).sum(1, keepdim=True).clamp_min(1)
            pooled.append(summed)
        return pooled


class OnnxTwin(nn.Module):
    """``forward(ids, *lists, dense)`` -> ``(prediction per task..., score)``: the model in
    evaluation mode, every embedding set (shared, and each task's own tables) looked up as
    padded ids."""

    def __init__(self, model: MultiTaskModel, spec: FeatureSpec, score_exponents: dict[str, float] | None = None) -> None:
        super().__init__()
        self.id_features, self.list_features = spec.id_features, spec.list_features
        self.embeddings = nn.ModuleList(PaddedEmbedding(e, self.id_features, self.list_features) for e in model.embeddings)
        self.task_embeddings = nn.ModuleList(PaddedEmbedding(e, self.id_features, self.list_features) for e in model.task_embeddings)
        self.model = model
        self.prediction_names = [t.prediction_name for t in model.tasks]
        exps = contract.exponents_for(model.task_names, score_exponents or dict.fromkeys(model.task_names, 1.0))
        self.exponents = list(exps.values())
        self.output_names = [*self.prediction_names, contract.SCORE]
        self.input_names = contract.input_names(self.list_features)

    def forward(self, ids: Tensor, *rest: Tensor) -> tuple[Tensor, ...]:
        lists, dense = list(rest[:-1]), rest[-1]
        shared = [self.model.combine_parts(e(ids, lists), dense) for e in self.embeddings]
        task = [self.model.combine_task_parts(e(ids, lists)) for e in self.task_embeddings] or None
        # a position tower serves its unknown-slot constant: no slot lookups in the graph
        out = self.model.head(ModelInputs(shared, task))
        preds = [out[name] for name in self.prediction_names]
        score = None
        for p, e in zip(preds, self.exponents, strict=True):
            if e:
                term = p.clamp_min(contract.SCORE_FLOOR) if e == 1.0 else p.clamp_min(contract.SCORE_FLOOR) ** e
                score = term if score is None else score * term
        return (*preds, torch.ones_like(preds[0]) if score is None else score)
