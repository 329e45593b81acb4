"""Procedural rooms for 3-D referring (deterministic by seed): a rectangular room (four walls, a floor)
furnished with objects of :data:`CLASSES`, each built from simple solids and sampled to coloured surface
points with plain NumPy.

Placement is rule based: beds, sofas, cabinets, bookshelves, desks, nightstands, toilets, sinks and doors
stand against a wall facing into the room; windows and tvs hang on a wall; chairs stand around tables and
at desks facing them; lamps, monitors, boxes and plants rest on desks, tables, nightstands or low
cabinets (their bottom on the support's top, their footprint inside it); pillows rest on beds. Objects
are placed as axis-aligned boxes (turned by multiples of 90 degrees) that never interpenetrate (rejection
sampling; touching is allowed), and a door keeps the floor in front of it free. A scene's box of an
object is the bounds of its points (inside the placed box), computed as the ScanNet loader computes it.

Frame: x along the room's width ``[0, W]``, y along its depth ``[0, D]``, z up (the floor at z = 0), metres.
An object's *front* is the unit horizontal direction it faces (a chair: where its sitter looks), ``(0, 0)``
for objects without one.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Scene", "generate_room", "CLASSES", "STRUCTURE", "SIZE_PRIORS", "HAS_FRONT", "GENERATOR_VERSION"]

#: bumped whenever generated rooms, utterances or their files change (cached benchmarks are then rebuilt)
GENERATOR_VERSION = "1"

#: (width, depth, height) ranges in metres in the object's own frame (front along +depth)
SIZE_PRIORS: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "chair": ((0.42, 0.50), (0.42, 0.50), (0.80, 0.95)),
    "armchair": ((0.70, 0.90), (0.70, 0.90), (0.80, 1.00)),
    "table": ((0.80, 1.60), (0.80, 1.00), (0.72, 0.76)),
    "desk": ((1.00, 1.60), (0.60, 0.80), (0.72, 0.78)),
    "sofa": ((1.60, 2.20), (0.80, 1.00), (0.80, 0.90)),
    "bed": ((1.40, 1.90), (2.00, 2.20), (0.50, 0.60)),
    "cabinet": ((0.60, 1.20), (0.40, 0.60), (0.80, 1.80)),
    "bookshelf": ((0.60, 1.20), (0.30, 0.40), (1.50, 2.00)),
    "nightstand": ((0.40, 0.55), (0.35, 0.45), (0.50, 0.60)),
    "lamp": ((0.20, 0.35), (0.20, 0.35), (0.35, 0.60)),
    "monitor": ((0.45, 0.70), (0.15, 0.22), (0.35, 0.50)),
    "plant": ((0.30, 0.50), (0.30, 0.50), (0.40, 1.20)),
    "trash can": ((0.25, 0.40), (0.25, 0.40), (0.30, 0.60)),
    "box": ((0.25, 0.50), (0.25, 0.45), (0.15, 0.40)),
    "pillow": ((0.40, 0.60), (0.30, 0.45), (0.10, 0.18)),
    "toilet": ((0.38, 0.45), (0.65, 0.75), (0.70, 0.80)),
    "sink": ((0.45, 0.60), (0.40, 0.50), (0.80, 0.90)),
    "door": ((0.80, 0.90), (0.05, 0.06), (2.00, 2.10)),
    "window": ((0.80, 1.50), (0.05, 0.06), (1.00, 1.30)),
    "tv": ((0.90, 1.40), (0.06, 0.10), (0.55, 0.80)),
}
CLASSES = tuple(SIZE_PRIORS)
#: the room's own parts (objects of the scene, never targets or anchors of an utterance)
STRUCTURE = ("wall", "floor")
HAS_FRONT = frozenset({"chair", "armchair", "desk", "sofa", "bed", "cabinet", "bookshelf", "nightstand", "monitor",
                       "toilet", "sink", "door", "tv"})
_COLOURS = {"chair": (0.55, 0.35, 0.2), "armchair": (0.5, 0.2, 0.2), "table": (0.6, 0.45, 0.3),
            "desk": (0.7, 0.6, 0.45), "sofa": (0.3, 0.3, 0.5), "bed": (0.85, 0.85, 0.8), "cabinet": (0.6, 0.5, 0.4),
            "bookshelf": (0.45, 0.3, 0.2), "nightstand": (0.55, 0.4, 0.3), "lamp": (0.95, 0.9, 0.6),
            "monitor": (0.1, 0.1, 0.12), "plant": (0.2, 0.55, 0.2), "trash can": (0.4, 0.4, 0.4),
            "box": (0.75, 0.6, 0.4), "pillow": (0.9, 0.9, 0.95), "toilet": (0.95, 0.95, 0.95),
            "sink": (0.9, 0.9, 0.92), "door": (0.5, 0.35, 0.25), "window": (0.7, 0.85, 0.95), "tv": (0.05, 0.05, 0.05),
            "wall": (0.85, 0.83, 0.8), "floor": (0.5, 0.45, 0.4)}
_WALL, _FLOOR, _ROOM_HEIGHT = 0.1, 0.02, 2.7
# per room type: (class, min count, max count); placement follows the class
_ROOM_TYPES = {
    "bedroom": [("bed", 1, 1), ("nightstand", 1, 2), ("lamp", 1, 3), ("pillow", 1, 3), ("cabinet", 1, 2),
                ("desk", 0, 1), ("chair", 1, 3), ("box", 1, 4), ("plant", 0, 2), ("trash can", 0, 2),
                ("window", 1, 2), ("door", 1, 1), ("armchair", 0, 1), ("monitor", 0, 1)],
    "office": [("desk", 2, 3), ("chair", 2, 5), ("monitor", 1, 3), ("table", 0, 1), ("cabinet", 1, 2),
               ("bookshelf", 1, 2), ("trash can", 1, 3), ("plant", 1, 2), ("box", 1, 4), ("lamp", 0, 2),
               ("window", 1, 2), ("door", 1, 1)],
    "living room": [("sofa", 1, 1), ("armchair", 1, 2), ("table", 1, 2), ("chair", 2, 4), ("tv", 1, 1),
                    ("cabinet", 1, 2), ("bookshelf", 0, 2), ("plant", 1, 3), ("lamp", 1, 2), ("box", 1, 3),
                    ("trash can", 0, 1), ("window", 1, 3), ("door", 1, 1)],
    "bathroom": [("toilet", 1, 2), ("sink", 1, 2), ("trash can", 1, 2), ("cabinet", 1, 2), ("box", 1, 3),
                 ("plant", 0, 1), ("window", 0, 1), ("door", 1, 1)],
}
_AGAINST_WALL = {"bed", "sofa", "cabinet", "bookshelf", "desk", "nightstand", "toilet", "sink", "door"}
_ON_WALL = {"window": 0.9, "tv": 1.0}  # bottom height
_SUPPORTED = {"lamp": ("desk", "nightstand", "table"), "monitor": ("desk", "table"), "pillow": ("bed",),
              "box": ("table", "desk", "cabinet", None), "plant": ("table", "cabinet", None)}  # None: the floor
_SUPPORTERS = {"desk", "table", "nightstand", "bed", "cabinet"}


@dataclass(frozen=True)
class Scene:
    """One scan: ``n`` objects and their points, packed (object ``i`` owns
    ``points[point_offsets[i]:point_offsets[i + 1]]``).

    ``object_ids (n,)`` int64, ``classes`` n names, ``centres``/``sizes (n, 3)`` float32 axis-aligned
    boxes (centre, edge lengths), ``fronts (n, 2)`` float32 unit facing direction or ``(0, 0)``,
    ``points (P, 6)`` float32 xyz + rgb in ``[0, 1]``, ``point_offsets (n + 1,)`` int64, ``supports (n,)``
    int64 index of the object each rests on (``-1``: the floor or a wall; None when unknown, e.g. loaded).
    """

    scan_id: str
    object_ids: np.ndarray
    classes: tuple[str, ...]
    centres: np.ndarray
    sizes: np.ndarray
    fronts: np.ndarray
    points: np.ndarray
    point_offsets: np.ndarray
    supports: np.ndarray | None = None

    def __post_init__(self):
        n = len(self.classes)
        for name, shape in (("object_ids", (n,)), ("centres", (n, 3)), ("sizes", (n, 3)), ("fronts", (n, 2)),
                            ("point_offsets", (n + 1,))):
            if getattr(self, name).shape != shape:
                raise ValueError(f"scene {self.scan_id}: {name} has shape {getattr(self, name).shape}, "
                                 f"expected {shape}")
        if self.points.ndim != 2 or self.points.shape[1] != 6 or self.point_offsets[-1] != len(self.points):
            raise ValueError(f"scene {self.scan_id}: points must be (P, 6) with P = point_offsets[-1]")
        if len(set(self.object_ids.tolist())) != n:
            raise ValueError(f"scene {self.scan_id}: object ids must be unique")

    @property
    def num_objects(self) -> int:
        return len(self.classes)

    def object_points(self, i: int) -> np.ndarray:
        return self.points[self.point_offsets[i]:self.point_offsets[i + 1]]

    def index_of(self, object_id: int) -> int:
        """Position of ``object_id`` in this scene; ``ValueError`` naming the scan when absent."""
        hits = np.flatnonzero(self.object_ids == int(object_id))
        if hits.size == 0:
            raise ValueError(f"object id {object_id} is not in scan {self.scan_id!r} "
                             f"(ids {self.object_ids.min()}..{self.object_ids.max()})")
        return int(hits[0])


# ---- shapes: parts in the object's frame (x: width, y: depth with the front at +y, z up from 0) ----------------
def _parts(cls: str, w: float, d: float, h: float) -> list[tuple]:
    """``("box", centre, size)`` and ``("cyl", centre_bottom, radius, height)`` solids filling ``w x d x h``."""
    box = lambda cx, cy, cz, sx, sy, sz: ("box", (cx, cy, cz), (sx, sy, sz))  # noqa: E731  cz: bottom
    if cls in ("chair", "table", "desk"):
        top = 0.45 if cls == "chair" else h - 0.04
        leg = [("cyl", (sx * (w / 2 - 0.03), sy * (d / 2 - 0.03), 0.0), 0.02, top) for sx in (-1, 1) for sy in (-1, 1)]
        parts = leg + [box(0, 0, top, w, d, 0.04 if cls != "chair" else 0.05)]
        if cls == "chair":
            parts.append(box(0, -d / 2 + 0.025, top + 0.05, w, 0.05, h - top - 0.05))
        return parts
    if cls in ("sofa", "armchair"):
        return [box(0, 0.1, 0, w, d - 0.2, 0.42), box(0, -d / 2 + 0.1, 0, w, 0.2, h),
                box(-w / 2 + 0.08, 0.1, 0.42, 0.16, d - 0.2, 0.2), box(w / 2 - 0.08, 0.1, 0.42, 0.16, d - 0.2, 0.2)]
    if cls == "bed":
        return [box(0, 0, 0, w, d, 0.3), box(0, 0, 0.3, w - 0.04, d - 0.04, h - 0.3)]
    if cls == "bookshelf":
        shelves = [box(0, 0, z, w - 0.04, d - 0.02, 0.02) for z in np.linspace(0.0, h - 0.02, 5)]
        return shelves + [box(-w / 2 + 0.01, 0, 0, 0.02, d, h), box(w / 2 - 0.01, 0, 0, 0.02, d, h),
                          box(0, -d / 2 + 0.01, 0, w, 0.02, h)]
    if cls == "lamp":
        r = min(w, d) / 2
        return [("cyl", (0, 0, 0), r * 0.6, 0.03), ("cyl", (0, 0, 0.03), 0.015, h * 0.6),
                ("cyl", (0, 0, h * 0.6), r, h * 0.4)]
    if cls == "monitor":
        return [box(0, 0, 0, 0.2, d, 0.02), box(0, 0, 0.02, 0.04, 0.04, h * 0.3),
                box(0, 0.04, h * 0.3, w, 0.03, h * 0.7)]
    if cls == "plant":
        r = min(w, d) / 2
        return [("cyl", (0, 0, 0), r * 0.6, h * 0.35), ("cyl", (0, 0, h * 0.35), r, h * 0.65)]
    if cls == "trash can":
        return [("cyl", (0, 0, 0), min(w, d) / 2, h)]
    if cls == "toilet":
        return [("cyl", (0, d * 0.1, 0), min(w / 2, d * 0.35), 0.42), box(0, -d / 2 + 0.1, 0, w, 0.2, h)]
    if cls == "sink":
        return [box(0, 0, 0, w, d, h - 0.1), ("cyl", (0, 0, h - 0.1), min(w, d) / 2 - 0.02, 0.1)]
    return [box(0, 0, 0, w, d, h)]  # cabinet, nightstand, box, pillow, door, window, tv, wall, floor


def _sample_parts(parts: list[tuple], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points on the union of the parts' surfaces, ``(n, 3)`` in the object frame: one on every face
    (when ``n`` allows), the others uniformly by area."""
    faces = []  # (area, sampler)
    for p in parts:
        if p[0] == "box":
            (cx, cy, cz), (sx, sy, sz) = p[1], p[2]
            lo, size = np.array([cx - sx / 2, cy - sy / 2, cz]), np.array([sx, sy, sz])
            for axis in range(3):
                others = [a for a in range(3) if a != axis]
                area = size[others[0]] * size[others[1]]
                for side in (0.0, 1.0):
                    faces.append((area, ("box", lo, size, axis, side)))
        else:
            (cx, cy, cz), r, hh = p[1], p[2], p[3]
            faces.append((2 * np.pi * r * hh, ("side", (cx, cy, cz), r, hh)))
            for top in (0.0, hh):
                faces.append((np.pi * r * r, ("cap", (cx, cy, cz + top), r)))
    areas = np.array([a for a, _ in faces], dtype=np.float64)
    # a point on every face (so each solid's extreme faces, its bottom included, bound the points), the rest by area
    every = n >= len(faces)
    counts = rng.multinomial(n - len(faces) if every else n, areas / areas.sum()) + int(every)
    out = []
    for (_, f), k in zip(faces, counts):
        if k == 0:
            continue
        u = rng.random((k, 3))
        if f[0] == "box":
            _, lo, size, axis, side = f
            u[:, axis] = side
            out.append(lo + u * size)
        elif f[0] == "side":
            (cx, cy, cz), r, hh = f[1], f[2], f[3]
            t = u[:, 0] * 2 * np.pi
            out.append(np.stack([cx + r * np.cos(t), cy + r * np.sin(t), cz + u[:, 1] * hh], 1))
        else:
            (cx, cy, cz), r = f[1], f[2]
            t, rad = u[:, 0] * 2 * np.pi, r * np.sqrt(u[:, 1])
            out.append(np.stack([cx + rad * np.cos(t), cy + rad * np.sin(t), np.full(k, cz)], 1))
    return np.concatenate(out, 0)


