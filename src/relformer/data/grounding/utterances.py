"""Sr3D-style referring utterances for a scene (templates re-implemented from the description of Sr3D in
Achlioptas et al. 2020, "ReferIt3D: Neural Listeners for Fine-Grained 3D Object Identification in
Real-World Scenes", sec. 3): a target object, one or two anchors and a spatial relation, said by a
template, for targets that have at least one distractor (another object of the target's class).

Reference types and their coarse groups, as Sr3D names them: ``closest``/``farthest`` (horizontal),
``between``, ``supported-by`` ("on") / ``supporting`` ("under") (support), ``front``/``back``/``left``/
``right`` (allocentric, relative to an anchor that has a front; left and right as seen by an observer
facing the anchor's front, see :mod:`.truth` for the exact sections). Anchors occur once in their scene.
The geometric rules and margins are those :mod:`.truth` states; this module selects candidates with its
own vectorised NumPy code, and tests check every utterance against :func:`.truth.verify`.

Subsets as ReferIt3D evaluates them: *hard* when the scene holds more than two objects of the target's
class (``easy``: ``n_objects <= 2`` in ReferIt3D's ``analyze_predictions``, i.e. one distractor),
*view-dependent* when the utterance contains one of ReferIt3D's view words (``is_explicitly_view_dependent``),
which for these templates is exactly the allocentric types.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .rooms import STRUCTURE, Scene
from .truth import (BETWEEN_ANGLE, BETWEEN_REJECT, PROXIMITY_MARGIN, SECTION_MARGIN, SECTION_REACH, SUPPORT_GAP)

__all__ = ["Utterance", "generate_utterances", "COARSE_TYPES", "VIEW_WORDS", "is_view_dependent", "tokenize",
           "stimulus_id"]

#: fine reference type -> Sr3D's coarse type
COARSE_TYPES = {"closest": "horizontal", "farthest": "horizontal", "between": "between",
                "supported-by": "support", "supporting": "support",
                "front": "allocentric", "back": "allocentric", "left": "allocentric", "right": "allocentric"}
#: ReferIt3D's words of an explicitly view-dependent utterance (referit3d/analysis/utterances.py)
VIEW_WORDS = frozenset({"front", "behind", "back", "right", "left", "facing", "leftmost", "rightmost", "looking",
                        "across"})
_TEMPLATES = {
    "closest": ("the {t} closest to the {a}", "find the {t} that is closest to the {a}", "the {t} nearest the {a}"),
    "farthest": ("the {t} farthest from the {a}", "select the {t} that is farthest from the {a}",
                 "the {t} most distant from the {a}"),
    "between": ("the {t} between the {a} and the {b}", "the {t} that is between the {a} and the {b}",
                "choose the {t} located between the {a} and the {b}"),
    "supported-by": ("the {t} on the {a}", "the {t} that is on top of the {a}", "choose the {t} resting on the {a}"),
    "supporting": ("the {t} under the {a}", "the {t} that is supporting the {a}", "choose the {t} beneath the {a}"),
    "front": ("the {t} in front of the {a}", "facing the {a}, the {t} in front of it",
              "choose the {t} that is in front of the {a}"),
    "back": ("the {t} behind the {a}", "the {t} at the back of the {a}", "choose the {t} that is behind the {a}"),
    "left": ("the {t} on the left of the {a}", "facing the {a}, choose the {t} on the left",
             "the {t} to the left of the {a}"),
    "right": ("the {t} on the right of the {a}", "facing the {a}, choose the {t} on the right",
              "the {t} to the right of the {a}"),
}


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens (letters and digits)."""
    return re.findall(r"[a-z0-9]+", text.lower())


def is_view_dependent(tokens: list[str]) -> bool:
    """ReferIt3D's rule: the tokens contain one of :data:`VIEW_WORDS`."""
    return not VIEW_WORDS.isdisjoint(tokens)


