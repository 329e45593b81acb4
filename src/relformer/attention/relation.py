"""The Relation protocol: which pairs may attend, and how a pair's relation biases the score.

A Relation is written ONCE, as up to three *broadcastable index functions* in the
style of FlexAttention's ``mask_mod`` / ``score_mod``::

    mask_mod(b, h, q_idx, kv_idx) -> bool   True where query q_idx may attend kv_idx
    bias_mod(b, h, q_idx, kv_idx) -> float  added to the scaled score q.k * scale
    prob_mod(b, h, q_idx, kv_idx) -> float  multiplies the softmax probability (URPE)

The functions use only tensor ops that broadcast, so the same code serves every
backend:

* ``eager`` / ``sdpa`` call them with index tensors of shapes ``(B,1,1,1)``,
  ``(1,H,1,1)``, ``(1,1,Lq,1)``, ``(1,1,1,Lk)`` and get the dense ``(B|1, H|1, Lq, Lk)``
  form (:meth:`Relation.dense_mask`, :meth:`Relation.dense_bias`);
* ``chunked`` calls them with index *slices* and gets one block at a time;
* ``flex`` passes them to ``flex_attention`` (which vmaps them over scalars), so the
  ``Lq x Lk`` bias is never materialised.

Relations compose, by one rule each:

* ``a & b`` combines anything: masks are AND-ed, biases summed, probability multipliers
  multiplied (a :class:`Compose`);
* ``a + b`` adds biases only: both sides must be bias-only relations (no mask, no multiplier),
  otherwise ``TypeError`` -- ``Causal() + ALiBi(H)`` would silently AND a mask, so it is refused;
  ``RelativeBias(H, 8) + ALiBi(H)`` is the sum of the two biases.

Derived forms (dense masks, SDPA masks, Flex block masks) are memoised per relation object by
:meth:`Relation.cached`, keyed on the layout *and* on the relation's state: every plain attribute
(``window``, ``offset``...), and every tensor it reads by identity, version counter (in-place edits
such as ``segment_ids[:] = 0``), dtype, device and shape. Reassigning or editing anything therefore
rebuilds the form; a stale mask cannot be served. Inference tensors carry no version counter, so
relations reading them are not memoised.
"""
from __future__ import annotations

import copy
import math
import numbers
from typing import Iterator

import torch
from torch import Tensor, nn

__all__ = ["Relation", "Compose", "index_grid", "check_int", "check_float"]

CACHE_SIZE = 32  # layouts memoised per relation object (a long-lived relation, e.g. Causal, sees many)


def check_int(name: str, value, minimum: int | None = 1) -> int:
    """``value`` as an int ``>= minimum`` (any int when None), or ``ValueError`` naming ``name``
    (bools and floats are refused; numpy integers are ints)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (minimum is not None and value < minimum):
        raise ValueError(f"{name} must be an int{'' if minimum is None else f' >= {minimum}'}, got {value!r}")
    return int(value)


def check_float(name: str, value, positive: bool = False) -> float:
    """``value`` as a finite float (``> 0`` when ``positive``), or ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or (positive and value <= 0):
        raise ValueError(f"{name} must be a finite{' positive' if positive else ''} number, got {value!r}")
    return float(value)


_SCALARS = frozenset((bool, int, float, str, type(None), torch.dtype, torch.device))
_BOOKKEEPING = frozenset(k for k in vars(nn.Module()) if k.startswith("_")) | {"_cache"}  # never read by mods


def _state(value):
    """A hashable stand-in for one attribute: what a memoised form of it depends on (a tensor's
    ``_version`` raises for inference tensors, see :meth:`Relation.state_key`)."""
    if isinstance(value, Tensor):
        return (id(value), value._version, value.dtype, value.device, value.shape)
    if type(value) in _SCALARS:
        return value
    if isinstance(value, (tuple, list)):
        return tuple(_state(v) for v in value)
    return type(value)


def _state_of(module: nn.Module, key: list) -> None:
    """Append the state of every attribute a module tree's mods may read: its parameters, buffers,
    tensor attributes and public plain attributes (not nn.Module's bookkeeping nor the cache
    itself), depth first. A plain loop: it runs on every memoised call."""
    for k, v in module.__dict__.items():
        if k in _BOOKKEEPING:
            continue
        if isinstance(v, Tensor):
            key.append((k, id(v), v._version, v.dtype, v.device, v.shape))
        elif k[0] != "_":
            kind = type(v)
            if kind in _SCALARS or (kind is tuple and all(type(x) in _SCALARS for x in v)):
                key.append((k, v))
            else:
                key.append((k, _state(v)))
    for table in (module._parameters, module._buffers):
        for k, v in table.items():
            if v is not None:
                key.append((k, id(v), v._version, v.dtype, v.device, v.shape))
    for child in module._modules.values():
        if child is not None:
            _state_of(child, key)


