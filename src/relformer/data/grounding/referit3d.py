"""ReferIt3D's data format: Nr3D / Sr3D CSV rows plus ScanNet scans, read into :class:`~.rooms.Scene` and
:class:`~.utterances.Utterance` (and written, for the generated benchmark, which goes through the same reader).

**Utterances** (one CSV, ReferIt3D's columns; read with the ``csv`` module): required ``scan_id``,
``target_id``, ``utterance`` and either ``distractor_ids`` (Sr3D, a Python list such as ``[3, 7]``) or
``stimulus_id`` (Nr3D: ``scan-class-n_objects-target-distractor...``, decoded as ReferIt3D's
``decode_stimulus_string`` does). Optional: ``instance_type`` (else from the stimulus or the scan),
``reference_type`` (Sr3D), ``anchor_ids`` (Sr3D, a list), ``tokens`` (a list; else the lower-cased words of
the utterance) and ``mentions_target_class`` (Nr3D; ``mentions_target_class_only=True`` keeps the True rows).
*hard*: more than two objects of the target's class (ReferIt3D's ``n_objects > 2``); *view-dependent*:
ReferIt3D's word rule on the tokens.

**Scans** (ScanNet v2's layout, the files ReferIt3D's ``prepare_scannet_data.py`` reads), under
``scans_dir/<scan_id>/``:

* ``<scan_id>_vh_clean_2.ply``: the mesh vertices, element ``vertex`` first, with properties ``x y z`` and
  ``red green blue`` (uchar; other properties and the faces are skipped); ``binary_little_endian`` or
  ``ascii`` PLY (read with NumPy, no PLY library);
* ``<scan_id>_vh_clean_2.0.010000.segs.json``: ``{"segIndices": [segment of each vertex]}``;
* ``<scan_id>.aggregation.json``: ``{"segGroups": [{"objectId", "label", "segments": [...]}, ...]}``: one
  object per group, its points the vertices of its segments. An optional ``"front": [fx, fy]`` per group
  (written by the generator; not part of ScanNet) gives the facing direction, else ``(0, 0)``;
* ``<scan_id>.txt`` (optional): ScanNet's meta file, whose ``axisAlignment = m00 ... m33`` (row-major 4x4)
  is applied to the points when ``align=True``, as ReferIt3D does.

Boxes are the axis-aligned bounds of each object's (aligned) points; objects without points are dropped.
"""
from __future__ import annotations

import ast
import csv
import io
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ...utils import atomic_write_bytes, atomic_write_text
from .rooms import Scene
from .utterances import Utterance, is_view_dependent, stimulus_id, tokenize

__all__ = ["load_scan", "write_scan", "load_references", "write_references", "load_referit3d", "read_ply_vertices",
           "SR3D_COLUMNS"]

#: the columns :func:`write_references` writes (Sr3D's, in its order)
SR3D_COLUMNS = ("scan_id", "target_id", "distractor_ids", "utterance", "stimulus_id", "coarse_reference_type",
                "reference_type", "instance_type", "anchors_types", "anchor_ids", "tokens")
_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}


def _files(scans_dir: Path, scan_id: str) -> dict[str, Path]:
    d = scans_dir / scan_id
    return {"ply": d / f"{scan_id}_vh_clean_2.ply", "segs": d / f"{scan_id}_vh_clean_2.0.010000.segs.json",
            "aggregation": d / f"{scan_id}.aggregation.json", "meta": d / f"{scan_id}.txt"}


