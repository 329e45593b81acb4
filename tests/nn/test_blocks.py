"""Attention and blocks against torch's reference layers with copied weights, forward and backward.

References: ``nn.MultiheadAttention`` (self, cross, causal, grouped-query via repeated k/v
weights) and ``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer`` (pre- and
post-norm). Tolerance: fp32 outputs and gradients within 1e-5 (absolute, and relative to the
largest reference gradient entry for parameter gradients).
"""
import pytest
import torch
from torch import nn

from relformer.attention import attend
from relformer.nn import (Attention, Block, CrossBlock, Decoder, DropPath, Encoder, MLP, RMSNorm, RotaryEmbedding, SwiGLU,
                          UnifiedNorm)
from relformer.nn.blocks import BlockSpec
from relformer.relations import Causal, Documents

ATOL = 1e-5
DIM, HEADS = 32, 4


def _close(a, b, what=""):
    tol = max(ATOL, ATOL * b.abs().max().item())
    torch.testing.assert_close(a, b, atol=tol, rtol=1e-4, msg=lambda m: f"{what}: {m}")


@torch.no_grad()
def _copy_attention(attn: Attention, mha: nn.MultiheadAttention) -> None:
    """ours -> torch: q/k/v rows [q; k; v], k/v heads repeated for grouped-query attention."""
    q_dim, kv_dim, groups = attn.num_heads * attn.head_dim, attn.num_kv_heads * attn.head_dim, attn.num_heads // attn.num_kv_heads
    if attn.cross:
        w, b = torch.cat([attn.q.weight, attn.kv.weight]), torch.cat([attn.q.bias, attn.kv.bias])
    else:
        w, b = attn.qkv.weight, attn.qkv.bias
    wq, wk, wv = w.split((q_dim, kv_dim, kv_dim))
    bq, bk, bv = b.split((q_dim, kv_dim, kv_dim))
    rep = lambda t: t.view(attn.num_kv_heads, attn.head_dim, *t.shape[1:]).repeat_interleave(groups, 0).flatten(0, 1)
    mha.in_proj_weight.copy_(torch.cat([wq, rep(wk), rep(wv)]))
    mha.in_proj_bias.copy_(torch.cat([bq, rep(bk), rep(bv)]))
    mha.out_proj.weight.copy_(attn.proj.weight)
    mha.out_proj.bias.copy_(attn.proj.bias)


def _fwd_bwd(fn, *inputs, seed=0):
    """Output and the gradients of the inputs for a fixed random cotangent."""
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*inputs)
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    (out * cot).sum().backward()
    return out, [t.grad for t in inputs]


@pytest.mark.parametrize("backend", ["eager", "sdpa", "auto"])
def test_self_attention_matches_multihead_attention(backend):
    attn = Attention(DIM, HEADS, backend=backend)
    mha = nn.MultiheadAttention(DIM, HEADS, batch_first=True)
    _copy_attention(attn, mha)
    x = torch.randn(2, 9, DIM)
    out, (gx,) = _fwd_bwd(lambda t: attn(t), x)
    ref, (gx_ref,) = _fwd_bwd(lambda t: mha(t, t, t, need_weights=False)[0], x)
    _close(out, ref, "output"), _close(gx, gx_ref, "dx")
    _close(attn.qkv.weight.grad, mha.in_proj_weight.grad, "d qkv.weight")
    _close(attn.qkv.bias.grad, mha.in_proj_bias.grad, "d qkv.bias")
    _close(attn.proj.weight.grad, mha.out_proj.weight.grad, "d proj.weight")


def test_cross_attention_matches_multihead_attention():
    attn = Attention(DIM, HEADS, cross=True)
    mha = nn.MultiheadAttention(DIM, HEADS, batch_first=True)
    _copy_attention(attn, mha)
    x, ctx = torch.randn(2, 5, DIM), torch.randn(2, 11, DIM)
    out, grads = _fwd_bwd(lambda a, c: attn(a, context=c), x, ctx)
    ref, grads_ref = _fwd_bwd(lambda a, c: mha(a, c, c, need_weights=False)[0], x, ctx)
    _close(out, ref, "output")
    for g, gr, name in zip(grads, grads_ref, ["dx", "dcontext"]):
        _close(g, gr, name)
    with pytest.raises(ValueError, match="context"):
        attn(x)
    with pytest.raises(ValueError, match="no context"):
        Attention(DIM, HEADS)(x, context=ctx)