def stimulus_id(scan_id: str, instance_type: str, target_id: int, distractor_ids) -> str:
    """ReferIt3D's context string ``scan-class-n_objects-target-distractors...`` (spaces as ``_``)."""
    parts = [scan_id, instance_type, str(len(distractor_ids) + 1), str(target_id), *map(str, distractor_ids)]
    return "-".join(parts).replace(" ", "_")


@dataclass(frozen=True)
class Utterance:
    """One referring utterance: object ids are those of the scan (``Scene.object_ids``)."""

    scan_id: str
    target_id: int
    distractor_ids: tuple[int, ...]
    anchor_ids: tuple[int, ...]
    reference_type: str   # Sr3D's fine type, "" when unknown (Nr3D)
    text: str
    instance_type: str    # the target's class
    hard: bool            # more than two objects of the target's class in the scan
    view_dependent: bool  # contains one of VIEW_WORDS

    @property
    def coarse_reference_type(self) -> str:
        return COARSE_TYPES.get(self.reference_type, "")

    @property
    def stimulus_id(self) -> str:
        return stimulus_id(self.scan_id, self.instance_type, self.target_id, self.distractor_ids)


# ---- candidate selection (vectorised over the objects of a scene) ------------------------------------------------
def _unique_anchor_mask(classes: np.ndarray) -> np.ndarray:
    values, inverse, counts = np.unique(classes, return_inverse=True, return_counts=True)
    return (counts[inverse] == 1) & ~np.isin(classes, STRUCTURE)


def _proximity(scene: Scene, groups: dict[str, np.ndarray], anchors: np.ndarray):
    xy = scene.centres[:, :2].astype(np.float64)
    for cls, members in groups.items():
        for a in anchors:
            d = np.linalg.norm(xy[members] - xy[a], axis=1)  # (m,)
            order = np.argsort(d)
            if d[order[1]] - d[order[0]] >= PROXIMITY_MARGIN + 1e-6:
                yield "closest", members[order[0]], (a,)
            if d[order[-1]] - d[order[-2]] >= PROXIMITY_MARGIN + 1e-6:
                yield "farthest", members[order[-1]], (a,)


def _between(scene: Scene, groups: dict[str, np.ndarray], anchors: np.ndarray):
    xy = scene.centres[:, :2].astype(np.float64)
    for n, a in enumerate(anchors):
        for b in anchors[n + 1:]:
            ab = xy[b] - xy[a]
            if np.linalg.norm(ab) < 1.0:
                continue
            for cls, members in groups.items():
                if scene.classes[a] == cls or scene.classes[b] == cls:
                    continue
                ta, tb = xy[members] - xy[a], xy[members] - xy[b]  # (m, 2)
                ang_a = np.degrees(np.abs(np.arctan2(ab[0] * ta[:, 1] - ab[1] * ta[:, 0], ta @ ab)))
                ang_b = np.degrees(np.abs(np.arctan2(ab[0] * tb[:, 1] - ab[1] * tb[:, 0], -(tb @ ab))))
                worst = np.maximum(ang_a, ang_b)
                inside, outside = worst < BETWEEN_ANGLE - 1e-3, worst >= BETWEEN_REJECT + 1e-3
                if inside.sum() == 1 and outside.sum() == len(members) - 1:
                    yield "between", members[np.flatnonzero(inside)[0]], (a, b)


def _support(scene: Scene, groups: dict[str, np.ndarray], anchors: np.ndarray):
    lo = (scene.centres - scene.sizes / 2).astype(np.float64)
    hi = (scene.centres + scene.sizes / 2).astype(np.float64)
    c = scene.centres.astype(np.float64)
    # on[u, l]: u rests on l (bottom on top, centre over the footprint); loose: the distractors' test
    gap = np.abs(lo[:, None, 2] - hi[None, :, 2])
    over = (c[:, None, :2] > lo[None, :, :2]) & (c[:, None, :2] < hi[None, :, :2])
    near = (c[:, None, :2] > lo[None, :, :2] - SUPPORT_GAP) & (c[:, None, :2] < hi[None, :, :2] + SUPPORT_GAP)
    on = (gap <= SUPPORT_GAP - 1e-6) & over.all(-1)
    loose = (gap <= 3 * SUPPORT_GAP + 1e-6) & near.all(-1)
    for members in groups.values():
        for a in anchors:
            for kind, strict, relaxed in (("supported-by", on[members, a], loose[members, a]),
                                          ("supporting", on[a, members], loose[a, members])):
                if strict.sum() == 1 and relaxed.sum() == 1 and strict[np.argmax(relaxed)]:
                    yield kind, members[np.argmax(strict)], (a,)


