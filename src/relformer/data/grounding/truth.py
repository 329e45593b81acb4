"""The geometric truth of a referring utterance, decided from the objects' boxes alone, one object at a
time in plain Python: a second code path beside the generator (:mod:`.utterances`) that tests use to
confirm every generated utterance is satisfied by its target and by none of its distractors.

The relations (Sr3D's reference types, Achlioptas et al. 2020, sec. 3), with the margins that keep
them unambiguous; ``c``: a box centre, ``xy``: its horizontal part, ``s``: its edge lengths:

* ``closest`` / ``farthest`` (horizontal proximity): ``|xy_t - xy_a|`` is smaller (larger) than that of
  every distractor by at least :data:`PROXIMITY_MARGIN`.
* ``between``: seen from each anchor, the angle between the other anchor and the target is below
  :data:`BETWEEN_ANGLE` (ReferIt3D's in-centre test); every distractor makes an angle of at least
  :data:`BETWEEN_REJECT` at one anchor.
* ``supported-by`` ("on") / ``supporting`` ("under"): the upper object's bottom lies within
  :data:`SUPPORT_GAP` of the lower object's top and its centre inside the lower footprint; a distractor
  must miss the looser test (gap ``3 * SUPPORT_GAP``, footprint grown by :data:`SUPPORT_GAP`).
* ``front`` / ``back`` / ``left`` / ``right`` (allocentric, relative to an anchor with a front ``f``):
  with ``r = xy_t - xy_a``, ``p = r . f`` and ``l = r . (f_y, -f_x)`` -- left and right are those of an
  observer standing in front of the anchor and looking at it (ReferIt3D's oriented sections put the
  front at the box's ``xmin`` and the left at its ``ymax``) -- and the anchor's half extents ``hf``,
  ``hl`` along ``f`` and the lateral axis, the clearances beyond each face are ``front = p - hf``,
  ``back = -p - hf``, ``left = l - hl``, ``right = -l - hl``. The target lies in section ``S`` when
  ``S``'s clearance is at least :data:`SECTION_MARGIN`, exceeds the three others by that margin and is at
  most :data:`SECTION_REACH`; a distractor must not lie in it even loosely (clearance ``> -margin`` and
  within ``margin`` of the largest).

Anchors are objects of a class that occurs once in the scene (Sr3D's rule); distractors are all other
objects of the target's class.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .rooms import Scene

if TYPE_CHECKING:  # the checker reads an utterance's fields only; it shares no code with the generator
    from .utterances import Utterance

__all__ = ["satisfies", "verify", "PROXIMITY_MARGIN", "BETWEEN_ANGLE", "BETWEEN_REJECT", "SUPPORT_GAP",
           "SECTION_MARGIN", "SECTION_REACH"]

PROXIMITY_MARGIN = 0.3   # metres
BETWEEN_ANGLE = 30.0     # degrees
BETWEEN_REJECT = 45.0    # degrees
SUPPORT_GAP = 0.02       # metres
SECTION_MARGIN = 0.15    # metres
SECTION_REACH = 2.0      # metres


def _box(scene: Scene, i: int) -> tuple[list[float], list[float], list[float]]:
    return ([float(v) for v in scene.centres[i]], [float(v) for v in scene.sizes[i]],
            [float(v) for v in scene.fronts[i]])


def _flat_distance(a: list[float], b: list[float]) -> float:
    return math.hypot(a[0] - b[0], a[1] - b[1])


def _angle(at: list[float], to: list[float], other: list[float]) -> float:
    """Degrees between ``to - at`` and ``other - at`` in the horizontal plane."""
    u, v = (to[0] - at[0], to[1] - at[1]), (other[0] - at[0], other[1] - at[1])
    nu, nv = math.hypot(*u), math.hypot(*v)
    if nu == 0 or nv == 0:
        return 180.0
    return math.degrees(math.acos(max(-1.0, min(1.0, (u[0] * v[0] + u[1] * v[1]) / (nu * nv)))))


def _rests_on(upper: int, lower: int, scene: Scene, gap: float, grow: float) -> bool:
    (cu, su, _), (cl, sl, _) = _box(scene, upper), _box(scene, lower)
    bottom, top = cu[2] - su[2] / 2, cl[2] + sl[2] / 2
    inside = all(abs(cu[a] - cl[a]) < sl[a] / 2 + grow for a in (0, 1))
    return abs(bottom - top) <= gap and inside


def _clearances(scene: Scene, target: int, anchor: int) -> dict[str, float]:
    (ct, _, _), (ca, sa, f) = _box(scene, target), _box(scene, anchor)
    side = (f[1], -f[0])
    r = (ct[0] - ca[0], ct[1] - ca[1])
    p, l = r[0] * f[0] + r[1] * f[1], r[0] * side[0] + r[1] * side[1]
    hf = abs(f[0]) * sa[0] / 2 + abs(f[1]) * sa[1] / 2
    hl = abs(side[0]) * sa[0] / 2 + abs(side[1]) * sa[1] / 2
    return {"front": p - hf, "back": -p - hf, "left": l - hl, "right": -l - hl}


def satisfies(scene: Scene, utterance: "Utterance", i: int, strict: bool = True) -> bool:
    """Whether object ``i`` (an index into ``scene``) would make ``utterance`` true as its target:
    ``strict`` is the target's test, ``strict=False`` the looser one a distractor must fail."""
    kind = utterance.reference_type
    anchors = [scene.index_of(a) for a in utterance.anchor_ids]
    if kind in ("closest", "farthest"):
        # strict: nearer (farther) than every other object of its class by the margin; loose: no other
        # object of its class is nearer (farther) by the margin
        a = _box(scene, anchors[0])[0]
        sign = 1.0 if kind == "closest" else -1.0
        mine = sign * _flat_distance(_box(scene, i)[0], a)
        same = [j for j in range(scene.num_objects) if scene.classes[j] == scene.classes[i] and j != i]
        rivals = [sign * _flat_distance(_box(scene, j)[0], a) for j in same]
        if strict:
            return all(mine + PROXIMITY_MARGIN <= r for r in rivals)
        return all(mine < r + PROXIMITY_MARGIN for r in rivals)
    if kind == "between":
        c, (a, b) = _box(scene, i)[0], (_box(scene, anchors[0])[0], _box(scene, anchors[1])[0])
        angles = (_angle(a, b, c), _angle(b, a, c))
        return max(angles) < BETWEEN_ANGLE if strict else max(angles) < BETWEEN_REJECT
    if kind in ("supported-by", "supporting"):
        gap, grow = (SUPPORT_GAP, 0.0) if strict else (3 * SUPPORT_GAP, SUPPORT_GAP)
        upper, lower = (i, anchors[0]) if kind == "supported-by" else (anchors[0], i)
        return _rests_on(upper, lower, scene, gap, grow)
    if kind in ("front", "back", "left", "right"):
        clear = _clearances(scene, i, anchors[0])
        mine, best_other = clear[kind], max(v for k, v in clear.items() if k != kind)
        if strict:
            return SECTION_MARGIN <= mine <= SECTION_REACH and mine >= best_other + SECTION_MARGIN
        return mine > -SECTION_MARGIN and mine > best_other - SECTION_MARGIN
    raise ValueError(f"unknown reference_type {kind!r}")


