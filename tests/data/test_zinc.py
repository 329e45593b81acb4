"""The ZINC-like dataset from molsets SMILES + RDKit: built on a 200/50/50 slice into a temporary
cache. molsets and RDKit are required (CI installs them): when missing, these tests fail with
the install command, they are not skipped."""
from __future__ import annotations

import functools
import gzip
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from relformer.data import zinc
from relformer.data.packed import Packed
from relformer.data.graph import GraphBatch
from relformer.data.zinc import (ATOM_TYPES, NUM_ATOM_TYPES, NUM_BOND_TYPES, ZincBatch, ZincDataset, build_zinc,
                                 featurize, penalized_logp_terms, with_encodings)

LIMIT = (200, 50, 50)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("zinc-cache")


@pytest.fixture(scope="module")
def small(root) -> dict[str, ZincDataset]:
    return build_zinc("12k", root=root, limit=LIMIT, progress=False)


@functools.cache
def _sascorer():
    from rdkit import RDConfig
    path = Path(RDConfig.RDContribDir) / "SA_Score" / "sascorer.py"
    spec = importlib.util.spec_from_file_location("sascorer_ref", path)
    sascorer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sascorer)
    return sascorer


def _rdkit_reference(smiles: str) -> float:
    """Penalized logP written out independently of relformer: Crippen logP, RDKit's Contrib SA
    score, and JT-VAE's ring penalty from networkx's cycle basis."""
    import networkx as nx
    from rdkit import Chem
    from rdkit.Chem import Crippen, rdmolops
    sascorer = _sascorer()
    mol = Chem.MolFromSmiles(smiles)
    cycles = nx.cycle_basis(nx.Graph(rdmolops.GetAdjacencyMatrix(mol)))
    ring = max(max((len(c) for c in cycles), default=0) - 6, 0)
    return Crippen.MolLogP(mol) - sascorer.calculateScore(mol) - ring


def test_dependencies_installed():
    zinc.check_dependencies()  # ImportError naming `pip install ...` if molsets, rdkit or networkx is missing


def test_sizes_types_and_vocabularies(small):
    assert {s: len(ds) for s, ds in small.items()} == dict(zip(("train", "val", "test"), LIMIT))
    g = small["train"][0]
    assert g.keys() == {"x", "edge_index", "edge_attr", "y"}
    assert g["x"].dtype == g["edge_index"].dtype == g["edge_attr"].dtype == torch.long and g["y"].dtype == torch.float32
    assert g["x"].dim() == 1 and g["edge_index"].shape == (2, g["edge_attr"].shape[0]) and g["y"].shape == ()
    for ds in small.values():
        assert int(ds._t["x"].max()) < NUM_ATOM_TYPES
        assert 1 <= int(ds._t["edge_attr"].min()) and int(ds._t["edge_attr"].max()) < NUM_BOND_TYPES
        assert 9 <= int(ds.num_nodes.min()) and int(ds.num_nodes.max()) <= 30  # MOSES: small lead-like molecules
        assert ds.skipped == {"unparsable": 0, "duplicate": 0, "overlap": 0}
    assert small["val"].metadata["source_file"] == small["test"].metadata["source_file"] == "test.csv.gz"
    assert small["train"].metadata["source_file"] == "train.csv.gz"


def test_deterministic(small, tmp_path):
    again = build_zinc("12k", root=tmp_path, limit=LIMIT, progress=False)
    for split, ds in small.items():
        assert ds._t.keys() == again[split]._t.keys()
        for key, t in ds._t.items():
            assert torch.equal(t, again[split]._t[key]), (split, key)
        assert ds.content_hash == again[split].content_hash


def test_splits_disjoint_after_canonicalisation(small):
    from rdkit import Chem
    canon = {s: [Chem.MolToSmiles(Chem.MolFromSmiles(smi)) for smi in ds.smiles] for s, ds in small.items()}
    for split, names in canon.items():
        assert len(set(names)) == len(names), f"duplicate molecule in {split}"
    assert not set(canon["train"]) & set(canon["val"])
    assert not set(canon["train"]) & set(canon["test"])
    assert not set(canon["val"]) & set(canon["test"])


