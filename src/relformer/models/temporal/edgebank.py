"""EdgeBank (Poursafaei et al. 2022, "Towards Better Evaluation for Dynamic Link Prediction", Sec. 5):
a memory of the directed edges seen so far, no learning. ``predict`` scores an edge 1 if it is in
memory and 0 otherwise; ``unlimited`` remembers every edge, ``time_window`` only those seen in the last
``window`` time units before the query time (the paper sets ``window`` to the span of the test split).

The memory is two tensors (sorted edge keys ``src * num_nodes + dst`` and each edge's last time):
``update`` and ``predict`` are a few ``unique`` / ``searchsorted`` calls, no loop over edges.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ...data.temporal import EventStream

__all__ = ["EdgeBank"]

MODES = ("unlimited", "time_window")


class EdgeBank:
    """``EdgeBank(num_nodes, mode="unlimited" | "time_window", window=None)``;
    ``update(events)`` adds an :class:`EventStream`'s edges, ``predict(src (B,), dst (B,), t (B,))``
    gives ``(B,)`` float scores in ``{0, 1}``."""

    def __init__(self, num_nodes: int, mode: str = "unlimited", window: float | None = None) -> None:
        if not isinstance(num_nodes, int) or isinstance(num_nodes, bool) or num_nodes < 1:
            raise ValueError(f"num_nodes must be a positive int, got {num_nodes!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "time_window" and (not isinstance(window, (int, float)) or not window > 0):
            raise ValueError(f"window must be a positive number for mode='time_window', got {window!r}")
        if mode == "unlimited" and window is not None:
            raise ValueError("window is only for mode='time_window'")
        self.num_nodes, self.mode, self.window = num_nodes, mode, window
        self.keys = torch.empty(0, dtype=torch.long)  # (M,) sorted edge keys
        self.last_time = torch.empty(0, dtype=torch.float64)  # (M,) last time each edge was seen

    def __len__(self) -> int:
        return self.keys.numel()

    def update(self, events: EventStream) -> "EdgeBank":
        """Remember the edges of ``events`` (each edge's latest time wins)."""
        if not isinstance(events, EventStream):
            raise TypeError(f"events must be an EventStream, got {type(events).__name__}")
        if events.num_nodes > self.num_nodes:
            raise ValueError(f"events has {events.num_nodes} nodes, the bank was built for {self.num_nodes}")
        dev = self.keys.device
        keys, inverse = torch.unique((events.src * self.num_nodes + events.dst).to(dev), return_inverse=True)
        times = torch.full((keys.numel(),), -torch.inf, dtype=torch.float64, device=dev).scatter_reduce(
            0, inverse, events.t.to(dev, torch.float64), reduce="amax")  # (b,) each new edge's last time
        pos = torch.searchsorted(self.keys, keys)
        known = pos < self.keys.numel()
        known[known.clone()] = self.keys[pos[known]] == keys[known]
        self.last_time[pos[known]] = torch.maximum(self.last_time[pos[known]], times[known])
        if not bool(known.all()):  # insert the edges never seen, keeping the keys sorted
            merged = torch.cat([self.keys, keys[~known]])
            order = torch.argsort(merged)
            self.keys, self.last_time = merged[order], torch.cat([self.last_time, times[~known]])[order]
        return self

    def predict(self, src: Tensor, dst: Tensor, t: Tensor | None = None) -> Tensor:
        """``(B,)`` float32: 1 where ``src -> dst`` is remembered (within ``window`` before ``t``)."""
        for name, x in (("src", src), ("dst", dst)):
            if not isinstance(x, Tensor) or x.dim() != 1 or x.dtype not in (torch.int32, torch.int64):
                raise ValueError(f"{name} must be a 1-D integer tensor (B,) of node ids")
            if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.num_nodes):
                raise ValueError(f"{name} holds ids outside [0, {self.num_nodes})")
        if dst.shape != src.shape:
            raise ValueError(f"dst has shape {tuple(dst.shape)}, src {tuple(src.shape)}")
        if self.mode == "time_window" and (not isinstance(t, Tensor) or t.shape != src.shape):
            raise ValueError(f"t must be a tensor of shape {tuple(src.shape)} for mode='time_window'")
        q = (src.long() * self.num_nodes + dst.long()).to(self.keys.device)
        if self.keys.numel() == 0:
            return torch.zeros(q.shape, dtype=torch.float32, device=src.device)
        pos = torch.searchsorted(self.keys, q).clamp(max=self.keys.numel() - 1)
        hit = self.keys[pos] == q
        if self.mode == "time_window":
            hit &= self.last_time[pos] >= t.to(self.keys.device, torch.float64) - self.window
        return hit.float().to(src.device)
