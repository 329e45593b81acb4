"""The chemistry of the ZINC-like dataset: atom and bond vocabularies, a molecule's graph
(:func:`featurize`) and its target (:func:`penalized_logp`), with RDKit loaded on first use.

**Target: penalized logP**, ``y = logP - SA - ring_penalty`` (Dwivedi et al. 2020's ZINC target,
as the JT-VAE code computes it, Jin et al. 2018): ``logP`` Crippen's ``MolLogP``; ``SA`` the
synthetic accessibility score (Ertl & Schuffenhauer 2009) of RDKit's ``Contrib/SA_Score``;
``ring_penalty = max(largest cycle - 6, 0)`` with the largest cycle of ``networkx.cycle_basis``,
as JT-VAE does. That basis is not always the smallest set of rings (fused polycyclics can get an
envelope cycle and a penalty where RDKit's smallest rings give none); the original definition is
kept so the numbers mean what they mean in the papers. ``y`` is not normalised.

**Graphs**: hydrogen-suppressed, atoms in the order of the SMILES; ``x (n,)`` atom type
(:data:`ATOM_TYPES`, element with charge 0; 0 = any other), ``edge_index (2, 2m)`` both directions
of every bond sorted by (source, target), ``edge_attr (2m,)`` bond type (:data:`BOND_TYPES`).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["ATOM_TYPES", "BOND_TYPES", "NUM_ATOM_TYPES", "NUM_BOND_TYPES", "moses_data_dir", "check_dependencies",
           "penalized_logp_terms", "penalized_logp", "featurize"]

#: atom types (element with formal charge 0); index 0 is every other element/charge pair
ATOM_TYPES = ("other", "C", "N", "O", "S", "F", "Cl", "Br")
#: bond types; index 0 is any bond type other than these four (never seen in the MOSES data)
BOND_TYPES = ("other", "single", "double", "triple", "aromatic")
NUM_ATOM_TYPES = len(ATOM_TYPES)
NUM_BOND_TYPES = len(BOND_TYPES)

MOLSETS_INSTALL = "pip install --no-deps molsets"
RDKIT_INSTALL = "pip install rdkit"
NETWORKX_INSTALL = "pip install networkx"
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
