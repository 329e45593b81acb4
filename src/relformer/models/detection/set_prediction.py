"""Set prediction for DETR-style detectors: Hungarian matching, the set criterion, post-processing.

DETR (Carion et al. 2020, "End-to-End Object Detection with Transformers") predicts a fixed set of
Q boxes and matches it one-to-one to the M ground-truth objects by the Hungarian algorithm on

    C[q, t] = cost_class * C_class + cost_bbox * ||b_q - b_t||_1 + cost_giou * (-GIoU(b_q, b_t))

with ``C_class = -p_q(c_t)`` (softmax). The focal variant (Deformable-DETR, Zhu et al. 2021;
Relation-DETR, Hou et al. 2024) uses sigmoid probabilities and
``C_class = a (1-p)^g (-log p) - (1-a) p^g (-log(1-p))`` at the target class (a=0.25, g=2).
Group DETR (Chen et al. 2023) splits the queries into K groups of Q/K, each matched one-to-one to
all targets independently; the loss is the mean over groups. Rank-DETR (Pu et al. 2023, :mod:`.rank`)
adds a high-order matching cost (``iou_order``) and a GIoU-aware focal class loss (``giou_aware``).

Conventions: boxes are (cx, cy, w, h) normalised to [0, 1]; ``targets`` is a list (one per image)
of ``{"labels": (M,) long, "boxes": (M, 4) float}``, M may be 0; ``outputs`` is a dict or an object
with attributes: ``logits (B, Q, K+1)`` whose LAST class is "no object" (focal: ``(B, Q, K)``),
``pred_boxes (B, Q, 4)`` and optionally ``aux_outputs``: a list of such dicts (HF's name
``auxiliary_outputs`` is accepted too), one per intermediate decoder layer.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

# the unchecked GIoU twins: predictions and targets are validated once per call (one device sync)
from .boxes import _generalized_box_iou, _generalized_box_iou_aligned, box_cxcywh_to_xyxy, box_iou, box_xyxy_to_xywh
from .rank import giou_aware_focal_loss, giou_aware_targets, high_order_cost

__all__ = ["HungarianMatcher", "SetCriterion", "set_criterion", "postprocess", "to_coco_results"]

Indices = list[tuple[Tensor, Tensor]]


def _field(outputs: Any, key: str) -> Any:
    """``outputs[key]`` for a mapping, ``outputs.key`` otherwise; None when absent."""
    if isinstance(outputs, Mapping):
        return outputs.get(key)
    return getattr(outputs, key, None)


def _predictions(outputs: Any, what: str = "outputs") -> tuple[Tensor, Tensor]:
    logits, boxes = _field(outputs, "logits"), _field(outputs, "pred_boxes")
    if logits is None or boxes is None:
        raise ValueError(f"{what} must have 'logits' and 'pred_boxes'")
    if logits.dim() != 3:
        raise ValueError(f"{what} logits must be (B, Q, classes), got {tuple(logits.shape)}")
    if boxes.shape != (*logits.shape[:2], 4):
        raise ValueError(f"{what} pred_boxes must be (B, Q, 4) = {(*logits.shape[:2], 4)}, got {tuple(boxes.shape)}")
    # one device sync for all three checks
    bad_logits, bad_boxes, negative = torch.stack([~torch.isfinite(logits).all(), ~torch.isfinite(boxes).all(),
                                                   (boxes[..., 2:] < 0).any()]).tolist()
    if bad_logits:
        raise ValueError(f"{what} logits contain NaN or inf")
    if bad_boxes:
        raise ValueError(f"{what} pred_boxes contain NaN or inf")
    if negative:
        raise ValueError(f"{what} pred_boxes have a negative width or height (expected cxcywh, e.g. a sigmoid)")
    return logits, boxes


def _aux_outputs(outputs: Any) -> list:
    aux, hf_aux = _field(outputs, "aux_outputs"), _field(outputs, "auxiliary_outputs")
    if aux is not None and hf_aux is not None:
        raise ValueError("outputs has both 'aux_outputs' and 'auxiliary_outputs'; give one")
    return list(aux if aux is not None else hf_aux if hf_aux is not None else [])


BOX_TOLERANCE = 1e-5  # how far a normalised box corner may stray outside [0, 1] (round-off) in strict checks


def _check_targets(targets: Sequence[Mapping], batch_size: int, num_classes: int, strict: bool = False) -> None:
    """Shapes, dtypes and values of ``targets``; ``strict`` also rejects degenerate boxes (w or h <= 0)
    and boxes reaching outside the normalised image (corners outside [0, 1])."""
    if len(targets) != batch_size:
        raise ValueError(f"got {len(targets)} targets for a batch of {batch_size} images")
    for i, t in enumerate(targets):   # shapes and dtypes: no device work
        if not isinstance(t, Mapping):
            raise TypeError(f"targets[{i}] must be a mapping with 'labels' and 'boxes', got {type(t).__name__}")
        if "labels" not in t or "boxes" not in t:
            raise ValueError(f"targets[{i}] must have 'labels' and 'boxes', got keys {sorted(t)}")
        labels, boxes = t["labels"], t["boxes"]
        for key, value in (("labels", labels), ("boxes", boxes)):
            if not isinstance(value, Tensor):
                raise TypeError(f"targets[{i}][{key!r}] must be a tensor, got {type(value).__name__} "
                                f"(e.g. torch.as_tensor(...))")
        if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"targets[{i}]['labels'] must be an integer (M,) tensor, got {labels.dtype} "
                             f"{tuple(labels.shape)}")
        if boxes.shape != (len(labels), 4):
            raise ValueError(f"targets[{i}]['boxes'] must be ({len(labels)}, 4), got {tuple(boxes.shape)}")
    if not targets or not sum(len(t["labels"]) for t in targets):
        return
    device = targets[0]["boxes"].device
    labels = torch.cat([t["labels"].to(device) for t in targets])
    boxes = torch.cat([t["boxes"].to(device) for t in targets])
    # values: one device sync for the whole batch; find the culprit only when something is wrong
    checks = [~torch.isfinite(boxes).all(), (boxes[:, 2:] < 0).any(), (labels < 0).any(),
              (labels >= num_classes).any()]
    if strict:
        checks += [(boxes[:, 2:] <= 0).any(), _outside(boxes).any()]
    if not torch.stack(checks).any():
        return
    for i, t in enumerate(targets):
        labels, boxes = t["labels"], t["boxes"]
        if not torch.isfinite(boxes).all():
            raise ValueError(f"targets[{i}]['boxes'] contain NaN or inf")
        if (boxes[:, 2:] < 0).any():
            raise ValueError(f"targets[{i}]['boxes'] have a negative width or height (expected cxcywh)")
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(f"targets[{i}]['labels'] must lie in [0, {num_classes}), got "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        if strict and (boxes[:, 2:] <= 0).any():
            j = int((boxes[:, 2:] <= 0).any(-1).nonzero()[0])
            raise ValueError(f"targets[{i}]['boxes'][{j}] is degenerate (width or height 0): {boxes[j].tolist()}")
        if strict and _outside(boxes).any():
            j = int(_outside(boxes).nonzero()[0])
            raise ValueError(f"targets[{i}]['boxes'][{j}] = {boxes[j].tolist()} (cxcywh) reaches outside the "
                             f"image: boxes must be normalised to [0, 1] (divide by the image size, clip)")


def _outside(boxes: Tensor) -> Tensor:
    """``(M, 4)`` cxcywh -> ``(M,)`` True where a corner lies outside [0, 1] by more than BOX_TOLERANCE."""
    xyxy = box_cxcywh_to_xyxy(boxes)
    return ((xyxy < -BOX_TOLERANCE) | (xyxy > 1 + BOX_TOLERANCE)).any(-1)


class HungarianMatcher:
    """One-to-one matching of predictions to targets (DETR), optionally per query group (Group DETR).

    Costs: ``cost_class`` * (-softmax prob of the target class, or the focal cost when ``focal``)
    + ``cost_bbox`` * L1 (cxcywh) + ``cost_giou`` * (-GIoU). DETR's defaults are 1, 5, 2. Softmax
    logits end with a "no object" class (DETR) unless ``no_object_class=False`` (RT-DETR without focal
    loss: a softmax over the K classes alone).

    ``iou_order=alpha`` (Rank-DETR's high-order cost, :func:`~.rank.high_order_cost`) replaces that sum
    by ``-p(c) * IoU^alpha`` (``p`` sigmoid when ``focal``, else softmax; Rank-DETR: alpha=4, in the
    last quarter of training, where the attribute can be set); the three weights are then unused.

    The cost is computed batched on the model's device as a ``(B, Q, Tmax)`` tensor (targets padded
    to the batch's largest count), and only the valid ``(Q, T_b)`` blocks travel to the CPU (one
    transfer) for ``scipy.optimize.linear_sum_assignment``. Returned indices are CPU int64 tensors.
    """

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 focal: bool = False, focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                 no_object_class: bool = True, iou_order: float | None = None) -> None:
        costs = {"cost_class": cost_class, "cost_bbox": cost_bbox, "cost_giou": cost_giou}
        for name, value in costs.items():
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if not any(costs.values()):
            raise ValueError("cost_class, cost_bbox and cost_giou can't all be 0")
        if focal_gamma < 0:
            raise ValueError(f"focal_gamma must be >= 0, got {focal_gamma}")
        self.cost_class, self.cost_bbox, self.cost_giou = float(cost_class), float(cost_bbox), float(cost_giou)
        if iou_order is not None and not iou_order > 0:
            raise ValueError(f"iou_order must be > 0 (Rank-DETR: 4) or None, got {iou_order}")
        self.focal, self.focal_alpha, self.focal_gamma = focal, float(focal_alpha), float(focal_gamma)
        self.no_object_class = bool(no_object_class)
        self.iou_order = None if iou_order is None else float(iou_order)

    def __repr__(self) -> str:
        focal = f", focal_alpha={self.focal_alpha}, focal_gamma={self.focal_gamma}" if self.focal else ""
        extra = "" if self.no_object_class or self.focal else ", no_object_class=False"
        extra += f", iou_order={self.iou_order}" if self.iou_order is not None else ""
        return (f"HungarianMatcher(cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, "
                f"cost_giou={self.cost_giou}, focal={self.focal}{focal}{extra})")

    def num_classes(self, logits: Tensor) -> int:
        """The number of object classes in ``logits (B, Q, C)``: C, less the no-object class if any."""
        return logits.shape[-1] - (not self.focal and self.no_object_class)

    @torch.no_grad()
    def cost(self, outputs: Any, targets: Sequence[Mapping]) -> tuple[Tensor, list[int]]:
        """The batched matching cost ``(B, Q, Tmax)`` and the target counts ``[T_b]``; entries
        ``[b, :, T_b:]`` are padding. Validates the inputs."""
        logits, pred_boxes = _predictions(outputs)
        B, Q, C = logits.shape
        _check_targets(targets, B, self.num_classes(logits))
        sizes = [len(t["labels"]) for t in targets]
        t_max = max(sizes, default=0)
        device = logits.device
        if t_max == 0:
            return logits.new_zeros((B, Q, 0), dtype=torch.float32), sizes
        labels = nn.utils.rnn.pad_sequence([t["labels"].to(device, torch.long) for t in targets],
                                           batch_first=True, padding_value=0)          # (B, Tmax)
        tgt_boxes = nn.utils.rnn.pad_sequence([t["boxes"].to(device, torch.float32) for t in targets],
                                              batch_first=True, padding_value=0.5)     # (B, Tmax, 4), valid
        out_boxes = pred_boxes.float()                                                  # (B, Q, 4)
        index = labels[:, None, :].expand(B, Q, t_max)                                  # (B, Q, Tmax)
        xyxy_out, xyxy_tgt = box_cxcywh_to_xyxy(out_boxes), box_cxcywh_to_xyxy(tgt_boxes)
        if self.iou_order is not None:                                                  # Rank-DETR
            prob = logits.float().sigmoid() if self.focal else logits.float().softmax(-1)
            cost = high_order_cost(prob.gather(-1, index), box_iou(xyxy_out, xyxy_tgt)[0], self.iou_order)
        else:
            if self.focal:
                prob = logits.float().sigmoid()                                         # (B, Q, K)
                a, g = self.focal_alpha, self.focal_gamma
                neg = (1 - a) * prob ** g * -(1 - prob + 1e-8).log()
                pos = a * (1 - prob) ** g * -(prob + 1e-8).log()
                class_cost = (pos - neg).gather(-1, index)
            else:
                class_cost = -logits.float().softmax(-1).gather(-1, index)              # (B, Q, Tmax)
            bbox_cost = torch.cdist(out_boxes, tgt_boxes, p=1)                          # (B, Q, Tmax)
            giou_cost = -_generalized_box_iou(xyxy_out, xyxy_tgt)
            cost = self.cost_bbox * bbox_cost + self.cost_class * class_cost + self.cost_giou * giou_cost
        # zero-size boxes can still give NaN GIoU: make such pairs the last resort (as HF does)
        big = torch.finfo(cost.dtype).max
        return torch.nan_to_num(cost, nan=big, posinf=big, neginf=big), sizes

    @torch.no_grad()
    def __call__(self, outputs: Any, targets: Sequence[Mapping], num_groups: int = 1) -> Indices:
        """``[(query indices (n_b,), target indices (n_b,))]`` per image, n_b = num_groups * min(Q / num_groups, T_b).

        With ``num_groups=K`` the Q queries are K consecutive groups of Q/K, each matched to all
        targets independently; query indices are absolute (offset by the group start), group by group.
        """
        logits = _field(outputs, "logits")
        if not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(f"num_groups must be a positive int, got {num_groups!r}")
        if logits is not None and logits.dim() == 3 and logits.shape[1] % num_groups:
            raise ValueError(f"{logits.shape[1]} queries can't be split into {num_groups} equal groups")
        cost, sizes = self.cost(outputs, targets)                                       # (B, Q, Tmax)
        B, Q, t_max = cost.shape
        q_group = Q // num_groups
        empty = torch.empty(0, dtype=torch.int64)
        if t_max == 0:
            return [(empty, empty.clone()) for _ in range(B)]
        valid = torch.arange(t_max, device=cost.device) < torch.as_tensor(sizes, device=cost.device)[:, None]
        blocks = cost.masked_select(valid[:, None, :]).cpu().split([Q * n for n in sizes])  # one transfer
        indices = []
        for block, n in zip(blocks, sizes):
            if n == 0:
                indices.append((empty, empty.clone()))
                continue
            c = block.view(Q, n).numpy()
            rows, cols = [], []
            for g in range(num_groups):
                r, t = _linear_sum_assignment(c[g * q_group:(g + 1) * q_group])
                rows.append(r + g * q_group)
                cols.append(t)
            indices.append((torch.from_numpy(np.concatenate(rows)).long(),
                            torch.from_numpy(np.concatenate(cols)).long()))
        return indices


def _num_boxes(targets: Sequence[Mapping], device: torch.device) -> Tensor:
    """The batch's target count (averaged over ranks under torch.distributed), >= 1: a float scalar."""
    n = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(n)
        n = n / dist.get_world_size()
    return n.clamp(min=1)


