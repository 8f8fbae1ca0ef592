"""Plain nn.Modules (no config objects): MLPs, batched experts, gates, sparse embeddings."""

from recsys_moe.modules.embeddings import SparseEmbedding, TableDef
from recsys_moe.modules.experts import BatchedExperts
from recsys_moe.modules.gates import GateOutput, TaskGates
from recsys_moe.modules.interaction import DotInteraction
from recsys_moe.modules.mlp import MLP

__all__ = ["MLP", "BatchedExperts", "DotInteraction", "GateOutput", "SparseEmbedding", "TableDef", "TaskGates"]
