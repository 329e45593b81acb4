"""Negative edges for evaluating dynamic link prediction (Poursafaei et al. 2022, "Towards Better
Evaluation for Dynamic Link Prediction", Sec. 4; DyGLib's ``NegativeEdgeSampler``; TGB's one-vs-many).

Each positive event ``i`` (``src_i -> dst_i`` at ``t_i``) gets one negative edge:

* ``random``: ``(src_i, d)``, ``d`` uniform over the destinations of the stream (DyGLib: the true
  destination is not excluded);
* ``historical``: an edge seen before the split starts (``history="split"``, the paper's and this
  module's default; the split starts at the earliest time of the events asked for) or before ``t_i``
  (``history="event"``, DyGLib's batch rule at batch size 1), and not seen at ``t_i`` itself;
* ``inductive``: an edge first seen after ``train_end`` (never in training) and before ``t_i``,
  and not seen at ``t_i``.

As in DyGLib, a ``pool_fraction`` (0.5) of the positives (a seeded choice) draws from the pool and
the rest are ``random``; a positive whose pool is empty (or holds only edges of its own time step)
falls back to ``random``. Everything is drawn at once from one seeded generator, so a split's
negatives depend only on its events and the seed: every model is scored on the same ones.

:func:`mrr_negatives` gives TGB's ``(P, K)`` destination sets for MRR: ``K`` distinct destinations,
none the true one.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .events import EventStream, TemporalSplit

__all__ = ["STRATEGIES", "SPLIT_SEEDS", "sample_negatives", "split_negatives", "mrr_negatives"]

STRATEGIES = ("random", "historical", "inductive")
#: DyGLib's evaluation seeds per split (``val``: 0, ``new_node_val``: 1, ``test``: 2, ``new_node_test``: 3)
SPLIT_SEEDS = {"val": 0, "new_node_val": 1, "test": 2, "new_node_test": 3}
_REDRAWS = 8


def _event_index(stream: EventStream, events: Tensor) -> Tensor:
    if not isinstance(events, Tensor) or events.dim() != 1:
        raise TypeError("events must be a 1-D bool mask (E,) or a 1-D tensor of event indices")
    if events.dtype == torch.bool:
        if events.shape[0] != len(stream):
            raise ValueError(f"events mask has {events.shape[0]} entries for {len(stream)} events")
        return events.nonzero().flatten().cpu()
    if events.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"events must be bool or int64, got {events.dtype}")
    if events.numel() and (int(events.min()) < 0 or int(events.max()) >= len(stream)):
        raise ValueError(f"events holds indices outside [0, {len(stream)})")
    return events.long().cpu()


def _destinations(stream: EventStream) -> Tensor:
    return torch.unique(stream.dst.cpu())  # sorted (D,)


def sample_negatives(stream: EventStream, events: Tensor, strategy: str = "random", *, seed: int,
                     train_end: float | None = None, history: str = "split",
                     pool_fraction: float = 0.5) -> tuple[Tensor, Tensor]:
    """One negative edge per positive event of ``events`` (a bool mask ``(E,)`` or indices ``(P,)``
    into ``stream``): ``(neg_src (P,), neg_dst (P,))`` long. ``train_end`` (the last training time)
    is needed by ``"inductive"``; ``history`` (``"split"`` or ``"event"``) bounds ``"historical"``."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if history not in ("split", "event"):
        raise ValueError(f"history must be 'split' or 'event', got {history!r}")
    if not isinstance(pool_fraction, (int, float)) or not 0 <= pool_fraction <= 1:
        raise ValueError(f"pool_fraction must be in [0, 1], got {pool_fraction!r}")
    if strategy == "inductive" and train_end is None:
        raise ValueError("train_end (the last training time) is required for inductive negatives")
    idx = _event_index(stream, events)
    P, dev = idx.numel(), stream.device
    src, dst, t = stream.src.cpu(), stream.dst.cpu(), stream.t.cpu()
    gen = torch.Generator().manual_seed(int(seed))
    dests = _destinations(stream)
    if dests.numel() == 0:
        raise ValueError("stream has no events to draw negative destinations from")
    neg_src = src[idx].clone()
    neg_dst = dests[torch.randint(dests.numel(), (P,), generator=gen)]
    if strategy == "random" or P == 0:
        return neg_src.to(dev), neg_dst.to(dev)

    # unique directed edges ordered by their first occurrence (the stream is time sorted)
    key = src * stream.num_nodes + dst
    edge_keys, edge_of_event = torch.unique(key, return_inverse=True)
    first = torch.full((edge_keys.numel(),), len(stream), dtype=torch.long).scatter_reduce(
        0, edge_of_event, torch.arange(len(stream)), reduce="amin")
    order = torch.argsort(first)
    pool_src, pool_dst, pool_t = src[first[order]], dst[first[order]], t[first[order]]  # (U,) by first time
    rank_of_edge = torch.empty_like(order)
    rank_of_edge[order] = torch.arange(order.numel())

    t_i = t[idx]
    hi_time = t_i if strategy == "inductive" or history == "event" else t_i.min().repeat(P)  # the split's start
    hi = torch.searchsorted(pool_t, hi_time)  # pool edges first seen strictly before hi_time
    lo = torch.zeros_like(hi) if strategy == "historical" else \
        torch.searchsorted(pool_t.double(), torch.tensor([float(train_end)], dtype=torch.float64), right=True).repeat(P)
    # (time, edge) pairs that occur, to reject an edge of the positive's own time step
    times = torch.unique(t)
    U = order.numel()
    occurs = torch.unique(torch.searchsorted(times, t) * U + rank_of_edge[edge_of_event])
    step = torch.searchsorted(times, t_i) * U

    use_pool = torch.zeros(P, dtype=torch.bool)
    use_pool[torch.randperm(P, generator=gen)[: int(pool_fraction * P)]] = True
    todo = use_pool & (hi > lo)
    for _ in range(_REDRAWS):  # vectorised rejection: a few rounds over all positives at once
        if not bool(todo.any()):
            break
        u = torch.rand(P, generator=gen, dtype=torch.float64)
        pick = (lo + (u * (hi - lo)).long()).clamp(max=(hi - 1).clamp(min=0))
        c = step + pick
        pos = torch.searchsorted(occurs, c).clamp(max=occurs.numel() - 1)
        ok = todo & (occurs[pos] != c)
        neg_src[ok], neg_dst[ok] = pool_src[pick[ok]], pool_dst[pick[ok]]
        todo &= ~ok
    return neg_src.to(dev), neg_dst.to(dev)