# ---- PLY --------------------------------------------------------------------------------------------------------
def read_ply_vertices(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(xyz (P, 3) float32, rgb (P, 3) uint8)`` from the ``vertex`` element (the first) of a PLY file."""
    data = Path(path).read_bytes()
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise ValueError(f"{path}: not a PLY file (no 'ply' magic or 'end_header')")
    body = data.index(b"\n", end) + 1
    header = data[:body].decode("ascii", "replace").splitlines()
    fmt, count, props, element = None, None, [], None
    for line in header:
        words = line.split()
        if words[:1] == ["format"]:
            fmt = words[1]
        elif words[:1] == ["element"]:
            if element == "vertex":
                break
            element = words[1]
            if element != "vertex":
                raise ValueError(f"{path}: the first element must be 'vertex', got {element!r}")
            count = int(words[2])
        elif words[:1] == ["property"] and element == "vertex":
            if words[1] == "list" or words[1] not in _PLY_TYPES:
                raise ValueError(f"{path}: unsupported vertex property {' '.join(words[1:])!r}")
            props.append((words[2], _PLY_TYPES[words[1]]))
    names = [n for n, _ in props]
    missing = [n for n in ("x", "y", "z", "red", "green", "blue") if n not in names]
    if count is None or missing:
        raise ValueError(f"{path}: the vertex element lacks {missing or ['a count']}")
    if fmt == "binary_little_endian":
        dtype = np.dtype([(n, "<" + t) for n, t in props])
        if len(data) - body < count * dtype.itemsize:
            raise ValueError(f"{path}: truncated ({count} vertices of {dtype.itemsize} bytes expected)")
        v = np.frombuffer(data, dtype=dtype, count=count, offset=body)
        xyz = np.stack([v["x"], v["y"], v["z"]], 1).astype(np.float32)
        rgb = np.stack([v["red"], v["green"], v["blue"]], 1).astype(np.uint8)
    elif fmt == "ascii":
        rows = data[body:].decode("ascii").splitlines()[:count]
        table = np.array([r.split()[:len(names)] for r in rows], dtype=np.float64).reshape(count, len(names))
        col = {n: table[:, k] for k, n in enumerate(names)}
        xyz = np.stack([col["x"], col["y"], col["z"]], 1).astype(np.float32)
        rgb = np.stack([col["red"], col["green"], col["blue"]], 1).astype(np.uint8)
    else:
        raise ValueError(f"{path}: unsupported PLY format {fmt!r} (binary_little_endian or ascii)")
    return xyz, rgb


def _ply_bytes(xyz: np.ndarray, rgb: np.ndarray) -> bytes:
    v = np.empty(len(xyz), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"),
                                  ("blue", "u1"), ("alpha", "u1")])
    v["x"], v["y"], v["z"] = xyz.T
    v["red"], v["green"], v["blue"] = rgb.T
    v["alpha"] = 255
    header = (f"ply\nformat binary_little_endian 1.0\nelement vertex {len(v)}\n"
              + "".join(f"property {t} {n}\n" for t, n in (("float", "x"), ("float", "y"), ("float", "z"),
                                                           ("uchar", "red"), ("uchar", "green"), ("uchar", "blue"),
                                                           ("uchar", "alpha")))
              + "element face 0\nproperty list uchar int vertex_indices\nend_header\n")
    return header.encode("ascii") + v.tobytes()


# ---- scans -----------------------------------------------------------------------------------------------------
def write_scan(scans_dir: str | os.PathLike, scene: Scene) -> None:
    """``scene`` as ScanNet's files under ``scans_dir/<scan_id>/`` (one segment per object, identity alignment)."""
    f = _files(Path(scans_dir), scene.scan_id)
    rgb = np.clip(np.round(scene.points[:, 3:] * 255), 0, 255).astype(np.uint8)
    atomic_write_bytes(f["ply"], _ply_bytes(scene.points[:, :3], rgb))
    segs = np.repeat(np.arange(scene.num_objects), np.diff(scene.point_offsets))
    atomic_write_text(f["segs"], json.dumps({"sceneId": scene.scan_id, "segIndices": segs.tolist()}))
    groups = [{"id": i, "objectId": int(scene.object_ids[i]), "segments": [i], "label": scene.classes[i],
               "front": [float(v) for v in scene.fronts[i]]} for i in range(scene.num_objects)]
    atomic_write_text(f["aggregation"], json.dumps({"sceneId": f"scannet.{scene.scan_id}", "segGroups": groups,
                                                    "segmentsFile": f"scannet.{f['segs'].name}"}))
    atomic_write_text(f["meta"], "axisAlignment = " + " ".join(map(str, np.eye(4).flatten().tolist())) + "\n")


def _alignment(path: Path) -> np.ndarray | None:
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        if line.startswith("axisAlignment"):
            values = [float(x) for x in line.split("=", 1)[1].split()]
            if len(values) != 16:
                raise ValueError(f"{path}: axisAlignment needs 16 numbers, got {len(values)}")
            return np.array(values).reshape(4, 4)
    return None


def load_scan(scans_dir: str | os.PathLike, scan_id: str, align: bool = True) -> Scene:
    """One ScanNet scan (the files listed in the module docstring) as a :class:`Scene`."""
    f = _files(Path(scans_dir), scan_id)
    for key in ("ply", "segs", "aggregation"):
        if not f[key].exists():
            raise ValueError(f"unknown scan id {scan_id!r}: {f[key]} does not exist")
    xyz, rgb = read_ply_vertices(f["ply"])
    matrix = _alignment(f["meta"]) if align else None
    if matrix is not None:
        xyz = (np.c_[xyz.astype(np.float64), np.ones(len(xyz))] @ matrix.T)[:, :3].astype(np.float32)
    segs = np.asarray(json.loads(f["segs"].read_text())["segIndices"])
    if len(segs) != len(xyz):
        raise ValueError(f"scan {scan_id!r}: {len(segs)} segment indices for {len(xyz)} vertices")
    order = np.argsort(segs, kind="stable")
    seg_values, seg_starts = np.unique(segs[order], return_index=True)
    seg_ends = np.r_[seg_starts[1:], len(order)]
    where = dict(zip(seg_values.tolist(), zip(seg_starts.tolist(), seg_ends.tolist())))
    ids, classes, fronts, chunks = [], [], [], []
    for group in json.loads(f["aggregation"].read_text())["segGroups"]:
        idx = np.concatenate([order[slice(*where[s])] for s in group["segments"] if s in where] or [np.zeros(0, int)])
        if idx.size == 0:
            continue
        ids.append(int(group["objectId"])), classes.append(str(group["label"]))
        fronts.append(group.get("front", [0.0, 0.0])), chunks.append(np.sort(idx))
    if not chunks:
        raise ValueError(f"scan {scan_id!r} has no object with points")
    points = np.concatenate([np.c_[xyz[c], rgb[c].astype(np.float32) / 255.0] for c in chunks]).astype(np.float32)
    lo = np.stack([xyz[c].min(0) for c in chunks])
    hi = np.stack([xyz[c].max(0) for c in chunks])
    return Scene(scan_id=scan_id, object_ids=np.array(ids, np.int64), classes=tuple(classes),
                 centres=((lo + hi) / 2).astype(np.float32), sizes=(hi - lo).astype(np.float32),
                 fronts=np.array(fronts, np.float32).reshape(-1, 2), points=points,
                 point_offsets=np.r_[0, np.cumsum([len(c) for c in chunks])].astype(np.int64))


# ---- utterances --------------------------------------------------------------------------------------------------
def _id_list(value: str, column: str, row: int) -> tuple[int, ...]:
    try:
        parsed = ast.literal_eval(value) if value.strip() else []
        return tuple(int(v) for v in (parsed if isinstance(parsed, (list, tuple)) else [parsed]))
    except (ValueError, SyntaxError, TypeError):
        raise ValueError(f"row {row}: column {column!r} must be a list of object ids, got {value!r}") from None


def _decode_stimulus(value: str, row: int) -> tuple[str, str, int, int, tuple[int, ...]]:
    parts = value.split("-")
    try:
        scan, label, n, target, *rest = parts
        return scan, label.replace("_", " "), int(n), int(target), tuple(int(d) for d in rest)
    except ValueError:
        raise ValueError(f"row {row}: stimulus_id {value!r} is not 'scan-class-n-target-distractors...'") from None


def load_references(csv_path: str | os.PathLike, mentions_target_class_only: bool = False) -> list[Utterance]:
    """Nr3D / Sr3D rows (columns in the module docstring) as utterances, in file order."""
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = set(reader.fieldnames or ())
        missing = [c for c in ("scan_id", "target_id", "utterance") if c not in columns]
        if not {"distractor_ids", "stimulus_id"} & columns:
            missing.append("distractor_ids or stimulus_id")
        if missing:
            raise ValueError(f"{csv_path}: missing columns {missing} (has {sorted(columns)})")
        out = []
        for row, r in enumerate(reader, start=2):
            if mentions_target_class_only and r.get("mentions_target_class", "True").strip().lower() != "true":
                continue
            try:
                target = int(r["target_id"])
            except ValueError:
                raise ValueError(f"row {row}: target_id must be an integer, got {r['target_id']!r}") from None
            stim = _decode_stimulus(r["stimulus_id"], row) if r.get("stimulus_id") else None
            distractors = (_id_list(r["distractor_ids"], "distractor_ids", row) if "distractor_ids" in columns
                           else stim[4])
            n_objects = stim[2] if stim else len(distractors) + 1
            tokens = _tokens(r.get("tokens"), r["utterance"])
            out.append(Utterance(scan_id=r["scan_id"], target_id=target, distractor_ids=distractors,
                                 anchor_ids=_id_list(r.get("anchor_ids", ""), "anchor_ids", row),
                                 reference_type=r.get("reference_type", "") or "", text=r["utterance"],
                                 instance_type=r.get("instance_type") or (stim[1] if stim else ""),
                                 hard=n_objects > 2, view_dependent=is_view_dependent(tokens)))
    return out


def _tokens(value: str | None, utterance: str) -> list[str]:
    if value:
        try:
            parsed = ast.literal_eval(value)
            if isinstance(parsed, (list, tuple)):
                return [str(t).lower() for t in parsed]
        except (ValueError, SyntaxError):
            pass
    return tokenize(utterance)


def write_references(csv_path: str | os.PathLike, utterances: Iterable[Utterance],
                     scenes: dict[str, Scene] | None = None) -> None:
    """Utterances as an Sr3D-style CSV (:data:`SR3D_COLUMNS`), atomically; ``scenes`` names the anchors' classes."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(SR3D_COLUMNS)
    for u in utterances:
        scene = scenes.get(u.scan_id) if scenes else None
        anchor_types = [scene.classes[scene.index_of(a)] for a in u.anchor_ids] if scene else []
        writer.writerow([u.scan_id, u.target_id, list(u.distractor_ids), u.text, u.stimulus_id,
                         u.coarse_reference_type, u.reference_type, u.instance_type, anchor_types,
                         list(u.anchor_ids), tokenize(u.text)])
    atomic_write_text(csv_path, buf.getvalue())


def load_referit3d(csv_path: str | os.PathLike, scans_dir: str | os.PathLike, scan_ids: Sequence[str] | None = None,
                   mentions_target_class_only: bool = False, align: bool = True
                   ) -> tuple[dict[str, Scene], list[Utterance]]:
    """The utterances of ``csv_path`` whose scan is in ``scan_ids`` (default: every scan they name) and
    those scans from ``scans_dir``; ``ValueError`` naming the row's scan or object when a scan is missing or
    a target, distractor or anchor id is not in its scan."""
    utterances = load_references(csv_path, mentions_target_class_only)
    if scan_ids is not None:
        keep = set(scan_ids)
        utterances = [u for u in utterances if u.scan_id in keep]
    scenes: dict[str, Scene] = {}
    for u in utterances:
        if u.scan_id not in scenes:
            scenes[u.scan_id] = load_scan(scans_dir, u.scan_id, align=align)
        scene = scenes[u.scan_id]
        for role, ids in (("target", (u.target_id,)), ("distractor", u.distractor_ids), ("anchor", u.anchor_ids)):
            for i in ids:
                if not (scene.object_ids == i).any():
                    raise ValueError(f"{role} id {i} of utterance {u.text!r} is not an object of scan {u.scan_id!r}")
    named = [u if u.instance_type else replace(u, instance_type=scenes[u.scan_id].classes[
        scenes[u.scan_id].index_of(u.target_id)]) for u in utterances]
    return scenes, named