def _matched(indices: Indices, targets: Sequence[Mapping], pred_boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Matching indices -> ``(batch_idx, query_idx, labels (P,), target boxes (P, 4))`` on the
    predictions' device (P = matched pairs in the batch)."""
    device = pred_boxes.device
    batch_idx = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(indices)]).to(device)
    query_idx = torch.cat([q for q, _ in indices]).to(device)
    labels = torch.cat([t["labels"].to(device)[j.to(device)] for t, (_, j) in zip(targets, indices)]).long()
    boxes = torch.cat([t["boxes"].to(device, pred_boxes.dtype)[j.to(device)] for t, (_, j) in zip(targets, indices)])
    return batch_idx, query_idx, labels, boxes


def _box_losses(boxes_src: Tensor, boxes_tgt: Tensor, num_boxes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Matched ``(P, 4)`` cxcywh pairs -> ``(L1 sum / num_boxes, (1 - GIoU) sum / num_boxes, GIoU (P,))``."""
    loss_bbox = F.l1_loss(boxes_src, boxes_tgt, reduction="none").sum() / num_boxes
    giou = _generalized_box_iou_aligned(box_cxcywh_to_xyxy(boxes_src), box_cxcywh_to_xyxy(boxes_tgt))
    return loss_bbox, (1 - giou).sum() / num_boxes, giou


def _linear_sum_assignment(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as err:  # scipy is an optional dependency of relformer
        raise ImportError("HungarianMatcher needs scipy (pip install scipy)") from err
    return linear_sum_assignment(cost)


def _sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float, gamma: float) -> Tensor:
    """Elementwise focal loss (Lin et al. 2017) on sigmoid probabilities; alpha < 0 disables it."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


class SetCriterion(nn.Module):
    """DETR's set-prediction loss: match (``matcher``), then supervise the matched pairs.

    Terms (each a scalar; ``_0``, ``_1``, ... suffixed for each auxiliary decoder output, matched
    independently, HF's and DETR's naming):

    * ``loss_ce``: cross entropy over all queries, unmatched ones labelled "no object" with class
      weight ``eos_coef`` (a weighted mean, as DETR); focal mode: ``loss_focal``, the sigmoid focal
      loss summed over queries x classes and divided by ``num_boxes`` (Deformable-DETR);
    * ``loss_bbox``: L1 over matched pairs / ``num_boxes``; ``loss_giou``: (1 - GIoU) over matched
      pairs / ``num_boxes``;
    * ``cardinality_error``: |#predicted objects - #targets| averaged over images (logged only, no
      grad); a query predicts an object when its argmax is not "no object" (focal: max prob > 0.5);
    * ``loss``: ``weight_class * loss_ce + weight_bbox * loss_bbox + weight_giou * loss_giou`` summed
      over the final and all auxiliary outputs.

    ``num_boxes`` = the batch's target count, summed over ranks and divided by the world size when
    torch.distributed is initialised, clamped to >= 1 (then times ``num_groups``).

    Rank-DETR (``giou_aware=True``, focal only): the focal term becomes ``loss_giou_aware``, the
    GIoU-aware classification loss (:func:`~.rank.giou_aware_focal_loss`, target ``(GIoU + 1) / 2`` of
    each matched pair) summed and divided by ``num_boxes``.

    Group DETR (``num_groups=K``): every term is the MEAN over groups of this criterion applied to
    each group's slice of Q/K queries alone. At inference a Group DETR model keeps only its first
    group: call ``forward(..., num_groups=1)`` for a loss on such outputs.
    """

    def __init__(self, num_classes: int, matcher: HungarianMatcher, weight_class: float = 1.0,
                 weight_bbox: float = 5.0, weight_giou: float = 2.0, eos_coef: float = 0.1, focal: bool = False,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, num_groups: int = 1,
                 giou_aware: bool = False) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(f"num_groups must be a positive int, got {num_groups!r}")
        if not 0 <= eos_coef:
            raise ValueError(f"eos_coef must be >= 0, got {eos_coef}")
        if giou_aware and not focal:
            raise ValueError("giou_aware (Rank-DETR's GIoU-aware class loss) needs focal=True (sigmoid classes)")
        if getattr(matcher, "focal", focal) != focal:
            raise ValueError(f"the criterion has focal={focal} but its matcher focal={matcher.focal}")
        self.num_classes, self.matcher, self.focal = num_classes, matcher, focal
        self.focal_alpha, self.focal_gamma, self.num_groups = float(focal_alpha), float(focal_gamma), num_groups
        self.eos_coef = float(eos_coef)
        self.giou_aware = bool(giou_aware)
        self.class_term = ("loss_giou_aware" if giou_aware else "loss_focal") if focal else "loss_ce"
        self.weight_dict = {self.class_term: float(weight_class), "loss_bbox": float(weight_bbox),
                            "loss_giou": float(weight_giou)}
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight, persistent=False)   # (K+1,)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, matcher={self.matcher!r}, focal={self.focal}, "
                f"{'giou_aware=True, ' if self.giou_aware else ''}"
                f"weights={self.weight_dict}, eos_coef={self.eos_coef}, num_groups={self.num_groups}")

    def num_boxes(self, targets: Sequence[Mapping], num_groups: int, device: torch.device) -> Tensor:
        """The normaliser of the box and focal terms: a float scalar tensor (see the class doc)."""
        return _num_boxes(targets, device) * num_groups

    def forward(self, outputs: Any, targets: Sequence[Mapping], num_groups: int | None = None) -> dict[str, Tensor]:
        """``outputs``, ``targets`` as in the module doc -> ``{term: scalar}`` including ``"loss"``."""
        num_groups = self.num_groups if num_groups is None else num_groups
        if not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(f"num_groups must be a positive int, got {num_groups!r}")
        layers = [("outputs", "", outputs)]
        layers += [(f"aux_outputs[{i}]", f"_{i}", aux) for i, aux in enumerate(_aux_outputs(outputs))]
        preds = [(_predictions(out, what), suffix) for what, suffix, out in layers]
        logits = preds[0][0][0]
        B, Q, _ = logits.shape
        for ((lg, _), _), (what, _, _) in zip(preds, layers):
            expected = (B, Q, self.num_classes if self.focal else self.num_classes + 1)
            if tuple(lg.shape) != expected:
                raise ValueError(f"{what} logits must be {expected} for num_classes={self.num_classes}"
                                 f"{' (focal: no no-object class)' if self.focal else ' + 1 no-object class'}, "
                                 f"got {tuple(lg.shape)}")
        if Q % num_groups:
            raise ValueError(f"{Q} queries can't be split into {num_groups} equal groups")
        _check_targets(targets, B, self.num_classes)
        num_boxes = self.num_boxes(targets, num_groups, logits.device)
        losses: dict[str, Tensor] = {}
        total = 0.0
        for (lg, boxes), suffix in preds:
            terms = self._layer_losses(lg, boxes, targets, num_boxes, num_groups)
            for name, value in terms.items():
                if name in self.weight_dict:
                    total = total + self.weight_dict[name] * value
                losses[name + suffix] = value
        losses["loss"] = total  # a tensor: every layer has weighted terms
        return losses

    def _layer_losses(self, logits: Tensor, pred_boxes: Tensor, targets: Sequence[Mapping], num_boxes: Tensor,
                      num_groups: int) -> dict[str, Tensor]:
        B, Q, C = logits.shape
        G, device = num_groups, logits.device
        match_kwargs = {"num_groups": G} if G > 1 else {}
        indices = self.matcher({"logits": logits, "pred_boxes": pred_boxes}, targets, **match_kwargs)
        batch_idx, query_idx, labels_o, boxes_o = _matched(indices, targets, pred_boxes)  # (P,) x 3, (P, 4)

        if self.focal:                                                                   # logits (B, Q, K)
            onehot = torch.zeros_like(logits)
            onehot[batch_idx, query_idx, labels_o] = 1
            if self.giou_aware:                                                          # Rank-DETR
                giou = _box_losses(pred_boxes[batch_idx, query_idx], boxes_o, num_boxes)[2]  # (P,)
                score = torch.zeros_like(logits)
                score[batch_idx, query_idx, labels_o] = giou_aware_targets(giou).to(logits.dtype)
                loss = giou_aware_focal_loss(logits, onehot, score, self.focal_alpha, self.focal_gamma)
            else:
                loss = _sigmoid_focal_loss(logits, onehot, self.focal_alpha, self.focal_gamma)
            loss_class = loss.sum() / num_boxes
        else:                                                                            # logits (B, Q, K+1)
            target_classes = torch.full((B, Q), self.num_classes, dtype=torch.long, device=device)
            target_classes[batch_idx, query_idx] = labels_o
            class_weight = self.empty_weight.to(logits.dtype)                            # (K+1,)
            weighted_nll = F.cross_entropy(logits.transpose(1, 2), target_classes, class_weight,
                                           reduction="none")                            # (B, Q), w * nll
            weight = class_weight[target_classes]                                        # (B, Q)
            per_group = (weighted_nll.view(B, G, Q // G).sum((0, 2))
                         / weight.view(B, G, Q // G).sum((0, 2)).clamp(min=torch.finfo(weight.dtype).tiny))
            loss_class = per_group.mean()

        loss_bbox, loss_giou, _ = _box_losses(pred_boxes[batch_idx, query_idx], boxes_o, num_boxes)

        with torch.no_grad():
            if self.focal:
                is_object = logits.sigmoid().max(-1).values > 0.5                        # (B, Q)
            else:
                is_object = logits.argmax(-1) != C - 1
            card_pred = is_object.view(B, G, Q // G).sum(-1).float()                     # (B, G)
            card_true = torch.tensor([float(len(t["labels"])) for t in targets], device=device)[:, None]
            cardinality_error = (card_pred - card_true).abs().mean()
        return {self.class_term: loss_class, "loss_bbox": loss_bbox, "loss_giou": loss_giou,
                "cardinality_error": cardinality_error}


@torch.no_grad()
def set_criterion(num_classes: int, *, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                  weight_class: float = 1.0, weight_bbox: float = 5.0, weight_giou: float = 2.0, eos_coef: float = 0.1,
                  num_groups: int = 1) -> SetCriterion:
    """DETR's set loss (softmax classes + no-object) from its costs and weights (defaults: DETR's)."""
    return SetCriterion(num_classes, HungarianMatcher(cost_class, cost_bbox, cost_giou), weight_class, weight_bbox,
                        weight_giou, eos_coef, num_groups=num_groups)


def postprocess(outputs: Any, image_sizes: Tensor | Sequence[Sequence[float]], focal: bool = False,
                top_k: int = 100) -> list[dict[str, Tensor]]:
    """Model outputs -> per image ``{"scores" (n,), "labels" (n,), "boxes" (n, 4) xyxy in pixels}``.

    ``image_sizes (B, 2)`` as (height, width). DETR: softmax, the no-object class dropped, the best
    class per query (n = Q, in query order). Focal: sigmoid, the ``top_k`` best (query, class) pairs
    over Q x K, by descending score (n = min(top_k, Q * K); a query may appear with several classes).
    """
    logits, pred_boxes = _predictions(outputs)
    B, Q, C = logits.shape
    sizes = torch.as_tensor(image_sizes, dtype=torch.float32, device=pred_boxes.device)
    if sizes.shape != (B, 2):
        raise ValueError(f"image_sizes must be (B, 2) = ({B}, 2) as (height, width), got {tuple(sizes.shape)}")
    height, width = sizes.unbind(-1)
    scale = torch.stack([width, height, width, height], dim=-1)[:, None, :]             # (B, 1, 4)
    boxes = box_cxcywh_to_xyxy(pred_boxes.float()) * scale                               # (B, Q, 4)
    if not focal:
        if C < 2:
            raise ValueError(f"softmax logits need >= 1 class + the no-object class, got {C} classes")
        scores, labels = logits.float().softmax(-1)[..., :-1].max(-1)                    # (B, Q)
    else:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        prob = logits.float().sigmoid().flatten(1)                                       # (B, Q * K)
        scores, flat_idx = prob.topk(min(top_k, Q * C), dim=1)                           # (B, n)
        query, labels = flat_idx // C, flat_idx % C
        boxes = boxes.gather(1, query[..., None].expand(-1, -1, 4))                      # (B, n, 4)
    return [{"scores": s, "labels": l, "boxes": b} for s, l, b in zip(scores, labels, boxes)]


def to_coco_results(results: Sequence[Mapping[str, Tensor]], image_ids: Sequence[int],
                    category_offset: int = 1) -> list[dict]:
    """:func:`postprocess` results -> COCO detection results
    ``[{"image_id", "category_id": label + category_offset, "bbox": [x, y, w, h], "score"}]``."""
    if len(results) != len(image_ids):
        raise ValueError(f"{len(results)} results but {len(image_ids)} image ids")
    coco = []
    for result, image_id in zip(results, image_ids):
        bboxes = box_xyxy_to_xywh(result["boxes"]).tolist()
        for bbox, label, score in zip(bboxes, result["labels"].tolist(), result["scores"].tolist()):
            coco.append({"image_id": int(image_id), "category_id": int(label) + category_offset,
                         "bbox": bbox, "score": float(score)})
    return coco
