"""Shared checks: every backend of ``attend`` must agree with the eager reference.

Tolerances (fp32): forward outputs within ``FWD_ATOL``; gradients of q, k, v and of every
trainable tensor the relation reads within ``GRAD_RTOL`` relative to the reference
gradient's largest entry, and never tighter than ``GRAD_ATOL_FLOOR``: a table gradient sums
up to B*H*Lq*Lk terms of size ~|dO.V|, so even a true zero (e.g. a window of 0, where every
row's softmax is one-hot and the terms cancel) carries fp32 rounding of ~1e-6.
"""
from __future__ import annotations

import torch

import relformer

FWD_ATOL = 1e-5
GRAD_RTOL = 1e-5
GRAD_ATOL_FLOOR = 1e-5


def make_qkv(B, H, Lq, Lk, D, Hkv=None, seed=0, requires_grad=True, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    Hkv = Hkv or H
    q = torch.randn(B, H, Lq, D, generator=g, dtype=dtype)
    k = torch.randn(B, Hkv, Lk, D, generator=g, dtype=dtype)
    v = torch.randn(B, Hkv, Lk, D, generator=g, dtype=dtype)
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


def run_backend(relation, backend, q, k, v, leaves=(), seed=0):
    """Forward (and, unless Flex on CPU, backward with a fixed random cotangent).

    ``leaves``: extra tensors whose gradients are compared (e.g. an edge-feature input).
    Returns (out, [grads of q, k, v, relation parameters..., leaves...]) with grads None for Flex.
    """
    params = list(relation.parameters()) if relation is not None else []
    tensors = [q, k, v, *params, *leaves]
    for t in tensors:
        t.grad = None
    if backend == "flex":
        with torch.no_grad():
            return relformer.attend(q, k, v, relation, backend="flex"), None
    out = relformer.attend(q, k, v, relation, backend=backend)
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1))
    (out.float() * cot).sum().backward()
    grads = [t.grad.clone() if t.grad is not None else None for t in tensors]
    return out, grads


def assert_backends_agree(make_relation, B=2, H=4, Lq=37, Lk=53, D=16, Hkv=None,
                          backends=("sdpa", "flex", "chunked"), seed=0, leaves_fn=None):
    """``make_relation()`` builds the relation (fresh each call so data-dependent parts are rebuilt)."""
    def fresh():  # the same seed for every backend, so random initialisation is identical
        torch.manual_seed(seed)
        relation = make_relation()
        return relation, (leaves_fn(relation) if leaves_fn else ())

    q, k, v = make_qkv(B, H, Lq, Lk, D, Hkv, seed)
    relation, leaves = fresh()
    ref_out, ref_grads = run_backend(relation, "eager", q, k, v, leaves, seed)
    assert torch.isfinite(ref_out).all()
    for backend in backends:
        relation, leaves = fresh()
        out, grads = run_backend(relation, backend, q, k, v, leaves, seed)
        torch.testing.assert_close(out, ref_out, atol=FWD_ATOL, rtol=0, msg=lambda m: f"{backend} forward: {m}")
        if grads is None:
            continue
        for i, (g, rg) in enumerate(zip(grads, ref_grads)):
            if rg is None:
                assert g is None or g.abs().max() == 0, f"{backend}: unexpected gradient #{i}"
                continue
            assert g is not None, f"{backend}: gradient #{i} missing (eager has one)"
            tol = max(GRAD_ATOL_FLOOR, GRAD_RTOL * rg.abs().max().item())
            torch.testing.assert_close(g, rg, atol=tol, rtol=1e-4, msg=lambda m: f"{backend} grad #{i}: {m}")
    return relation


def assert_trains_and_round_trips(config, run, tmp_path):
    """Registry-wide check (timm's habit) for a model config: ``run(model) -> (loss, output)`` gives a
    finite loss, every parameter a finite gradient, and a saved and reloaded model the same output
    (eval mode, exactly)."""
    from relformer.models import build_model

    model = build_model(config)
    loss, _ = run(model)
    assert torch.isfinite(loss)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"parameters without a finite gradient: {no_grad}"
    torch.save(model.state_dict(), tmp_path / "m.pt")
    clone = build_model(config)
    clone.load_state_dict(torch.load(tmp_path / "m.pt"))
    model.eval(), clone.eval()
    with torch.no_grad():
        torch.testing.assert_close(run(clone)[1], run(model)[1], rtol=0, atol=0)
