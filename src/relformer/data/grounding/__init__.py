"""3-D referring data: generated rooms with Sr3D-style utterances, their geometric truth, ReferIt3D's
format (Nr3D / Sr3D CSV + ScanNet scans) and a packed torch dataset over either.

* :mod:`.rooms`: :func:`generate_room` (seeded rooms of furniture built from solids, sampled to points)
  and the :class:`Scene` type (objects, boxes, fronts, packed points);
* :mod:`.utterances`: :func:`generate_utterances` (Sr3D's reference types by template) and :class:`Utterance`;
* :mod:`.truth`: :func:`verify`, the independent box-geometry check of an utterance;
* :mod:`.referit3d`: :func:`load_referit3d` and the readers / writers of the files;
* :mod:`.dataset`: :func:`build_benchmark`, :class:`ReferringDataset`, :func:`collate`, :class:`GroundingBatch`.
"""
from .dataset import SPLITS, GroundingBatch, ReferringDataset, benchmark_dir, build_benchmark, collate
from .referit3d import (SR3D_COLUMNS, load_referit3d, load_references, load_scan, read_ply_vertices,
                        write_references, write_scan)
from .rooms import CLASSES, GENERATOR_VERSION, HAS_FRONT, SIZE_PRIORS, STRUCTURE, Scene, generate_room
from .truth import satisfies, verify
from .utterances import COARSE_TYPES, VIEW_WORDS, Utterance, generate_utterances, is_view_dependent, tokenize

__all__ = ["Scene", "generate_room", "CLASSES", "STRUCTURE", "SIZE_PRIORS", "HAS_FRONT", "GENERATOR_VERSION",
           "Utterance", "generate_utterances", "COARSE_TYPES", "VIEW_WORDS", "is_view_dependent", "tokenize",
           "satisfies", "verify", "load_referit3d", "load_references", "load_scan", "write_scan", "write_references",
           "read_ply_vertices", "SR3D_COLUMNS", "build_benchmark", "benchmark_dir", "ReferringDataset",
           "GroundingBatch", "collate", "SPLITS"]
