"""A ZINC-like molecular graph-regression dataset, built offline and deterministically.

Dataset card

* **Source**: the SMILES files PyPI's ``molsets`` ships (MOSES, Polykovskiy et al. 2020; a
  filtering of ZINC15 "Clean Leads": 250-350 Da, neutral, C N S O F Cl Br H), found without
  importing ``moses``; nothing is downloaded (``pip install --no-deps molsets``, RDKit, networkx).
* **Splits**: ``"12k"`` 10,000 / 1,000 / 1,000 (train from ``train.csv.gz``, val and test from
  ``test.csv.gz``; the sizes of benchmarking-gnns' ZINC-12k); ``"100k"`` 100,000 train (the 12k
  ones first), the same val and test. Seeded sampling, no overlap (:mod:`.building`).
* **Target**: penalized logP, ``logP - SA - ring_penalty``, unnormalised, as JT-VAE computes it
  (:mod:`.chemistry`); mean about -0.04, standard deviation about 1.14 on train.
* **Graphs**: hydrogen-suppressed molecules of 9-27 heavy atoms; 8 atom types, 5 bond types.
* **Not ZINC-12k**: same sizes and target formula, but another ZINC subset (MOSES clean leads, not
  the 250k drug-like set; smaller, neutral, 7 elements), targets computed with the installed
  RDKit, random splits. Compare models trained on this dataset, not with published ZINC-12k tables.
* **Storage**: one safetensors file per split under ``zinc_cache_dir()`` (relformer's cache
  folder), written atomically; later calls load it without RDKit (:mod:`.storage`).
  :func:`with_encodings` caches LapPE, RWSE and shortest paths beside it (:mod:`.encodings`).
* **Batches**: ``DataLoader(ds, batch_size=..., collate_fn=ZincDataset.collate)`` gathers a
  :class:`ZincBatch` (a :class:`~relformer.data.graph.GraphBatch`) from the packed storage.
"""
from .building import SPLITS, VARIANTS, build_zinc
from .chemistry import (ATOM_TYPES, BOND_TYPES, NUM_ATOM_TYPES, NUM_BOND_TYPES, check_dependencies, featurize,
                        moses_data_dir, penalized_logp, penalized_logp_terms)
from .dataset import ENCODINGS, ZincBatch, ZincDataset
from .encodings import with_encodings
from .storage import zinc_cache_dir

__all__ = ["build_zinc", "with_encodings", "ZincDataset", "ZincBatch", "penalized_logp_terms",
           "penalized_logp", "featurize", "zinc_cache_dir", "moses_data_dir", "check_dependencies",
           "ATOM_TYPES", "BOND_TYPES", "NUM_ATOM_TYPES", "NUM_BOND_TYPES", "VARIANTS", "SPLITS", "ENCODINGS"]
