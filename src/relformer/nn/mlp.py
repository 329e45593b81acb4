"""Position-wise feed-forward layers.

Both take ``(dim, hidden, out=None)`` so a block can be given either as ``mlp_layer``; both
name their input projection ``fc1`` and their output projection ``fc2`` (the layers that read
from and write to the residual stream, see :mod:`relformer.nn.convert`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .gemm import Linear

__all__ = ["MLP", "SwiGLU"]


class MLP(nn.Module):
    """Transformer feed-forward (Vaswani et al. 2017, sec. 3.3): ``fc2(drop(act(fc1(x))))``.

    ``x (..., dim) -> (..., out)``; ``out`` defaults to ``dim``; ``act`` is a module class.
    """

    def __init__(self, dim: int, hidden: int, out: int | None = None, act: type[nn.Module] = nn.GELU,
                 dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        out = dim if out is None else out
        self.fc1 = Linear(dim, hidden, bias=bias)
        self.act = act()
        self.fc2 = Linear(hidden, out, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        if isinstance(self.act, nn.GELU) and not h.requires_grad:  # inference: in place
            h = torch.ops.aten.gelu_(h, approximate=self.act.approximate)
        else:
            h = self.act(h)
        return self.drop(self.fc2(self.drop(h)))


class SwiGLU(nn.Module):
    """SwiGLU feed-forward (Shazeer 2020, "GLU Variants Improve Transformer"):
    ``FFN(x) = (Swish(x W) * (x V)) W2``.

    ``fc1`` is the fused ``[W | V]`` projection ``dim -> 2 * hidden`` (first half the gate ``W``,
    second half the value ``V``); ``fc2`` is ``W2``. Bias-free by default, as in the paper.
    """

    def __init__(self, dim: int, hidden: int, out: int | None = None, dropout: float = 0.0,
                 bias: bool = False) -> None:
        super().__init__()
        out = dim if out is None else out
        self.hidden = int(hidden)
        self.fc1 = Linear(dim, 2 * hidden, bias=bias)
        self.fc2 = Linear(hidden, out, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.fc1(x).chunk(2, dim=-1)  # (..., hidden) each
        return self.drop(self.fc2(self.drop(F.silu(gate) * value)))
