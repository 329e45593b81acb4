"""3-D referring models on packed scenes: TransRefer3D (He et al. 2021, "TransRefer3D: Entity-and-Relation
Aware Transformer for Fine-Grained 3D Visual Grounding", ACM MM) and a ReferIt3DNet-style baseline
(Achlioptas et al. 2020, "ReferIt3D", ECCV), with ReferIt3D's losses.

Both take a :class:`~relformer.data.grounding.GroundingBatch` (``B`` utterances, ``N`` objects packed by
``object_offsets``, ``P`` points packed by ``point_offsets``) and give one logit per object; the referred
object is the arg-max of the logits of its scene (a softmax over each scene's objects, :func:`scene_log_softmax`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...data import Packed
from ...nn import MLP, Block
from ..outputs import ModelOutput
from ..registry import PretrainedMixin
from .config import GroundingConfig
from .language import WordEncoder
from .layers import ERCB, pair_geometry
from .layout import SceneLayout
from .objects import ObjectEncoder, segment_max, to_slots

__all__ = ["GroundingOutput", "TransRefer3D", "ReferIt3DNet", "grounding_loss", "scene_log_softmax",
           "scene_argmax", "LOSS_WEIGHTS"]

#: ReferIt3D's loss weights: referential cross-entropy + 0.5 object classification + 0.5 target class
LOSS_WEIGHTS = {"referring": 1.0, "object_class": 0.5, "text_class": 0.5}


@dataclass
class GroundingOutput(ModelOutput):
    """``logits (N,)`` referring score of every object, ``object_logits (N, K)`` its class,
    ``text_logits (B, K)`` the target's class read from the utterance, ``object_offsets (B + 1,)``."""

    logits: Tensor
    object_logits: Tensor
    text_logits: Tensor
    object_offsets: Tensor

    def predictions(self) -> Tensor:
        """``(B,)`` the picked object's index inside its scene."""
        return scene_argmax(self.logits, self.object_offsets)


def scene_log_softmax(logits: Tensor, offsets: Tensor) -> Tensor:
    """``log softmax`` of ``logits (N,)`` over each scene's objects (``offsets (B + 1,)``), ``(N,)``."""
    seg = Packed(logits, offsets).segment_ids()
    top = logits.new_full((offsets.numel() - 1,), float("-inf")).scatter_reduce(0, seg, logits.detach(), "amax")
    shifted = logits - top[seg]
    lse = shifted.new_zeros(offsets.numel() - 1).index_add(0, seg, shifted.exp()).log()
    return shifted - lse[seg]


def scene_argmax(logits: Tensor, offsets: Tensor) -> Tensor:
    """``(B,)`` index (inside its scene) of each scene's largest logit; ties pick the first."""
    seg = Packed(logits, offsets).segment_ids()
    B = offsets.numel() - 1
    top = logits.new_full((B,), float("-inf")).scatter_reduce(0, seg, logits, "amax")
    where = torch.arange(logits.numel(), device=logits.device)
    where = torch.where(logits == top[seg], where, logits.numel())
    first = torch.full((B,), logits.numel(), device=logits.device).scatter_reduce(0, seg, where, "amin")
    return first - offsets[:-1]


def grounding_loss(out: GroundingOutput, batch, weights: dict[str, float] | None = None
                   ) -> tuple[Tensor, dict[str, Tensor]]:
    """ReferIt3D's training loss: the referring cross-entropy over each scene's objects, the objects'
    class cross-entropy and the target class from the utterance; ``(total, {name: term})``."""
    weights = LOSS_WEIGHTS if weights is None else weights
    target = batch.target_index()
    terms = {"referring": -scene_log_softmax(out.logits.float(), batch.object_offsets)[target].mean(),
             "object_class": F.cross_entropy(out.object_logits.float(), batch.classes),
             "text_class": F.cross_entropy(out.text_logits.float(), batch.classes[target])}
    return sum(weights[k] * v for k, v in terms.items()), terms


def _check_batch(batch) -> None:
    for name in ("points", "point_offsets", "object_offsets", "centres", "sizes", "texts"):
        if not hasattr(batch, name):
            raise TypeError(f"batch must be a GroundingBatch (no {name!r}), got {type(batch).__name__}")
    n = batch.object_offsets.diff()
    if (n <= 0).any():
        raise ValueError("every scene needs at least one object (object_offsets has an empty scene)")
    if len(batch.texts) != n.numel():
        raise ValueError(f"batch has {len(batch.texts)} texts for {n.numel()} scenes")
    for name in ("centres", "sizes"):
        t = getattr(batch, name)
        if t.shape != (int(batch.object_offsets[-1]), 3) or not torch.isfinite(t).all():
            raise ValueError(f"batch.{name} must be finite (N, 3) = ({int(batch.object_offsets[-1])}, 3), "
                             f"got {tuple(t.shape)}")