def test_causal_relation_matches_masked_multihead_attention():
    attn = Attention(DIM, HEADS)
    mha = nn.MultiheadAttention(DIM, HEADS, batch_first=True)
    _copy_attention(attn, mha)
    x = torch.randn(2, 8, DIM)
    future = torch.ones(8, 8, dtype=torch.bool).triu(1)  # torch: True = may NOT attend
    out, (gx,) = _fwd_bwd(lambda t: attn(t, Causal()), x)
    ref, (gx_ref,) = _fwd_bwd(lambda t: mha(t, t, t, attn_mask=future, need_weights=False)[0], x)
    _close(out, ref, "output"), _close(gx, gx_ref, "dx")
    x2 = x.clone()
    x2[:, 5:] = torch.randn(2, 3, DIM)  # changing the future leaves the past unchanged
    torch.testing.assert_close(attn(x2, Causal())[:, :5], out[:, :5].detach())


def test_grouped_query_attention_equals_mha_with_repeated_kv_weights():
    attn = Attention(DIM, HEADS, num_kv_heads=2)
    assert attn.qkv.out_features == DIM + 2 * (2 * DIM // HEADS)
    mha = nn.MultiheadAttention(DIM, HEADS, batch_first=True)
    _copy_attention(attn, mha)
    x = torch.randn(2, 7, DIM)
    out, (gx,) = _fwd_bwd(lambda t: attn(t, Causal()), x)
    ref, (gx_ref,) = _fwd_bwd(lambda t: mha(t, t, t, is_causal=True, need_weights=False,
                                            attn_mask=torch.ones(7, 7, dtype=torch.bool).triu(1))[0], x)
    _close(out, ref, "output"), _close(gx, gx_ref, "dx")
    # k/v weight gradient = sum over the query heads that share each k/v head
    g = mha.in_proj_weight.grad[DIM:2 * DIM].view(2, 2, DIM // HEADS, DIM).sum(1).flatten(0, 1)
    _close(attn.qkv.weight.grad[DIM:DIM + 2 * DIM // HEADS], g, "d k weight")
    with pytest.raises(ValueError, match="multiple"):
        Attention(DIM, HEADS, num_kv_heads=3)


@pytest.mark.parametrize("used", [(0, 1, 2), (1, 2)])
def test_split_heads_backward_is_the_split_transpose_backward(used):
    """The fused projection's head views write their gradients into one buffer (no cat): first and
    second derivatives equal the finite-difference ones, also with a head view left unused (zero)."""
    from relformer.nn.blocks import _SplitHeads

    qkv = torch.randn(2, 3, (2 + 2 * 1) * 4, dtype=torch.float64, requires_grad=True)
    fn = lambda t: tuple(_SplitHeads.apply(t, 2, 1, 4)[i] for i in used)
    assert torch.autograd.gradcheck(fn, (qkv,)) and torch.autograd.gradgradcheck(fn, (qkv,))
    q, k, v = _SplitHeads.apply(qkv, 2, 1, 4)
    assert q.shape == (2, 2, 3, 4) and k.shape == v.shape == (2, 1, 3, 4)
    assert torch.equal(v, qkv[..., 12:].view(2, 3, 1, 4).transpose(1, 2))


def test_detr_positions_go_to_queries_and_keys_only():
    attn = Attention(DIM, HEADS)
    mha = nn.MultiheadAttention(DIM, HEADS, batch_first=True)
    _copy_attention(attn, mha)
    x, pos = torch.randn(2, 6, DIM), torch.randn(2, 6, DIM)
    _close(attn(x, pos=pos), mha(x + pos, x + pos, x, need_weights=False)[0], "self")
    cross = Attention(DIM, HEADS, cross=True)
    _copy_attention(cross, mha)
    ctx, ctx_pos = torch.randn(2, 9, DIM), torch.randn(2, 9, DIM)
    _close(cross(x, context=ctx, pos=pos, context_pos=ctx_pos),
           mha(x + pos, ctx + ctx_pos, ctx, need_weights=False)[0], "cross")


def test_rope_attention_is_translation_invariant():
    attn = Attention(DIM, HEADS, rope=RotaryEmbedding(DIM // HEADS))
    x = torch.randn(1, 10, DIM)
    pos = torch.arange(10)
    torch.testing.assert_close(attn(x, Causal(), positions=pos), attn(x, Causal(), positions=pos + 37), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="no rope"):
        Attention(DIM, HEADS)(x, positions=pos)


def _copy_mlp_norms(block, ref, n_norms):
    with torch.no_grad():
        ref.linear1.load_state_dict(block.mlp.fc1.state_dict())
        ref.linear2.load_state_dict(block.mlp.fc2.state_dict())
        for i in range(1, n_norms + 1):
            ours = getattr(block, f"norm{i}")
            ours.weight.uniform_(0.5, 1.5), ours.bias.uniform_(-0.5, 0.5)
            getattr(ref, f"norm{i}").load_state_dict(ours.state_dict())


def _torch_layer(cls, pre_norm):
    """torch's encoder / decoder layer configured like our block with ``mlp_ratio=2``."""
    return cls(DIM, HEADS, dim_feedforward=2 * DIM, dropout=0.0, activation="gelu", batch_first=True,
               norm_first=pre_norm)


@pytest.mark.parametrize("pre_norm", [True, False])
def test_block_matches_transformer_encoder_layer(pre_norm):
    block = Block(DIM, HEADS, mlp_ratio=2.0, pre_norm=pre_norm)
    ref = _torch_layer(nn.TransformerEncoderLayer, pre_norm)
    _copy_attention(block.attn, ref.self_attn)
    _copy_mlp_norms(block, ref, 2)
    x = torch.randn(2, 9, DIM)
    out, (gx,) = _fwd_bwd(lambda t: block(t, Causal()), x)
    ref_out, (gx_ref,) = _fwd_bwd(lambda t: ref(t, src_mask=torch.ones(9, 9, dtype=torch.bool).triu(1)), x)
    _close(out, ref_out, "output"), _close(gx, gx_ref, "dx")
    _close(block.attn.qkv.weight.grad, ref.self_attn.in_proj_weight.grad, "d qkv.weight")
    _close(block.mlp.fc1.weight.grad, ref.linear1.weight.grad, "d fc1.weight")
    _close(block.norm1.weight.grad, ref.norm1.weight.grad, "d norm1.weight")


@pytest.mark.parametrize("pre_norm", [True, False])
def test_cross_block_matches_transformer_decoder_layer(pre_norm):
    block = CrossBlock(DIM, HEADS, mlp_ratio=2.0, pre_norm=pre_norm)
    ref = _torch_layer(nn.TransformerDecoderLayer, pre_norm)
    _copy_attention(block.self_attn, ref.self_attn)
    _copy_attention(block.cross_attn, ref.multihead_attn)
    _copy_mlp_norms(block, ref, 3)
    x, mem = torch.randn(2, 5, DIM), torch.randn(2, 8, DIM)
    out, grads = _fwd_bwd(lambda a, m: block(a, m, Causal()), x, mem)
    ref_out, grads_ref = _fwd_bwd(lambda a, m: ref(a, m, tgt_mask=torch.ones(5, 5, dtype=torch.bool).triu(1)), x, mem)
    _close(out, ref_out, "output")
    for g, gr, name in zip(grads, grads_ref, ["dx", "dcontext"]):
        _close(g, gr, name)


def test_block_on_packed_documents_equals_blocks_per_item():
    block = Block(DIM, HEADS, norm_layer=RMSNorm, mlp_layer=SwiGLU, num_kv_heads=2).eval()
    lengths = [4, 7, 3]
    seg = torch.repeat_interleave(torch.arange(3), torch.tensor(lengths))[None]  # (1, 14)
    x = torch.randn(1, 14, DIM)
    packed = block(x, Documents(seg))
    for item, part in zip(x.split(lengths, dim=1), packed.split(lengths, dim=1)):
        torch.testing.assert_close(part, block(item), atol=1e-5, rtol=0)


def test_block_accepts_batch_statistic_norms():
    block = Block(DIM, HEADS, norm_layer=UnifiedNorm)
    block(torch.randn(2, 5, DIM)).sum().backward()
    grad = block.attn.qkv.weight.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0 and int(block.norm1.iters) == 1


def test_unknown_constructor_arguments_raise_type_error():
    with pytest.raises(TypeError):
        Block(DIM, HEADS, mlp_ration=4.0)
    with pytest.raises(TypeError):
        Attention(DIM, HEADS, n_kv_heads=2)
    with pytest.raises(TypeError):
        Encoder(DIM, 2, HEADS, layer_type=("self", "self"))
    with pytest.raises(TypeError):
        MLP(DIM, 64, activation=nn.ReLU)


class _Slot:
    """A per-layer KV cache slot: appends keys / values along the sequence."""

    def __init__(self):
        self.k = self.v = None

    def update(self, k, v):
        if self.k is not None:
            k, v = torch.cat((self.k, k), 2), torch.cat((self.v, v), 2)
        self.k, self.v = k, v
        return k, v


def test_encoder_forward_equals_its_layers_called_by_hand():
    """Per-layer relations (a sequence, or a function of the layer index and the stream), RoPE
    positions and every hidden state: the same as calling each Block, then the final norm."""
    torch.manual_seed(0)
    enc = Encoder(DIM, 3, HEADS, rope=RotaryEmbedding(DIM // HEADS)).eval()
    assert [type(layer) for layer in enc.layers] == [Block] * 3
    x, pos = torch.randn(2, 6, DIM), torch.arange(6) + 3
    rels = [Causal(), None, Causal()]
    ref, hidden = x, [x]
    for layer, rel in zip(enc.layers, rels):
        ref = layer(ref, rel, positions=pos)
        hidden.append(ref)
    out, got_hidden = enc(x, rels, positions=pos, return_hidden=True)
    torch.testing.assert_close(out, enc.norm(ref), rtol=0, atol=0)
    assert len(got_hidden) == 4
    for a, b in zip(got_hidden, hidden):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    seen = []

    def relation(i, stream):
        seen.append((i, stream))
        return rels[i]

    torch.testing.assert_close(enc(x, relation, positions=pos), out, rtol=0, atol=0)
    assert [i for i, _ in seen] == [0, 1, 2]
    for (_, stream), h in zip(seen, hidden):
        torch.testing.assert_close(stream, h, rtol=0, atol=0)


def test_encoder_kv_cache_decodes_like_the_full_sequence():
    torch.manual_seed(0)
    enc = Encoder(DIM, 2, HEADS, rope=RotaryEmbedding(DIM // HEADS)).eval()
    x = torch.randn(1, 7, DIM)
    full = enc(x, Causal(), positions=torch.arange(7))
    slots = [_Slot(), _Slot()]
    first = enc(x[:, :4], Causal(), positions=torch.arange(4), kv_cache=slots)
    steps = [first] + [enc(x[:, t:t + 1], None, positions=torch.tensor([t]), kv_cache=slots) for t in range(4, 7)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=0, atol=1e-5)
    assert slots[0].k.shape == (1, HEADS, 7, DIM // HEADS)


def test_encoder_on_packed_rows_equals_each_item_alone():
    from relformer.data import Packed

    torch.manual_seed(0)
    enc = Encoder(DIM, 2, HEADS, pre_norm=False).eval()
    items = [torch.randn(n, DIM) for n in (3, 5, 2)]
    packed = Packed.from_list(items)
    rows = packed.to_rows(8)
    out = enc(packed.values, rows.relation(), rows=rows)  # (N, C)
    for item, got in zip(items, out.split([3, 5, 2])):
        torch.testing.assert_close(got, enc(item[None])[0], rtol=0, atol=1e-5)


def test_decoder_equals_its_layers_called_by_hand():
    torch.manual_seed(0)
    dec = Decoder(DIM, 2, HEADS, final_norm=False).eval()
    assert all(isinstance(layer, CrossBlock) for layer in dec.layers) and isinstance(dec.norm, nn.Identity)
    x, mem = torch.randn(2, 5, DIM), torch.randn(2, 7, DIM)
    pos, mem_pos = torch.randn(2, 5, DIM), torch.randn(2, 7, DIM)
    keys = Documents(torch.zeros(2, 5, dtype=torch.long), torch.tensor([[0] * 6 + [-1]] * 2))
    ref, hidden = x, [x]
    for layer in dec.layers:
        ref = layer(ref, mem, Causal(), keys, pos=pos, context_pos=mem_pos)
        hidden.append(ref)
    out, got = dec(x, Causal(), context=mem, context_relation=keys, pos=pos, context_pos=mem_pos, return_hidden=True)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    for a, b in zip(got, hidden):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_encoder_validation_names_the_argument():
    enc, dec = Encoder(DIM, 2, HEADS), Decoder(DIM, 2, HEADS)
    x = torch.randn(1, 4, DIM)
    with pytest.raises(ValueError, match="pass a context"):
        dec(x)
    with pytest.raises(ValueError, match="context"):
        enc(x, context=x)
    with pytest.raises(ValueError, match="relation has 3 entries"):
        enc(x, [None] * 3)
    with pytest.raises(TypeError, match="relation"):
        enc(x, "causal")
    with pytest.raises(ValueError, match="kv_cache has 1 slots"):
        enc(x, kv_cache=[_Slot()])
    with pytest.raises(ValueError, match="depth"):
        Encoder(DIM, -1, HEADS)
    with pytest.raises(ValueError, match=r"drop_path .*-0\.1"):
        Encoder(DIM, 6, HEADS, drop_path=-0.1)
    with pytest.raises(ValueError, match="dropout"):
        Block(DIM, HEADS, dropout=1.5)
    assert isinstance(Encoder(DIM, 2, HEADS, pre_norm=False).norm, nn.Identity)
    assert isinstance(Encoder(DIM, 2, HEADS).norm, nn.LayerNorm)


def test_block_spec_builds_the_same_block_as_keywords():
    spec = BlockSpec(mlp_ratio=2.0, pre_norm=False, layer_scale=0.5)
    torch.manual_seed(0)
    a = Block(DIM, HEADS, spec)
    torch.manual_seed(0)
    b = Block(DIM, HEADS, mlp_ratio=2.0, pre_norm=False, layer_scale=0.5)
    assert a.state_dict().keys() == b.state_dict().keys()
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert Block(DIM, HEADS, spec, mlp_ratio=3.0).mlp.fc1.out_features == 3 * DIM


def test_layer_scale_and_drop_path():
    block = Block(DIM, HEADS, layer_scale=0.0, drop_path=0.5)
    x = torch.randn(16, 3, DIM)
    torch.testing.assert_close(block(x), x)  # zero LayerScale: identity
    with torch.no_grad():
        block.branch1[0].gamma.fill_(1.0)  # attention branch on, MLP branch still scaled to zero
    block.eval()
    assert not torch.equal(block(x), x)  # no drop path in eval
    block.train()
    kept = [not torch.equal(a, b) for a, b in zip(block(x), x)]
    assert any(kept) and not all(kept)  # each sample's branch is dropped with p = 0.5 (16 samples)


def test_drop_path_add_to_is_x_plus_the_dropped_branch():
    """``DropPath.add_to(x, b)`` (one addcmul) equals ``x + DropPath(b)`` with the same draw,
    forward and backward; in eval it is the plain sum."""
    drop = DropPath(0.5)
    x, b = torch.randn(16, 3, DIM, requires_grad=True), torch.randn(16, 3, DIM, requires_grad=True)
    cot = torch.randn(16, 3, DIM)
    results = []
    for fn in (lambda: x + drop(b), lambda: drop.add_to(x, b)):
        torch.manual_seed(0)
        out = fn()
        grads = torch.autograd.grad((out * cot).sum(), (x, b))
        results.append((out, *grads))
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert (results[1][2] == 0).all((1, 2)).any()  # some samples dropped (16 draws at p = 0.5)
    torch.testing.assert_close(drop.eval().add_to(x, b), x + b)


@pytest.mark.parametrize("pre_norm", [True, False])
def test_inference_forward_is_in_place_only_on_its_own_tensors(pre_norm):
    """Without autograd, residual adds and the MLP's GELU write into the block's own temporaries:
    the output equals the recorded forward and the caller's input is left as it was."""
    torch.manual_seed(0)
    block = Block(DIM, HEADS, pre_norm=pre_norm, drop_path=0.1, layer_scale=0.5).eval()
    x = torch.randn(2, 5, DIM)
    recorded = block(x)
    assert recorded.requires_grad
    kept = x.clone()
    for ctx in (torch.no_grad, torch.inference_mode):
        with ctx():
            torch.testing.assert_close(block(x), recorded.detach(), rtol=0, atol=1e-6)
        assert torch.equal(x, kept)
    mlp = MLP(DIM, 2 * DIM)
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), mlp.fc2(nn.functional.gelu(mlp.fc1(x))), rtol=0, atol=1e-6)


def test_blocks_route_attention_through_attend(monkeypatch):
    """Every attention in a decoder layer goes through relformer.attend with the block's backend."""
    import relformer.nn.blocks as blocks

    calls = []

    def spy(q, k, v, relation=None, backend="auto", **kw):
        calls.append((tuple(q.shape), tuple(k.shape), backend, relation))
        return attend(q, k, v, relation, backend=backend, **kw)

    monkeypatch.setattr(blocks, "attend", spy)
    rel = Causal()
    CrossBlock(DIM, HEADS, backend="eager", num_kv_heads=2)(torch.randn(1, 5, DIM), torch.randn(1, 7, DIM), rel)
    assert calls == [((1, HEADS, 5, 8), (1, 2, 5, 8), "eager", rel), ((1, HEADS, 5, 8), (1, 2, 7, 8), "eager", None)]
