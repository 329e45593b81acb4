"""Rotary relation with arbitrary per-token angles (RoFormer's rotation, Su et al. 2021, eq. 13-16,
with the angles given instead of ``position * frequency``).

Token ``i`` rotates the ``D/2`` pairs of its query and key head vectors by its own angles
``theta_i (D/2,)``; then ``<R(theta_i) q_i, R(theta_j) k_j> = q_i^T R(theta_j - theta_i) k_j``: the
score depends on the two tokens only through the difference of their angles, a relation between
the pair that never materialises a ``(Lq, Lk)`` bias, so attention stays on the fused kernels.
LightGlue's learned Fourier features of 2-D keypoints (Lindenberger et al. 2023, eq. 4) are such
angles; :class:`~relformer.nn.RotaryEmbedding` is the special case ``theta = position * frequency``.

Pairs are ``(x_i, x_{i + D/2})`` (the half-split layout, one ``cat`` per call); a checkpoint whose
pairs are interleaved ``(x_{2i}, x_{2i+1})`` loads by permuting its q / k projection rows
(:func:`interleaved_to_half`), which leaves every score unchanged.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["Rotary", "interleaved_to_half"]


class Rotary:
    """Per-token rotations for packed tokens: ``angles (N, D/2)``.

    :meth:`apply` rotates ``x (N, G, D)`` (``G`` head vectors per token: q and k heads together);
    :meth:`select` keeps some tokens (point pruning). ``cos = [cos, cos]`` and ``sin = [-sin, sin]``
    ``(N, 1, D)`` are built once, so a rotation is one swap of halves, one product and one fused
    multiply-add. Computed in ``angles.dtype``.
    """

    __slots__ = ("cos", "sin")

    def __init__(self, angles: Tensor | None = None, *, cos: Tensor | None = None, sin: Tensor | None = None) -> None:
        if angles is not None:
            if not isinstance(angles, Tensor) or angles.dim() != 2 or not angles.is_floating_point():
                raise ValueError(f"angles must be a float tensor (N, D/2), got "
                                 f"{tuple(angles.shape) if isinstance(angles, Tensor) else type(angles).__name__}")
            c, s = angles.cos(), angles.sin()
            cos, sin = torch.cat((c, c), -1)[:, None], torch.cat((-s, s), -1)[:, None]  # (N, 1, D)
        self.cos, self.sin = cos, sin

    @property
    def head_dim(self) -> int:
        return self.cos.shape[-1]

    def apply(self, x: Tensor) -> Tensor:
        """``x (N, G, D)`` -> ``(N, G, D)``: ``[x1 cos - x2 sin, x2 cos + x1 sin]`` with ``x = [x1, x2]``."""
        if x.dim() != 3 or x.shape[0] != self.cos.shape[0] or x.shape[-1] != self.head_dim:
            raise ValueError(f"x must be (N, G, D) = ({self.cos.shape[0]}, G, {self.head_dim}), got {tuple(x.shape)}")
        x1, x2 = x.chunk(2, dim=-1)
        return torch.addcmul(x * self.cos, torch.cat((x2, x1), dim=-1), self.sin)

    def select(self, index: Tensor) -> "Rotary":
        """The rotations of tokens ``index (K,)``."""
        return Rotary(cos=self.cos.index_select(0, index), sin=self.sin.index_select(0, index))


def interleaved_to_half(head_dim: int, device=None) -> Tensor:
    """``(head_dim,)`` permutation: new channel ``j`` takes old channel ``perm[j]``, turning interleaved
    pairs ``(2i, 2i + 1)`` into half-split pairs ``(i, i + D/2)``."""
    if head_dim % 2:
        raise ValueError(f"head_dim must be even, got {head_dim}")
    return torch.cat((torch.arange(0, head_dim, 2, device=device), torch.arange(1, head_dim, 2, device=device)))