def split_negatives(split: TemporalSplit, name: str, strategy: str = "random", seed: int | None = None,
                    **kwargs) -> tuple[Tensor, Tensor]:
    """:func:`sample_negatives` for the events of ``split.events(name)``, with DyGLib's seed for that
    split (:data:`SPLIT_SEEDS`) unless ``seed`` is given and ``train_end`` = the last training time."""
    if name not in SPLIT_SEEDS:
        raise ValueError(f"name must be one of {tuple(SPLIT_SEEDS)}, got {name!r}")
    train_t = split.stream.t[split.train]
    train_end = float(train_t.max()) if train_t.numel() else float("-inf")
    return sample_negatives(split.stream, getattr(split, name), strategy, seed=SPLIT_SEEDS[name] if seed is None else seed,
                            train_end=train_end, **kwargs)


def mrr_negatives(stream: EventStream, events: Tensor, num_negatives: int = 100, *, seed: int,
                  chunk_elements: int = 1 << 22) -> Tensor:
    """TGB's one-vs-many sets: ``(P, num_negatives)`` long, for each positive ``num_negatives``
    distinct destinations of the stream drawn uniformly without replacement, never its true one."""
    if not isinstance(num_negatives, int) or isinstance(num_negatives, bool) or num_negatives < 1:
        raise ValueError(f"num_negatives must be a positive int, got {num_negatives!r}")
    idx = _event_index(stream, events)
    dests = _destinations(stream)
    if dests.numel() - 1 < num_negatives:
        raise ValueError(f"num_negatives={num_negatives} but the stream has only {dests.numel()} destinations")
    gen = torch.Generator().manual_seed(int(seed))
    true_col = torch.searchsorted(dests, stream.dst.cpu()[idx])  # (P,) the true destination's column
    out, rows = [], max(1, chunk_elements // dests.numel())
    for a in range(0, idx.numel(), rows):  # chunks of rows bound memory, not a loop per event
        keys = torch.rand((min(rows, idx.numel() - a), dests.numel()), generator=gen)
        keys.scatter_(1, true_col[a:a + rows, None], 2.0)  # the true destination is never among the smallest
        out.append(dests[keys.topk(num_negatives, dim=1, largest=False).indices])
    res = torch.cat(out) if out else torch.empty((0, num_negatives), dtype=torch.long)
    return res.to(stream.device)
