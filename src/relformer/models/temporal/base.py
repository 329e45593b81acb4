"""The contract every temporal link predictor follows (DyGLib's: embed the two ends of a candidate
link from the history strictly before its time, then score the pair with a merge MLP).

A model sees the past only through a :class:`TemporalContext`: the event stream it may read and a
:class:`~relformer.data.temporal.TemporalNeighborSampler` over it, which returns interactions strictly
before each query's time, so no model can look at the event it is asked about or any later one.
Training uses a context over the training events, evaluation one over the whole stream (DyGLib's
"full" neighbour sampler); the task builds both.

Per batch of positive events ``(src, dst, t)`` the task calls ``model(src, dst, t, ctx)`` and
``model(src, neg_dst, t, ctx)`` (logits), then ``model.observe(src, dst, t, edge_ids, ctx)`` once the
batch is scored (memory models such as TGN update their state there; others do nothing), and
``model.reset_state()`` before each pass over a split.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...data.temporal import EventStream, TemporalNeighborSampler

__all__ = ["TemporalContext", "TemporalLinkPredictor", "MergeLayer"]


@dataclass
class TemporalContext:
    """What a model may read: ``stream`` (events, features) and ``sampler`` (its history, strictly
    before each query time)."""

    stream: EventStream
    sampler: TemporalNeighborSampler


class MergeLayer(nn.Module):
    """DyGLib's link head: ``fc2(relu(fc1([h_src | h_dst])))`` -> one logit per pair, ``(B, D), (B, D) -> (B,)``."""

    def __init__(self, dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or dim
        self.fc1, self.fc2 = nn.Linear(2 * dim, hidden), nn.Linear(hidden, 1)

    def forward(self, h_src: Tensor, h_dst: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.fc1(torch.cat([h_src, h_dst], -1))))[..., 0]


class TemporalLinkPredictor(nn.Module):
    """Base class: subclasses implement :meth:`embed_pairs` (``src, dst, t (B,) -> h_src, h_dst (B, D)``)
    and own ``self.head`` (a :class:`MergeLayer`); memory models override :meth:`observe` and
    :meth:`reset_state`."""

    head: MergeLayer

    def embed_pairs(self, src: Tensor, dst: Tensor, t: Tensor, ctx: TemporalContext) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def forward(self, src: Tensor, dst: Tensor, t: Tensor, ctx: TemporalContext) -> Tensor:
        """Logits ``(B,)`` of the candidate links ``src -> dst`` at times ``t``."""
        if not (src.shape == dst.shape == t.shape and src.dim() == 1):
            raise ValueError(f"src, dst and t must be (B,) alike, got {tuple(src.shape)}, {tuple(dst.shape)}, "
                             f"{tuple(t.shape)}")
        h_src, h_dst = self.embed_pairs(src, dst, t, ctx)
        return self.head(h_src, h_dst)

    def observe(self, src: Tensor, dst: Tensor, t: Tensor, edge_ids: Tensor, ctx: TemporalContext) -> None:
        """The batch's positive events, revealed after it was scored (default: nothing to update)."""

    def reset_state(self) -> None:
        """Forget any state carried across batches (default: none)."""
