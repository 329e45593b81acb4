"""Generated rooms: deterministic by seed, objects inside the room, no two boxes interpenetrating,
supported objects resting on their support, points inside their boxes, several instances per class."""
import numpy as np
import pytest

from relformer.data.grounding import CLASSES, STRUCTURE, generate_room

SEEDS = range(60)


@pytest.fixture(scope="module")
def scenes():
    return [generate_room(s) for s in SEEDS]


def test_deterministic_by_seed():
    a, b, c = generate_room(7), generate_room(7), generate_room(8)
    for field in ("object_ids", "centres", "sizes", "fronts", "points", "point_offsets", "supports"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    assert a.classes == b.classes
    assert a.points.shape != c.points.shape or not np.array_equal(a.points, c.points)


def test_no_interpenetration_and_inside_the_room(scenes):
    for s in scenes:
        lo, hi = s.centres - s.sizes / 2, s.centres + s.sizes / 2
        furniture = [i for i, c in enumerate(s.classes) if c not in STRUCTURE]
        floor = s.classes.index("floor")
        for n, i in enumerate(furniture):
            assert (lo[i, :2] >= lo[floor, :2] - 1e-5).all() and (hi[i, :2] <= hi[floor, :2] + 1e-5).all()
            assert lo[i, 2] >= -1e-6, (s.scan_id, s.classes[i])
            for j in list(furniture[n + 1:]) + [k for k, c in enumerate(s.classes) if c in STRUCTURE]:
                depth = np.minimum(hi[i], hi[j]) - np.maximum(lo[i], lo[j])  # overlap per axis
                assert depth.min() <= 1e-5, (s.scan_id, s.classes[i], s.classes[j], depth)


def test_supported_objects_rest_on_their_support(scenes):
    resting = 0
    for s in scenes:
        lo, hi = s.centres - s.sizes / 2, s.centres + s.sizes / 2
        for i, host in enumerate(s.supports):
            if host < 0:
                continue
            resting += 1
            assert s.classes[host] in ("desk", "table", "nightstand", "bed", "cabinet")
            assert abs(lo[i, 2] - hi[host, 2]) < 1e-5, (s.scan_id, s.classes[i], s.classes[host])
            assert (lo[i, :2] >= lo[host, :2] - 1e-5).all() and (hi[i, :2] <= hi[host, :2] + 1e-5).all()
    assert resting > len(scenes)  # more than one supported object per scene on average


def test_points_classes_fronts_and_distractors(scenes):
    repeated = 0
    for s in scenes:
        assert set(s.classes) <= set(CLASSES) | set(STRUCTURE)
        assert s.classes.count("wall") == 4 and s.classes.count("floor") == 1
        for i in range(s.num_objects):
            p = s.object_points(i)
            assert len(p) >= 64
            lo, hi = s.centres[i] - s.sizes[i] / 2, s.centres[i] + s.sizes[i] / 2
            assert (p[:, :3] >= lo - 1e-5).all() and (p[:, :3] <= hi + 1e-5).all()
            assert (p[:, 3:] >= 0).all() and (p[:, 3:] <= 1).all()
            f = s.fronts[i]
            assert np.isclose(np.abs(f).sum(), 1.0) or not f.any()
        counts = {c: s.classes.count(c) for c in set(s.classes) - set(STRUCTURE)}
        repeated += any(n >= 2 for n in counts.values())
    assert repeated == len(scenes)  # every room has a class with distractors


def test_chairs_face_their_table_or_desk(scenes):
    faced = 0
    for s in scenes:
        hosts = [i for i, c in enumerate(s.classes) if c in ("table", "desk")]
        for i, c in enumerate(s.classes):
            if c != "chair" or not hosts:
                continue
            h = min(hosts, key=lambda j: np.linalg.norm(s.centres[j, :2] - s.centres[i, :2]))
            to_host = s.centres[h, :2] - s.centres[i, :2]
            faced += float(np.dot(s.fronts[i], to_host)) > 0
    assert faced > len(scenes)


def test_bad_arguments():
    with pytest.raises(ValueError, match="seed"):
        generate_room(-1)
    with pytest.raises(ValueError, match="seed"):
        generate_room(1.5)
    with pytest.raises(ValueError, match="points_range"):
        generate_room(0, points_range=(10, 5))
