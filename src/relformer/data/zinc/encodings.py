"""Graph encodings of the ZINC-like splits, computed once per split and cached beside it:
LapPE, RWSE and shortest-path distances (:func:`with_encodings`)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ...nn.posenc import laplacian_eigenvectors, random_walk_encoding
from ...relations.graph import shortest_path_distances
from .dataset import ZincDataset
from .storage import _SPD_UNREACHABLE, FORMAT, _read, _read_metadata, _write_atomic

__all__ = ["with_encodings"]


def _compute_lap(ds: ZincDataset, k: int, progress: bool) -> dict[str, Tensor]:
    pes, vals = [], []
    for i in tqdm(range(len(ds)), desc=f"LapPE k={k} ({ds.split})", unit="graph", disable=not progress):
        n, ei = ds.graph_edges(i)
        pe, ev = laplacian_eigenvectors(ei, n, k, return_eigenvalues=True)  # (n, k), (n, k) rows all equal
        pes.append(pe)
        vals.append(ev[0] if n else ev.new_zeros(k))
    return {"lap_pe": torch.cat(pes), "lap_eigvals": torch.stack(vals)}  # (N, k), (G, k): stored once per graph


def _compute_rwse(ds: ZincDataset, k: int, progress: bool) -> dict[str, Tensor]:
    out = []
    for i in tqdm(range(len(ds)), desc=f"RWSE k={k} ({ds.split})", unit="graph", disable=not progress):
        n, ei = ds.graph_edges(i)
        out.append(random_walk_encoding(ei, n, k))
    return {"rwse": torch.cat(out)}


def _compute_spd(ds: ZincDataset, progress: bool) -> dict[str, Tensor]:
    out = []
    for i in tqdm(range(len(ds)), desc=f"shortest paths ({ds.split})", unit="graph", disable=not progress):
        n, ei = ds.graph_edges(i)
        d = shortest_path_distances(ei, n).flatten()  # (n * n,) long, -1 unreachable
        if d.max() >= _SPD_UNREACHABLE:
            raise ValueError(f"graph {i}: a shortest path of {int(d.max())} hops does not fit the uint8 cache")
        out.append(torch.where(d < 0, _SPD_UNREACHABLE, d).to(torch.uint8))
    return {"spd": torch.cat(out)}


def _cached_encoding(ds: ZincDataset, key: str, compute: Callable[[], dict[str, Tensor]],
                     shapes: dict[str, tuple[int, ...]]) -> dict[str, Tensor]:
    """Load ``<split>.<key>.safetensors`` beside the split if it belongs to these graphs and holds
    tensors of the expected ``shapes``; else compute the encoding and write that file."""
    if ds.path is None:
        return compute()
    path = ds.path.with_name(f"{ds.split}.{key}.safetensors")
    meta = _read_metadata(path)
    if meta is not None and meta.get("content") == ds.content_hash and meta.get("format") == FORMAT:
        tensors = _read(path)[0]
        if {k: tuple(t.shape) for k, t in tensors.items()} == shapes:
            return tensors
    tensors = compute()
    _write_atomic(path, tensors, {"format": FORMAT, "content": ds.content_hash, "encoding": key})
    return tensors


def with_encodings(dataset: ZincDataset | dict[str, ZincDataset], lap_k: int | None = 8, rwse_k: int | None = 16,
                   spd: bool = True, progress: bool = True):
    """Attach cached graph encodings to a split (or to each split of a ``build_zinc`` dict):

    * ``lap_k``: ``lap_pe`` and ``lap_eigvals (N, lap_k)``, :func:`relformer.nn.posenc.laplacian_eigenvectors`
      (LapPE; flip signs at random while training, :func:`~relformer.nn.posenc.random_sign_flip`);
    * ``rwse_k``: ``rwse (N, rwse_k)``, :func:`relformer.nn.posenc.random_walk_encoding` (RWSE);
    * ``spd``: hop distances per graph, :func:`relformer.relations.graph.shortest_path_distances`
      (for Graphormer's :class:`~relformer.relations.graph.ShortestPathBias`).

    Each is computed once (one graph at a time, with a progress bar) and stored beside the split as
    ``<split>.lap<k>``, ``.rwse<k>`` and ``.spd`` safetensors files, reused while the split's graphs
    are unchanged. ``None`` or ``0``
    skips an encoding. Returns new dataset objects; the input is unchanged.
    """
    if isinstance(dataset, dict):
        return {name: with_encodings(ds, lap_k, rwse_k, spd, progress) for name, ds in dataset.items()}
    if not isinstance(dataset, ZincDataset):
        raise TypeError(f"with_encodings takes a ZincDataset or a dict of them, got {type(dataset).__name__}")
    for name, k in (("lap_k", lap_k), ("rwse_k", rwse_k)):
        if k is not None and (not isinstance(k, int) or k < 0):
            raise ValueError(f"{name} must be a non-negative int or None, got {k!r}")
    enc: dict[str, Tensor] = {}
    sizes = dataset.num_nodes  # (G,)
    G, N = len(dataset), int(sizes.sum())
    if lap_k:
        enc.update(_cached_encoding(dataset, f"lap{lap_k}", lambda: _compute_lap(dataset, lap_k, progress),
                                    {"lap_pe": (N, lap_k), "lap_eigvals": (G, lap_k)}))
        enc["lap_eigvals"] = enc["lap_eigvals"].repeat_interleave(sizes, 0)  # (G, k) -> (N, k)
    if rwse_k:
        enc.update(_cached_encoding(dataset, f"rwse{rwse_k}", lambda: _compute_rwse(dataset, rwse_k, progress),
                                    {"rwse": (N, rwse_k)}))
    if spd:
        enc.update(_cached_encoding(dataset, "spd", lambda: _compute_spd(dataset, progress),
                                    {"spd": (int((sizes * sizes).sum()),)}))
    return dataset.with_encodings(enc)