class _GroundingBase(PretrainedMixin, nn.Module):
    """Object encoder, word encoder and the heads shared by both architectures."""

    def __init__(self, config: GroundingConfig) -> None:
        super().__init__()
        self.config = c = config
        self.objects = ObjectEncoder(c.point_dim, c.point_layers, c.point_heads, c.points_per_object, c.backend)
        self.object_proj = nn.Linear(c.point_dim, c.dim)
        self.box = MLP(6, c.dim, c.dim)
        self.object_norm = nn.LayerNorm(c.dim)
        self.words = WordEncoder(c.text_model, c.text_pretrained, c.freeze_text, c.max_words)
        self.word_proj = nn.Sequential(nn.Linear(self.words.dim, c.dim), nn.LayerNorm(c.dim))
        self.object_head = MLP(c.dim, c.dim, c.num_classes, act=nn.ReLU, dropout=c.dropout)
        self.text_head = MLP(c.dim, c.dim, c.num_classes, act=nn.ReLU, dropout=c.dropout)
        self.refer_head = MLP(2 * c.dim, c.dim, 1, act=nn.ReLU, dropout=c.dropout)

    def _inputs(self, batch, padded: bool, with_pairs: bool):
        """Object tokens, word tokens, the layout and the boxes, in the layout's slots."""
        _check_batch(batch)
        obj = self.objects(batch.points, batch.point_offsets, batch.centres, batch.sizes, padded)  # (N, Cp)
        words = self.words(batch.texts)                                                            # (W, Ct)
        layout = SceneLayout.build(batch.object_offsets.diff(), words.lengths, padded, with_pairs)
        o_set, w_set = layout.objects, layout.words
        centres = to_slots(batch.centres, layout.object_index, o_set.valid, padded)
        sizes = to_slots(batch.sizes, layout.object_index, o_set.valid, padded)
        # box: the centre and the log edge lengths
        x = to_slots(self.object_proj(obj), layout.object_index, o_set.valid, padded)
        x = self.object_norm(x + self.box(torch.cat([centres, sizes.clamp_min(1e-3).log()], -1)))
        w = self.word_proj(to_slots(words.values.to(x.dtype), layout.word_index, w_set.valid, padded))
        return x, w, layout, centres, sizes

    def _output(self, x: Tensor, sentence: Tensor, text_feature: Tensor, layout: SceneLayout, batch) -> GroundingOutput:
        o_set = layout.objects
        logits = self.refer_head(torch.cat([x, sentence[o_set.item_ids()]], -1)).squeeze(-1)  # (M_obj,)
        valid = o_set.valid
        return GroundingOutput(logits[valid], self.object_head(x[valid]), self.text_head(text_feature),
                               batch.object_offsets)


class TransRefer3D(_GroundingBase):
    """TransRefer3D (He et al. 2021): object and word tokens through ``depth`` ERCBs
    (:class:`~relformer.models.grounding.layers.ERCB`), then the referring head
    ``s_i = MLP([o_i; l])`` with the sentence feature ``l = max_t W_l w_t``, and the auxiliary heads
    (object class from ``o_i``, target class from ``max_t W_c w_t``).

    ``forward(batch, padded=False) -> GroundingOutput``; ``padded=True`` runs the padded twin (every
    scene padded to the largest, every object to the most points): the same weights and outputs.
    """

    def __init__(self, config: GroundingConfig) -> None:
        super().__init__(config)
        c = config
        self.blocks = nn.ModuleList(ERCB(c.dim, c.num_heads, c.ffn_hidden, c.pair_hidden, c.dropout, c.relation,
                                         c.backend) for _ in range(c.depth))
        self.sentence = nn.Linear(c.dim, c.dim)
        self.text_feature = nn.Linear(c.dim, c.dim)

    def forward(self, batch, padded: bool = False) -> GroundingOutput:
        pairs = self.config.relation == "pair"
        x, w, layout, centres, sizes = self._inputs(batch, padded, with_pairs=pairs)
        boxes = (layout.objects.gather(centres), layout.objects.gather(sizes),
                 pair_geometry(centres, sizes, layout) if pairs else None)
        for block in self.blocks:
            x, w = block(x, w, layout, boxes)
        sentence = segment_max(self.sentence(w), layout.words)       # (B, D)
        text_feature = segment_max(self.text_feature(w), layout.words)
        return self._output(x, sentence, text_feature, layout, batch)


class ReferIt3DNet(_GroundingBase):
    """A ReferIt3DNet-style baseline (Achlioptas et al. 2020): a sentence vector ``s`` (mean of the word
    features) fused into every object token, ``o_i = LN(o_i + W_s s)``, before each of ``depth`` post-norm
    blocks of plain attention among the scene's objects (the fusion of their graph network, without pair
    relations); head ``MLP([o_i; s])``, target class from ``s``."""

    def __init__(self, config: GroundingConfig) -> None:
        super().__init__(config)
        c = config
        self.fuse = nn.ModuleList(nn.Linear(c.dim, c.dim) for _ in range(c.depth))
        self.fuse_norm = nn.ModuleList(nn.LayerNorm(c.dim) for _ in range(c.depth))
        self.blocks = nn.ModuleList(Block(c.dim, c.num_heads, pre_norm=False, mlp_hidden=c.ffn_hidden,
                                          dropout=c.dropout, backend=c.backend) for _ in range(c.depth))

    def forward(self, batch, padded: bool = False) -> GroundingOutput:
        x, w, layout, _, _ = self._inputs(batch, padded, with_pairs=False)
        o_set, w_set = layout.objects, layout.words
        ids = w_set.item_ids()
        count = w_set.valid.float().new_zeros(w_set.num_items).index_add(0, ids, w_set.valid.float())
        s = w.new_zeros(w_set.num_items, w.shape[-1]).index_add(0, ids, w * w_set.valid[:, None]) / count[:, None]
        scene = o_set.item_ids()
        relation = o_set.relation()
        for fuse, norm, block in zip(self.fuse, self.fuse_norm, self.blocks):
            x = block(norm(x + fuse(s)[scene]), relation, rows=o_set.rows)
        return self._output(x, s, s, layout, batch)