def _tensors_of(module: nn.Module, out: list) -> list:
    """Every tensor :func:`_state_of` reads, depth first."""
    out.extend(v for k, v in module.__dict__.items() if k not in _BOOKKEEPING and isinstance(v, Tensor))
    out.extend(v for v in module._parameters.values() if v is not None)
    out.extend(v for v in module._buffers.values() if v is not None)
    for child in module._modules.values():
        if child is not None:
            _tensors_of(child, out)
    return out


def index_grid(B: int, H: int, q_idx: Tensor, kv_idx: Tensor, device=None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Broadcastable index tensors ``b (B,1,1,1), h (1,H,1,1), q (1,1,Lq,1), kv (1,1,1,Lk)``."""
    device = device if device is not None else q_idx.device
    b = torch.arange(B, device=device).view(B, 1, 1, 1)
    h = torch.arange(H, device=device).view(1, H, 1, 1)
    return b, h, q_idx.view(1, 1, -1, 1), kv_idx.view(1, 1, 1, -1)


def _as_4d(x: Tensor) -> Tensor:
    while x.dim() < 4:
        x = x.unsqueeze(0)
    return x


class Relation(nn.Module):
    """Base class. Subclasses set ``has_mask`` / ``has_bias`` / ``has_prob`` and override the mods.

    ``has_prob`` relations (post-softmax multipliers, e.g. URPE) cannot be fused into
    SDPA or Flex; only the ``eager`` and ``chunked`` backends run them.
    """

    has_mask: bool = False
    has_bias: bool = False
    has_prob: bool = False
    #: temporaries per (q, kv) pair relative to one fp32 score; sizes the chunked backend's tiles
    tile_cost: float = 1.0
    #: bias_mod is a cheap gather (a few integer ops and one table lookup): computing it inside
    #: Flex beats materialising (B, H, Lq, Lk) for SDPA. Arithmetic-heavy biases leave it False.
    flex_bias_fast: bool = False

    def __init__(self) -> None:
        super().__init__()
        self._cache: dict = {}

    # ---- the three index functions (override) ---------------------------------
    def mask_mod(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        raise NotImplementedError

    def bias_mod(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        raise NotImplementedError

    def prob_mod(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        raise NotImplementedError

    # ---- checks and hints (override where useful) ----------------------------
    def check(self, B: int, H: int, Lq: int, Lk: int) -> None:
        """Raise ``ValueError`` naming the argument if this relation's data does not fit the shapes."""

    def is_causal(self, Lq: int, Lk: int) -> bool:
        """True when the mask is exactly SDPA's ``is_causal=True`` (top-left aligned, no other parts)."""
        return False

    # ---- derived forms --------------------------------------------------------
    def _grid(self, B, H, Lq, Lk, device, q_start=0, kv_start=0):
        q_idx = torch.arange(q_start, q_start + Lq, device=device)
        kv_idx = torch.arange(kv_start, kv_start + Lk, device=device)
        return index_grid(B, H, q_idx, kv_idx, device)

    def dense_mask(self, B: int, H: int, Lq: int, Lk: int, device=None) -> Tensor | None:
        """Boolean ``(B|1, H|1, Lq, Lk)`` mask (True = attend), or None when the relation has no mask."""
        if not self.has_mask:
            return None
        return _as_4d(self.mask_mod(*self._grid(B, H, Lq, Lk, device)))

    def dense_parts(self, B: int, H: int, Lq: int, Lk: int, device=None, dtype=torch.float32,
                    with_mask: bool = True) -> tuple[Tensor | None, Tensor | None]:
        """The additive float bias and the boolean mask (True = attend), each ``(B|1, H|1, Lq, Lk)``
        and None when the relation has no such part (or ``with_mask=False``: a caller that keeps
        the mask cached). Kept apart, each keeps its own broadcast shape (Swin: a ``(1, H, 49, 49)``
        bias and a ``(B*nW, 1, 49, 49)`` mask)."""
        grid = self._grid(B, H, Lq, Lk, device)
        bias = _as_4d(self.bias_mod(*grid)).to(dtype) if self.has_bias else None
        return bias, (_as_4d(self.mask_mod(*grid)) if self.has_mask and with_mask else None)

    def dense_bias(self, B: int, H: int, Lq: int, Lk: int, device=None, dtype=torch.float32) -> Tensor | None:
        """Additive float ``(B|1, H|1, Lq, Lk)`` bias, ``-inf`` where masked; None when neither part exists."""
        bias, mask = self.dense_parts(B, H, Lq, Lk, device, dtype)
        if mask is not None:
            zero = torch.zeros((), dtype=dtype, device=mask.device)
            bias = (bias if bias is not None else zero).masked_fill(~mask, float("-inf"))
        return bias

    def dense_prob(self, B: int, H: int, Lq: int, Lk: int, device=None) -> Tensor | None:
        if not self.has_prob:
            return None
        return _as_4d(self.prob_mod(*self._grid(B, H, Lq, Lk, device)))

    # ---- composition -----------------------------------------------------------
    def __and__(self, other: "Relation") -> "Compose":
        """Combine anything: masks AND-ed, biases summed, multipliers multiplied."""
        return Compose(self, other)

    def __add__(self, other: "Relation") -> "Compose":
        """Sum of two bias-only relations; ``TypeError`` when either side has a mask or multiplier."""
        if not isinstance(other, Relation):
            return NotImplemented
        for side in (self, other):
            if side.has_mask or side.has_prob or not side.has_bias:
                raise TypeError(f"'+' adds bias-only relations, but {type(side).__name__} has "
                                f"{'a mask' if side.has_mask else 'a multiplier' if side.has_prob else 'no bias'}; "
                                "use '&' to combine masks, biases and multipliers")
        return Compose(self, other)

    # ---- helpers used by backends ------------------------------------------------
    def named_tensors(self) -> Iterator[tuple[str, Tensor]]:
        """``(name, tensor)`` for every tensor the mods may read: parameters, buffers and data
        attributes, recursively (names as in ``state_dict``, plus the data attributes)."""
        for prefix, m in self.named_modules():
            dot = prefix + "." if prefix else ""
            for k, v in (*m._parameters.items(), *m._buffers.items(), *vars(m).items()):
                if isinstance(v, Tensor):
                    yield dot + k, v

    def tensors(self) -> list[Tensor]:
        """Every tensor the mods may read: parameters, buffers and data attributes, recursively."""
        return _tensors_of(self, [])

    def check_device(self, device: torch.device) -> None:
        """``ValueError`` naming the tensor when one the mods read lies on another device than ``device``."""
        for t in self.tensors():
            if t.device != device:
                break
        else:
            return
        for name, t in self.named_tensors():
            if t.device != device:
                raise ValueError(f"{type(self).__name__}.{name} is on {t.device} but q is on {device}: "
                                 "move the relation with .to(q.device)")

    def state_key(self):
        """What every derived form depends on (see the module docstring), or None when a tensor is an
        inference tensor (no version counter: such a relation is not memoised)."""
        key: list = []
        try:
            _state_of(self, key)
        except RuntimeError:  # "Inference tensors do not track version counter"
            return None
        return tuple(key)

    def grad_tensors(self) -> list[Tensor]:
        """Tensors the relation reads that require grad (learnable tables, or data computed by a module)."""
        seen, out = set(), []
        for t in self.tensors():
            if t is not None and t.requires_grad and id(t) not in seen:
                seen.add(id(t))
                out.append(t)
        return out

    def map_tensors(self, fn) -> "Relation":
        """A shallow copy reading ``fn(t)`` for every parameter and tensor attribute (recursively).

        The copy gets its own ``_parameters`` / ``_modules`` dicts (``nn.Module.__setattr__`` would
        refuse a plain tensor in a parameter's place, and a shared dict would change the source);
        ``tests/relations/test_algebra.py`` checks that such copies and :meth:`bind`'s survive
        ``state_dict``, ``deepcopy``, ``torch.compile`` and DDP."""
        new = copy.copy(self)
        new._parameters = {k: (None if v is None else fn(v)) for k, v in self._parameters.items()}
        new._buffers = dict(self._buffers)
        new._modules = {k: (None if v is None else v.map_tensors(fn) if isinstance(v, Relation) else _map_module(v, fn))
                        for k, v in self._modules.items()}
        for k, v in vars(self).items():
            if isinstance(v, Tensor):
                object.__setattr__(new, k, fn(v))
        return new

    def detached(self) -> "Relation":
        """A copy whose tensors are detached (shares the layout cache)."""
        return self.map_tensors(lambda t: t.detach())

    def flex_view(self) -> "Relation":
        """What Flex compiles: detached tensors (a score_mod cannot capture trainable tensors).

        Override to precompute what Flex cannot compile (e.g. a small MLP per pair).
        """
        return self.detached()

    def bind(self, **data) -> "Relation":
        """A copy that shares this relation's tables (the same parameter objects: training the copy trains
        the source, and both have one ``state_dict``) but reads new per-batch data (e.g. ``spd=...``),
        set as plain attributes on the copy (``object.__setattr__``: a buffer of the source is
        shadowed, never overwritten)."""
        new = copy.copy(self)
        object.__setattr__(new, "_cache", {})
        for k, v in data.items():
            if not hasattr(self, k):
                raise TypeError(f"{type(self).__name__}.bind() got an unexpected argument {k!r}")
            object.__setattr__(new, k, v)
        return new

    def cached(self, key, build):
        """Memoise ``build()`` on this relation object (shared by every layer that uses it), keyed on
        ``key`` (the layout) and :meth:`state_key`. Each entry holds the tensors it was built from, so
        their ``id`` cannot be reused by another tensor while the entry lives."""
        state = self.state_key()
        if state is None:
            return build()
        full = (key, state)
        hit = self._cache.get(full)
        if hit is None:
            if len(self._cache) >= CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))
            hit = self._cache[full] = (self.tensors(), build())
        return hit[1]


