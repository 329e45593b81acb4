"""A generated Sr3D-style referring benchmark in ReferIt3D's layout, and the torch dataset over it (or over
real Nr3D / Sr3D + ScanNet files).

Dataset card (generated, not ScanNet):

* **Scenes**: :func:`.rooms.generate_room` rooms (bedrooms, offices, living rooms, bathrooms; ~20
  furniture classes plus walls and a floor), one seed per scene: split ``k`` (train 0, val 1, test 2) of
  benchmark seed ``s`` uses scene seeds ``s * 10**7 + k * 10**6 + i``, so splits never share a scene.
* **Utterances**: :func:`.utterances.generate_utterances` per scene (Sr3D's reference types, at least one
  distractor each), true of the target alone by :func:`.truth.verify`.
* **Counts**: per reference type, hard and view-dependent, in :meth:`ReferringDataset.summary` (a test
  computes them on a small build); they depend on the arguments, not written here.
* **Storage**: under ``cache_root()/sr3d-gen-seed<s>`` (or ``root``): ``scans/<scan_id>/`` ScanNet files,
  ``sr3d_gen.csv`` (Sr3D columns), ``splits/<split>_scans.txt`` (as ReferIt3D's ``train_scans.txt``), and
  ``meta.json`` (generator version and arguments, written last, atomically). A differing ``meta.json``
  rebuilds the folder; reading goes through :func:`.referit3d.load_referit3d`, the loader of real data.
* **Batches**: ``DataLoader(ds, batch_size=..., collate_fn=collate)`` packs the scenes: objects by
  ``object_offsets``, points by ``point_offsets`` (never padded).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ...relations.geometry3d import Pair3DBias
from ...utils import atomic_write_text, cache_root
from ..packed import Packed, lengths_to_offsets
from .referit3d import load_referit3d, write_references, write_scan
from .rooms import CLASSES, GENERATOR_VERSION, STRUCTURE, generate_room
from .utterances import generate_utterances

__all__ = ["build_benchmark", "ReferringDataset", "GroundingBatch", "collate", "SPLITS", "benchmark_dir"]

SPLITS = ("train", "val", "test")
_CSV = "sr3d_gen.csv"


def benchmark_dir(seed: int = 0, root: str | os.PathLike | None = None) -> Path:
    """``root`` (default :func:`relformer.utils.cache_root`) ``/ sr3d-gen-seed<seed>``."""
    return (Path(root).expanduser() if root is not None else cache_root()) / f"sr3d-gen-seed{int(seed)}"


def scene_seed(seed: int, split: str, i: int) -> int:
    return int(seed) * 10 ** 7 + SPLITS.index(split) * 10 ** 6 + int(i)


def build_benchmark(num_scenes: tuple[int, int, int] = (300, 50, 50), seed: int = 0,
                    root: str | os.PathLike | None = None, max_per_type: int = 2, point_density: float = 400.0,
                    points_range: tuple[int, int] = (64, 1024)) -> Path:
    """Generate (or find cached) the benchmark; returns its folder. Scenes per split ``num_scenes``
    (train, val, test), up to ``max_per_type`` utterances per reference type and scene."""
    if len(num_scenes) != 3 or any(int(n) < 1 or int(n) >= 10 ** 6 for n in num_scenes):
        raise ValueError(f"num_scenes must be three counts (train, val, test) in [1, 10**6), got {num_scenes}")
    if int(seed) < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    folder = benchmark_dir(seed, root)
    meta = {"version": GENERATOR_VERSION, "num_scenes": [int(n) for n in num_scenes], "seed": int(seed),
            "max_per_type": int(max_per_type), "point_density": float(point_density),
            "points_range": [int(p) for p in points_range]}
    meta_path = folder / "meta.json"
    try:
        if json.loads(meta_path.read_text()) == meta:
            return folder
    except (OSError, ValueError):
        pass
    for part in ("scans", "splits", _CSV, "meta.json"):  # this folder's own files: a stale build goes
        target = folder / part
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    scenes, utterances = {}, []
    for split, n in zip(SPLITS, num_scenes):
        ids = []
        for i in range(int(n)):
            s = scene_seed(seed, split, i)
            scene = generate_room(s, point_density=point_density, points_range=tuple(points_range))
            write_scan(folder / "scans", scene)
            scenes[scene.scan_id] = scene
            utterances += generate_utterances(scene, s, max_per_type=max_per_type)
            ids.append(scene.scan_id)
        atomic_write_text(folder / "splits" / f"{split}_scans.txt", "\n".join(ids) + "\n")
    write_references(folder / _CSV, utterances, scenes)
    atomic_write_text(meta_path, json.dumps(meta, indent=1))
    return folder


@dataclass(frozen=True)
class GroundingBatch:
    """``B`` utterances over their scenes, packed: scene ``b`` owns objects
    ``object_offsets[b]:object_offsets[b + 1]`` of the ``N`` objects, object ``o`` owns points
    ``point_offsets[o]:point_offsets[o + 1]`` of the ``P`` points.

    ``points (P, 6)`` xyz + rgb, ``centres``/``sizes (N, 3)``, ``classes (N,)`` long, ``target (B,)`` the
    target's index inside its scene, ``distractor_mask``/``anchor_mask (N,)`` bool, ``hard``/
    ``view_dependent (B,)`` bool, and ``texts``, ``reference_types``, ``scan_ids`` (``B`` strings each).
    """

    points: Tensor
    point_offsets: Tensor
    object_offsets: Tensor
    centres: Tensor
    sizes: Tensor
    classes: Tensor
    target: Tensor
    distractor_mask: Tensor
    anchor_mask: Tensor
    hard: Tensor
    view_dependent: Tensor
    texts: tuple[str, ...]
    reference_types: tuple[str, ...]
    scan_ids: tuple[str, ...]

    @property
    def num_scenes(self) -> int:
        return self.object_offsets.numel() - 1

    def object_points(self) -> Packed:
        """The points packed per object: ``Packed(points (P, 6), point_offsets (N + 1,))``."""
        return Packed(self.points, self.point_offsets)

    def scene_ids(self) -> Tensor:
        """``(N,)`` scene (utterance) index of every object: the segment ids of a packed attention."""
        return Packed(self.centres, self.object_offsets).segment_ids()

    def pair_relation(self, relation: Pair3DBias) -> Pair3DBias:
        """``relation`` bound to this batch's objects as one packed ``(1, N)`` sequence: the pair geometry
        of their boxes, pairs of different scenes masked."""
        return relation.bind(centres=self.centres[None], sizes=self.sizes[None], segment_ids=self.scene_ids()[None])

    def target_index(self) -> Tensor:
        """``(B,)`` the target's index among all ``N`` objects."""
        return self.object_offsets[:-1] + self.target

    def to(self, *args, **kwargs) -> "GroundingBatch":
        return replace(self, **{f.name: getattr(self, f.name).to(*args, **kwargs) for f in fields(self)
                                if isinstance(getattr(self, f.name), Tensor)})


