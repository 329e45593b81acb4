"""Rank-DETR's rank-oriented design (Pu et al., NeurIPS 2023, "Rank-DETR for High Quality Object Detection").

Two parts, each switchable on its own so the paper's ablation can be made (architecture only / loss
and cost only / both):

* **Rank-oriented architecture** (Sec. 3.1), modules for a DETR decoder:

  - :class:`QueryRankLayer` (QRL), before each of the last L - 1 decoder layers: the queries are
    sorted by the previous layer's score ``max_k sigmoid(logits)`` (descending) and each sorted content
    query is concatenated with a static content embedding ``C^l`` of its rank and fused,
    ``q_c <- MLP_fuse([q_c[order] ; C^l[rank]])`` (the code: ``Linear(2C, C)([q ; Linear(C, C)(C^l)])``,
    ``C^l`` zero-initialised); the position queries are sorted with them (H-DETR), or rebuilt from the
    sorted reference boxes (DINO-style decoders: pass the boxes as ``aligned``);
  - :class:`RankAdaptiveClassHead` (RCH), after every decoder layer: ``p_i = sigmoid(t_i + s_i)`` with
    ``t_i = MLP_cls(q_i)`` and ``s_i`` a learnable logit bias of rank ``i`` (zero-initialised), so the
    detector lifts the scores of top-ranked queries and suppresses the tail.

* **Rank-oriented loss and matching cost** (Sec. 3.2), used by the criteria
  (:class:`~.set_prediction.SetCriterion` and :class:`~.rtdetr_loss.RTDetrCriterion`, ``giou_aware=True``)
  and the matcher (:class:`~.set_prediction.HungarianMatcher`, ``iou_order=4``):

  - GIoU-aware classification loss (GCL): target ``t = (GIoU(b, b_gt) + 1) / 2`` (detached) at the
    matched (query, target class), ``FL_GIoU(p) = -|t - p|^g (t log p + (1 - t) log(1 - p))``, and
    ``-p^g log(1 - p)`` at every other entry; the code weights positives by ``a`` and negatives by
    ``1 - a`` (a = 0.25, g = 2);
  - high-order matching cost (HMC) ``C = -p(c) * IoU(b, b_gt)^alpha`` (alpha = 4, the paper's best of
    alpha > 2), which the code uses from 3/4 of the training on (67.5k of 90k iterations), the usual
    cost before.

Formulas: the paper's Sec. 3 (its equation numbers are not restated here), with the details of the
authors' code (LeapLabTHU/Rank-DETR: ``rankdetr_criterion.py``, ``high_order_matcher.py``,
``rank_transformer.py``, ``rank_detr.py``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["giou_aware_targets", "giou_aware_focal_loss", "high_order_cost", "rank_order", "QueryRankLayer",
           "RankAdaptiveClassHead"]


def giou_aware_targets(giou: Tensor) -> Tensor:
    """GIoU-aware classification target ``t = (GIoU + 1) / 2`` (Rank-DETR Sec. 3.2), detached, any shape."""
    return ((giou.detach() + 1) / 2).clamp(0, 1)


def giou_aware_focal_loss(logits: Tensor, onehot: Tensor, target: Tensor, alpha: float = 0.25,
                          gamma: float = 2.0) -> Tensor:
    """Rank-DETR's GIoU-aware classification loss, elementwise ``(..., K)``.

    ``logits (..., K)``; ``onehot (..., K)`` 1 at (matched query, its target class); ``target (..., K)``
    the GIoU-aware target ``t`` at those entries (0 elsewhere). Positives: ``a |t - p|^g BCE(p, t)``;
    negatives: ``(1 - a) p^g BCE(p, 0)``, ``p = sigmoid(logits)``; ``alpha < 0`` drops the ``a`` weights.
    """
    onehot = onehot.to(logits.dtype)
    target = target.detach().to(logits.dtype) * onehot
    prob = logits.sigmoid()
    pos = (target - prob * onehot).abs() ** gamma * F.binary_cross_entropy_with_logits(
        logits, target, reduction="none") * onehot
    neg = (prob * (1 - onehot)) ** gamma * F.binary_cross_entropy_with_logits(
        logits, torch.zeros_like(logits), reduction="none") * (1 - onehot)
    loss = pos + neg
    if alpha >= 0:
        loss = (alpha * onehot + (1 - alpha) * (1 - onehot)) * loss
    return loss


def high_order_cost(score: Tensor, iou: Tensor, order: float = 4.0) -> Tensor:
    """Rank-DETR's high-order matching cost ``-score * IoU^order`` (Sec. 3.2), elementwise: ``score``
    the predicted probability of the target class, ``iou`` the pairwise IoU (same shape)."""
    return -score * iou.clamp(min=0) ** order


def rank_order(logits: Tensor) -> Tensor:
    """``logits (B, Q, K)`` -> ``(B, Q)`` query indices by descending ``max_k sigmoid(logits)`` (stable,
    so ties keep their order), detached: the ranking of Rank-DETR's query rank layer."""
    if logits.dim() != 3:
        raise ValueError(f"logits must be (B, Q, K), got {tuple(logits.shape)}")
    score = logits.detach().sigmoid().amax(-1)                                        # (B, Q)
    return torch.argsort(score, dim=1, descending=True, stable=True)


def _gather_rows(x: Tensor, order: Tensor) -> Tensor:
    """``x (B, Q, ...)``, ``order (B, Q)`` -> ``x[b, order[b]]``."""
    index = order.reshape(*order.shape, *([1] * (x.dim() - 2))).expand(*order.shape, *x.shape[2:])
    return x.gather(1, index)


