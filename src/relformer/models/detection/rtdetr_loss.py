"""RT-DETR's criterion (Zhao et al. 2024, "DETRs Beat YOLOs on Real-time Object Detection").

Matching: :class:`~.set_prediction.HungarianMatcher` with RT-DETR's costs (:func:`rtdetr_matcher`:
focal class cost a=0.25, g=2, weight 2; L1 5; GIoU 2), run on the final decoder output, every
auxiliary decoder output and the encoder's top-k proposals independently. The denoising queries
(DN-DETR / DINO contrastive denoising) are matched by index: image b's positive denoising query
``dn_positive_idx[b][g * M_b + j]`` reconstructs its target j in group g.

Terms per output, each a sum over the batch divided by ``N`` = the batch's target count (>= 1; times
``dn_num_group`` for the denoising outputs):

* ``loss_vfl``: varifocal loss (Zhang et al. 2021, "VarifocalNet", Eq. 2) with IoU-aware targets
  ``q = IoU(b, b_gt)`` (detached) at each matched (query, class), 0 elsewhere:
  ``VFL(p, q) = -q (q log p + (1 - q) log(1 - p))`` if ``q > 0``, ``-a p^g log(1 - p)`` otherwise
  (a = 0.75, g = 2, RT-DETR's); or ``class_loss="focal"`` (``loss_focal``, Lin et al. 2017) or
  ``"bce"`` (``loss_bce``) on one-hot targets; with ``giou_aware`` (Rank-DETR, :mod:`.rank`) the
  decoder outputs use ``loss_giou_aware`` instead, the encoder keeps ``class_loss``;
* ``loss_bbox``: L1 of the matched cxcywh boxes; ``loss_giou``: ``1 - GIoU`` of the matched boxes.

Names (HF ``RTDetrLoss``'s): no suffix for the final output, ``_aux_{i}`` for decoder layer i (of the
L - 1 intermediate ones), ``_aux_{L-1}`` for the encoder's top-k, ``_dn_{i}`` for decoder layer i's
denoising output (all L); ``loss`` = ``weight_class * class + weight_bbox * loss_bbox + weight_giou *
loss_giou`` summed over all outputs. The terms are unweighted (HF's dict holds them weighted).

``outputs``: a mapping or object with ``logits (B, Q, K)`` (sigmoid classes, no "no object"),
``pred_boxes (B, Q, 4)`` cxcywh in [0, 1], optional ``aux_outputs`` (or ``auxiliary_outputs``:
``[{"logits", "pred_boxes"}]`` per intermediate decoder layer), ``enc_outputs`` (``{"logits" (B, Qe, K),
"pred_boxes"}``), ``dn_outputs`` (``[{"logits" (B, Qd, K), "pred_boxes"}]`` per decoder layer) with
``dn_meta`` (``{"dn_positive_idx": [(M_b * G,) long], "dn_num_group": G, "dn_num_split": [Qd, Q]}``).
:func:`rtdetr_loss_outputs` builds it from a model's stacked per-layer tensors. ``targets``: one
``{"labels" (M,) long, "boxes" (M, 4) cxcywh}`` per image, normalised; degenerate (w or h <= 0),
out-of-image, NaN boxes and bad labels raise ValueError.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .boxes import _box_iou_aligned, box_cxcywh_to_xyxy
from .rank import giou_aware_focal_loss, giou_aware_targets
from .set_prediction import (HungarianMatcher, Indices, _aux_outputs, _box_losses, _check_targets, _field, _matched,
                             _num_boxes, _predictions, _sigmoid_focal_loss)

__all__ = ["rtdetr_matcher", "varifocal_loss", "RTDetrCriterion", "rtdetr_loss_outputs"]

CLASS_LOSSES = ("vfl", "focal", "bce")


def rtdetr_matcher(cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0, focal: bool = True,
                   focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                   iou_order: float | None = None) -> HungarianMatcher:
    """RT-DETR's matcher (HF ``RTDetrHungarianMatcher``; defaults: HF ``RTDetrConfig``'s). ``focal=False``
    (HF ``use_focal_loss=False``): the class cost is ``-softmax(logits)`` over the K classes (no
    no-object class). ``iou_order``: Rank-DETR's high-order cost instead (:func:`~.rank.high_order_cost`)."""
    return HungarianMatcher(cost_class, cost_bbox, cost_giou, focal=focal, focal_alpha=focal_alpha,
                            focal_gamma=focal_gamma, no_object_class=False, iou_order=iou_order)