# ---- placement -------------------------------------------------------------------------------------------------
_FRONTS = np.array([[0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [1.0, 0.0]])  # local +y turned by k * 90 degrees


def _world_size(w: float, d: float, h: float, k: int) -> np.ndarray:
    return np.array([w, d, h]) if k % 2 == 0 else np.array([d, w, h])


def _overlaps(lo: np.ndarray, hi: np.ndarray, los: list, his: list, tol: float = 0.0) -> bool:
    if not los:
        return False
    L, Hh = np.array(los), np.array(his)
    return bool(np.any(np.all((lo < Hh - tol) & (L < hi - tol), axis=1)))


class _Room:
    def __init__(self, rng: np.random.Generator, W: float, D: float):
        self.rng, self.W, self.D = rng, W, D
        self.items: list[dict] = []
        self.keep_out_lo: list = []  # floor kept free (in front of doors); only floor objects respect it
        self.keep_out_hi: list = []

    def free(self, lo, hi, floor: bool) -> bool:
        if lo[0] < -1e-9 or lo[1] < -1e-9 or hi[0] > self.W + 1e-9 or hi[1] > self.D + 1e-9 or hi[2] > _ROOM_HEIGHT:
            return False
        boxes = [(it["lo"], it["hi"]) for it in self.items if it["cls"] not in STRUCTURE]
        if _overlaps(lo, hi, [b[0] for b in boxes], [b[1] for b in boxes]):
            return False
        return not (floor and _overlaps(lo, hi, self.keep_out_lo, self.keep_out_hi))

    def add(self, cls, dims, k, centre_xy, bottom, support=-1, check_floor=True) -> int | None:
        size = _world_size(*dims, k)
        lo = np.array([centre_xy[0] - size[0] / 2, centre_xy[1] - size[1] / 2, bottom])
        hi = lo + size
        if not self.free(lo, hi, floor=check_floor and bottom < 0.05):
            return None
        self.items.append({"cls": cls, "dims": dims, "k": k, "lo": lo, "hi": hi, "support": support})
        return len(self.items) - 1

    def dims(self, cls):
        return tuple(float(self.rng.uniform(*r)) for r in SIZE_PRIORS[cls])

    def against_wall(self, cls, bottom=0.0, tries=60):
        for _ in range(tries):
            dims = self.dims(cls)
            wall = int(self.rng.integers(4))  # 0: y = 0 (facing +y), 1: x = W, 2: y = D, 3: x = 0
            k = {0: 0, 1: 1, 2: 2, 3: 3}[wall]
            size = _world_size(*dims, k)
            along = self.W if wall % 2 == 0 else self.D
            span = size[0] if wall % 2 == 0 else size[1]
            if span > along:
                continue
            t = self.rng.uniform(span / 2, along - span / 2)
            xy = {0: (t, size[1] / 2), 1: (self.W - size[0] / 2, t), 2: (t, self.D - size[1] / 2),
                  3: (size[0] / 2, t)}[wall]
            i = self.add(cls, dims, k, xy, bottom)
            if i is not None:
                return i
        return None

    def on_floor(self, cls, tries=60, margin=0.0):
        for _ in range(tries):
            dims, k = self.dims(cls), int(self.rng.integers(4))
            size = _world_size(*dims, k)
            if size[0] + 2 * margin > self.W or size[1] + 2 * margin > self.D:
                continue
            xy = (self.rng.uniform(size[0] / 2 + margin, self.W - size[0] / 2 - margin),
                  self.rng.uniform(size[1] / 2 + margin, self.D - size[1] / 2 - margin))
            i = self.add(cls, dims, k, xy, 0.0)
            if i is not None:
                return i
        return None

    def chairs_at(self, host: int, count: int) -> None:
        """Chairs facing object ``host`` (a table: around it; a desk: at its front)."""
        it = self.items[host]
        c = (it["lo"] + it["hi"]) / 2
        half = (it["hi"] - it["lo"]) / 2
        sides = [it["k"]] if it["cls"] == "desk" else list(self.rng.permutation(4))
        for side in sides[:count]:
            dims = self.dims("chair")
            out = _FRONTS[side]  # outward normal of that side; the chair faces back, -out
            k = (side + 2) % 4
            size = _world_size(*dims, k)
            gap = float(self.rng.uniform(0.05, 0.2))
            dist = abs(out[0]) * (half[0] + size[0] / 2) + abs(out[1]) * (half[1] + size[1] / 2) + gap
            self.add("chair", dims, k, (c[0] + out[0] * dist, c[1] + out[1] * dist), 0.0)

    def on_top(self, cls, hosts: list[int], tries=30) -> int | None:
        for _ in range(tries):
            if not hosts:
                return None
            host = hosts[int(self.rng.integers(len(hosts)))]
            it = self.items[host]
            dims = self.dims(cls)
            k = it["k"] if cls in HAS_FRONT else int(self.rng.integers(4))
            size = _world_size(*dims, k)
            lo, hi = it["lo"], it["hi"]
            if size[0] > hi[0] - lo[0] - 0.04 or size[1] > hi[1] - lo[1] - 0.04:
                continue
            xy = (self.rng.uniform(lo[0] + size[0] / 2 + 0.02, hi[0] - size[0] / 2 - 0.02),
                  self.rng.uniform(lo[1] + size[1] / 2 + 0.02, hi[1] - size[1] / 2 - 0.02))
            i = self.add(cls, dims, k, xy, float(hi[2]), support=host)
            if i is not None:
                return i
        return None


def _structure(room: _Room) -> None:
    W, D, t = room.W, room.D, _WALL
    for lo, hi in (((-t, -t, 0), (W + t, 0, _ROOM_HEIGHT)), ((W, 0, 0), (W + t, D, _ROOM_HEIGHT)),
                   ((-t, D, 0), (W + t, D + t, _ROOM_HEIGHT)), ((-t, 0, 0), (0, D, _ROOM_HEIGHT))):
        lo, hi = np.array(lo, float), np.array(hi, float)
        room.items.append({"cls": "wall", "dims": tuple(hi - lo), "k": 0, "lo": lo, "hi": hi, "support": -1})
    lo, hi = np.array([0, 0, -_FLOOR]), np.array([W, D, 0.0])
    room.items.append({"cls": "floor", "dims": tuple(hi - lo), "k": 0, "lo": lo, "hi": hi, "support": -1})


def _furnish(room: _Room, plan: list[tuple[str, int]]) -> None:
    counts = dict(plan)
    rng = room.rng
    for _ in range(counts.pop("door", 0)):
        i = room.against_wall("door")
        if i is not None:  # the floor the door swings over stays free
            it = room.items[i]
            f = _FRONTS[it["k"]]
            span = it["hi"] - it["lo"]
            lo = it["lo"].copy() + np.r_[np.minimum(f, 0) * 0.9 + np.maximum(f, 0) * span[:2], 0]
            hi = lo + np.r_[np.where(f != 0, 0.9, span[:2]), 2.0]
            room.keep_out_lo.append(lo), room.keep_out_hi.append(hi)
    for cls, bottom in _ON_WALL.items():
        for _ in range(counts.pop(cls, 0)):
            room.against_wall(cls, bottom=bottom)
    chairs = counts.pop("chair", 0)
    tables = [room.on_floor("table", margin=0.7) for _ in range(counts.pop("table", 0))]
    desks = [room.against_wall("desk") for _ in range(counts.pop("desk", 0))]
    hosts = [i for i in tables + desks if i is not None]
    for n, host in enumerate(hosts):  # share the chairs out, the rest stand free
        take = min(chairs, 1 if room.items[host]["cls"] == "desk" else int(rng.integers(2, 5)))
        if n == len(hosts) - 1 and room.items[host]["cls"] == "table":
            take = chairs
        room.chairs_at(host, take)
        chairs -= take
    for cls, n in list(counts.items()):
        if cls in _AGAINST_WALL:
            for _ in range(n):
                room.against_wall(cls)
            counts.pop(cls)
    for _ in range(chairs):
        room.on_floor("chair")
    for cls, n in counts.items():
        for _ in range(n):
            if cls in _SUPPORTED:
                places = _SUPPORTED[cls]
                hosts = [i for i, it in enumerate(room.items) if it["cls"] in places
                         and (it["cls"] != "cabinet" or it["hi"][2] <= 1.0)]
                on_floor = None in places and (not hosts or rng.random() < 0.5)
                if on_floor or room.on_top(cls, hosts) is None:
                    if None in places:
                        room.on_floor(cls)
            else:
                room.on_floor(cls)


def generate_room(seed: int, scan_id: str | None = None, point_density: float = 400.0,
                  points_range: tuple[int, int] = (64, 1024)) -> Scene:
    """One furnished room, a pure function of ``seed`` (NumPy's PCG64). ``scan_id`` defaults to
    ``f"gen{seed:06d}_00"``; each object gets ``clip(area * point_density, *points_range)`` surface
    points (``area`` in square metres of its solids)."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if point_density <= 0 or not (1 <= points_range[0] <= points_range[1]):
        raise ValueError(f"point_density must be > 0 and points_range (min, max) with 1 <= min <= max, "
                         f"got {point_density}, {points_range}")
    rng = np.random.default_rng(int(seed))
    kind = list(_ROOM_TYPES)[int(rng.integers(len(_ROOM_TYPES)))]
    small = kind == "bathroom"
    W, D = (rng.uniform(2.5, 4.0), rng.uniform(2.5, 4.0)) if small else (rng.uniform(4.0, 8.0), rng.uniform(4.0, 7.0))
    room = _Room(rng, float(W), float(D))
    _structure(room)
    _furnish(room, [(cls, int(rng.integers(lo, hi + 1))) for cls, lo, hi in _ROOM_TYPES[kind]])

    classes, centres, sizes, fronts, points, counts = [], [], [], [], [], []
    for it in room.items:
        cls, k = it["cls"], it["k"]
        size, centre = it["hi"] - it["lo"], (it["lo"] + it["hi"]) / 2  # the placed box
        if cls in STRUCTURE:
            parts, local_dims = [("box", (0, 0, 0), tuple(size))], tuple(size)
        else:
            local_dims = it["dims"]
            parts = _parts(cls, *local_dims)
        area = sum(p[2][0] * p[2][1] * 2 + p[2][2] * (p[2][0] + p[2][1]) * 2 if p[0] == "box"
                   else 2 * np.pi * p[2] * (p[2] + p[3]) for p in parts)
        n = int(np.clip(round(area * point_density), *points_range))
        local = _sample_parts(parts, n, rng)  # object frame, bottom at z = 0
        if cls in STRUCTURE:  # its corners among its points: the floor's box is the room's
            local[:8] = np.stack(np.meshgrid(*[(-v / 2, v / 2) for v in size[:2]], (0.0, size[2]), indexing="ij"),
                                 -1).reshape(8, 3)
        if cls not in STRUCTURE:
            c, s = [(1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0)][k]
            local[:, :2] = local[:, :2] @ np.array([[c, s], [-s, c]])  # turn by k * 90 degrees
        xyz = local + np.array([centre[0], centre[1], it["lo"][2]])
        xyz = np.clip(xyz, it["lo"], it["hi"])  # cylinders of a turned frame stay inside rounding-exactly
        tint = np.clip(np.array(_COLOURS[cls]) + rng.normal(0, 0.06, 3), 0, 1)
        rgb = np.round(np.clip(tint + rng.normal(0, 0.03, (n, 3)), 0, 1) * 255).astype(np.uint8)  # as stored
        xyz = xyz.astype(np.float32)
        # the box is the bounds of the points (inside the placed box), computed as the loader does
        lo, hi = xyz.min(0), xyz.max(0)
        centre, size = (lo + hi) / 2, hi - lo
        classes.append(cls), centres.append(centre), sizes.append(size), counts.append(n)
        fronts.append(_FRONTS[k] if cls in HAS_FRONT else np.zeros(2))
        points.append(np.concatenate([xyz, rgb.astype(np.float32) / 255.0], 1))
    n = len(classes)
    return Scene(scan_id=scan_id if scan_id is not None else f"gen{int(seed):06d}_00",
                 object_ids=np.arange(n, dtype=np.int64), classes=tuple(classes),
                 centres=np.array(centres, np.float32), sizes=np.array(sizes, np.float32),
                 fronts=np.array(fronts, np.float32), points=np.concatenate(points).astype(np.float32),
                 point_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                 supports=np.array([it["support"] for it in room.items], np.int64))