def test_target_is_penalized_logp():
    # hand-checkable: Crippen logP is a sum of atom contributions (aromatic C 0.1581, CH2 0.1441,
    # H on carbon 0.123); SA is clipped to 1 for such small molecules; only rings > 6 are penalised
    assert penalized_logp_terms("c1ccccc1") == pytest.approx((6 * (0.1581 + 0.123), 1.0, 0))
    assert penalized_logp_terms("C1CCCCCCC1") == pytest.approx((8 * (0.1441 + 2 * 0.123), 1.0, 2))  # cyclooctane
    assert penalized_logp_terms("CCO")[2] == 0
    # the JT-VAE convention: networkx's cycle basis, which for this fused system holds a 12-cycle
    assert penalized_logp_terms("COc1cnc2c3c(nccc13)C(=O)c1ccccc1-2")[2] == 6
    for smiles in ("c1ccccc1", "CCO", "C1CCCCCCC1"):
        assert zinc.penalized_logp(smiles) == pytest.approx(_rdkit_reference(smiles), abs=1e-9)


def test_stored_target_matches_rdkit(small):
    for ds in small.values():
        terms = ds.terms()
        assert torch.allclose(ds.y, terms["logp"] - terms["sa"] - terms["ring_penalty"], atol=1e-5)
        for i in (0, 1, 7, len(ds) - 1):
            assert float(ds.y[i]) == pytest.approx(_rdkit_reference(ds.smiles[i]), abs=1e-5)


def test_edges_symmetric_with_matching_bond_types(small):
    from rdkit import Chem
    ds = small["train"]
    for i in range(len(ds)):
        g = ds[i]
        src, dst = g["edge_index"].tolist()
        triples = set(zip(src, dst, g["edge_attr"].tolist()))
        assert triples == set(zip(dst, src, g["edge_attr"].tolist()))  # every edge has its reverse, same type
        assert len(triples) == len(src) and all(s != d for s, d in zip(src, dst))
        assert src == sorted(src)
    for i in range(5):  # the graph is RDKit's molecule
        mol = Chem.MolFromSmiles(ds.smiles[i])
        g = ds[i]
        assert [ATOM_TYPES[t] for t in g["x"].tolist()] == [a.GetSymbol() for a in mol.GetAtoms()]
        assert g["edge_index"].shape[1] == 2 * mol.GetNumBonds()
        x, edge_index, edge_attr = featurize(ds.smiles[i])
        assert torch.equal(x, g["x"]) and torch.equal(edge_index, g["edge_index"])
        assert torch.equal(edge_attr, g["edge_attr"])
    x, _, edge_attr = featurize("C[N+](C)(C)C.c1ccccc1C#N")  # a charged atom is "other"; aromatic 4, triple 3
    assert x.tolist()[1] == 0 and sorted(set(edge_attr.tolist())) == [1, 3, 4]


def test_getitems_packs_like_collate_and_dataloader(small):
    ds = with_encodings(small["val"], lap_k=4, rwse_k=6, progress=False)
    idx = [3, 0, 17, 3, -1]
    fast = ds.__getitems__(idx)
    slow = ZincDataset.collate([ds[i] for i in idx])
    plain = GraphBatch.from_list([ds[i] for i in idx])  # the library's batch type reads the items as they are
    assert isinstance(fast, ZincBatch) and isinstance(fast, GraphBatch) and fast.num_graphs == 5
    for name in ("x", "edge_index", "edge_attr", "y", "batch", "ptr", "edge_ptr", "lap_pe", "lap_eigvals", "rwse",
                 "spd", "spd_ptr"):
        assert torch.equal(getattr(fast, name), getattr(slow, name)), name
    for name in ("x", "edge_index", "edge_attr", "y", "batch", "ptr", "lap_pe", "rwse"):
        assert torch.equal(getattr(fast, name), getattr(plain, name)), name
    assert torch.equal(fast.packed().unpack()[2], ds[17]["x"])
    assert torch.equal(fast.to("cpu").spd, fast.spd) and isinstance(fast.to("cpu"), ZincBatch)
    seen = 0
    for batch in DataLoader(ds, batch_size=16, shuffle=True, collate_fn=ZincDataset.collate):
        assert isinstance(batch, ZincBatch) and int(batch.edge_index.max()) < batch.num_nodes
        assert torch.equal(batch.batch[batch.edge_index[0]], batch.batch[batch.edge_index[1]])
        seen += batch.num_graphs
    assert seen == len(ds)
    with pytest.raises(IndexError):
        ds[len(ds)]
    with pytest.raises(IndexError):
        ds.__getitems__([0, len(ds)])


