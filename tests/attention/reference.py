"""A float64 textbook attention, written apart from the backends, and a runner for every backend.

``reference(q, k, v, relation)``: ``softmax(scale * q k^T + bias, blocked pairs -inf) * C @ v`` in
float64 from the relation's dense forms, with fully masked rows zero. The backends must agree
with it (tolerance by dtype) wherever it is finite.
"""
from __future__ import annotations

import contextlib

import pytest
import torch

import relformer

BACKENDS = ("eager", "sdpa", "chunked", "auto", pytest.param("flex", marks=pytest.mark.slow))  # Flex compiles


def reference(q, k, v, relation=None, scale=None):
    q, k, v = (t.detach().double() for t in (q, k, v))
    B, H, Lq, D = q.shape
    Lk, groups = k.shape[2], H // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    s = q @ k.transpose(-1, -2) * (D ** -0.5 if scale is None else scale)
    mask = None
    if relation is not None:
        with torch.no_grad():
            bias, mask = relation.dense_parts(B, H, Lq, Lk, q.device, dtype=torch.float64)
        if bias is not None:
            s = s + bias
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, -1)
    if relation is not None and relation.has_prob:
        with torch.no_grad():
            p = p * relation.dense_prob(B, H, Lq, Lk, q.device).double()
    out = p @ v
    if mask is not None:
        out = out.masked_fill(~mask.any(-1, keepdim=True), 0.0)
    return out


def run(q, k, v, relation=None, backend="eager", **kwargs):
    """``attend`` on ``backend``; Flex (no CPU backward) runs under ``no_grad``."""
    ctx = torch.no_grad() if backend == "flex" else contextlib.nullcontext()
    with ctx:
        return relformer.attend(q, k, v, relation, backend=backend, **kwargs)
