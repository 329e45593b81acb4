"""The ``chunked`` backend: memory-efficient blockwise attention for CPU training.

SDPA drops to its math kernel (O(L^2) memory, several times slower) as soon as the bias requires
grad, and Flex has no CPU backward. This backend is FlashAttention's algorithm
(Dao et al. 2022; online softmax in forward, recomputation in backward) written in plain
PyTorch inside one ``torch.autograd.Function``. The Relation's bias, mask and multiplier
are computed tile by tile from its index functions and recomputed in backward, so the
extra memory is O(tile) instead of O(Lq * Lk), and gradients reach the relation's
tables through ``torch.autograd.grad`` on each tile. Tiles whose mask is all False are
skipped (block sparsity for windows and packed documents).

Shapes: ``q (B, H, Lq, D)``, ``k (B, H, Lk, D)``, ``v (B, H, Lk, Dv)`` (GQA is expanded
by the caller); out ``(B, H, Lq, Dv)``. Post-softmax multipliers (URPE) are supported:
with ``P' = P * C`` the backward only changes ``dP -> C * dP`` and ``dC = P * dP``.

Semantics as on every backend: scores, softmax and accumulators run in float32, or float64 for
float64 inputs; blocked pairs are overwritten with ``-inf`` (never added to), so a NaN or inf a
row never sees cannot reach it; a NaN a row does see makes that row NaN (a row is zeroed only
when its mask blocks every key, never because its sum is not positive).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .backends import compute_dtype
from .relation import Relation

__all__ = ["chunked_attention", "tile_sizes"]

# Elements of one (B, H, tile_q, tile_k) fp32 score tile; ~8 temporaries of this size live at once.
TILE_ELEMENTS = 1 << 21


def tile_sizes(B: int, H: int, Lq: int, Lk: int, budget: int = TILE_ELEMENTS) -> tuple[int, int]:
    """Tile sizes (multiples of 64) whose ``B*H*tq*tk`` fits ``budget``; wide key tiles first."""
    per_row = max(1, budget // max(1, B * H))
    tk = min(Lk, max(64, min(1024, per_row // 64) // 64 * 64))
    tq = min(Lq, max(64, per_row // tk // 64 * 64))
    return tq, tk


def _tiles(L: int, t: int):
    return [(s, min(s + t, L)) for s in range(0, L, t)]


class _Chunked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, relation, scale, tq, tk, *rel_tensors):
        B, H, Lq, _ = q.shape
        Lk, Dv = k.shape[2], v.shape[-1]
        rel = relation
        dt = compute_dtype(q.dtype)
        out = torch.empty(B, H, Lq, Dv, dtype=q.dtype, device=q.device)
        lse = torch.empty(B, H, Lq, dtype=dt, device=q.device)
        kf, vf = k.to(dt), v.to(dt)
        for qs, qe in _tiles(Lq, tq):
            qb = q[:, :, qs:qe].to(dt)
            m = torch.full((B, H, qe - qs), float("-inf"), dtype=dt, device=q.device)
            l = torch.zeros(B, H, qe - qs, dtype=dt, device=q.device)
            acc = torch.zeros(B, H, qe - qs, Dv, dtype=dt, device=q.device)
            # rows with at least one key the mask lets through; only the others are zeroed
            seen = torch.zeros(B, H, qe - qs, dtype=torch.bool, device=q.device) if rel is not None and rel.has_mask else None
            for ks, ke in _tiles(Lk, tk):
                grid = rel._grid(B, H, qe - qs, ke - ks, q.device, qs, ks) if rel is not None else None
                mask = rel.mask_mod(*grid) if rel is not None and rel.has_mask else None
                if mask is not None and not mask.any():
                    continue
                s = torch.matmul(qb, kf[:, :, ks:ke].transpose(-1, -2)) * scale
                if rel is not None and rel.has_bias:
                    s = s + rel.bias_mod(*grid).to(dt)
                if mask is not None:
                    s = s.masked_fill(~mask, float("-inf"))
                    seen = seen | mask.any(-1)
                m_new = torch.maximum(m, s.amax(-1))
                m_safe = torch.where(torch.isneginf(m_new), 0.0, m_new)
                p = torch.exp(s - m_safe.unsqueeze(-1))
                corr = torch.exp(m - m_safe)
                l = l * corr + p.sum(-1)
                if rel is not None and rel.has_prob:
                    p = p * rel.prob_mod(*grid).to(dt)
                acc = acc * corr.unsqueeze(-1) + torch.matmul(p, vf[:, :, ks:ke])
                m = m_new
            alive = seen if seen is not None else torch.ones_like(l, dtype=torch.bool)
            out[:, :, qs:qe] = torch.where(alive.unsqueeze(-1), acc / l.unsqueeze(-1), 0.0).to(q.dtype)
            # a dead row gets lse=+inf so that exp(s - lse) = 0 in backward
            lse[:, :, qs:qe] = torch.where(alive, m + torch.log(l), float("inf"))
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.relation, ctx.scale, ctx.tq, ctx.tk = relation, scale, tq, tk
        ctx.rel_tensors = rel_tensors
        return out

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, out, lse = ctx.saved_tensors
        rel, scale = ctx.relation, ctx.scale
        rel_tensors = ctx.rel_tensors
        B, H, Lq, _ = q.shape
        Lk = k.shape[2]
        dt = compute_dtype(q.dtype)
        kf, vf, dof = k.to(dt), v.to(dt), d_out.to(dt)
        delta = (dof * out.to(dt)).sum(-1)  # (B, H, Lq) = rowsum(dO * O), unchanged by a multiplier
        dq = torch.zeros(q.shape, dtype=dt, device=q.device)
        dk = torch.zeros(k.shape, dtype=dt, device=q.device)
        dv = torch.zeros(v.shape, dtype=dt, device=q.device)
        rel_grads = [None] * len(rel_tensors)
        learn = bool(rel_tensors)
        if learn:
            # Recompute tiles on fresh leaves: their gradients are handed to the outer graph, which
            # carries them further back (e.g. edge_bias -> proj) exactly once.
            leaves = [t.detach().requires_grad_() for t in rel_tensors]
            by_id = {id(t): leaf for t, leaf in zip(rel_tensors, leaves)}
            rel = rel.map_tensors(lambda t: by_id.get(id(t), t))
        for qs, qe in _tiles(Lq, ctx.tq):
            qb, dob = q[:, :, qs:qe].to(dt), dof[:, :, qs:qe]
            lse_b, delta_b = lse[:, :, qs:qe].unsqueeze(-1), delta[:, :, qs:qe].unsqueeze(-1)
            for ks, ke in _tiles(Lk, ctx.tk):
                grid = rel._grid(B, H, qe - qs, ke - ks, q.device, qs, ks) if rel is not None else None
                mask = rel.mask_mod(*grid) if rel is not None and rel.has_mask else None
                if mask is not None and not mask.any():
                    continue
                kb, vb = kf[:, :, ks:ke], vf[:, :, ks:ke]
                s = torch.matmul(qb, kb.transpose(-1, -2)) * scale
                outs, grads = [], []
                with torch.enable_grad():
                    bias = rel.bias_mod(*grid) if rel is not None and rel.has_bias else None
                    mult = rel.prob_mod(*grid) if rel is not None and rel.has_prob else None
                if bias is not None:
                    s = s + bias.detach().to(dt)
                if mask is not None:
                    s = s.masked_fill(~mask, float("-inf"))
                p = torch.exp(s - lse_b)  # (B, H, tq, tk) softmax probabilities
                dp = torch.matmul(dob, vb.transpose(-1, -2))
                if mult is not None:
                    if learn and mult.requires_grad:
                        outs.append(mult)
                        grads.append((p * dp).sum_to_size(mult.shape).to(mult.dtype))
                    pm = p * mult.detach().to(dt)
                    dv[:, :, ks:ke] += torch.matmul(pm.transpose(-1, -2), dob)
                    dp = dp * mult.detach().to(dt)
                else:
                    dv[:, :, ks:ke] += torch.matmul(p.transpose(-1, -2), dob)
                ds = p * (dp - delta_b)
                if bias is not None and learn and bias.requires_grad:
                    outs.append(bias)
                    grads.append(ds.sum_to_size(bias.shape).to(bias.dtype))
                dq[:, :, qs:qe] += torch.matmul(ds, kb) * scale
                dk[:, :, ks:ke] += torch.matmul(ds.transpose(-1, -2), qb) * scale
                if outs:
                    tile_grads = torch.autograd.grad(outs, leaves, grads, allow_unused=True)
                    for i, g in enumerate(tile_grads):
                        if g is not None:
                            rel_grads[i] = g if rel_grads[i] is None else rel_grads[i] + g
        # a tensor no live tile reached still gets a (zero) gradient, as on the other backends
        rel_grads = [torch.zeros_like(t) if g is None else g for g, t in zip(rel_grads, rel_tensors)]
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, *rel_grads)


def chunked_attention(q: Tensor, k: Tensor, v: Tensor, relation: Relation | None, scale: float,
                      tile_q: int | None = None, tile_k: int | None = None) -> Tensor:
    """Blockwise attention with O(tile) bias memory; gradients flow to q, k, v and the relation's tensors."""
    B, H, Lq, _ = q.shape
    Lk = k.shape[2]
    cost = relation.tile_cost if relation is not None else 1.0
    tq, tk = tile_sizes(B, H, Lq, Lk, budget=max(1 << 14, int(TILE_ELEMENTS / cost)))
    tq, tk = tile_q or tq, tile_k or tk
    rel_tensors = relation.grad_tensors() if relation is not None and torch.is_grad_enabled() else []
    return _Chunked.apply(q, k, v, relation, scale, tq, tk, *rel_tensors)
