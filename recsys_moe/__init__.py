"""recsys-moe: multi-task MMoE ranking (CTR + watch time)."""

__version__ = "0.1.0"