class ReferringDataset(Dataset):
    """Utterances with their scenes; ``ds[i]`` is a dict: ``points (P, 6)`` float32, ``point_offsets (n + 1,)``,
    ``centres``/``sizes (n, 3)``, ``classes (n,)`` long (indices into ``class_names``), ``target`` (index in
    the scene), ``distractor_mask``/``anchor_mask (n,)`` bool, ``hard``, ``view_dependent``, ``text``,
    ``reference_type``, ``scan_id``. :func:`collate` packs a list of them.

    ``ReferringDataset.generated(split)`` reads the generated benchmark (built if needed);
    ``ReferringDataset(csv, scans_dir, scan_ids)`` real Nr3D / Sr3D + ScanNet files.
    """

    def __init__(self, csv_path: str | os.PathLike, scans_dir: str | os.PathLike,
                 scan_ids: Sequence[str] | None = None, class_names: Sequence[str] | None = None,
                 mentions_target_class_only: bool = False) -> None:
        self.scenes, self.utterances = load_referit3d(csv_path, scans_dir, scan_ids, mentions_target_class_only)
        names = sorted({c for s in self.scenes.values() for c in s.classes}) if class_names is None else class_names
        self.class_names = tuple(names)
        index = {c: k for k, c in enumerate(self.class_names)}
        self._tensors = {}
        for scan_id, s in self.scenes.items():
            unknown = sorted(set(s.classes) - set(index))
            if unknown:
                raise ValueError(f"scan {scan_id!r} has classes {unknown} not in class_names")
            self._tensors[scan_id] = {
                "points": torch.from_numpy(s.points), "point_offsets": torch.from_numpy(s.point_offsets),
                "centres": torch.from_numpy(s.centres), "sizes": torch.from_numpy(s.sizes),
                "classes": torch.tensor([index[c] for c in s.classes], dtype=torch.long)}

    @classmethod
    def generated(cls, split: str, **build_args) -> "ReferringDataset":
        """One split of :func:`build_benchmark` (``build_args`` go there)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        folder = build_benchmark(**build_args)
        ids = (folder / "splits" / f"{split}_scans.txt").read_text().split()
        return cls(folder / _CSV, folder / "scans", ids, class_names=CLASSES + STRUCTURE)

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, i: int) -> dict:
        u = self.utterances[i]
        scene = self.scenes[u.scan_id]
        n = scene.num_objects
        distractors, anchors = torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
        distractors[[scene.index_of(d) for d in u.distractor_ids]] = True
        anchors[[scene.index_of(a) for a in u.anchor_ids]] = True
        return {**self._tensors[u.scan_id], "target": scene.index_of(u.target_id), "distractor_mask": distractors,
                "anchor_mask": anchors, "hard": u.hard, "view_dependent": u.view_dependent, "text": u.text,
                "reference_type": u.reference_type, "scan_id": u.scan_id}

    def summary(self) -> dict[str, int]:
        """Utterance counts: ``total``, one per reference type, ``hard``, ``view_dependent``, ``scenes``."""
        out = {"total": len(self.utterances), "scenes": len(self.scenes),
               "hard": sum(u.hard for u in self.utterances),
               "view_dependent": sum(u.view_dependent for u in self.utterances)}
        for u in self.utterances:
            out[u.reference_type or "unknown"] = out.get(u.reference_type or "unknown", 0) + 1
        return out


def collate(items: Sequence[dict]) -> GroundingBatch:
    """Pack items of :class:`ReferringDataset` into a :class:`GroundingBatch` (offsets, no padding)."""
    if len(items) == 0:
        raise ValueError("cannot collate an empty list of items")
    n_objects = torch.tensor([it["centres"].shape[0] for it in items])
    point_counts = torch.cat([it["point_offsets"].diff() for it in items])
    return GroundingBatch(
        points=torch.cat([it["points"] for it in items]), point_offsets=lengths_to_offsets(point_counts),
        object_offsets=lengths_to_offsets(n_objects), centres=torch.cat([it["centres"] for it in items]),
        sizes=torch.cat([it["sizes"] for it in items]), classes=torch.cat([it["classes"] for it in items]),
        target=torch.tensor([it["target"] for it in items], dtype=torch.long),
        distractor_mask=torch.cat([it["distractor_mask"] for it in items]),
        anchor_mask=torch.cat([it["anchor_mask"] for it in items]),
        hard=torch.tensor([bool(it["hard"]) for it in items]),
        view_dependent=torch.tensor([bool(it["view_dependent"]) for it in items]),
        texts=tuple(it["text"] for it in items), reference_types=tuple(it["reference_type"] for it in items),
        scan_ids=tuple(it["scan_id"] for it in items))
