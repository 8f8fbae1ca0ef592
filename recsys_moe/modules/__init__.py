"""Plain nn.Modules (no config objects): MLPs, batched experts, gates, sparse embeddings."""

from recsys_moe.modules.cgc import CGCLayer
from recsys_moe.modules.embeddings import SparseEmbedding, TableDef
from recsys_moe.modules.experts import BatchedExperts, ExpertNorm
from recsys_moe.modules.gates import GateOutput, TaskGates
from recsys_moe.modules.interaction import DotInteraction
from recsys_moe.modules.mlp import MLP
from recsys_moe.modules.position import PositionTower

__all__ = ["MLP", "BatchedExperts", "CGCLayer", "DotInteraction", "ExpertNorm", "GateOutput", "PositionTower", "SparseEmbedding", "TableDef", "TaskGates"]