def varifocal_loss(logits: Tensor, onehot: Tensor, score: Tensor, alpha: float = 0.75, gamma: float = 2.0) -> Tensor:
    """Elementwise varifocal loss ``(..., K)``: BCE(logits, score) weighted by ``score`` at the
    positives (``onehot``) and by ``alpha sigmoid(logits)^gamma`` (detached) at the negatives."""
    onehot = onehot.to(logits.dtype)
    score = score.detach().to(logits.dtype)
    weight = alpha * logits.detach().sigmoid().pow(gamma) * (1 - onehot) + score
    return F.binary_cross_entropy_with_logits(logits, score, weight=weight, reduction="none")


def _denoising_indices(dn_meta: Mapping, targets: Sequence[Mapping], num_dn: int) -> tuple[Indices, int]:
    """``dn_meta`` -> ``([(query idx, target idx)] per image, dn_num_group)``, checked."""
    if not isinstance(dn_meta, Mapping):
        raise TypeError(f"dn_meta must be a mapping (dn_positive_idx, dn_num_group), got {type(dn_meta).__name__}")
    for key in ("dn_positive_idx", "dn_num_group"):
        if key not in dn_meta:
            raise ValueError(f"dn_meta must have {key!r}, got keys {sorted(dn_meta)}")
    positive, groups = dn_meta["dn_positive_idx"], dn_meta["dn_num_group"]
    groups = int(groups)
    if groups < 1:
        raise ValueError(f"dn_meta['dn_num_group'] must be >= 1, got {groups}")
    if len(positive) != len(targets):
        raise ValueError(f"dn_meta['dn_positive_idx'] has {len(positive)} entries for {len(targets)} images")
    indices = []
    for b, (idx, t) in enumerate(zip(positive, targets)):
        m = len(t["labels"])
        idx = torch.as_tensor(idx, dtype=torch.int64)
        if idx.shape != (m * groups,):
            raise ValueError(f"dn_meta['dn_positive_idx'][{b}] must be ({m} targets x {groups} groups,) = "
                             f"({m * groups},), got {tuple(idx.shape)}")
        indices.append((idx, torch.arange(m, dtype=torch.int64, device=idx.device).repeat(groups)))
    flat = torch.cat([q.to(indices[0][0].device) for q, _ in indices]) if indices else torch.empty(0)
    if len(flat):
        low, high = torch.stack([flat.min(), flat.max()]).tolist()                       # one device sync
        if low < 0 or high >= num_dn:
            raise ValueError(f"dn_meta['dn_positive_idx'] must index the {num_dn} denoising queries, got "
                             f"values in [{low}, {high}]")
    return indices, groups


