"""Decoder-only language model (Radford et al. 2019, GPT-2 layout) with a key/value cache."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ...nn import Linear
from ...relations import Causal
from ..registry import PretrainedMixin
from .config import TextConfig, TextEmbeddings, check_ids, evaluating, init_weights, layer_stack

__all__ = ["CausalLM", "KVCache"]


class _LayerKV:
    """One layer's cache slot: ``update(k, v)`` appends this call's keys/values ``(B, Hkv, L, D)``
    and returns all of them; tensors are concatenated, never written in place."""

    def __init__(self, k: Tensor | None = None, v: Tensor | None = None) -> None:
        self.k, self.v = k, v

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.k is not None:
            k, v = torch.cat((self.k, k), dim=2), torch.cat((self.v, v), dim=2)
        self.k, self.v = k, v
        return k, v


class KVCache:
    """Keys and values of every token seen so far, one slot per layer: ``k, v (B, Hkv, L_past, D)``
    (RoPE applied). :meth:`CausalLM.forward` returns a new cache and leaves the one it got unchanged,
    so a cache can be reused (e.g. to branch from a common prompt)."""

    def __init__(self, depth: int, past: "KVCache | None" = None) -> None:
        if past is None:
            self.layers = [_LayerKV() for _ in range(depth)]
            return
        if len(past.layers) != depth:
            raise ValueError(f"cache has {len(past.layers)} layers, the model {depth}")
        self.layers = [_LayerKV(p.k, p.v) for p in past.layers]

    def __len__(self) -> int:
        """Cached tokens ``L_past``."""
        k = self.layers[0].k if self.layers else None
        return 0 if k is None else k.shape[2]

    @property
    def batch_size(self) -> int | None:
        k = self.layers[0].k if self.layers else None
        return None if k is None else k.shape[0]


class CausalLM(PretrainedMixin, nn.Module):
    """Decoder-only language model (Radford et al. 2019, GPT-2 layout with ``pre_norm=True``):
    embeddings, blocks under a :class:`~relformer.relations.Causal` relation, final norm, LM head
    (tied to the word embedding when ``tie_embeddings``). Needs ``TextConfig(causal=True)`` with ``position`` ``"rope"``
    or ``"absolute"``.

    ``forward(input_ids (B, L), cache=None) -> (logits (B, L, vocab), cache)``: with a
    :class:`KVCache` of ``L_past`` tokens the new tokens sit at positions ``L_past ...`` and attend
    every cached key (relation ``Causal(offset=L_past)``; none for a single new token).
    ``generate(input_ids, max_new_tokens)``: greedy decoding.
    """

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        if not config.causal:
            raise ValueError("CausalLM needs TextConfig(causal=True)")
        if config.position not in ("rope", "absolute"):
            raise ValueError(f"CausalLM supports position='rope' or 'absolute', got {config.position!r} "
                             "(its bias would need the cache offset)")
        self.config = c = config
        self.embeddings = TextEmbeddings(c)
        self.encoder = layer_stack(c)
        self.lm_head = Linear(c.dim, c.vocab_size, bias=False)
        self.apply(init_weights)
        if c.tie_embeddings:
            self.lm_head.weight = self.embeddings.word.weight

    def forward(self, input_ids: Tensor, cache: KVCache | None = None) -> tuple[Tensor, KVCache]:
        c = self.config
        check_ids("input_ids", input_ids, c.vocab_size)
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be (B, L) with L >= 1, got shape {tuple(input_ids.shape)}")
        if cache is not None and not isinstance(cache, KVCache):
            raise TypeError(f"cache must be a KVCache returned by this model, got {type(cache).__name__}")
        B, L = input_ids.shape
        past = len(cache) if cache is not None else 0
        if past and cache.batch_size != B:
            raise ValueError(f"cache holds a batch of {cache.batch_size}, input_ids has {B}")
        positions = torch.arange(past, past + L, device=input_ids.device)  # (L,)
        x = self.embeddings(input_ids, positions)  # (B, L, C)
        relation = Causal(offset=past) if L > 1 else None  # one new token attends every key
        cache = KVCache(len(self.encoder.layers), cache)
        rope = positions if c.position == "rope" else None
        x = self.encoder(x, relation, positions=rope, kv_cache=cache.layers)
        return self.lm_head(x), cache

    def generate(self, input_ids: Tensor, max_new_tokens: int, use_cache: bool = True) -> Tensor:
        """Greedy decoding: ``(B, L) -> (B, L + max_new_tokens)`` (eval mode, no grad). With
        ``use_cache`` each step feeds only the new token; without, the whole sequence."""
        if not (isinstance(max_new_tokens, int) and max_new_tokens >= 0):
            raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        ids = input_ids
        with evaluating(self):
            cache = None
            step = ids
            for _ in range(max_new_tokens):
                logits, cache = self(step, cache if use_cache else None)
                token = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
                ids = torch.cat((ids, token), dim=1)
                step = token if use_cache else ids
        return ids

