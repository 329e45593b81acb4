"""The ReferIt3D / ScanNet reader on small Nr3D- and Sr3D-style CSVs and ScanNet scan files the tests write
(ascii and binary PLY, several segments per object, unlabelled vertices, an axis alignment), and its
errors on bad input."""
import csv
import json

import numpy as np
import pytest

from relformer.data.grounding import load_referit3d, load_references, load_scan, read_ply_vertices

SCAN = "scene0001_00"
# object id -> (label, its segments); segment 9 belongs to no object
OBJECTS = {0: ("chair", [3, 4]), 1: ("table", [0]), 2: ("chair", [7]), 5: ("wall", [1, 2])}
NR3D_COLUMNS = ["assignmentid", "stimulus_id", "utterance", "correct_guess", "speaker_id", "listener_id", "scan_id",
                "target_id", "instance_type", "tokens", "mentions_target_class", "uses_object_lang",
                "uses_spatial_lang", "uses_color_lang", "uses_shape_lang", "dataset"]


def _vertices(seed=0):
    g = np.random.default_rng(seed)
    segs = np.repeat([3, 4, 0, 7, 1, 2, 9], [20, 15, 40, 30, 25, 25, 10])
    g.shuffle(segs)
    xyz = g.uniform(-2, 3, (len(segs), 3)).astype(np.float32)
    rgb = g.integers(0, 256, (len(segs), 3)).astype(np.uint8)
    return xyz, rgb, segs


def write_ascii_ply(path, xyz, rgb):
    lines = ["ply", "format ascii 1.0", "comment written by the test", f"element vertex {len(xyz)}",
             "property float x", "property float y", "property float z", "property uchar red", "property uchar green",
             "property uchar blue", "property uchar alpha", "element face 1", "property list uchar int vertex_indices",
             "end_header"]
    lines += [f"{x!r} {y!r} {z!r} {r} {g} {b} 255" for (x, y, z), (r, g, b) in zip(xyz.tolist(), rgb.tolist())]
    path.write_text("\n".join(lines + ["3 0 1 2"]) + "\n")


def write_binary_ply(path, xyz, rgb):
    """Another property order and double coordinates, then a face element."""
    v = np.empty(len(xyz), dtype=[("red", "u1"), ("green", "u1"), ("blue", "u1"), ("x", "<f8"), ("y", "<f8"),
                                  ("z", "<f8"), ("label", "<u2")])
    v["red"], v["green"], v["blue"] = rgb.T
    v["x"], v["y"], v["z"] = xyz.T
    v["label"] = 7
    header = ("ply\nformat binary_little_endian 1.0\nelement vertex %d\nproperty uchar red\nproperty uchar green\n"
              "property uchar blue\nproperty double x\nproperty double y\nproperty double z\nproperty ushort label\n"
              "element face 1\nproperty list uchar int vertex_indices\nend_header\n" % len(v))
    face = np.array([3], "u1").tobytes() + np.array([0, 1, 2], "<i4").tobytes()
    path.write_bytes(header.encode() + v.tobytes() + face)


ROTATION = np.array([[0.0, -1.0, 0.0, 1.5], [1.0, 0.0, 0.0, -0.5], [0.0, 0.0, 1.0, 0.25], [0, 0, 0, 1]])


def write_scan_files(root, binary=False, scan=SCAN):
    xyz, rgb, segs = _vertices()
    d = root / scan
    d.mkdir(parents=True)
    (write_binary_ply if binary else write_ascii_ply)(d / f"{scan}_vh_clean_2.ply", xyz, rgb)
    (d / f"{scan}_vh_clean_2.0.010000.segs.json").write_text(json.dumps({"sceneId": scan,
                                                                         "segIndices": segs.tolist()}))
    groups = [{"id": k, "objectId": oid, "label": label, "segments": s}
              for k, (oid, (label, s)) in enumerate(OBJECTS.items())]
    (d / f"{scan}.aggregation.json").write_text(json.dumps({"sceneId": f"scannet.{scan}", "segGroups": groups}))
    matrix = " ".join(map(str, ROTATION.flatten()))
    (d / f"{scan}.txt").write_text(f"colorHeight = 968\naxisAlignment = {matrix}\n")
    return xyz, rgb, segs


@pytest.mark.parametrize("binary", [False, True])
def test_scan_objects_boxes_and_alignment(tmp_path, binary):
    xyz, rgb, segs = write_scan_files(tmp_path, binary)
    scene = load_scan(tmp_path, SCAN)
    assert scene.object_ids.tolist() == list(OBJECTS) and scene.classes == tuple(v[0] for v in OBJECTS.values())
    # expected: the object's vertices, turned by 90 degrees about z and moved, point by point
    x, y, z = xyz[:, 0].astype(np.float64), xyz[:, 1].astype(np.float64), xyz[:, 2].astype(np.float64)
    aligned = np.stack([-y + 1.5, x - 0.5, z + 0.25], 1)
    for i, (oid, (label, seg_list)) in enumerate(OBJECTS.items()):
        mine = np.isin(segs, seg_list)
        pts = scene.object_points(i)
        assert len(pts) == mine.sum()
        np.testing.assert_allclose(np.sort(pts[:, 0]), np.sort(aligned[mine, 0]), atol=1e-5)
        np.testing.assert_allclose(np.sort(pts[:, 3]), np.sort(rgb[mine, 0] / 255.0), atol=1e-7)
        lo, hi = aligned[mine].min(0), aligned[mine].max(0)
        np.testing.assert_allclose(scene.centres[i], (lo + hi) / 2, atol=1e-5)
        np.testing.assert_allclose(scene.sizes[i], hi - lo, atol=1e-5)
    assert len(scene.points) == (segs != 9).sum()  # the unlabelled vertices belong to no object
    assert not scene.fronts.any()
    unaligned = load_scan(tmp_path, SCAN, align=False)
    np.testing.assert_allclose(unaligned.centres[1], (xyz[segs == 0].min(0) + xyz[segs == 0].max(0)) / 2, atol=1e-6)


