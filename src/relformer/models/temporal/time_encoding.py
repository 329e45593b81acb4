"""The time encoding of TGAT (Xu et al. 2020, "Inductive Representation Learning on Temporal Graphs",
Eq. 8) as DyGLib writes it (Yu et al. 2023, ``models/modules.py``, ``TimeEncoder``):

    phi(dt) = cos(dt * w + b),   w_i = 10 ** (-9 i / (D - 1)),  b = 0,   i = 0 .. D - 1

``dt (...)`` -> ``(..., D)``. The frequencies span periods of 1 to 10^9 time units (seconds here), so
both minutes and years of elapsed time are told apart. ``trainable=False`` keeps ``w`` and ``b`` fixed
(non-persistent buffers, GraphMixer's choice); ``trainable=True`` learns them from that start (DyGLib's
default for TGAT, TGN and DyGFormer). The product is taken in float64, so large elapsed times keep
their phase.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["TimeEncoder"]


class TimeEncoder(nn.Module):
    """``TimeEncoder(dim, trainable=False)``: ``dt (...) -> cos(dt * w + b) (..., dim)`` float32."""

    def __init__(self, dim: int, trainable: bool = False) -> None:
        super().__init__()
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        w = 1.0 / 10 ** torch.linspace(0, 9, dim, dtype=torch.float64)
        b = torch.zeros(dim, dtype=torch.float64)
        self.dim, self.trainable = dim, bool(trainable)
        if trainable:
            self.w, self.b = nn.Parameter(w.float()), nn.Parameter(b.float())
        else:
            self.register_buffer("w", w, persistent=False)
            self.register_buffer("b", b, persistent=False)

    def forward(self, dt: Tensor) -> Tensor:
        phase = dt.double().unsqueeze(-1) * self.w.double() + self.b.double()  # (..., D)
        return torch.cos(phase).float()

    def extra_repr(self) -> str:
        return f"dim={self.dim}, trainable={self.trainable}"
