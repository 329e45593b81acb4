"""A ZINC-like molecular graph-regression dataset, built offline and deterministically.

**Source.** The SMILES files that PyPI's ``molsets`` (MOSES, Polykovskiy et al. 2020) ships:
``moses/dataset/data/train.csv.gz`` (1,584,663 molecules) and ``test.csv.gz`` (176,074), a
disjoint split of MOSES' filtering of ZINC15 "Clean Leads" (molecular weight 250-350 Da, at most
7 rotatable bonds, XlogP <= 3.5, no charged atoms, only C N S O F Cl Br H, no ring larger than 8,
medicinal-chemistry and PAINS filters). The files are found with
``importlib.util.find_spec("moses")`` without importing ``moses`` (importing it needs its many
dependencies, which ``pip install --no-deps molsets`` leaves out). Nothing is downloaded.

**Splits** (fixed; ``seed=0`` gives the documented dataset, another seed another sample):

* ``"12k"``: 10,000 train molecules from ``train.csv.gz``; 1,000 val and 1,000 test from
  ``test.csv.gz`` (the sizes of the benchmarking-gnns ZINC-12k);
* ``"100k"``: 100,000 train from ``train.csv.gz`` (the 10,000 of ``12k`` first); the same val
  and test molecules as ``12k``.

Each source file is visited in the order of ``numpy.random.default_rng(seed).permutation`` of its
rows (the files are not in random order: their first rows have a higher mean target); a row is
taken unless RDKit cannot parse it (counted as ``unparsable``), its canonical SMILES was taken
already (``duplicate``), or, for train, it is the canonical SMILES of a val/test molecule
(``overlap``). Val is the first 1,000 taken from ``test.csv.gz``, test the next 1,000. The counts
are in :attr:`ZincDataset.skipped` (all zero for both variants with ``seed=0``).

**Target: penalized logP** (``y = logP - SA - ring_penalty``, "constrained solubility"), the ZINC
target of Dwivedi et al. 2020 ("Benchmarking GNNs") and of the graph-transformer papers that use
it, as the JT-VAE code computes it (Jin et al. 2018; GraphAF, Shi et al. 2020, reports the same):

* ``logP``: Crippen's octanol-water partition coefficient, ``rdkit.Chem.Crippen.MolLogP``;
* ``SA``: the synthetic accessibility score (Ertl & Schuffenhauer 2009, 1 easy .. 10 hard), from
  the ``sascorer`` that RDKit ships in ``Contrib/SA_Score``;
* ``ring_penalty = max(largest cycle - 6, 0)``, the largest cycle taken, as in the JT-VAE code,
  from ``networkx.cycle_basis`` of the molecular graph. That basis is not always the smallest set
  of rings: for 0.26 % of these molecules (fused polycyclics) it holds a 10-12 atom envelope
  cycle and the penalty is 4-6 where RDKit's smallest rings give 0 (2.6 % have a penalty at all). We keep the original
  definition so that the numbers mean what they mean in the papers.

``y`` is **not normalised**: it is the raw score that JT-VAE and GraphAF report for "penalized
logP" (PyG documents the ZINC target with this formula). JT-VAE's Bayesian-optimisation script
instead z-scores each term over ZINC-250k (logP about 2.457 +- 1.434, SA 3.053 +- 0.834, cycle
penalty 0.049 +- 0.286) before adding them; the three terms are stored (``logp``, ``sa``,
``ring_penalty``), so that version can be formed from them. Whether the precomputed
benchmarking-gnns targets went through that normalisation could not be checked offline. On this
data ``y`` has a mean of about -0.04 and a standard deviation of about 1.14 (train, both variants).

**Graphs.** Hydrogen-suppressed molecular graphs, atoms in the order of the stored SMILES
(:attr:`ZincDataset.smiles`, the MOSES string as given).

* ``x (n,)`` long, the atom type, :data:`ATOM_TYPES`: element and formal charge. The vocabulary is
  the element/charge pairs that occur in the MOSES files (all neutral: C, N, O, S, F, Cl, Br, in
  order of frequency) plus ``0 = "other"`` for any other pair, so :data:`NUM_ATOM_TYPES` = 8.
* ``edge_index (2, 2m)`` long, both directions of every bond, sorted by (source, target);
  ``edge_attr (2m,)`` long, the bond type, :data:`BOND_TYPES`: 1 single, 2 double, 3 triple,
  4 aromatic as ZINC, 0 for any other bond type; :data:`NUM_BOND_TYPES` = 5.
* ``y`` float32.

**How it differs from the benchmarking-gnns ZINC-12k.** Same sizes (10k/1k/1k) and the same target
formula, but another subset of ZINC: ZINC-12k is a sample of the 250k "drug-like" ZINC molecules of
Gomez-Bombarelli et al. (2018) with 9-37 heavy atoms, charged atoms and 28 atom types (element,
charge and explicit hydrogens of bracket atoms, e.g. ``"N H1 +"``); these molecules are MOSES
"clean leads" with 9-27 heavy atoms, median 22 (smaller and more uniform), all neutral, 7 elements.
The target is computed here with the installed RDKit, not read from precomputed files, and the
splits are random samples, not the published index files. Numbers are therefore comparable between models trained on
this dataset, not with published ZINC-12k tables. ``100k`` has the size of neither ZINC-12k nor
ZINC-full (250k); it is the same construction with more training molecules.

**Storage.** ``build_zinc`` writes one safetensors file per split into
``<root>/zinc-<variant>[-seed<s>][-limit<a>-<b>-<c>]/`` (``root`` defaults to ``$RELFORMER_CACHE``,
else ``~/.cache/relformer``), packed: all atoms concatenated with ``node_ptr (G + 1,)`` offsets,
all edges concatenated (node ids local to their graph) with ``edge_ptr (G + 1,)``. Each file is
written to a temporary name and renamed, so a crash never leaves a half-written split. Later
calls load the files (no RDKit or molsets needed then). :func:`with_encodings` adds Laplacian
eigenvectors, random-walk encodings and shortest-path distances, computed once per split and
cached beside it under a name that carries their parameters.

**Batches.** :class:`ZincDataset` items are dicts of tensors; ``DataLoader(ds, batch_size=...,
collate_fn=ZincDataset.collate)`` gathers each batch straight from the packed storage into a
:class:`ZincBatch`, the library's :class:`~relformer.data.graph.GraphBatch` (what the graph models
take) plus edge offsets, Laplacian eigenvalues and the cached shortest-path distances.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
from collections import Counter
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .graph import GraphBatch
from .packed import lengths_to_offsets

__all__ = ["build_zinc", "with_encodings", "ZincDataset", "ZincBatch", "penalized_logp_terms",
           "penalized_logp", "featurize", "zinc_cache_dir", "moses_data_dir", "check_dependencies",
           "ATOM_TYPES", "BOND_TYPES", "NUM_ATOM_TYPES", "NUM_BOND_TYPES", "VARIANTS"]

#: split sizes (train, val, test) of each variant
VARIANTS: dict[str, tuple[int, int, int]] = {"12k": (10_000, 1_000, 1_000), "100k": (100_000, 1_000, 1_000)}
SPLITS = ("train", "val", "test")
#: atom types (element with formal charge 0); index 0 is every other element/charge pair
ATOM_TYPES = ("other", "C", "N", "O", "S", "F", "Cl", "Br")
#: bond types; index 0 is any bond type other than these four (never seen in the MOSES data)
BOND_TYPES = ("other", "single", "double", "triple", "aromatic")
NUM_ATOM_TYPES = len(ATOM_TYPES)
NUM_BOND_TYPES = len(BOND_TYPES)

MOLSETS_INSTALL = "pip install --no-deps molsets"
RDKIT_INSTALL = "pip install rdkit"
NETWORKX_INSTALL = "pip install networkx"
FORMAT = "1"
_SPD_UNREACHABLE = 255  # stored uint8 value of "no path"; read back as -1
_ATOM_INDEX = {(symbol, 0): i for i, symbol in enumerate(ATOM_TYPES) if i}
_BOND_INDEX = {"SINGLE": 1, "DOUBLE": 2, "TRIPLE": 3, "AROMATIC": 4}


# ---- dependencies --------------------------------------------------------------------------------

def moses_data_dir(source: str | os.PathLike | None = None) -> Path:
    """The folder holding ``train.csv.gz`` and ``test.csv.gz``: ``source`` if given, else the one
    inside the installed ``molsets`` package (found without importing it)."""
    if source is None:
        spec = importlib.util.find_spec("moses")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(f"the ZINC-like dataset is built from the SMILES files of PyPI's molsets, which is "
                              f"not installed: `{MOLSETS_INSTALL}` (--no-deps: only its data files are used)")
        folder = Path(next(iter(spec.submodule_search_locations))) / "dataset" / "data"
    else:
        folder = Path(source)
    missing = [name for name in ("train.csv.gz", "test.csv.gz") if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {', '.join(missing)}; reinstall molsets: `{MOLSETS_INSTALL}`")
    return folder


class _Chem:
    """RDKit, its SA scorer and networkx, imported once on first use."""

    _loaded: "_Chem | None" = None

    def __init__(self) -> None:
        try:
            from rdkit import Chem, RDConfig, RDLogger, rdBase
            from rdkit.Chem import Crippen, rdmolops
        except ImportError as err:
            raise ImportError(f"building the ZINC-like dataset needs RDKit: `{RDKIT_INSTALL}`") from err
        try:
            import networkx
        except ImportError as err:
            raise ImportError(f"the ring penalty of penalized logP needs networkx: `{NETWORKX_INSTALL}`") from err
        path = Path(RDConfig.RDContribDir) / "SA_Score" / "sascorer.py"
        if not path.is_file():
            raise ImportError(f"RDKit's Contrib/SA_Score/sascorer.py is missing ({path}); reinstall RDKit: "
                              f"`{RDKIT_INSTALL}`")
        spec = importlib.util.spec_from_file_location("relformer_rdkit_sascorer", path)
        sascorer = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sascorer)
        self.Chem, self.Crippen, self.rdmolops, self.RDLogger = Chem, Crippen, rdmolops, RDLogger
        self.networkx, self.sascorer, self.version = networkx, sascorer, rdBase.rdkitVersion

    @classmethod
    def get(cls) -> "_Chem":
        if cls._loaded is None:
            cls._loaded = cls()
        return cls._loaded


def check_dependencies() -> None:
    """Raise ``ImportError`` naming the ``pip install`` command if molsets, RDKit or networkx is missing."""
    moses_data_dir()
    _Chem.get()


# ---- one molecule --------------------------------------------------------------------------------

def _mol(smiles_or_mol, chem: _Chem):
    if isinstance(smiles_or_mol, str):
        mol = chem.Chem.MolFromSmiles(smiles_or_mol)
        if mol is None:
            raise ValueError(f"RDKit cannot parse the SMILES {smiles_or_mol!r}")
        return mol
    return smiles_or_mol


def penalized_logp_terms(smiles_or_mol) -> tuple[float, float, int]:
    """``(logP, SA, ring_penalty)`` of a molecule (SMILES or RDKit ``Mol``); see the module docstring."""
    chem = _Chem.get()
    mol = _mol(smiles_or_mol, chem)
    cycles = chem.networkx.cycle_basis(chem.networkx.Graph(chem.rdmolops.GetAdjacencyMatrix(mol)))
    largest = max((len(c) for c in cycles), default=0)
    return chem.Crippen.MolLogP(mol), chem.sascorer.calculateScore(mol), max(largest - 6, 0)


def penalized_logp(smiles_or_mol) -> float:
    """``logP - SA - max(largest cycle - 6, 0)``, unnormalised (the dataset's ``y``)."""
    logp, sa, ring = penalized_logp_terms(smiles_or_mol)
    return logp - sa - ring


def featurize(smiles_or_mol) -> tuple[Tensor, Tensor, Tensor]:
    """``x (n,)``, ``edge_index (2, 2m)``, ``edge_attr (2m,)`` long of a molecule, as in the dataset."""
    x, edge_index, edge_attr = _featurize(_mol(smiles_or_mol, _Chem.get()))
    return torch.from_numpy(x).long(), torch.from_numpy(edge_index).long(), torch.from_numpy(edge_attr).long()


def _featurize(mol) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.array([_ATOM_INDEX.get((a.GetSymbol(), a.GetFormalCharge()), 0) for a in mol.GetAtoms()], dtype=np.uint8)
    src, dst, kind = [], [], []
    for bond in mol.GetBonds():
        i, j, t = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx(), _BOND_INDEX.get(str(bond.GetBondType()), 0)
        src += (i, j)
        dst += (j, i)
        kind += (t, t)
    src, dst = np.asarray(src, dtype=np.int32), np.asarray(dst, dtype=np.int32)
    order = np.lexsort((dst, src))  # by source, then target
    return x, np.stack((src[order], dst[order])), np.asarray(kind, dtype=np.uint8)[order]


# ---- selection and storage -----------------------------------------------------------------------

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


def _write_atomic(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def _read_metadata(path: Path) -> dict[str, str] | None:
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # missing, truncated or foreign file: rebuild it
        return None


def zinc_cache_dir(variant: str = "12k", root: str | os.PathLike | None = None, seed: int = 0,
                   limit: tuple[int, int, int] | None = None) -> Path:
    """``<root>/zinc-<variant>[-seed<s>][-limit<a>-<b>-<c>]``; ``root`` defaults to ``$RELFORMER_CACHE``,
    else ``~/.cache/relformer``."""
    base = Path(root if root is not None else os.environ.get("RELFORMER_CACHE") or Path.home() / ".cache" / "relformer")
    name = f"zinc-{variant}" + (f"-seed{seed}" if seed else "")
    name += "-limit" + "-".join(map(str, limit)) if limit else ""
    return base.expanduser() / name


def _source_id(folder: Path) -> str:
    """A source folder other than the molsets package is known by a hash of its two files."""
    h = hashlib.sha256()
    for name in ("train.csv.gz", "test.csv.gz"):
        h.update((folder / name).read_bytes())
    return "sha256:" + h.hexdigest()[:16]


def build_zinc(variant: str = "12k", root: str | os.PathLike | None = None, seed: int = 0, *,
               limit: tuple[int, int, int] | None = None, source: str | os.PathLike | None = None,
               progress: bool = True, rebuild: bool = False) -> dict[str, "ZincDataset"]:
    """The ``{"train", "val", "test"}`` splits of the ZINC-like dataset (module docstring), built on
    the first call (about 10 s for ``12k`` and 90 s for ``100k`` on one core) and loaded from the
    cache afterwards (milliseconds; no RDKit or molsets needed).

    ``root``: the cache root (default ``$RELFORMER_CACHE`` or ``~/.cache/relformer``); ``seed``:
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


# ---- items and batches ---------------------------------------------------------------------------

_ENCODINGS = ("lap_pe", "lap_eigvals", "rwse", "spd")


@dataclass(frozen=True)
class ZincBatch(GraphBatch):
    """A :class:`relformer.data.graph.GraphBatch` (``x``, ``edge_index``, ``ptr``, ``edge_attr``,
    ``y``, ``lap_pe``, ``rwse``; ``batch`` derived) with what this dataset adds: ``edge_ptr (B + 1,)``
    edge offsets, ``lap_eigvals (N, k)`` (each node carries its graph's eigenvalues) and cached
    shortest-path distances ``spd``, packed per graph as row-major ``n_g x n_g`` blocks,
    ``(sum n_g^2,)`` long at offsets ``spd_ptr (B + 1,)`` (``-1``: unreachable; see :meth:`spd_dense`)."""

    edge_ptr: Tensor | None = None
    lap_eigvals: Tensor | None = None
    spd: Tensor | None = None
    spd_ptr: Tensor | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lap_eigvals is not None and self.lap_eigvals.shape[0] != self.num_nodes:
            raise ValueError(f"lap_eigvals has {self.lap_eigvals.shape[0]} rows for {self.num_nodes} nodes")
        if (self.spd is None) != (self.spd_ptr is None):
            raise ValueError("give spd and spd_ptr together")
        if self.spd is not None and int(self.spd_ptr[-1]) != self.spd.numel():
            raise ValueError(f"spd holds {self.spd.numel()} distances, spd_ptr says {int(self.spd_ptr[-1])}")

    def positions(self) -> Tensor:
        """``(N,)`` index of every node inside its graph."""
        return torch.arange(self.num_nodes, device=self.x.device) - self.ptr[self.batch]

    def spd_dense(self, node_row: Tensor | None = None, node_pos: Tensor | None = None, B: int | None = None,
                  L: int | None = None) -> Tensor:
        """Cached shortest-path distances laid out as ``(B, L, L)`` long, ``-1`` between nodes of
        different graphs and at empty slots: the same tensor as
        :func:`relformer.relations.graph.dense_shortest_paths` for this layout, without a search.
        Nodes sit at ``(node_row, node_pos)`` (default: one graph per row, ``L`` = the largest graph)."""
        if self.spd is None:
            raise ValueError("this batch has no shortest-path distances: use with_encodings(..., spd=True)")
        sizes = self.sizes  # (num_graphs,)
        if node_row is None:
            node_row, node_pos = self.batch, self.positions()
            B = self.num_graphs if B is None else B
            L = (int(sizes.max()) if self.num_graphs else 0) if L is None else L
        elif node_pos is None or B is None or L is None:
            raise ValueError("give node_row, node_pos, B and L together")
        graph = torch.repeat_interleave(torch.arange(self.num_graphs, device=sizes.device), sizes * sizes)
        k = torch.arange(self.spd.numel(), device=sizes.device) - self.spd_ptr[graph]  # index in its block
        u, v = self.ptr[graph] + k // sizes[graph], self.ptr[graph] + k % sizes[graph]  # global node pairs
        if (node_row[u] != node_row[v]).any():
            raise ValueError("node_row splits a graph over several rows")
        out = torch.full((B, L, L), -1, dtype=torch.long, device=self.spd.device)
        out[node_row[u].long(), node_pos[u].long(), node_pos[v].long()] = self.spd
        return out

    def _map(self, fn: Callable[[Tensor], Tensor]) -> "ZincBatch":
        return replace(self, **{f.name: fn(getattr(self, f.name)) for f in fields(self)
                                if getattr(self, f.name) is not None})

    def to(self, *args, **kwargs) -> "ZincBatch":
        return self._map(lambda t: t.to(*args, **kwargs))

    def pin_memory(self) -> "ZincBatch":
        return self._map(Tensor.pin_memory)


def _ranges(start: Tensor, length: Tensor) -> Tensor:
    """``cat([arange(s, s + n) for s, n in zip(start, length)])`` without a Python loop."""
    offsets = torch.cumsum(length, 0) - length  # exclusive prefix sum
    return torch.repeat_interleave(start - offsets, length) + torch.arange(int(length.sum()))


def _spd_values(stored: Tensor) -> Tensor:
    out = stored.long()
    return out.masked_fill_(stored == _SPD_UNREACHABLE, -1)


class ZincDataset(Dataset):
    """One split, indexable like a torch ``Dataset``: ``ds[i]`` is one molecule as a dict of
    tensors, ``x (n,)``, ``edge_index (2, 2m)`` (ids ``0..n-1``), ``edge_attr (2m,)`` long, ``y ()``
    float32, and after :func:`with_encodings` ``lap_pe``/``lap_eigvals (n, k)``, ``rwse (n, k)``
    float32 and ``spd (n, n)`` long (``-1``: unreachable): the mapping that
    :meth:`relformer.data.graph.GraphBatch.from_list` packs. ``ds.__getitems__(indices)`` (used by
    ``DataLoader``) gathers a :class:`ZincBatch` directly from the packed storage:

        loader = DataLoader(ds, batch_size=128, shuffle=True, collate_fn=ZincDataset.collate)

    Holds the packed tensors of the cache file (compact dtypes; items come out as long/float32).
    """

    def __init__(self, tensors: dict[str, Tensor], metadata: dict[str, str], path: Path | None = None,
                 encodings: dict[str, Tensor] | None = None) -> None:
        self._t = tensors
        self.metadata = metadata
        self.path = path
        self.encodings = dict(encodings or {})
        self._node_ptr = tensors["node_ptr"].tolist()
        self._edge_ptr = tensors["edge_ptr"].tolist()
        if "spd" in self.encodings:
            self._spd_ptr = lengths_to_offsets((tensors["node_ptr"][1:] - tensors["node_ptr"][:-1]) ** 2)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ZincDataset":
        tensors, metadata = _read(Path(path))
        return cls(tensors, metadata, Path(path))

    # ---- facts --------------------------------------------------------------------------------
    @property
    def split(self) -> str:
        return self.metadata.get("split", "")

    @property
    def skipped(self) -> dict[str, int]:
        """SMILES passed over while sampling this split: ``unparsable``, ``duplicate``, ``overlap``
        (val and test are drawn together and report the same counts)."""
        return json.loads(self.metadata.get("skipped", "{}"))

    @property
    def content_hash(self) -> str:
        return self.metadata["content"]

    @property
    def y(self) -> Tensor:
        return self._t["y"]

    @property
    def num_nodes(self) -> Tensor:
        """``(G,)`` atoms per molecule."""
        return self._t["node_ptr"][1:] - self._t["node_ptr"][:-1]

    @property
    def smiles(self) -> list[str]:
        return bytes(self._t["smiles"].numpy()).decode().split("\n")

    def terms(self) -> dict[str, Tensor]:
        """The parts of ``y``: ``logp``, ``sa`` and ``ring_penalty``, each ``(G,)`` float32."""
        return {k: self._t[k] for k in ("logp", "sa", "ring_penalty")}

    def __len__(self) -> int:
        return len(self._node_ptr) - 1

    def __repr__(self) -> str:
        extra = f", encodings={sorted(self.encodings)}" if self.encodings else ""
        return f"ZincDataset(split={self.split!r}, graphs={len(self)}, nodes={len(self._t['x'])}{extra})"

    # ---- access -------------------------------------------------------------------------------
    def _index(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} graphs")
        return i % n

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        i = self._index(int(i))
        n0, n1, e0, e1 = self._node_ptr[i], self._node_ptr[i + 1], self._edge_ptr[i], self._edge_ptr[i + 1]
        item = {"x": self._t["x"][n0:n1].long(), "edge_index": self._t["edge_index"][:, e0:e1].long(),
                "edge_attr": self._t["edge_attr"][e0:e1].long(), "y": self._t["y"][i]}
        for key in ("lap_pe", "lap_eigvals", "rwse"):
            if key in self.encodings:
                item[key] = self.encodings[key][n0:n1]
        if "spd" in self.encodings:
            s0, n = int(self._spd_ptr[i]), n1 - n0
            item["spd"] = _spd_values(self.encodings["spd"][s0:s0 + n * n]).view(n, n)
        return item

    def __getitems__(self, indices: Sequence[int]) -> ZincBatch:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        n = len(self)
        if idx.numel() and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"indices out of range for {n} graphs")
        idx = idx % max(n, 1)
        node_ptr, edge_ptr = self._t["node_ptr"], self._t["edge_ptr"]
        n_len, e_len = node_ptr[idx + 1] - node_ptr[idx], edge_ptr[idx + 1] - edge_ptr[idx]  # (B,)
        nodes, edges = _ranges(node_ptr[idx], n_len), _ranges(edge_ptr[idx], e_len)          # (N,), (E,)
        ptr = lengths_to_offsets(n_len)
        edge_index = self._t["edge_index"][:, edges].long() + torch.repeat_interleave(ptr[:-1], e_len)
        enc = {key: self.encodings[key][nodes] for key in ("lap_pe", "lap_eigvals", "rwse") if key in self.encodings}
        if "spd" in self.encodings:
            enc["spd"] = _spd_values(self.encodings["spd"][_ranges(self._spd_ptr[idx], n_len * n_len)])
            enc["spd_ptr"] = lengths_to_offsets(n_len * n_len)
        return ZincBatch(x=self._t["x"][nodes].long(), edge_index=edge_index, ptr=ptr,
                         edge_attr=self._t["edge_attr"][edges].long(), y=self._t["y"][idx],
                         edge_ptr=lengths_to_offsets(e_len), **enc)

    @staticmethod
    def collate(batch: ZincBatch | Sequence[dict[str, Tensor]]) -> ZincBatch:
        """``DataLoader`` collate function: a :class:`ZincBatch` (from ``__getitems__``) passes
        through; a list of items (``ds[i]``) is packed into the same batch."""
        if isinstance(batch, ZincBatch):
            return batch
        items = list(batch)
        base = GraphBatch.from_list(items)  # x, edge_index, ptr, edge_attr, y, lap_pe, rwse
        extra = {"edge_ptr": lengths_to_offsets(torch.tensor([g["edge_index"].shape[1] for g in items]))}
        if "lap_eigvals" in items[0]:
            extra["lap_eigvals"] = torch.cat([g["lap_eigvals"] for g in items])
        if "spd" in items[0]:
            extra["spd"] = torch.cat([g["spd"].flatten() for g in items])
            extra["spd_ptr"] = lengths_to_offsets(base.sizes ** 2)
        return ZincBatch(**{f.name: getattr(base, f.name) for f in fields(GraphBatch)}, **extra)

    def with_encodings(self, encodings: dict[str, Tensor]) -> "ZincDataset":
        """The same split with more encodings attached (shares the graph tensors)."""
        unknown = set(encodings) - set(_ENCODINGS)
        if unknown:
            raise ValueError(f"unknown encodings {sorted(unknown)}; known: {_ENCODINGS}")
        return ZincDataset(self._t, self.metadata, self.path, {**self.encodings, **encodings})

    def graph_edges(self, i: int) -> tuple[int, Tensor]:
        """``(n, local edge_index (2, 2m) long)`` of graph ``i`` (no copies of features)."""
        i = self._index(i)
        e0, e1 = self._edge_ptr[i], self._edge_ptr[i + 1]
        return self._node_ptr[i + 1] - self._node_ptr[i], self._t["edge_index"][:, e0:e1].long()


# ---- cached encodings ----------------------------------------------------------------------------

def _compute_lap(ds: ZincDataset, k: int, progress: bool) -> dict[str, Tensor]:
    from ..nn.posenc import laplacian_eigenvectors
    pes, vals = [], []
    for i in tqdm(range(len(ds)), desc=f"LapPE k={k} ({ds.split})", unit="graph", disable=not progress):
        n, ei = ds.graph_edges(i)
        pe, ev = laplacian_eigenvectors(ei, n, k, return_eigenvalues=True)  # (n, k), (n, k) rows all equal
        pes.append(pe)
        vals.append(ev[0] if n else ev.new_zeros(k))
    return {"lap_pe": torch.cat(pes), "lap_eigvals": torch.stack(vals)}  # (N, k), (G, k): stored once per graph


def _compute_rwse(ds: ZincDataset, k: int, progress: bool) -> dict[str, Tensor]:
    from ..nn.posenc import random_walk_encoding
    out = []
    for i in tqdm(range(len(ds)), desc=f"RWSE k={k} ({ds.split})", unit="graph", disable=not progress):
        n, ei = ds.graph_edges(i)
        out.append(random_walk_encoding(ei, n, k))
    return {"rwse": torch.cat(out)}


def _compute_spd(ds: ZincDataset, progress: bool) -> dict[str, Tensor]:
    from ..relations.graph import shortest_path_distances
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

    Each is computed once (one graph at a time, with a progress bar; all three take about 6 s
    for ``12k`` and 1 min for ``100k`` on one core) and stored beside the split as ``<split>.lap<k>``, ``.rwse<k>`` and
    ``.spd`` safetensors files, reused while the split's graphs are unchanged. ``None`` or ``0``
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
