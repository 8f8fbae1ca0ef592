"""Sparse dispatch: run each expert only on the rows some task's top-k gate sent to it.

Conditional computation as in the sparsely-gated MoE (Shazeer et al., ICLR 2017), Switch
(Fedus et al., JMLR 2022) and GShard (Lepikhin et al., ICLR 2021), for several tasks sharing
experts. The (row, expert) pairs that any task chose are grouped by expert into ``[E, C, d]``
buffers, each expert layer is one batched matmul over the buffers, and each task reads its own
chosen experts' outputs back for its rows. A row chosen by several tasks for the same expert
runs once. There is no Python loop over experts or rows, and no data-dependent shape: the graph
exports to ONNX as TopK, CumSum, ScatterElements and Gather, without Loop/Scan/If.

**Capacity.** With a capacity factor (training, as in Switch), an expert takes at most
``C = ceil(factor * T * k * B / E)`` rows per batch of ``B`` (at most ``B``): ``factor`` times an
even share of the most pairs ``T`` tasks choosing ``k`` experts each can route. Rows are admitted
in batch order, so when an expert overflows, the later rows' pairs are dropped: the task's weights
renormalise over the experts that did run for the row, and a row that lost every expert a task
chose gets a zero vector for that task, so its tower falls back to its bias (a population-level
prediction). Drops are counted per task and expert (:class:`DispatchStats`). Without a factor
(the default outside training) the capacity is the busiest expert's load in the batch: nothing
is dropped, so a row's prediction never depends on the other rows of its batch, and the buffers
are as small as the routing allows (the export computes this size inside the graph). With no
overflow the result equals the dense computation over all experts with the same top-k weights.

**Grouped kernel.** When the router is imbalanced, the busiest expert's load can be many times
an even share, and padding every buffer to it wastes that much compute. Outside training, eager
torch therefore runs the experts on jagged groups instead (:func:`grouped_slots`, one
``torch.nn.functional.grouped_mm`` per layer) where torch has the kernel: the same outputs
without padding. The exported graph keeps the buffers (ONNX has no grouped matmul).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class DispatchStats(NamedTuple):
    routed: Tensor
    """``[T, E]``: (row, expert) pairs each task's gate chose in the batch."""
    dropped: Tensor
    """``[T, E]``: of those, the ones the expert's capacity left out."""