def test_cache_is_reused(small, root, monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt although the cache is valid")

    monkeypatch.setattr(zinc.building, "_build", no_build)
    monkeypatch.setattr(zinc.chemistry._Chem, "get", no_build)  # loading needs neither RDKit nor molsets
    again = build_zinc("12k", root=root, limit=LIMIT, progress=False)
    assert all(torch.equal(again[s].y, small[s].y) for s in small)
    with pytest.raises(AssertionError, match="rebuilt"):  # another seed is another dataset
        build_zinc("12k", root=root, limit=LIMIT, seed=1, progress=False)
    with pytest.raises(AssertionError, match="rebuilt"):  # so is an explicit rebuild
        build_zinc("12k", root=root, limit=LIMIT, progress=False, rebuild=True)


def test_damaged_cache_is_rebuilt(tmp_path, monkeypatch):
    folder = zinc.zinc_cache_dir("12k", tmp_path, 0, (5, 2, 2))
    folder.mkdir(parents=True)
    for split in ("train", "val", "test"):
        (folder / f"{split}.safetensors").write_bytes(b"truncated")

    def build(*args, **kwargs):
        raise KeyError("rebuilding")

    monkeypatch.setattr(zinc.building, "_build", build)
    with pytest.raises(KeyError, match="rebuilding"):
        build_zinc("12k", root=tmp_path, limit=(5, 2, 2), progress=False)


def test_encodings_cached_and_equal_to_recomputation(small, monkeypatch):
    from relformer.nn.posenc import laplacian_eigenvectors, random_walk_encoding
    from relformer.relations.graph import dense_shortest_paths, node_layout, shortest_path_distances
    ds = with_encodings(small["test"], lap_k=8, rwse_k=16, progress=False)
    for i in (0, 5, len(ds) - 1):
        g = ds[i]
        n, edge_index = g["x"].shape[0], g["edge_index"]
        pe, ev = laplacian_eigenvectors(edge_index, n, 8, return_eigenvalues=True)
        assert torch.allclose(g["lap_pe"], pe, atol=1e-6) and torch.allclose(g["lap_eigvals"], ev, atol=1e-6)
        assert torch.allclose(g["rwse"], random_walk_encoding(edge_index, n, 16), atol=1e-6)
        assert torch.equal(g["spd"], shortest_path_distances(edge_index, n))
    names = sorted(p.name for p in ds.path.parent.glob("test.*.safetensors"))
    assert names == ["test.lap8.safetensors", "test.rwse16.safetensors", "test.spd.safetensors"]

    def no_compute(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    for name in ("_compute_lap", "_compute_rwse", "_compute_spd"):
        monkeypatch.setattr(zinc.encodings, name, no_compute)
    again = with_encodings(small["test"], lap_k=8, rwse_k=16, progress=False)
    assert all(torch.equal(again.encodings[k], ds.encodings[k]) for k in ds.encodings)
    with pytest.raises(AssertionError, match="recomputed"):  # other parameters, another file
        with_encodings(small["test"], lap_k=4, rwse_k=None, spd=False, progress=False)
    # the cached distances laid out in rows equal the relation's own computation
    batch = ds.__getitems__(range(12))
    rows = Packed(batch.x, batch.ptr).to_rows(row_len=64)
    node_row, node_pos = node_layout(rows.index)
    B, L = rows.index.shape
    assert torch.equal(batch.spd_dense(node_row, node_pos, B, L),
                       dense_shortest_paths(batch.edge_index, node_row, node_pos, B, L))
    L = int((batch.ptr[1:] - batch.ptr[:-1]).max())  # default: one graph per row
    assert torch.equal(batch.spd_dense(), dense_shortest_paths(batch.edge_index, batch.batch, batch.positions(), 12, L))


def _write_source(folder: Path, train: list[str], test: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.csv.gz", train), ("test.csv.gz", test)):
        with gzip.open(folder / name, "wt") as f:
            f.write("\n".join(["SMILES", *rows]) + "\n")
    return folder


def test_unparsable_duplicate_and_overlapping_smiles_are_skipped_and_counted(tmp_path):
    # every source row is visited when a quota cannot be met, so the error reports all the skips
    train = ["CCO", "c1ccccc1", "not-a-smiles", "C1CC1(", "CCN", "CCCl", "OCC", "CC(=O)O", "CCCC"]
    test = ["CCCC", "C(C)CC", "CCOC", "CCC#N", "c1ccncc1"]  # C(C)CC is CCCC again; CCCC is also in train
    source = _write_source(tmp_path / "source", train, test)
    with pytest.raises(ValueError, match=r"val/test: only 4 usable molecules for the 5 asked .*'duplicate': 1"):
        build_zinc("12k", root=tmp_path / "cache", limit=(1, 2, 3), source=source, progress=False)
    with pytest.raises(ValueError, match=r"train: only 5 usable molecules for the 9 asked "
                                         r"\(skipped \{'unparsable': 2, 'duplicate': 1, 'overlap': 1\}\)"):
        build_zinc("12k", root=tmp_path / "cache", limit=(9, 2, 2), source=source, progress=False)
    ds = build_zinc("12k", root=tmp_path / "cache", limit=(5, 2, 2), source=source, progress=False)
    assert sorted(ds["train"].smiles) in (sorted(["CCO", "c1ccccc1", "CCN", "CCCl", "CC(=O)O"]),
                                          sorted(["OCC", "c1ccccc1", "CCN", "CCCl", "CC(=O)O"]))
    assert ds["train"].skipped == {"unparsable": 2, "duplicate": 1, "overlap": 1}  # all rows needed
    assert len(set(ds["val"].smiles + ds["test"].smiles) & {"CCCC", "C(C)CC"}) == 1


def test_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="variant"):
        build_zinc("250k", root=tmp_path)
    with pytest.raises(ValueError, match="limit"):
        build_zinc("12k", root=tmp_path, limit=(10, 0, 5))
    with pytest.raises(FileNotFoundError, match="train.csv.gz"):
        build_zinc("12k", root=tmp_path, limit=(1, 1, 1), source=tmp_path)
    with pytest.raises(TypeError):
        with_encodings([1, 2])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ImportError, match="pip install --no-deps molsets"):
        build_zinc("12k", root=tmp_path / "a", limit=(1, 1, 1))
    monkeypatch.undo()
    monkeypatch.setattr(zinc.chemistry._Chem, "_loaded", None)
    monkeypatch.setitem(sys.modules, "rdkit", None)
    with pytest.raises(ImportError, match="pip install rdkit"):
        build_zinc("12k", root=tmp_path / "b", limit=(1, 1, 1))


def test_encoding_file_of_wrong_shape_is_recomputed(small):
    ds = with_encodings(small["val"], lap_k=3, rwse_k=None, spd=False, progress=False)
    path = ds.path.with_name("val.lap3.safetensors")
    tensors, meta = zinc.storage._read(path)
    zinc.storage._write_atomic(path, {"lap_pe": tensors["lap_pe"][:5], "lap_eigvals": tensors["lap_eigvals"]}, meta)
    again = with_encodings(small["val"], lap_k=3, rwse_k=None, spd=False, progress=False)
    assert torch.equal(again.encodings["lap_pe"], ds.encodings["lap_pe"])
    assert zinc.storage._read(path)[0]["lap_pe"].shape == ds.encodings["lap_pe"].shape


def test_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("RELFORMER_CACHE", str(tmp_path))
    assert zinc.zinc_cache_dir("100k") == tmp_path / "zinc-100k"
    assert zinc.zinc_cache_dir("12k", "/elsewhere", seed=2, limit=(5, 2, 2)) == Path("/elsewhere/zinc-12k-seed2-limit5-2-2")


def test_cache_folder_follows_xdg_without_relformer_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("RELFORMER_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert zinc.zinc_cache_dir("12k") == tmp_path / "relformer" / "zinc-12k"


def test_cache_writes_are_durable(tmp_path, monkeypatch):
    """A split file is fsynced and renamed into place, then its folder is fsynced (relformer.utils)."""
    import os

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    path = tmp_path / "split.safetensors"
    zinc.storage._write_atomic(path, {"y": torch.arange(3.0)}, {"format": "1"})
    assert len(synced) >= 2  # the file, then the folder
    assert torch.equal(zinc.storage._read(path)[0]["y"], torch.arange(3.0))
    assert [p.name for p in tmp_path.iterdir()] == ["split.safetensors"]  # no temporary file left
