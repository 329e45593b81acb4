"""The generated benchmark: written in ReferIt3D's layout and read back through the real-data loader
unchanged, splits of disjoint scenes, cached under cache_root() and rebuilt when the generator version or
arguments change; the dataset and collate pack scenes (offsets, no padding) and the counts per subset."""
import json

import numpy as np
import pytest
import torch

import relformer

from relformer.data.grounding import (CLASSES, STRUCTURE, ReferringDataset, benchmark_dir, build_benchmark, collate,
                                      generate_room, generate_utterances, verify)
from relformer.data.grounding import dataset as dataset_module
from relformer.data.grounding.dataset import scene_seed
from relformer.relations import Pair3DBias

SMALL = dict(num_scenes=(12, 3, 3), seed=1)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    return root, build_benchmark(root=root, **SMALL)


def test_layout_and_read_back_equals_the_generator(built):
    root, folder = built
    assert folder == benchmark_dir(1, root)
    assert (folder / "sr3d_gen.csv").exists() and (folder / "meta.json").exists()
    for split, n in zip(("train", "val", "test"), SMALL["num_scenes"]):
        ds = ReferringDataset.generated(split, root=root, **SMALL)
        assert len(ds.scenes) <= n and ds.class_names == CLASSES + STRUCTURE
        for i in range(n):
            s = scene_seed(1, split, i)
            want = generate_room(s)
            if want.scan_id not in ds.scenes:  # a room without any utterance is not read
                assert not generate_utterances(want, s)
                continue
            got = ds.scenes[want.scan_id]
            for field in ("object_ids", "centres", "sizes", "fronts", "points", "point_offsets"):
                assert np.array_equal(getattr(got, field), getattr(want, field)), field
            assert got.classes == want.classes
            expected = [(u.target_id, u.anchor_ids, u.text) for u in generate_utterances(want, s)]
            assert [(u.target_id, u.anchor_ids, u.text) for u in ds.utterances if u.scan_id == want.scan_id] == expected
        assert all(verify(ds.scenes[u.scan_id], u) is None for u in ds.utterances)


def test_splits_hold_disjoint_scenes(built):
    root, _ = built
    splits = {s: ReferringDataset.generated(s, root=root, **SMALL) for s in ("train", "val", "test")}
    ids = [set(ds.scenes) for ds in splits.values()]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    clouds = {s.points.tobytes() for ds in splits.values() for s in ds.scenes.values()}
    assert len(clouds) == sum(map(len, ids))


def test_cached_and_rebuilt_when_version_or_arguments_change(tmp_path, monkeypatch):
    monkeypatch.setenv("RELFORMER_CACHE", str(tmp_path))
    args = dict(num_scenes=(2, 1, 1), seed=3)
    folder = build_benchmark(**args)
    assert folder == tmp_path / "sr3d-gen-seed3"
    csv_file = folder / "sr3d_gen.csv"
    stamp = csv_file.stat().st_mtime_ns
    assert build_benchmark(**args) == folder and csv_file.stat().st_mtime_ns == stamp  # cached
    build_benchmark(num_scenes=(1, 1, 1), seed=3)
    assert len(list((folder / "scans").iterdir())) == 3  # rebuilt: the old train scene is gone
    assert json.loads((folder / "meta.json").read_text())["num_scenes"] == [1, 1, 1]
    stamp = csv_file.stat().st_mtime_ns
    monkeypatch.setattr(dataset_module, "GENERATOR_VERSION", "test-version")
    build_benchmark(num_scenes=(1, 1, 1), seed=3)
    assert json.loads((folder / "meta.json").read_text())["version"] == "test-version"
    assert csv_file.stat().st_mtime_ns != stamp


def test_items_and_collate_pack_without_padding(built):
    root, _ = built
    ds = ReferringDataset.generated("train", root=root, **SMALL)
    items = [ds[i] for i in range(min(len(ds), 6))]
    batch = collate(items)
    assert batch.num_scenes == len(items)
    assert batch.points.shape[0] == sum(it["points"].shape[0] for it in items)  # no padding
    assert batch.object_offsets.tolist() == np.cumsum([0] + [it["centres"].shape[0] for it in items]).tolist()
    for b, it in enumerate(items):
        o0, o1 = batch.object_offsets[b].item(), batch.object_offsets[b + 1].item()
        assert torch.equal(batch.centres[o0:o1], it["centres"]) and torch.equal(batch.classes[o0:o1], it["classes"])
        p0, p1 = batch.point_offsets[o0].item(), batch.point_offsets[o1].item()
        assert torch.equal(batch.points[p0:p1], it["points"])
        t = batch.target_index()[b]
        assert batch.classes[t] == it["classes"][it["target"]]
        assert (batch.classes[o0:o1][batch.distractor_mask[o0:o1]] == batch.classes[t]).all()
        assert batch.distractor_mask[o0:o1].sum() >= 1 and not batch.distractor_mask[t]
        assert (batch.scene_ids()[o0:o1] == b).all()
    per_object = batch.object_points()
    assert per_object.num_items == batch.centres.shape[0]
    with pytest.raises(ValueError, match="empty"):
        collate([])


def test_summary_counts_the_subsets(built):
    root, _ = built
    ds = ReferringDataset.generated("train", root=root, **SMALL)
    counts = ds.summary()
    assert counts["total"] == len(ds) > 0
    assert counts["hard"] == sum(u.hard for u in ds.utterances)
    assert counts["view_dependent"] == sum(u.view_dependent for u in ds.utterances) > 0
    assert sum(v for k, v in counts.items() if k not in ("total", "scenes", "hard", "view_dependent")) == len(ds)
    for key in ("closest", "farthest", "between"):
        assert counts.get(key, 0) > 0, counts


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_scenes"):
        build_benchmark(num_scenes=(1, 0, 1), root=tmp_path)
    with pytest.raises(ValueError, match="split"):
        ReferringDataset.generated("dev", root=tmp_path)


def test_pair_relation_attends_within_each_scene(built):
    root, _ = built
    ds = ReferringDataset.generated("train", root=root, **SMALL)
    batch = collate([ds[i] for i in range(3)])
    rel = batch.pair_relation(Pair3DBias(2, hidden=8))
    N = batch.centres.shape[0]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, N, 8, generator=g) for _ in range(3))
    with torch.no_grad():
        out = relformer.attend(q, k, v, rel, backend="sdpa")
        for b in range(batch.num_scenes):
            o0, o1 = batch.object_offsets[b].item(), batch.object_offsets[b + 1].item()
            alone = rel.bind(centres=batch.centres[None, o0:o1], sizes=batch.sizes[None, o0:o1], segment_ids=None)
            ref = relformer.attend(q[:, :, o0:o1], k[:, :, o0:o1], v[:, :, o0:o1], alone, backend="eager")
            torch.testing.assert_close(out[:, :, o0:o1], ref, atol=1e-5, rtol=0)
