"""Building the ZINC-like splits from the molsets SMILES files, deterministically.

Each source file is visited in the order of ``numpy.random.default_rng(seed).permutation`` of its
rows (the files are not in random order: their first rows have a higher mean target); a row is
taken unless RDKit cannot parse it (``unparsable``), its canonical SMILES was taken already
(``duplicate``) or, for train, it is that of a val/test molecule (``overlap``). Val is the first
1,000 taken from ``test.csv.gz``, test the next 1,000; the counts are kept in
:attr:`ZincDataset.skipped`. Each split is packed (atoms concatenated with ``node_ptr`` offsets,
edges with ``edge_ptr``, node ids local to their graph) and stored as one safetensors file.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .chemistry import ATOM_TYPES, BOND_TYPES, _Chem, _featurize, moses_data_dir, penalized_logp_terms
from .dataset import ZincDataset
from .storage import FORMAT, _read_metadata, _write_atomic, zinc_cache_dir

__all__ = ["build_zinc", "VARIANTS", "SPLITS"]

VARIANTS: dict[str, tuple[int, int, int]] = {"12k": (10_000, 1_000, 1_000), "100k": (100_000, 1_000, 1_000)}
SPLITS = ("train", "val", "test")


def _read_smiles(path: Path) -> list[str]:
    with gzip.open(path, "rt") as f:
        lines = f.read().splitlines()
    if not lines or lines[0].strip().upper() != "SMILES":
        raise ValueError(f"{path} is not a MOSES SMILES file (first line should be 'SMILES')")
    return [s.strip() for s in lines[1:]]


def _select(smiles: list[str], seed: int, quotas: Sequence[int], exclude: set[str], chem: _Chem,
            desc: str, progress: bool) -> tuple[list[list[tuple]], Counter, set[str]]:
    """Take molecules in a seeded random order until each quota in turn is full.
    Returns one list of records per quota, the skip counts and the canonical SMILES taken."""
    order = np.random.default_rng(seed).permutation(len(smiles))
    taken: set[str] = set()
    skipped: Counter = Counter({"unparsable": 0, "duplicate": 0, "overlap": 0})
    groups: list[list[tuple]] = [[] for _ in quotas]
    g, total = 0, sum(quotas)
    with tqdm(total=total, desc=desc, unit="mol", disable=not progress) as bar:
        for row in order.tolist():
            while g < len(quotas) and len(groups[g]) == quotas[g]:
                g += 1
            if g == len(quotas):
                break
            mol = chem.Chem.MolFromSmiles(smiles[row])
            if mol is None or mol.GetNumAtoms() == 0:
                skipped["unparsable"] += 1
                continue
            canonical = chem.Chem.MolToSmiles(mol)
            if canonical in exclude or canonical in taken:
                skipped["overlap" if canonical in exclude else "duplicate"] += 1
                continue
            taken.add(canonical)
            groups[g].append((row, smiles[row], *_featurize(mol), *penalized_logp_terms(mol)))
            bar.update()
    if sum(map(len, groups)) < total:
        raise ValueError(f"{desc}: only {sum(map(len, groups))} usable molecules for the {total} asked "
                         f"(skipped {dict(skipped)})")
    return groups, skipped, taken


def _pack(records: list[tuple]) -> dict[str, Tensor]:
    rows, smiles, xs, edges, kinds, logp, sa, ring = zip(*records)
    count = lambda arrays, dim: np.concatenate([[0], np.cumsum([a.shape[dim] for a in arrays])])
    logp, sa, ring = (np.asarray(v, dtype=np.float64) for v in (logp, sa, ring))
    return {
        "x": torch.from_numpy(np.concatenate(xs)),                        # (N,) uint8 atom type
        "edge_index": torch.from_numpy(np.concatenate(edges, axis=1)),   # (2, E) int32, local node ids
        "edge_attr": torch.from_numpy(np.concatenate(kinds)),             # (E,) uint8 bond type
        "node_ptr": torch.from_numpy(count(xs, 0).astype(np.int64)),      # (G + 1,)
        "edge_ptr": torch.from_numpy(count(edges, 1).astype(np.int64)),   # (G + 1,)
        "y": torch.from_numpy((logp - sa - ring).astype(np.float32)),     # (G,)
        "logp": torch.from_numpy(logp.astype(np.float32)),
        "sa": torch.from_numpy(sa.astype(np.float32)),
        "ring_penalty": torch.from_numpy(ring.astype(np.float32)),
        "source_row": torch.tensor(rows, dtype=torch.int64),              # row in the source file (0 = first molecule)
        "smiles": torch.frombuffer(bytearray("\n".join(smiles).encode()), dtype=torch.uint8),
    }


def _content_hash(tensors: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for key in ("x", "edge_index", "edge_attr", "node_ptr", "edge_ptr"):
        h.update(key.encode())
        h.update(tensors[key].contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _source_id(folder: Path) -> str:
    """A source folder other than the molsets package is known by a hash of its two files."""
    h = hashlib.sha256()
    for name in ("train.csv.gz", "test.csv.gz"):
        h.update((folder / name).read_bytes())
    return "sha256:" + h.hexdigest()[:16]


def build_zinc(variant: str = "12k", root: str | os.PathLike | None = None, seed: int = 0, *,
               limit: tuple[int, int, int] | None = None, source: str | os.PathLike | None = None,
               progress: bool = True, rebuild: bool = False) -> dict[str, "ZincDataset"]:
    """The ``{"train", "val", "test"}`` splits of the ZINC-like dataset (the package's dataset card),
    built on the first call (RDKit parses and scores every sampled molecule, so ``100k`` takes about
    ten times as long as ``12k``) and loaded from the cache afterwards (no RDKit or molsets needed).

    ``root``: the cache root (default :func:`~relformer.data.zinc.zinc_cache_dir`'s); ``seed``:
    the sampling seed (0 is the documented dataset); ``limit``: other ``(train, val, test)`` sizes
    (e.g. ``(200, 50, 50)`` for tests; cached in a folder of their own); ``source``: a folder with
    MOSES-format ``train.csv.gz`` / ``test.csv.gz`` instead of the molsets package;
    ``rebuild``: ignore an existing cache.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    sizes = VARIANTS[variant] if limit is None else tuple(int(n) for n in limit)
    if len(sizes) != 3 or min(sizes) < 1:
        raise ValueError(f"limit must be three positive sizes (train, val, test), got {limit!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    folder = zinc_cache_dir(variant, root, seed, tuple(sizes) if limit is not None else None)
    expected = {"format": FORMAT, "variant": variant, "seed": str(seed), "sizes": ",".join(map(str, sizes)),
                "atom_types": json.dumps(ATOM_TYPES), "bond_types": json.dumps(BOND_TYPES),
                "source": "molsets" if source is None else _source_id(moses_data_dir(source))}
    paths = {split: folder / f"{split}.safetensors" for split in SPLITS}
    if not rebuild and all(_cache_valid(paths[s], s, expected) for s in SPLITS):
        return {split: ZincDataset.load(paths[split]) for split in SPLITS}
    _build(paths, sizes, seed, source, expected, variant, progress)
    return {split: ZincDataset.load(paths[split]) for split in SPLITS}


def _cache_valid(path: Path, split: str, expected: dict[str, str]) -> bool:
    meta = _read_metadata(path)
    return meta is not None and all(meta.get(k) == v for k, v in {**expected, "split": split}.items())


def _build(paths: dict[str, Path], sizes: Sequence[int], seed: int, source, expected: dict[str, str],
           variant: str, progress: bool) -> None:
    folder = moses_data_dir(source)
    chem = _Chem.get()
    chem.RDLogger.DisableLog("rdApp.*")  # unparsable SMILES are counted, not printed
    try:
        (val, test), held_skips, held_out = _select(_read_smiles(folder / "test.csv.gz"), seed, sizes[1:], set(),
                                                    chem, f"ZINC-{variant} val/test", progress)
        (train,), train_skips, _ = _select(_read_smiles(folder / "train.csv.gz"), seed, sizes[:1], held_out,
                                           chem, f"ZINC-{variant} train", progress)
    finally:
        chem.RDLogger.EnableLog("rdApp.*")
    for split, records, skipped in (("train", train, train_skips), ("val", val, held_skips),
                                    ("test", test, held_skips)):
        tensors = _pack(records)
        meta = {**expected, "split": split, "rdkit": chem.version,
                "source_file": "train.csv.gz" if split == "train" else "test.csv.gz",
                "skipped": json.dumps(dict(skipped)), "content": _content_hash(tensors)}
        _write_atomic(paths[split], tensors, meta)