def _write_csv(path, columns, rows):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        w.writerows(rows)


def test_nr3d_rows(tmp_path):
    write_scan_files(tmp_path / "scans")
    rows = [
        ["a1", f"{SCAN}-chair-2-0-2", "The chair facing the table", True, "s", "l", SCAN, 0, "chair",
         "['the', 'chair', 'facing', 'the', 'table']", True, True, True, False, False, "nr3d"],
        ["a2", f"{SCAN}-chair-2-2-0", "the chair far from the table", True, "s", "l", SCAN, 2, "chair",
         "['the', 'chair', 'far', 'from', 'the', 'table']", True, True, True, False, False, "nr3d"],
        ["a3", f"{SCAN}-chair-2-2-0", "the seat by the table", False, "s", "l", SCAN, 2, "chair",
         "['the', 'seat', 'by', 'the', 'table']", False, False, True, False, False, "nr3d"],
    ]
    _write_csv(tmp_path / "nr3d.csv", NR3D_COLUMNS, rows)
    scenes, utts = load_referit3d(tmp_path / "nr3d.csv", tmp_path / "scans")
    assert list(scenes) == [SCAN] and len(utts) == 3
    assert [u.distractor_ids for u in utts] == [(2,), (0,), (0,)]
    assert [u.view_dependent for u in utts] == [True, False, False]
    assert not any(u.hard for u in utts) and all(u.instance_type == "chair" for u in utts)
    _, kept = load_referit3d(tmp_path / "nr3d.csv", tmp_path / "scans", mentions_target_class_only=True)
    assert [u.text for u in kept] == [rows[0][2], rows[1][2]]


def test_sr3d_rows(tmp_path):
    write_scan_files(tmp_path / "scans", binary=True)
    columns = ["scan_id", "target_id", "distractor_ids", "utterance", "stimulus_id", "coarse_reference_type",
               "reference_type", "instance_type", "anchors_types", "anchor_ids"]
    _write_csv(tmp_path / "sr3d.csv", columns, [
        [SCAN, 2, "[0]", "the chair closest to the table", f"{SCAN}-chair-2-2-0", "horizontal", "closest", "chair",
         "['table']", "[1]"],
        [SCAN, 0, "[2]", "the chair on the left of the table", f"{SCAN}-chair-2-0-2", "allocentric", "left", "chair",
         "['table']", "[1]"]])
    scenes, utts = load_referit3d(tmp_path / "sr3d.csv", tmp_path / "scans", scan_ids=[SCAN])
    assert [(u.target_id, u.anchor_ids, u.reference_type) for u in utts] == [(2, (1,), "closest"), (0, (1,), "left")]
    assert [u.coarse_reference_type for u in utts] == ["horizontal", "allocentric"]
    assert [u.view_dependent for u in utts] == [False, True]
    assert load_referit3d(tmp_path / "sr3d.csv", tmp_path / "scans", scan_ids=["scene9999_00"]) == ({}, [])


def test_bad_inputs_fail_by_name(tmp_path):
    write_scan_files(tmp_path / "scans")
    _write_csv(tmp_path / "no_target.csv", ["scan_id", "utterance", "stimulus_id"],
               [[SCAN, "x", f"{SCAN}-chair-2-0-2"]])
    with pytest.raises(ValueError, match="target_id"):
        load_references(tmp_path / "no_target.csv")
    _write_csv(tmp_path / "no_context.csv", ["scan_id", "target_id", "utterance"], [[SCAN, 0, "x"]])
    with pytest.raises(ValueError, match="distractor_ids or stimulus_id"):
        load_references(tmp_path / "no_context.csv")
    cols = ["scan_id", "target_id", "distractor_ids", "utterance"]
    _write_csv(tmp_path / "unknown_scan.csv", cols, [["scene0404_00", 0, "[2]", "x"]])
    with pytest.raises(ValueError, match="unknown scan id 'scene0404_00'"):
        load_referit3d(tmp_path / "unknown_scan.csv", tmp_path / "scans")
    _write_csv(tmp_path / "bad_target.csv", cols, [[SCAN, 42, "[2]", "x"]])
    with pytest.raises(ValueError, match="target id 42 .* scan 'scene0001_00'"):
        load_referit3d(tmp_path / "bad_target.csv", tmp_path / "scans")
    _write_csv(tmp_path / "bad_distractor.csv", cols, [[SCAN, 0, "[77]", "x"]])
    with pytest.raises(ValueError, match="distractor id 77"):
        load_referit3d(tmp_path / "bad_distractor.csv", tmp_path / "scans")
    _write_csv(tmp_path / "bad_list.csv", cols, [[SCAN, 0, "[2, oops]", "x"]])
    with pytest.raises(ValueError, match="distractor_ids"):
        load_references(tmp_path / "bad_list.csv")
    _write_csv(tmp_path / "bad_id.csv", cols, [[SCAN, "zero", "[2]", "x"]])
    with pytest.raises(ValueError, match="target_id"):
        load_references(tmp_path / "bad_id.csv")
    ply = tmp_path / "scans" / SCAN / f"{SCAN}_vh_clean_2.ply"
    (tmp_path / "notply.ply").write_text("hello")
    with pytest.raises(ValueError, match="not a PLY"):
        read_ply_vertices(tmp_path / "notply.ply")
    ply.write_text(ply.read_text().replace("property uchar red\n", "property uchar reddish\n"))
    with pytest.raises(ValueError, match="red"):
        load_scan(tmp_path / "scans", SCAN)