class RTDetrCriterion(nn.Module):
    """RT-DETR's loss (see the module doc), equal to HF ``RTDetrLoss`` term by term.

    ``num_classes`` K; ``matcher`` (default :func:`rtdetr_matcher`); loss weights (RT-DETR: 1, 5, 2);
    ``class_loss`` one of ``"vfl"``, ``"focal"``, ``"bce"`` with ``alpha`` / ``gamma`` (RT-DETR: 0.75, 2;
    the focal loss's conventional alpha is 0.25); ``giou_aware``: Rank-DETR's GIoU-aware class loss on
    the decoder outputs with ``rank_alpha`` / ``rank_gamma`` (Rank-DETR: 0.25, 2).
    """

    def __init__(self, num_classes: int, matcher: HungarianMatcher | None = None, weight_class: float = 1.0,
                 weight_bbox: float = 5.0, weight_giou: float = 2.0, class_loss: str = "vfl", alpha: float = 0.75,
                 gamma: float = 2.0, giou_aware: bool = False, rank_alpha: float = 0.25,
                 rank_gamma: float = 2.0) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_loss not in CLASS_LOSSES:
            raise ValueError(f"class_loss must be one of {CLASS_LOSSES}, got {class_loss!r}")
        if gamma < 0 or rank_gamma < 0:
            raise ValueError(f"gamma and rank_gamma must be >= 0, got {gamma}, {rank_gamma}")
        matcher = rtdetr_matcher() if matcher is None else matcher
        if not getattr(matcher, "focal", True) and getattr(matcher, "no_object_class", False):
            raise ValueError("RT-DETR's logits have no no-object class: give the matcher no_object_class=False "
                             "(rtdetr_matcher(focal=False))")
        self.num_classes, self.matcher, self.class_loss = num_classes, matcher, class_loss
        self.alpha, self.gamma, self.giou_aware = float(alpha), float(gamma), bool(giou_aware)
        self.rank_alpha, self.rank_gamma = float(rank_alpha), float(rank_gamma)
        self.weights = {"class": float(weight_class), "bbox": float(weight_bbox), "giou": float(weight_giou)}

    def extra_repr(self) -> str:
        rank = f", giou_aware=True (alpha={self.rank_alpha}, gamma={self.rank_gamma})" if self.giou_aware else ""
        return (f"num_classes={self.num_classes}, matcher={self.matcher!r}, class_loss={self.class_loss!r}, "
                f"alpha={self.alpha}, gamma={self.gamma}, weights={self.weights}{rank}")

    def forward(self, outputs: Any, targets: Sequence[Mapping]) -> dict[str, Tensor]:
        """``outputs``, ``targets`` as in the module doc -> ``{term: scalar}`` including ``"loss"``."""
        aux = _aux_outputs(outputs)
        enc, dn, dn_meta = _field(outputs, "enc_outputs"), _field(outputs, "dn_outputs"), _field(outputs, "dn_meta")
        # (suffix, what, output, matched by index)
        layers = [("", "outputs", outputs, False)]
        layers += [(f"_aux_{i}", f"aux_outputs[{i}]", out, False) for i, out in enumerate(aux)]
        if enc is not None:
            layers.append((f"_aux_{len(aux)}", "enc_outputs", enc, False))
        if dn is not None:
            if dn_meta is None:
                raise ValueError("outputs has 'dn_outputs' but no 'dn_meta' (dn_positive_idx, dn_num_group)")
            layers += [(f"_dn_{i}", f"dn_outputs[{i}]", out, True) for i, out in enumerate(dn)]
        preds = []
        for suffix, what, out, by_index in layers:
            lg, boxes = _predictions(out, what)
            B = preds[0][1].shape[0] if preds else lg.shape[0]
            if lg.shape[0] != B or lg.shape[-1] != self.num_classes:
                raise ValueError(f"{what} logits must be ({B}, queries, {self.num_classes}) for num_classes="
                                 f"{self.num_classes} (sigmoid classes, no no-object class), got {tuple(lg.shape)}")
            preds.append((suffix, lg, boxes, by_index, what == "enc_outputs"))
        _check_targets(targets, B, self.num_classes, strict=True)
        logits = preds[0][1]
        num_boxes = _num_boxes(targets, logits.device)
        dn_indices = None
        if dn is not None and len(dn):
            dn_indices, groups = _denoising_indices(dn_meta, targets, preds[-1][1].shape[1])
        losses: dict[str, Tensor] = {}
        total = logits.new_zeros(())
        for suffix, lg, boxes, by_index, is_encoder in preds:
            if by_index:
                indices, norm = dn_indices, num_boxes * groups
            else:
                indices, norm = self.matcher({"logits": lg, "pred_boxes": boxes}, targets), num_boxes
            kind = self.class_loss if is_encoder or not self.giou_aware else "giou_aware"
            terms = self._layer_losses(lg, boxes, targets, indices, norm, kind)
            for (role, name), value in zip((("class", f"loss_{kind}"), ("bbox", "loss_bbox"), ("giou", "loss_giou")),
                                           terms):
                losses[name + suffix] = value
                total = total + self.weights[role] * value
        losses["loss"] = total
        return losses

    def _layer_losses(self, logits: Tensor, pred_boxes: Tensor, targets: Sequence[Mapping], indices: Indices,
                      num_boxes: Tensor, kind: str) -> tuple[Tensor, Tensor, Tensor]:
        batch_idx, query_idx, labels_o, boxes_o = _matched(indices, targets, pred_boxes)   # (P,) x 3, (P, 4)
        boxes_src = pred_boxes[batch_idx, query_idx]                                     # (P, 4)
        loss_bbox, loss_giou, giou = _box_losses(boxes_src, boxes_o, num_boxes)
        onehot = torch.zeros_like(logits)                                                # (B, Q, K)
        onehot[batch_idx, query_idx, labels_o] = 1
        if kind == "vfl":
            iou, _ = _box_iou_aligned(box_cxcywh_to_xyxy(boxes_src.detach()), box_cxcywh_to_xyxy(boxes_o))
            score = torch.zeros_like(logits)
            score[batch_idx, query_idx, labels_o] = iou.to(logits.dtype)
            loss = varifocal_loss(logits, onehot, score, self.alpha, self.gamma)
        elif kind == "giou_aware":
            score = torch.zeros_like(logits)
            score[batch_idx, query_idx, labels_o] = giou_aware_targets(giou).to(logits.dtype)
            loss = giou_aware_focal_loss(logits, onehot, score, self.rank_alpha, self.rank_gamma)
        elif kind == "focal":
            loss = _sigmoid_focal_loss(logits, onehot, self.alpha, self.gamma)
        else:
            loss = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
        return loss.sum() / num_boxes, loss_bbox, loss_giou