def _map_module(m: nn.Module, fn) -> nn.Module:
    new = copy.copy(m)
    new._parameters = {k: (None if v is None else fn(v)) for k, v in m._parameters.items()}
    new._modules = {k: (None if v is None else _map_module(v, fn)) for k, v in m._modules.items()}
    return new


class Compose(Relation):
    """Applies several relations together: masks AND-ed, biases summed, multipliers multiplied."""

    def __init__(self, *relations: Relation) -> None:
        super().__init__()
        flat: list[Relation] = []
        for r in relations:
            if not isinstance(r, Relation):
                raise TypeError(f"can only compose Relation objects, got {type(r).__name__}")
            flat.extend(r.parts if isinstance(r, Compose) else [r])
        self.parts = nn.ModuleList(flat)
        self.has_mask = any(r.has_mask for r in flat)
        self.has_bias = any(r.has_bias for r in flat)
        self.has_prob = any(r.has_prob for r in flat)

    def _reduce(self, attr: str, flag: str, op, b, h, q_idx, kv_idx):
        out = None
        for r in self.parts:
            if getattr(r, flag):
                x = getattr(r, attr)(b, h, q_idx, kv_idx)
                out = x if out is None else op(out, x)
        return out

    def mask_mod(self, b, h, q_idx, kv_idx):
        return self._reduce("mask_mod", "has_mask", torch.logical_and, b, h, q_idx, kv_idx)

    def bias_mod(self, b, h, q_idx, kv_idx):
        return self._reduce("bias_mod", "has_bias", torch.add, b, h, q_idx, kv_idx)

    def prob_mod(self, b, h, q_idx, kv_idx):
        return self._reduce("prob_mod", "has_prob", torch.mul, b, h, q_idx, kv_idx)

    def check(self, B, H, Lq, Lk):
        for r in self.parts:
            r.check(B, H, Lq, Lk)

    def is_causal(self, Lq, Lk):
        return len(self.parts) == 1 and self.parts[0].is_causal(Lq, Lk)

    def _with_parts(self, view) -> "Compose":
        new = copy.copy(self)
        new._modules = {"parts": nn.ModuleList([view(r) for r in self.parts])}
        return new

    def map_tensors(self, fn):
        return self._with_parts(lambda r: r.map_tensors(fn))

    def flex_view(self):
        return self._with_parts(lambda r: r.flex_view())

    @property
    def tile_cost(self) -> float:
        return max(r.tile_cost for r in self.parts)

    @property
    def flex_bias_fast(self) -> bool:
        return all(r.flex_bias_fast for r in self.parts if r.has_bias)

    def bind(self, **data):
        raise TypeError("bind() the individual relations, then compose them")

    def __repr__(self) -> str:
        return " & ".join(repr(r) for r in self.parts)