class QueryRankLayer(nn.Module):
    """Rank-DETR's query rank layer (Sec. 3.1), placed before decoder layers 2..L.

    ``forward(queries (B, Q, C), prev_logits (B, Q, K), *aligned (B, Q, ...), num_fixed=0) ->
    (queries (B, Q, C), order (B, Q), aligned)``: the last ``Q - num_fixed`` queries are sorted by
    ``prev_logits`` (:func:`rank_order`) and, with ``fuse``, ``q <- post([q ; pre(E[rank])])`` with
    ``E (num_queries, C)`` zero-initialised, ``pre: C -> C``, ``post: 2C -> C`` (the authors' code).
    ``aligned`` tensors (position queries, reference boxes) are sorted the same way. The first
    ``num_fixed`` queries (e.g. denoising queries, matched by their index) stay in place, unchanged.
    ``order`` holds absolute query indices. ``sort=False`` (and ``fuse=False``): the identity, the plain
    decoder path; ``fuse=False`` alone: only the sorting, which the rank-adaptive head needs.
    """

    def __init__(self, dim: int, num_queries: int, sort: bool = True, fuse: bool = True) -> None:
        super().__init__()
        if dim < 1 or num_queries < 1:
            raise ValueError(f"dim and num_queries must be >= 1, got {dim}, {num_queries}")
        if fuse and not sort:
            raise ValueError("fuse=True needs sort=True: rank embeddings belong to sorted queries")
        self.dim, self.num_queries, self.sort, self.fuse = dim, num_queries, sort, fuse
        if fuse:
            self.rank_embed = nn.Embedding(num_queries, dim)
            nn.init.zeros_(self.rank_embed.weight)
            self.pre = nn.Linear(dim, dim)
            self.post = nn.Linear(2 * dim, dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_queries={self.num_queries}, sort={self.sort}, fuse={self.fuse}"

    def forward(self, queries: Tensor, prev_logits: Tensor, *aligned: Tensor,
                num_fixed: int = 0) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        if queries.dim() != 3 or queries.shape[-1] != self.dim:
            raise ValueError(f"queries must be (B, Q, {self.dim}), got {tuple(queries.shape)}")
        B, Q, _ = queries.shape
        if prev_logits.dim() != 3 or prev_logits.shape[:2] != (B, Q):
            raise ValueError(f"prev_logits must be ({B}, {Q}, K), got {tuple(prev_logits.shape)}")
        for i, x in enumerate(aligned):
            if x.shape[:2] != (B, Q):
                raise ValueError(f"aligned[{i}] must start with ({B}, {Q}), got {tuple(x.shape)}")
        if not 0 <= num_fixed <= Q:
            raise ValueError(f"num_fixed must lie in [0, {Q}], got {num_fixed}")
        ranked = Q - num_fixed
        if self.fuse and ranked > self.num_queries:
            raise ValueError(f"{ranked} ranked queries but rank embeddings for {self.num_queries}")
        fixed = torch.arange(num_fixed, device=queries.device).expand(B, num_fixed)
        if not self.sort:
            return queries, torch.arange(Q, device=queries.device).expand(B, Q), aligned
        order = torch.cat([fixed, rank_order(prev_logits[:, num_fixed:]) + num_fixed], dim=1)   # (B, Q)
        queries = _gather_rows(queries, order)
        aligned = tuple(_gather_rows(x, order) for x in aligned)
        if self.fuse:
            head, tail = queries[:, :num_fixed], queries[:, num_fixed:]                 # (B, Qf, C), (B, Qr, C)
            rank = self.pre(self.rank_embed.weight[:ranked]).expand(B, ranked, self.dim)   # (B, Qr, C)
            queries = torch.cat([head, self.post(torch.cat([tail, rank], dim=-1))], dim=1)
        return queries, order, aligned


class RankAdaptiveClassHead(nn.Module):
    """Rank-DETR's rank-adaptive classification head (Sec. 3.1): ``logits = Linear(q) + S[rank]``.

    ``forward(queries (B, Q, C), num_fixed=0) -> logits (B, Q, K)``; the queries are in rank order
    (sorted by a :class:`QueryRankLayer`, or the encoder's top-k order before the first decoder layer),
    so position ``num_fixed + r`` gets the bias ``S[r]`` of rank ``r``; ``S (num_queries, K)`` starts at
    zero. The first ``num_fixed`` (denoising) queries get no bias. ``rank_bias=False``: a plain
    ``Linear(dim, num_classes)``.
    """

    def __init__(self, dim: int, num_classes: int, num_queries: int, rank_bias: bool = True) -> None:
        super().__init__()
        if dim < 1 or num_classes < 1 or num_queries < 1:
            raise ValueError(f"dim, num_classes and num_queries must be >= 1, got {dim}, {num_classes}, "
                             f"{num_queries}")
        self.num_queries, self.rank_bias = num_queries, rank_bias
        self.linear = nn.Linear(dim, num_classes)
        if rank_bias:
            self.bias = nn.Embedding(num_queries, num_classes)
            nn.init.zeros_(self.bias.weight)

    def forward(self, queries: Tensor, num_fixed: int = 0) -> Tensor:
        logits = self.linear(queries)                                                   # (B, Q, K)
        if not self.rank_bias:
            return logits
        ranked = queries.shape[1] - num_fixed
        if not 0 <= ranked <= self.num_queries:
            raise ValueError(f"{ranked} ranked queries (Q={queries.shape[1]}, num_fixed={num_fixed}) but "
                             f"rank biases for {self.num_queries}")
        bias = F.pad(self.bias.weight[:ranked], (0, 0, num_fixed, 0))                  # (Q, K)
        return logits + bias