def rtdetr_loss_outputs(logits: Tensor, pred_boxes: Tensor, layer_logits: Tensor | None = None,
                        layer_boxes: Tensor | None = None, enc_logits: Tensor | None = None,
                        enc_boxes: Tensor | None = None, dn_meta: Mapping | None = None) -> dict[str, Any]:
    """A model's stacked outputs -> :class:`RTDetrCriterion`'s ``outputs`` (as HF ``RTDetrForObjectDetectionLoss``).

    ``logits (B, Qd + Q, K)`` / ``pred_boxes (B, Qd + Q, 4)``: the final layer's, denoising queries first
    when ``dn_meta`` is given (``dn_num_split = [Qd, Q]``); ``layer_logits (B, L, Qd + Q, K)`` /
    ``layer_boxes (B, L, Qd + Q, 4)``: every decoder layer's (the last equals the final output), for the
    auxiliary and denoising terms; ``enc_logits (B, Qe, K)`` / ``enc_boxes``: the encoder's top-k.
    Without ``layer_logits`` only the final output is supervised (HF: ``auxiliary_loss=False``).
    """
    if (layer_logits is None) != (layer_boxes is None) or (enc_logits is None) != (enc_boxes is None):
        raise ValueError("give layer_logits with layer_boxes, and enc_logits with enc_boxes")
    split = None
    if dn_meta is not None:
        if "dn_num_split" not in dn_meta:
            raise ValueError(f"dn_meta must have 'dn_num_split' = [Qd, Q], got keys {sorted(dn_meta)}")
        split = [int(n) for n in dn_meta["dn_num_split"]]
        if len(split) != 2 or sum(split) != logits.shape[1]:
            raise ValueError(f"dn_meta['dn_num_split'] = {split} must be [Qd, Q] summing to {logits.shape[1]} queries")
        logits, pred_boxes = logits[:, split[0]:], pred_boxes[:, split[0]:]
    outputs: dict[str, Any] = {"logits": logits, "pred_boxes": pred_boxes}
    if layer_logits is None:
        return outputs
    if layer_logits.dim() != 4 or layer_boxes.shape != (*layer_logits.shape[:3], 4):
        raise ValueError(f"layer_logits must be (B, L, queries, K) and layer_boxes (B, L, queries, 4), got "
                         f"{tuple(layer_logits.shape)} and {tuple(layer_boxes.shape)}")
    if split is not None:
        dn_logits, layer_logits = layer_logits.split(split, dim=2)
        dn_boxes, layer_boxes = layer_boxes.split(split, dim=2)
        outputs["dn_outputs"] = [{"logits": lg, "pred_boxes": bx}
                                 for lg, bx in zip(dn_logits.unbind(1), dn_boxes.unbind(1))]
        outputs["dn_meta"] = dn_meta
    outputs["aux_outputs"] = [{"logits": lg, "pred_boxes": bx}
                              for lg, bx in zip(layer_logits[:, :-1].unbind(1), layer_boxes[:, :-1].unbind(1))]
    if enc_logits is not None:
        outputs["enc_outputs"] = {"logits": enc_logits, "pred_boxes": enc_boxes}
    return outputs
