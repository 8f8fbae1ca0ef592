"""Embedding tables sharded over the ranks with torchrec: the plan, the sharded model, its
checkpoints and the Lightning strategy that trains it (``training.sharding``)."""
