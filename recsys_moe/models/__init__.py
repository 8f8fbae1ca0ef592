"""Config-bound model assemblies behind one interface: MMoE, PLE, SharedBottom, SingleTask."""

from recsys_moe.models.factory import build_model, table_defs
from recsys_moe.models.multitask import MultiTaskModel

__all__ = ["MultiTaskModel", "build_model", "table_defs"]