def capacity(rows: int, num_tasks: int, top_k: int, num_experts: int, factor: float) -> int:
    """Rows an expert's buffer holds for a batch of ``rows`` (integer arithmetic, so an exported
    graph computes it from the batch size)."""
    num = round(factor * num_tasks * top_k * 1000)
    den = num_experts * 1000
    return torch.sym_min(rows, torch.sym_max(1, (rows * num + den - 1) // den))


def dispatch_slots(top_idx: Tensor, num_experts: int, factor: float | None) -> tuple[Tensor, Tensor, int]:
    """Where each (row, expert) pair goes.

    ``top_idx``: ``[T, B, k]`` experts chosen per task and row; ``factor``: the capacity factor, or
    None for the busiest expert's load (nothing dropped). Returns ``slot`` ``[B, E]``: the pair's
    flat position ``e * cap + i`` in the expert buffers, or ``E * cap`` ("nowhere") when no task
    chose it or the expert was full; ``rows`` ``[E * cap]``: the row each buffer slot holds (an
    empty slot holds row 0, whose output nothing reads); and the capacity ``cap``."""
    t, b, k = top_idx.shape
    needed = _needed(top_idx, num_experts)
    if factor is None:
        cap = needed.sum(0).max().item()  # data-dependent: exported as a ReduceMax in the graph
        torch._check(cap >= 1)
        torch._check(cap <= b)
    else:
        cap = capacity(b, t, k, num_experts, factor)
    pos = needed.cumsum(0) - 1  # each pair's place in its expert's queue, in batch order
    valid = (needed > 0) & (pos < cap)
    nowhere = num_experts * cap
    base = torch.arange(num_experts, device=top_idx.device) * cap
    slot = torch.where(valid, base + pos, nowhere)
    return slot, _rows_of_slots(slot, nowhere), cap


def grouped_slots(top_idx: Tensor, num_experts: int) -> tuple[Tensor, Tensor, Tensor]:
    """Where each (row, expert) pair goes when the experts run on jagged groups (nothing dropped,
    no padding): the pairs sorted by expert, each expert's rows in batch order.

    Returns ``slot`` ``[B, E]`` (the pair's index in that order, or ``N``, the number of pairs,
    when no task chose it), ``rows`` ``[N]`` (each pair's row) and ``counts`` ``[E]`` (pairs per
    expert). Eager torch only: ``N`` depends on the data."""
    needed = _needed(top_idx, num_experts)
    counts = needed.sum(0)
    total = int(counts.sum())
    start = counts.cumsum(0) - counts
    slot = torch.where(needed > 0, start + needed.cumsum(0) - 1, total)
    return slot, _rows_of_slots(slot, total), counts


def _needed(top_idx: Tensor, num_experts: int) -> Tensor:
    """``[B, E]``: 1 where some task chose the expert for the row."""
    t, b, k = top_idx.shape
    chosen = top_idx.permute(1, 0, 2).reshape(b, t * k)
    return torch.zeros(b, num_experts, dtype=torch.int64, device=top_idx.device).scatter(1, chosen, 1)


def _rows_of_slots(slot: Tensor, slots: int) -> Tensor:
    """``[slots]``: the row whose pair each slot holds (0 for an empty one). Every pair writes its
    row id to its slot; the ones going nowhere (slot ``slots``) land in a spare last slot."""
    b, e = slot.shape
    row_ids = torch.arange(b, device=slot.device).unsqueeze(1).expand(b, e)
    rows = torch.zeros(slots + 1, dtype=torch.int64, device=slot.device)
    return rows.scatter(0, slot.reshape(-1), row_ids.reshape(-1))[:slots]


def combine(outputs: Tensor, slot: Tensor, top_idx: Tensor, top_w: Tensor) -> tuple[Tensor, Tensor]:
    """Each task's mixture from the experts' outputs.

    ``outputs``: ``[E, C, D]`` buffers (:func:`dispatch_slots`) or ``[N, D]`` pairs
    (:func:`grouped_slots`), read at ``slot``, where a slot past the end means the pair did not
    run; ``top_idx``/``top_w``: ``[T, B, k]`` chosen experts and their gate weights. Returns
    ``[T, B, D]`` and a ``[T, B, k]`` mask of the chosen pairs that ran."""
    d = outputs.shape[-1]
    flat = outputs.reshape(-1, d)
    n = flat.shape[0]
    t, b, k = top_idx.shape
    where = slot.gather(1, top_idx.permute(1, 0, 2).reshape(b, t * k)).view(b, t, k).permute(1, 0, 2)
    ran = where < n
    w = top_w * ran.to(top_w.dtype)
    w = w / w.sum(-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    # a pair that did not run reads some slot's output and weighs it by 0
    picked = flat.index_select(0, where.clamp(max=n - 1).reshape(-1)).view(t, b, k, d)
    mixed = (picked * w.unsqueeze(-1).to(outputs.dtype)).sum(2)
    return mixed, ran


def dispatch_stats(top_idx: Tensor, ran: Tensor, num_experts: int) -> DispatchStats:
    """Routed and dropped pair counts per task and expert (no gradient)."""
    t = top_idx.shape[0]
    with torch.no_grad():
        key = (torch.arange(t, device=top_idx.device).view(t, 1, 1) * num_experts + top_idx).reshape(-1)
        ones = torch.ones_like(key, dtype=torch.float32)
        routed = torch.zeros(t * num_experts, device=top_idx.device).scatter_add(0, key, ones)
        dropped = torch.zeros(t * num_experts, device=top_idx.device).scatter_add(0, key, (~ran).reshape(-1).float())
    return DispatchStats(routed.view(t, num_experts), dropped.view(t, num_experts))
