"""RT-DETR's decoder inputs (Zhao et al. 2024, "DETRs Beat YOLOs on Real-time Object Detection"):
IoU-aware query selection (sec. 4.3, eq. 2) and contrastive denoising groups (DN-DETR, Li et al.
2022; DINO, Zhang et al. 2023, sec. 3.3), as HF ``RTDetrModel`` computes them.

* :class:`QuerySelection` -- the decoder input projections (1x1 conv + BN per encoder level, extra
  3x3 stride-2 levels up to ``num_levels``), flattening of the levels into ``memory (B, S, C)`` with
  ``spatial_shapes (L, 2)`` and ``level_start_index (L,)``, anchors (:func:`generate_anchors`),
  ``enc_output`` (Linear + LayerNorm) on ``memory * valid``, ``enc_score_head``, the top ``num_queries``
  tokens by their best class score, ``enc_bbox_head`` (+ anchor logits) on them; their box logits are
  the initial reference boxes (detached) and their (detached) ``enc_output`` features the initial
  queries, or a learned ``weight_embedding`` (``learn_initial_query``).
* :func:`contrastive_denoising_group` -- ``G`` groups of a positive and a negative noised copy of
  every image's targets (label flips with probability ``label_noise_ratio / 2``; box corners moved by
  up to ``box_noise_scale * wh / 2``, negatives by 1-2 times that), their ``denoising_class_embed``
  embeddings, box logits and the self-attention mask of the decoder.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ...nn import Linear
from ..outputs import ModelOutput
from .boxes import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh
from .detr import BoxHead, hf_targets
from .rtdetr_decoder import inverse_sigmoid
from .rtdetr_encoder import ConvBN

__all__ = ["generate_anchors", "flatten_levels", "decoder_input_projections", "QuerySelection",
           "QuerySelectionOutput", "DenoisingGroup", "contrastive_denoising_group"]


def generate_anchors(spatial_shapes: Sequence[tuple[int, int]], grid_size: float = 0.05, device=None,
                     dtype: torch.dtype = torch.float32, eps: float = 1e-2) -> tuple[Tensor, Tensor]:
    """RT-DETR's anchors: one box per cell of every level, centred on the cell, ``w = h = grid_size *
    2 ** level``. -> ``anchors (1, S, 4)`` as logits (``inverse sigmoid`` of ``cx, cy, w, h``; the
    dtype's max where invalid) and ``valid (1, S, 1)`` bool: all four values in ``(eps, 1 - eps)``."""
    anchors = []
    for level, (height, width) in enumerate(spatial_shapes):
        grid_y, grid_x = torch.meshgrid(torch.arange(height, device=device).to(dtype),
                                        torch.arange(width, device=device).to(dtype), indexing="ij")
        grid_xy = torch.stack([grid_x, grid_y], -1).unsqueeze(0) + 0.5  # (1, h, w, 2)
        grid_xy = grid_xy / torch.tensor([width, height], device=device, dtype=dtype)
        wh = torch.ones_like(grid_xy) * grid_size * (2.0 ** level)
        anchors.append(torch.cat([grid_xy, wh], -1).reshape(-1, height * width, 4))
    anchors = torch.cat(anchors, 1)  # (1, S, 4)
    valid = ((anchors > eps) & (anchors < 1 - eps)).all(-1, keepdim=True)
    logits = torch.log(anchors / (1 - anchors))
    return torch.where(valid, logits, torch.full((), torch.finfo(dtype).max, dtype=dtype, device=device)), valid


def flatten_levels(maps: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor, list[tuple[int, int]]]:
    """``[(B, C, h_l, w_l)] -> memory (B, S = sum h_l w_l, C), spatial_shapes (L, 2) long,
    level_start_index (L,) long, [(h_l, w_l)]``."""
    shapes = [tuple(m.shape[-2:]) for m in maps]
    memory = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1)
    spatial_shapes = torch.tensor(shapes, dtype=torch.long, device=memory.device).view(-1, 2)
    starts = torch.cat((spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]))
    return memory, spatial_shapes, starts, shapes


def decoder_input_projections(in_channels: Sequence[int], dim: int, num_levels: int, eps: float = 1e-5) -> nn.ModuleList:
    """HF's ``decoder_input_proj``: a bias-free 1x1 conv + BatchNorm per encoder level, then ``num_levels
    - len(in_channels)`` bias-free 3x3 stride-2 convs + BatchNorm (the first on the last encoder map)."""
    if num_levels < len(in_channels):
        raise ValueError(f"num_levels ({num_levels}) must be >= the encoder levels ({len(in_channels)})")
    projs = [ConvBN(c, dim, 1, eps=eps) for c in in_channels]
    cin = in_channels[-1]
    for _ in range(num_levels - len(in_channels)):
        projs.append(ConvBN(cin, dim, 3, 2, eps))
        cin = dim
    return nn.ModuleList(projs)


