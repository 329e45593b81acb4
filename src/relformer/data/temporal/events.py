"""Continuous-time interaction graphs: :class:`EventStream` (a time-sorted list of ``src -> dst``
events) and the chronological splits of DyGLib (Yu et al. 2023, ``get_link_prediction_data``).

``EventStream(src (E,), dst (E,), t (E,), edge_features (E, F), node_features (N, F'))`` holds
``E`` events among ``num_nodes`` nodes, validated once at construction (times non-decreasing, ties
allowed; ids in ``[0, num_nodes)``; finite features). A bipartite stream keeps its two sides in two
id ranges: sources in ``[0, num_src_nodes)``, destinations in ``[num_src_nodes, num_nodes)``.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

__all__ = ["EventStream", "TemporalSplit", "chronological_split"]

_INT = (torch.int32, torch.int64)


def _first(bad: Tensor) -> int:
    """Index of the first ``True`` of a 1-D bool tensor."""
    return int(bad.nonzero()[0, 0])


def _check_ids(name: str, ids: Tensor, num_events: int) -> None:
    if not isinstance(ids, Tensor):
        raise TypeError(f"{name} must be a tensor (E,) of node ids, got {type(ids).__name__}")
    if ids.dim() != 1 or ids.dtype not in _INT:
        raise ValueError(f"{name} must be a 1-D int32/int64 tensor (E,), got {ids.dtype} {tuple(ids.shape)}")
    if ids.shape[0] != num_events:
        raise ValueError(f"{name} has {ids.shape[0]} events but t has {num_events}")
    if ids.numel() and bool((ids < 0).any()):
        i = _first(ids < 0)
        raise ValueError(f"{name} holds a negative node id at event {i}: {int(ids[i])}")


def _check_range(name: str, ids: Tensor, lo: int, hi: int) -> None:
    bad = (ids < lo) | (ids >= hi)
    if ids.numel() and bool(bad.any()):
        i = _first(bad)
        raise ValueError(f"{name}[{i}] = {int(ids[i])} is out of range [{lo}, {hi})")


def _check_features(name: str, x: Tensor | None, rows: int, what: str) -> None:
    if x is None:
        return
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor ({what}, F), got {type(x).__name__}")
    if x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"{name} must be a 2-D floating-point tensor ({what}, F), got {x.dtype} {tuple(x.shape)}")
    if x.shape[0] != rows:
        raise ValueError(f"{name} has {x.shape[0]} rows but there are {rows} {what.split()[-1]}")
    bad = ~torch.isfinite(x).all(1)
    if x.numel() and bool(bad.any()):
        raise ValueError(f"{name} holds NaN or inf values (first at row {_first(bad)})")


@dataclass(frozen=True)
class EventStream:
    """``E`` timed interactions ``src[e] -> dst[e]`` at ``t[e]``, sorted by time (ties allowed).

    * ``src``, ``dst``: ``(E,)`` long node ids in ``[0, num_nodes)`` (``num_nodes`` defaults to the
      largest id + 1);
    * ``t``: ``(E,)`` float64 or long timestamps, non-decreasing;
    * ``edge_features``: optional ``(E, F)`` float, one row per event; ``node_features``: optional
      ``(num_nodes, F')`` float;
    * ``bipartite``: sources in ``[0, num_src_nodes)``, destinations in ``[num_src_nodes, num_nodes)``.

    Slicing (``stream[a:b]``) and :meth:`select` keep ``num_nodes``, ``node_features`` and the sides.
    """

    src: Tensor
    dst: Tensor
    t: Tensor
    edge_features: Tensor | None = None
    node_features: Tensor | None = None
    num_nodes: int | None = None
    bipartite: bool = False
    num_src_nodes: int | None = None

    def __post_init__(self) -> None:
        t = self.t
        if not isinstance(t, Tensor):
            raise TypeError(f"t must be a tensor (E,) of timestamps, got {type(t).__name__}")
        if t.dim() != 1 or t.dtype not in (torch.float64, torch.int64):
            raise ValueError(f"t must be a 1-D float64 or int64 tensor (E,), got {t.dtype} {tuple(t.shape)}")
        E = t.shape[0]
        if t.is_floating_point() and E and not bool(torch.isfinite(t).all()):
            raise ValueError(f"t holds NaN or inf at event {_first(~torch.isfinite(t))}")
        if E > 1 and bool((t[1:] < t[:-1]).any()):
            i = _first(t[1:] < t[:-1]) + 1
            raise ValueError(f"t must be sorted (non-decreasing): t[{i}] = {t[i].item()} < t[{i - 1}] = {t[i - 1].item()}")
        _check_ids("src", self.src, E)
        _check_ids("dst", self.dst, E)
        object.__setattr__(self, "src", self.src.long())
        object.__setattr__(self, "dst", self.dst.long())
        n = self.num_nodes
        if n is None:
            n = int(torch.maximum(self.src.max(), self.dst.max())) + 1 if E else 0
            if self.node_features is not None:
                n = max(n, self.node_features.shape[0])
        elif not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"num_nodes must be a non-negative int, got {n!r}")
        object.__setattr__(self, "num_nodes", n)
        if self.bipartite:
            k = self.num_src_nodes
            if not isinstance(k, int) or isinstance(k, bool) or not 0 < k < n:
                raise ValueError(f"num_src_nodes must be an int in (0, num_nodes = {n}) for a bipartite stream, got {k!r}")
            _check_range("src", self.src, 0, k)
            _check_range("dst", self.dst, k, n)
        else:
            if self.num_src_nodes is not None:
                raise ValueError("num_src_nodes is only for bipartite streams (bipartite=True)")
            _check_range("src", self.src, 0, n)
            _check_range("dst", self.dst, 0, n)
        _check_features("edge_features", self.edge_features, E, "E events")
        _check_features("node_features", self.node_features, n, "num_nodes nodes")

    # ---- views -------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.t.shape[0]

    @property
    def num_events(self) -> int:
        return self.t.shape[0]

    @property
    def device(self) -> torch.device:
        return self.t.device

    @property
    def src_range(self) -> tuple[int, int]:
        """``[lo, hi)`` of the source ids (the whole id range unless bipartite)."""
        return (0, self.num_src_nodes) if self.bipartite else (0, self.num_nodes)

    @property
    def dst_range(self) -> tuple[int, int]:
        """``[lo, hi)`` of the destination ids (the whole id range unless bipartite)."""
        return (self.num_src_nodes, self.num_nodes) if self.bipartite else (0, self.num_nodes)

    def __getitem__(self, index: slice) -> "EventStream":
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("an EventStream is sliced by a contiguous event range (stream[a:b]); use select() for masks")
        return self._take(index)

    def select(self, index: Tensor) -> "EventStream":
        """The events of a bool mask ``(E,)`` or of increasing event indices ``(M,)``, in time order."""
        if not isinstance(index, Tensor) or index.dim() != 1:
            raise TypeError("index must be a 1-D bool mask (E,) or a 1-D tensor of event indices")
        if index.dtype == torch.bool:
            if index.shape[0] != len(self):
                raise ValueError(f"index mask has {index.shape[0]} entries for {len(self)} events")
        elif index.dtype in _INT:
            if index.numel() and (int(index.min()) < 0 or int(index.max()) >= len(self)):
                raise ValueError(f"index holds event ids outside [0, {len(self)})")
            if index.numel() > 1 and bool((index[1:] <= index[:-1]).any()):
                raise ValueError("index must be strictly increasing (the events stay in time order)")
        else:
            raise TypeError(f"index must be bool or int64, got {index.dtype}")
        return self._take(index)

    def _take(self, index) -> "EventStream":
        ef = None if self.edge_features is None else self.edge_features[index]
        return replace(self, src=self.src[index], dst=self.dst[index], t=self.t[index], edge_features=ef)

    def to(self, device: torch.device | str) -> "EventStream":
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self)
                 if isinstance(getattr(self, f.name), Tensor)}
        return replace(self, **moved)


@dataclass(frozen=True)
class TemporalSplit:
    """Chronological link-prediction splits of one stream, as event masks ``(E,)`` over ``stream``.

    * ``train``: events with ``t <= val_time`` not touching a held-out node (DyGLib trains on this
      one set in both settings);
    * ``val`` / ``test``: ``val_time < t <= test_time`` / ``t > test_time`` (the transductive sets);
    * ``new_node_val`` / ``new_node_test``: the val / test events with at least one node never seen
      in ``train`` (the inductive sets);
    * ``held_out``: ``(H,)`` the node ids removed from training.
    """

    stream: EventStream
    train: Tensor
    val: Tensor
    test: Tensor
    new_node_val: Tensor
    new_node_test: Tensor
    held_out: Tensor
    val_time: float
    test_time: float

    def events(self, name: str) -> EventStream:
        """The sub-stream of one split (``"train"``, ``"val"``, ``"test"``, ``"new_node_val"``, ``"new_node_test"``)."""
        if name not in ("train", "val", "test", "new_node_val", "new_node_test"):
            raise ValueError(f"name must be train, val, test, new_node_val or new_node_test, got {name!r}")
        return self.stream.select(getattr(self, name))


def chronological_split(stream: EventStream, val_ratio: float = 0.15, test_ratio: float = 0.15,
                        new_node_ratio: float = 0.1, seed: int = 2020) -> TemporalSplit:
    """DyGLib's ``get_link_prediction_data``: ``val_time`` / ``test_time`` are the
    ``1 - val_ratio - test_ratio`` and ``1 - test_ratio`` quantiles of ``t`` (linear interpolation,
    as ``np.quantile``); ``round_down(new_node_ratio * #nodes)`` nodes, drawn (seeded) among those
    seen after ``val_time``, are held out of training (DyGLib draws with Python's ``random``: the same
    rule, not the same draw). ``new_node_ratio=0`` holds none out (a purely transductive split)."""
    for name, r in (("val_ratio", val_ratio), ("test_ratio", test_ratio)):
        if not isinstance(r, (int, float)) or not 0 < r < 1:
            raise ValueError(f"{name} must be in (0, 1), got {r!r}")
    if val_ratio + test_ratio >= 1:
        raise ValueError(f"val_ratio + test_ratio must be < 1, got {val_ratio + test_ratio}")
    if not isinstance(new_node_ratio, (int, float)) or not 0 <= new_node_ratio < 1:
        raise ValueError(f"new_node_ratio must be in [0, 1), got {new_node_ratio!r}")
    if len(stream) < 2:
        raise ValueError(f"stream must hold at least 2 events to split, got {len(stream)}")
    t = stream.t.double()
    q = torch.quantile(t, torch.tensor([1 - val_ratio - test_ratio, 1 - test_ratio], dtype=torch.float64, device=t.device))
    val_time, test_time = float(q[0]), float(q[1])
    src, dst, n = stream.src, stream.dst, stream.num_nodes

    seen = torch.zeros(n, dtype=torch.bool, device=t.device)
    seen[src] = True
    seen[dst] = True
    late = t > val_time
    late_nodes = torch.zeros_like(seen)
    late_nodes[src[late]] = True
    late_nodes[dst[late]] = True
    candidates = late_nodes.nonzero().flatten()  # sorted ids: the draw depends only on the seed
    k = min(int(new_node_ratio * int(seen.sum())), candidates.numel())
    gen = torch.Generator().manual_seed(seed)
    held_out = candidates[torch.randperm(candidates.numel(), generator=gen)[:k].to(t.device)].sort().values
    is_held = torch.zeros_like(seen)
    is_held[held_out] = True

    train = (t <= val_time) & ~is_held[src] & ~is_held[dst]
    in_train = torch.zeros_like(seen)
    in_train[src[train]] = True
    in_train[dst[train]] = True
    new_edge = ~in_train[src] | ~in_train[dst]
    val = (t > val_time) & (t <= test_time)
    test = t > test_time
    return TemporalSplit(stream=stream, train=train, val=val, test=test, new_node_val=val & new_edge,
                         new_node_test=test & new_edge, held_out=held_out, val_time=val_time, test_time=test_time)