def verify(scene: Scene, utterance: "Utterance") -> str | None:
    """``None`` when ``utterance`` is true of its target alone in ``scene``, else the reason it is not:
    the target satisfies the relation, every distractor misses even the looser test, the distractors are
    exactly the other objects of the target's class (at least one), and each anchor's class is unique."""
    if utterance.scan_id != scene.scan_id:
        return f"utterance of scan {utterance.scan_id!r} checked against scan {scene.scan_id!r}"
    t = scene.index_of(utterance.target_id)
    cls = scene.classes[t]
    same = sorted(int(scene.object_ids[j]) for j in range(scene.num_objects) if scene.classes[j] == cls and j != t)
    if sorted(utterance.distractor_ids) != same or not same:
        return f"distractors {sorted(utterance.distractor_ids)} are not the other {cls!r} objects {same}"
    for a in utterance.anchor_ids:
        anchor_cls = scene.classes[scene.index_of(a)]
        if anchor_cls == cls or sum(c == anchor_cls for c in scene.classes) != 1:
            return f"anchor {a} ({anchor_cls!r}) is not the only one of its class, or is of the target's class"
    if not satisfies(scene, utterance, t, strict=True):
        return f"the target {utterance.target_id} does not satisfy {utterance.reference_type!r}"
    for d in utterance.distractor_ids:
        if satisfies(scene, utterance, scene.index_of(d), strict=False):
            return f"distractor {d} also satisfies {utterance.reference_type!r}"
    return None
