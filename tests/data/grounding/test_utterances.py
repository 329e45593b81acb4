"""Generated utterances: for every utterance of a few hundred rooms the independent checker confirms the
target satisfies it and no distractor does; the checker itself rejects a swapped target; the hard and
view-dependent subsets follow ReferIt3D's rules; generation is deterministic by seed."""
from collections import Counter
from dataclasses import replace

import pytest

from relformer.data.grounding import (COARSE_TYPES, VIEW_WORDS, generate_room, generate_utterances, tokenize,
                                      verify)


def _check_rooms(seeds):
    kinds, swapped_rejected, total = Counter(), 0, 0
    for seed in seeds:
        scene = generate_room(seed)
        for u in generate_utterances(scene, seed):
            total += 1
            kinds[u.reference_type] += 1
            assert verify(scene, u) is None, (u, verify(scene, u))
            assert len(u.distractor_ids) >= 1 and u.target_id not in u.distractor_ids
            t = scene.index_of(u.target_id)
            assert all(scene.classes[scene.index_of(d)] == scene.classes[t] for d in u.distractor_ids)
            assert u.hard == (len(u.distractor_ids) + 1 > 2)
            assert u.view_dependent == (COARSE_TYPES[u.reference_type] == "allocentric")
            assert u.view_dependent == bool(VIEW_WORDS & set(tokenize(u.text)))
            assert scene.classes[t] in u.text and all(scene.classes[scene.index_of(a)] in u.text for a in u.anchor_ids)
            # the checker can fail: any distractor named as the target makes the utterance false
            d = u.distractor_ids[0]
            wrong = replace(u, target_id=d, distractor_ids=tuple(sorted({*u.distractor_ids, u.target_id} - {d})))
            swapped_rejected += verify(scene, wrong) is not None
    assert swapped_rejected == total
    return kinds, total


def test_every_utterance_is_true_of_its_target_alone_fast():
    kinds, total = _check_rooms(range(40))
    assert total > 100


@pytest.mark.slow
def test_every_utterance_of_300_rooms_is_true_of_its_target_alone():
    kinds, total = _check_rooms(range(1000, 1300))
    assert set(COARSE_TYPES) <= set(kinds), kinds  # every Sr3D reference type occurs


def test_deterministic_by_seed():
    scene = generate_room(5)
    assert generate_utterances(scene, 5) == generate_utterances(scene, 5)
    assert generate_utterances(scene, 5, max_per_type=1) != generate_utterances(scene, 5)


def test_checker_rejects_broken_utterances():
    scene = generate_room(11)
    u = next(x for x in generate_utterances(scene, 11) if x.reference_type == "closest")
    assert "distractors" in verify(scene, replace(u, distractor_ids=u.distractor_ids[1:]))
    wall = scene.object_ids[scene.classes.index("wall")]
    assert "anchor" in verify(scene, replace(u, anchor_ids=(int(wall),)))
    assert "scan" in verify(scene, replace(u, scan_id="other"))
    with pytest.raises(ValueError, match="reference_type"):
        verify(scene, replace(u, reference_type="above"))
    with pytest.raises(ValueError, match="object id"):
        verify(scene, replace(u, target_id=10 ** 6))