class DenoisingGroup(NamedTuple):
    """Contrastive denoising queries for ``B`` images, ``M`` = most targets in an image, ``G`` groups,
    ``N = 2 M G`` denoising queries placed before the ``Q`` matching queries.

    ``query_class (B, N, C)``: ``denoising_class_embed`` of the (noised) labels, padding slots the
    padding embedding; ``query_bbox_unact (B, N, 4)``: the noised boxes as logits (as HF: the boxes
    themselves, not logits, when ``box_noise_scale == 0``); ``attn_mask (N + Q, N + Q)`` bool, True = the
    row may attend the column: a group sees itself and the matching queries, matching queries see
    only matching queries; ``meta``: HF's ``denoising_meta_values``: ``dn_positive_idx`` (per image,
    the slots of its positive queries), ``dn_num_group`` (G), ``dn_num_split`` ([N, Q])."""

    query_class: Tensor
    query_bbox_unact: Tensor
    attn_mask: Tensor
    meta: dict


def _checked_targets(targets: Sequence[Mapping[str, Tensor]], num_classes: int) -> list[tuple[Tensor, Tensor]]:
    """(labels (M,), boxes (M, 4)) per image; bad targets raise ValueError / TypeError naming them."""
    targets = hf_targets(targets)
    if not targets:
        raise ValueError("targets is empty; give one mapping per image")
    out = []
    for i, t in enumerate(targets):
        labels, boxes = t.get("labels"), t.get("boxes")
        if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(f"targets[{i}]['class_labels'] must be an integer (M,) tensor, got "
                             f"{getattr(labels, 'dtype', type(labels).__name__)} {tuple(getattr(labels, 'shape', ()))}")
        if not isinstance(boxes, Tensor) or boxes.shape != (labels.shape[0], 4) or not boxes.is_floating_point():
            raise ValueError(f"targets[{i}]['boxes'] must be a float ({labels.shape[0]}, 4) tensor, got "
                             f"{getattr(boxes, 'dtype', type(boxes).__name__)} {tuple(getattr(boxes, 'shape', ()))}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(f"targets[{i}]['class_labels'] must lie in [0, {num_classes}), got "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        if not bool(torch.isfinite(boxes).all()):
            raise ValueError(f"targets[{i}]['boxes'] holds NaN or inf")
        if boxes.numel() and (float(boxes.min()) < 0 or float(boxes.max()) > 1):
            raise ValueError(f"targets[{i}]['boxes'] must be (cx, cy, w, h) in [0, 1], got values in "
                             f"[{float(boxes.min()):.3g}, {float(boxes.max()):.3g}]")
        out.append((labels, boxes))
    return out


def contrastive_denoising_group(targets: Sequence[Mapping[str, Tensor]], num_classes: int, num_queries: int,
                                class_embed: nn.Module, num_denoising: int = 100, label_noise_ratio: float = 0.5,
                                box_noise_scale: float = 1.0) -> DenoisingGroup | None:
    """RT-DETR's contrastive denoising group (HF ``get_contrastive_denoising_training_group``, with the
    same random draws in the same order from torch's global generator). ``targets``: one ``{"class_labels"
    (or "labels") (M,), "boxes" (M, 4) cxcywh in [0, 1]}`` per image. ``G = max(num_denoising // M, 1)``
    groups. None when ``num_denoising <= 0`` or no image has a target. See :class:`DenoisingGroup`."""
    if num_denoising <= 0:
        return None
    parsed = _checked_targets(targets, num_classes)
    counts = [len(labels) for labels, _ in parsed]
    B, M = len(parsed), max(counts)
    if M == 0:
        return None
    G = max(num_denoising // M, 1)
    device = parsed[0][0].device
    slots = torch.arange(M, device=device) < torch.tensor(counts, device=device)[:, None]  # (B, M) real targets
    labels = torch.full((B, M), num_classes, dtype=torch.int32, device=device)
    boxes = torch.zeros(B, M, 4, device=device)
    labels[slots] = torch.cat([lab for lab, _ in parsed]).to(torch.int32)
    boxes[slots] = torch.cat([box for _, box in parsed]).to(boxes.dtype)
    labels, boxes, pad = labels.tile(1, 2 * G), boxes.tile(1, 2 * G, 1), slots.tile(1, 2 * G)  # (B, N[, 4])
    N = 2 * M * G
    negative = ((torch.arange(N, device=device) % (2 * M)) >= M).float()[None, :, None].expand(B, N, 1)  # (B, N, 1)
    positive_idx = torch.nonzero((1 - negative[..., 0]) * pad)[:, 1].split([n * G for n in counts])

    if label_noise_ratio > 0:  # draws: rand (B, N), then randint (B, N) int32, as HF
        flip = torch.rand_like(labels, dtype=torch.float) < label_noise_ratio * 0.5
        new_labels = torch.randint_like(flip, 0, num_classes, dtype=labels.dtype)
        labels = torch.where(flip & pad, new_labels, labels)
    if box_noise_scale > 0:  # draws: randint (B, N, 4), then rand (B, N, 4), as HF
        corners = box_cxcywh_to_xyxy(boxes)
        diff = boxes[..., 2:].mul(0.5).tile(1, 1, 2) * box_noise_scale
        sign = torch.randint_like(boxes, 0, 2) * 2.0 - 1.0
        part = torch.rand_like(boxes)
        part = ((part + 1.0) * negative + part * (1 - negative)) * sign  # negatives: |noise| in [1, 2) x diff
        corners = (corners + part * diff).clip(0.0, 1.0)
        boxes = inverse_sigmoid(box_xyxy_to_cxcywh(corners))

    group = torch.arange(N + num_queries, device=device) // (2 * M)
    is_dn = torch.arange(N + num_queries, device=device) < N
    attn_mask = ~is_dn[None, :] | (is_dn[:, None] & is_dn[None, :] & (group[:, None] == group[None, :]))
    meta = {"dn_positive_idx": positive_idx, "dn_num_group": G, "dn_num_split": [N, num_queries]}
    return DenoisingGroup(class_embed(labels), boxes, attn_mask, meta)


@dataclass
class QuerySelectionOutput(ModelOutput):
    """The decoder's inputs and the encoder's top-k predictions (``N`` denoising queries first when
    training with targets, then ``Q`` selected ones).

    ``target (B, N + Q, C)``: initial queries; ``reference_points_unact (B, N + Q, 4)``: initial box
    logits, detached (HF's ``init_reference_points``); ``memory (B, S, C)``: the flattened decoder
    levels (HF's ``source_flatten``); ``spatial_shapes (L, 2)``, ``level_start_index (L,)``,
    ``spatial_shapes_list``; ``enc_topk_logits (B, Q, K)``, ``enc_topk_bboxes (B, Q, 4)`` (sigmoid) of
    the selected tokens, ``topk_ind (B, Q)``; ``enc_outputs_class (B, S, K)`` (HF's
    ``enc_outputs_coord_logits`` for all S tokens is not computed: only the selected rows are ever read,
    and they are ``reference_points_unact``); ``attn_mask (N + Q, N + Q)`` bool (True = may attend) and
    ``denoising_meta_values`` when denoising, else None."""

    target: Tensor | None = None
    reference_points_unact: Tensor | None = None
    memory: Tensor | None = None
    spatial_shapes: Tensor | None = None
    level_start_index: Tensor | None = None
    spatial_shapes_list: list[tuple[int, int]] | None = None
    enc_topk_logits: Tensor | None = None
    enc_topk_bboxes: Tensor | None = None
    topk_ind: Tensor | None = None
    enc_outputs_class: Tensor | None = None
    attn_mask: Tensor | None = None
    denoising_meta_values: dict | None = None


class QuerySelection(nn.Module):
    """IoU-aware query selection and denoising queries (see the module docstring); HF ``RTDetrConfig``
    fields in brackets, parameter names those of HF ``RTDetrModel``.

    Args:
        dim: [``d_model``]; num_classes: [``num_labels``]; num_queries: [``num_queries``].
        in_channels: channels of the encoder maps [``decoder_in_channels``].
        num_levels: decoder levels [``num_feature_levels``].
        learn_initial_query: learned initial queries [``learn_initial_query``].
        num_denoising / label_noise_ratio / box_noise_scale: [same names]; 0 denoising: none.
        layer_norm_eps / batch_norm_eps: [same names]; grid_size: anchor size at level 0 (0.05).

    ``forward([O_i (B, in_channels[i], h_i, w_i)], targets=None) -> QuerySelectionOutput``; denoising
    queries only in training with ``targets`` (one mapping per image, as :func:`contrastive_denoising_group`).
    """

    def __init__(self, dim: int = 256, num_classes: int = 80, num_queries: int = 300,
                 in_channels: Sequence[int] = (256, 256, 256), num_levels: int = 3, learn_initial_query: bool = False,
                 num_denoising: int = 100, label_noise_ratio: float = 0.5, box_noise_scale: float = 1.0,
                 layer_norm_eps: float = 1e-5, batch_norm_eps: float = 1e-5, grid_size: float = 0.05) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("num_classes", num_classes), ("num_queries", num_queries)):
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.num_classes, self.num_queries, self.num_levels = num_classes, num_queries, num_levels
        self.num_denoising, self.label_noise_ratio, self.box_noise_scale = num_denoising, label_noise_ratio, box_noise_scale
        self.grid_size, self.num_encoder_levels = grid_size, len(tuple(in_channels))
        self.decoder_input_proj = decoder_input_projections(tuple(in_channels), dim, num_levels, batch_norm_eps)
        if num_denoising > 0:
            self.denoising_class_embed = nn.Embedding(num_classes + 1, dim, padding_idx=num_classes)
        if learn_initial_query:
            self.weight_embedding = nn.Embedding(num_queries, dim)
        self.enc_output = nn.Sequential(Linear(dim, dim), nn.LayerNorm(dim, eps=layer_norm_eps))
        self.enc_score_head = Linear(dim, num_classes)
        self.enc_bbox_head = BoxHead(dim, 4, num_layers=3)

    def levels(self, encoder_maps: Sequence[Tensor]) -> list[Tensor]:
        """The decoder's levels: every encoder map projected, then the extra strided levels."""
        n = self.num_encoder_levels
        if len(encoder_maps) != n:
            raise ValueError(f"encoder_maps must hold the {n} encoder levels the projections were built for, "
                             f"got {len(encoder_maps)}")
        sources = [proj(m) for proj, m in zip(self.decoder_input_proj, encoder_maps)]
        for proj in self.decoder_input_proj[n:]:
            sources.append(proj(encoder_maps[-1]))  # as HF: each extra level reads the last encoder map
        return sources

    def denoising(self, targets: Sequence[Mapping[str, Tensor]]) -> DenoisingGroup | None:
        """:func:`contrastive_denoising_group` with this module's embedding and settings."""
        if self.num_denoising <= 0:
            return None
        return contrastive_denoising_group(targets, self.num_classes, self.num_queries, self.denoising_class_embed,
                                           self.num_denoising, self.label_noise_ratio, self.box_noise_scale)

    def forward(self, encoder_maps: Sequence[Tensor],
                targets: Sequence[Mapping[str, Tensor]] | None = None) -> QuerySelectionOutput:
        memory, spatial_shapes, level_start_index, shapes = flatten_levels(self.levels(encoder_maps))
        B, S, C = memory.shape
        if S < self.num_queries:
            raise ValueError(f"the feature maps hold {S} tokens, fewer than num_queries={self.num_queries}: "
                             "give larger images or fewer queries")
        dn = self.denoising(targets) if self.training and targets is not None else None
        anchors, valid = generate_anchors(shapes, self.grid_size, memory.device, memory.dtype)  # (1, S, 4), (1, S, 1)
        output_memory = self.enc_output(valid.to(memory.dtype) * memory)  # (B, S, C)
        enc_class = self.enc_score_head(output_memory)  # (B, S, K)
        topk_ind = torch.topk(enc_class.max(-1).values, self.num_queries, dim=1).indices  # (B, Q)
        pick = lambda t: t.expand(B, -1, -1).gather(1, topk_ind.unsqueeze(-1).expand(-1, -1, t.shape[-1]))
        # the box MLP is per token and only the selected tokens' boxes are read: HF runs it on all S
        reference = self.enc_bbox_head(pick(output_memory)) + pick(anchors)  # (B, Q, 4) logits
        if hasattr(self, "weight_embedding"):
            target = self.weight_embedding.weight.unsqueeze(0).expand(B, -1, -1)
        else:
            target = pick(output_memory).detach()
        out = QuerySelectionOutput(enc_topk_logits=pick(enc_class), enc_topk_bboxes=reference.sigmoid(),
                                   topk_ind=topk_ind, memory=memory, spatial_shapes=spatial_shapes,
                                   level_start_index=level_start_index, spatial_shapes_list=shapes,
                                   enc_outputs_class=enc_class)
        if dn is not None:
            reference = torch.cat([dn.query_bbox_unact, reference], 1)
            target = torch.cat([dn.query_class, target], 1)
            out.attn_mask, out.denoising_meta_values = dn.attn_mask, dn.meta
        out.target, out.reference_points_unact = target, reference.detach()
        return out