def _allocentric(scene: Scene, groups: dict[str, np.ndarray], anchors: np.ndarray):
    xy, size, fronts = (scene.centres[:, :2].astype(np.float64), scene.sizes[:, :2].astype(np.float64),
                        scene.fronts.astype(np.float64))
    for a in anchors:
        f = fronts[a]
        if not f.any():
            continue
        frame = np.stack([f, [f[1], -f[0]]])          # rows: front axis, observer's left axis
        half = np.abs(frame) @ (size[a] / 2)            # (2,) half extents along them
        for members in groups.values():
            p, l = ((xy[members] - xy[a]) @ frame.T).T  # (m,) each
            clear = np.stack([p - half[0], -p - half[0], l - half[1], -l - half[1]], 1)  # front, back, left, right
            for k, kind in enumerate(("front", "back", "left", "right")):
                others = np.delete(clear, k, axis=1).max(1)
                strict = ((clear[:, k] >= SECTION_MARGIN + 1e-6) & (clear[:, k] <= SECTION_REACH - 1e-6)
                          & (clear[:, k] >= others + SECTION_MARGIN + 1e-6))
                loose = (clear[:, k] > -SECTION_MARGIN - 1e-6) & (clear[:, k] > others - SECTION_MARGIN - 1e-6)
                if strict.sum() == 1 and loose.sum() == 1:
                    yield kind, members[np.argmax(strict)], (a,)


def generate_utterances(scene: Scene, seed: int, max_per_type: int = 2) -> list[Utterance]:
    """Every reference the rules admit in ``scene``, at most ``max_per_type`` per fine type (drawn with
    ``seed``), each said by one of three templates (drawn with ``seed``). Deterministic in ``seed``."""
    rng = np.random.default_rng(int(seed))
    classes = np.array(scene.classes)
    targetable = ~np.isin(classes, STRUCTURE)
    groups = {}
    for cls in dict.fromkeys(scene.classes):
        members = np.flatnonzero((classes == cls) & targetable)
        if len(members) >= 2:
            groups[cls] = members
    anchors = np.flatnonzero(_unique_anchor_mask(classes))
    found: dict[str, list] = {k: [] for k in _TEMPLATES}
    for make in (_proximity, _between, _support, _allocentric):
        for kind, target, anchor_idx in make(scene, groups, anchors):
            found[kind].append((int(target), tuple(int(a) for a in anchor_idx)))
    out = []
    for kind, refs in found.items():
        picks = rng.permutation(len(refs))[:max_per_type] if refs else []
        for r in sorted(picks):
            target, anchor_idx = refs[r]
            cls = scene.classes[target]
            names = [scene.classes[a] for a in anchor_idx]
            template = _TEMPLATES[kind][int(rng.integers(len(_TEMPLATES[kind])))]
            text = template.format(t=cls, a=names[0], b=names[-1])
            distractors = tuple(int(scene.object_ids[j]) for j in groups[cls] if j != target)
            out.append(Utterance(scan_id=scene.scan_id, target_id=int(scene.object_ids[target]),
                                 distractor_ids=distractors,
                                 anchor_ids=tuple(int(scene.object_ids[a]) for a in anchor_idx),
                                 reference_type=kind, text=text, instance_type=cls, hard=len(distractors) >= 2,
                                 view_dependent=is_view_dependent(tokenize(text))))
    return out
