"""BERT-style text encoder (Devlin et al. 2019) on :func:`relformer.attend`: word + absolute
position + token-type embeddings, post-LN blocks with an exact-GELU MLP, an optional
``tanh(Linear(cls))`` pooler; relative variants RoPE (Su et al. 2021), ALiBi (Press et al. 2022)
and T5 buckets (Raffel et al. 2020). Variable-length batches run **packed**: embeddings,
projections, norms and MLPs see only the ``N`` real tokens ``(N, C)``; attention runs on rows of
whole sentences (:meth:`TextEncoder.layout`) kept apart by a 4-D block-diagonal mask."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...attention import Relation
from ...data import Packed, Rows
from ...nn import Linear
from ..registry import PretrainedMixin
from .config import TextConfig, TextEmbeddings, TextOutput, check_ids, init_weights, layer_stack, relative_bias

__all__ = ["TextEncoder", "TextLayout"]


@dataclass(frozen=True)
class TextLayout:
    """Where packed tokens meet in attention, built once per forward and shared by every layer.

    ``rows``: whole items placed in ``(R, W)`` slots (:meth:`~relformer.data.Packed.to_rows`);
    ``relation``: the block-diagonal :class:`~relformer.relations.Documents` mask of the rows
    (4-D for SDPA, built once and cached on the relation), plus the model's relative bias;
    ``positions``: ``(R, W)`` RoPE positions of the slots, or None.
    """

    rows: Rows
    relation: Relation
    positions: Tensor | None


class TextEncoder(PretrainedMixin, nn.Module):
    """BERT-style encoder: ``input_ids -> TextOutput``, called like HF ``BertModel``.

    ``forward(input_ids, attention_mask=None, token_type_ids=None, output_hidden_states=False,
    row_len=None)``. ``input_ids`` is either

    * a :class:`~relformer.data.Packed` batch of token ids (``values (N,)``, ``offsets (n + 1,)``;
      ``token_type_ids`` then a ``(N,)`` tensor or a Packed of the same layout); positions restart
      at 0 in every item; outputs are Packed ``(N, C)``;
    * or padded ``(B, L)`` ids with ``attention_mask (B, L)`` (1 = token; default all ones) and
      ``token_type_ids (B, L)``; absolute positions are column indices, as HF BERT. The real
      tokens are packed first, so padding costs nothing; outputs are ``(B, L, C)`` with zeros at
      padding (HF fills padding with values no one reads). The pooler reads each item's first
      real token (HF reads column 0, the same for right-padded batches).

    An item with no tokens, an empty batch, ids outside the vocabulary or a sequence longer than
    ``max_position`` (absolute positions) raise ``ValueError``. ``row_len`` sets the attention row
    width (default: the longest item; see :meth:`layout`).
    """

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        if config.causal:
            raise ValueError("TextConfig(causal=True) is a decoder: build it with CausalLM (or build_model)")
        self.config = c = config
        self.embeddings = TextEmbeddings(c)
        self.encoder = layer_stack(c)
        self.rel_bias = relative_bias(c)
        self.pooler = Linear(c.dim, c.dim) if c.pooler else None
        self.apply(init_weights)

    def layout(self, packed: Packed, positions: Tensor, row_len: int | None = None) -> TextLayout:
        """The attention layout of a packed batch: whole items in rows of ``row_len`` slots
        (default: the longest item), assigned by first-fit decreasing
        (:func:`~relformer.data.plan_rows`), so short items share a row and long ones fill theirs.

        Rows keep attention's work near the real tokens' (no padding to the longest item) while
        each row stays a dense 4-D block for SDPA's fused kernel; one long block-diagonal sequence
        or nested tensors pay for the whole ``N x N`` mask or lose the fused kernel
        (``bench/results/``). ``positions (N,)`` are the tokens' RoPE positions.
        """
        rows = packed.to_rows(row_len)
        relation = rows.relation()
        if self.rel_bias is not None:  # slot differences are position differences inside an item
            relation = relation & self.rel_bias
        rope_positions = rows.gather(positions) if self.config.position == "rope" else None
        return TextLayout(rows, relation, rope_positions)

    def forward(self, input_ids: Tensor | Packed, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | Packed | None = None, output_hidden_states: bool = False,
                row_len: int | None = None) -> TextOutput:
        c = self.config
        if isinstance(input_ids, Packed):
            packed, mask, positions, token_type_ids = self._packed(input_ids, attention_mask, token_type_ids)
        else:
            packed, mask, positions, token_type_ids = self._pack(input_ids, attention_mask, token_type_ids)
        check_ids("input_ids", packed.values, c.vocab_size)
        if packed.values.dim() != 1:
            raise ValueError(f"packed input_ids values must be 1-D (N,), got shape {tuple(packed.values.shape)}")
        if token_type_ids is not None:
            check_ids("token_type_ids", token_type_ids, max(c.type_vocab_size, 1))
        if packed.num_items == 0:
            raise ValueError("empty batch: input_ids holds no items")
        empty = (packed.lengths == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"items {empty[:5]} have no tokens; every item needs at least one "
                             "(a tokenizer gives [CLS] [SEP] for an empty text)")
        layout = self.layout(packed, positions, row_len)
        x = self.embeddings(packed.values, positions, token_type_ids)  # (N, C)
        stack = self.encoder(x, layout.relation, positions=layout.positions, rows=layout.rows,
                             return_hidden=output_hidden_states)  # (N, C)
        x, hidden = stack if output_hidden_states else (stack, None)
        pooled = torch.tanh(self.pooler(x[packed.offsets[:-1]])) if self.pooler is not None else None

        def out(values: Tensor) -> Tensor | Packed:
            if mask is None:
                return packed.with_values(values)
            padded = values.new_zeros(*mask.shape, values.shape[-1])  # (B, L, C)
            padded[mask] = values
            return padded

        return TextOutput(out(x), pooled, None if hidden is None else tuple(out(h) for h in hidden))

    @staticmethod
    def _packed(packed: Packed, attention_mask, token_type_ids) -> tuple[Packed, None, Tensor, Tensor | None]:
        """Packed inputs -> the same, no mask, positions restarting per item ``(N,)``, token types ``(N,)``."""
        if attention_mask is not None:
            raise ValueError("attention_mask is for padded input_ids; a Packed batch needs none")
        if isinstance(token_type_ids, Packed):
            if not torch.equal(token_type_ids.offsets, packed.offsets):
                raise ValueError("token_type_ids (Packed) must have the offsets of input_ids")
            token_type_ids = token_type_ids.values
        if token_type_ids is not None and (not isinstance(token_type_ids, Tensor)
                                           or token_type_ids.shape != packed.values.shape):
            raise ValueError(f"token_type_ids must be a ({packed.values.shape[0]},) tensor for this Packed batch")
        return packed, None, packed.positions(), token_type_ids

    @staticmethod
    def _pack(input_ids, attention_mask, token_type_ids) -> tuple[Packed, Tensor, Tensor, Tensor | None]:
        """Padded ``(B, L)`` inputs -> the packed real tokens, the bool mask, their column positions
        ``(N,)`` and token types ``(N,)``."""
        if not isinstance(input_ids, Tensor):
            raise TypeError(f"input_ids must be a (B, L) tensor or a Packed batch, got {type(input_ids).__name__}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be 2-D (B, L) (or a Packed batch), got shape {tuple(input_ids.shape)}")
        if attention_mask is None:
            mask = torch.ones_like(input_ids, dtype=torch.bool)
        elif not isinstance(attention_mask, Tensor) or attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask must be a tensor of the shape of input_ids {tuple(input_ids.shape)}")
        elif attention_mask.dtype != torch.bool and ((attention_mask != 0) & (attention_mask != 1)).any():
            raise ValueError("attention_mask must hold 0 (padding) and 1 (token) only")
        else:
            mask = attention_mask.bool()
        if token_type_ids is not None:
            if not isinstance(token_type_ids, Tensor) or token_type_ids.shape != input_ids.shape:
                raise ValueError(f"token_type_ids must be a tensor of the shape of input_ids {tuple(input_ids.shape)}")
            token_type_ids = token_type_ids[mask]
        B, L = input_ids.shape
        positions = torch.arange(L, device=input_ids.device).expand(B, L)[mask]
        return Packed.from_padded(input_ids, mask=mask), mask, positions, token_type_ids

