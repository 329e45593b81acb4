"""Fashion-MNIST detection canvases from the real Debian Fashion-MNIST files (CI installs the
package, so nothing is skipped) and the COCO-mAP helper, against pycocotools and an independent
re-rendering of every item from the metadata in the COCO JSON."""
from __future__ import annotations

import contextlib
import io
import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import relformer.data.fashion_detection as fashion_detection
from relformer.data.fashion_detection import (CLASSES, CROWDED, THRESHOLD, FashionDetection, area_counts,
                                              build_fashion_crowded_detection, build_fashion_detection)
from relformer.tasks.coco import coco_evaluate, draw_detections
from relformer.data.fashion_mnist import load_fashion_mnist

SIZES = (40, 10, 10)
OCCLUSION = 0.3
FILES = [f"{split}.{ext}" for split in ("train", "val", "test") for ext in ("npz", "json")]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    return root, build_fashion_detection(root, sizes=SIZES, max_occlusion=OCCLUSION)


@pytest.fixture(scope="module")
def fmnist():
    return {f: tuple(t.numpy() for t in load_fashion_mnist(f)) for f in ("train", "test")}


def _folder(ds):
    return ds["train"].coco_json.parent


def _gt_as_detections(coco, shift=0.0):
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0,
             "bbox": [a["bbox"][0] + shift, a["bbox"][1] + shift, a["bbox"][2], a["bbox"][3]]}
            for a in coco["annotations"]]


def _same(a: dict, b: dict, tol: float = 0.0) -> bool:
    return a.keys() == b.keys() and all((math.isnan(a[k]) and math.isnan(b[k])) or abs(a[k] - b[k]) <= tol for k in a)


@pytest.mark.slow
def test_same_arguments_give_identical_files_and_other_seeds_do_not(built, tmp_path):
    _, first = built
    second = build_fashion_detection(tmp_path, sizes=SIZES, max_occlusion=OCCLUSION)
    assert _folder(first).name == _folder(second).name  # the folder name is a hash of the arguments
    for name in FILES:  # byte-identical files, npz included
        assert (_folder(first) / name).read_bytes() == (_folder(second) / name).read_bytes(), name
    for split in ("train", "val", "test"):
        assert torch.equal(first[split].images, second[split].images)
    other = build_fashion_detection(tmp_path, sizes=SIZES, max_occlusion=OCCLUSION, seed=1)
    assert _folder(other) != _folder(first)
    assert not torch.equal(other["train"].images, first["train"].images)


def test_cache_hit_does_not_regenerate_and_a_broken_file_is_rebuilt(built, tmp_path):
    root = tmp_path
    ds = build_fashion_detection(root, sizes=SIZES, max_occlusion=OCCLUSION)
    folder = _folder(ds)
    mtimes = {n: (folder / n).stat().st_mtime_ns for n in FILES}
    again = build_fashion_detection(root, sizes=SIZES, max_occlusion=OCCLUSION)
    assert {n: (folder / n).stat().st_mtime_ns for n in FILES} == mtimes
    assert torch.equal(again["val"].images, ds["val"].images)
    (folder / "val.npz").write_bytes((folder / "val.npz").read_bytes()[:100])  # truncated
    repaired = build_fashion_detection(root, sizes=SIZES, max_occlusion=OCCLUSION)
    assert torch.equal(repaired["val"].images, ds["val"].images)
    assert (folder / "train.npz").stat().st_mtime_ns == mtimes["train.npz"]  # only the broken split was redone
    assert not list(folder.glob(".*tmp*"))  # no temporary files left


def _check_rerender(ds, fmnist):
    """An independent twin of the renderer: resize each annotation's source image to its scale,
    paste it at paste_xy; its tight box is the JSON box, and the max of the pastes is the canvas."""
    for split, ds_split in ds.items():
        coco, C = ds_split.coco, ds_split.canvas
        images, labels = fmnist[coco["info"]["source_file"]]
        rebuilt = np.zeros((len(ds_split), C, C), dtype=np.uint8)
        for a in coco["annotations"]:
            s, (px, py) = a["scale"], a["paste_xy"]
            patch = F.interpolate(torch.from_numpy(images[a["source_index"]])[None, None].float(), size=(s, s),
                                  mode="bilinear", antialias=True).round().clamp(0, 255).to(torch.uint8)[0, 0].numpy()
            layer = np.zeros((C, C), dtype=np.uint8)
            layer[py:py + s, px:px + s] = patch  # raises if the patch were not fully inside the canvas
            ys, xs = np.nonzero(layer > THRESHOLD)
            x, y, w, h = a["bbox"]
            assert [x, y, w, h] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]  # tight
            assert 0 <= x and 0 <= y and x + w <= C and y + h <= C and w > 0 and h > 0
            assert a["area"] == w * h and a["iscrowd"] == 0 and a["category_id"] == labels[a["source_index"]] + 1
            canvas = ds_split.images[a["image_id"] - 1].numpy()
            box = canvas[y:y + h, x:x + w]
            for edge in (box[0], box[-1], box[:, 0], box[:, -1]):  # every border row / column has a bright pixel
                assert edge.max() > THRESHOLD
            np.maximum(rebuilt[a["image_id"] - 1], layer, out=rebuilt[a["image_id"] - 1])
        assert np.array_equal(rebuilt, ds_split.images.numpy()), split


def test_every_item_rerenders_exactly_from_its_metadata(built, fmnist):
    _check_rerender(built[1], fmnist)


def test_targets_are_normalised_cxcywh_of_the_coco_boxes(built):
    _, ds = built
    val = ds["val"]
    by_image = {}
    for a in val.coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    batch_images, batch_targets = val.__getitems__(list(range(len(val))))
    assert batch_images.shape == (len(val), 1, 128, 128) and batch_images.dtype == torch.float32
    assert 0.0 <= batch_images.min() and batch_images.max() <= 1.0 and batch_images.max() > 0.9
    for i in range(len(val)):
        image, target = val[i]
        assert torch.equal(image, batch_images[i])
        assert target["image_id"] == i + 1 == batch_targets[i]["image_id"]
        assert torch.equal(target["boxes"], batch_targets[i]["boxes"])
        anns = by_image.get(i + 1, [])
        assert target["labels"].dtype == torch.int64 and target["boxes"].dtype == torch.float32
        assert target["labels"].tolist() == [a["category_id"] - 1 for a in anns]
        cx, cy, w, h = (target["boxes"].double() * val.canvas).unbind(-1)
        xywh = torch.stack([cx - w / 2, cy - h / 2, w, h], dim=-1)
        assert torch.allclose(xywh, torch.tensor([a["bbox"] for a in anns], dtype=torch.float64).reshape(-1, 4),
                              atol=1e-4)
        assert ((target["boxes"] >= 0) & (target["boxes"] <= 1)).all()
    loader = torch.utils.data.DataLoader(val, batch_size=4, collate_fn=FashionDetection.collate)
    images, targets = next(iter(loader))
    assert images.shape == (4, 1, 128, 128) and [t["image_id"] for t in targets] == [1, 2, 3, 4]
    assert FashionDetection.collate([val[0], val[1]])[0].shape == (2, 1, 128, 128)
    with pytest.raises(IndexError):
        val[len(val)]
    assert val.classes == CLASSES and len(CLASSES) == 10 and CLASSES[9] == "Ankle boot"


def test_object_counts(built, tmp_path):
    """A canvas draws k in [min_objects, max_objects] items; an item is dropped only when no position
    among PLACEMENT_TRIES keeps the occlusion limit (or it has no pixel above the threshold)."""
    _, ds = built
    for split in ds.values():
        info, placed = split.coco["info"], np.bincount([a["image_id"] for a in split.coco["annotations"]],
                                                       minlength=len(split) + 1)[1:]
        drawn = np.array([im["num_drawn"] for im in split.coco["images"]])
        assert ((1 <= drawn) & (drawn <= 8)).all() and (placed <= drawn).all() and (placed >= 1).all()
        assert (drawn - placed).sum() == info["dropped_no_room"] + info["dropped_blank"]
        assert info["num_drawn"] == drawn.sum() and info["num_placed"] == placed.sum()
    free = build_fashion_detection(tmp_path, sizes=(20, 0, 0), min_objects=2, max_objects=3, max_size=24,
                                   max_occlusion=1.0)["train"]  # no limit: nothing is dropped
    counts = np.bincount([a["image_id"] for a in free.coco["annotations"]], minlength=21)[1:]
    assert counts.tolist() == [im["num_drawn"] for im in free.coco["images"]] and set(counts) <= {2, 3}
    assert len(build_fashion_detection(tmp_path, sizes=(20, 0, 0), max_occlusion=1.0)["val"]) == 0


def _check_occlusion(ds, limit):
    for split in ds.values():
        boxes = {}
        for a in split.coco["annotations"]:
            boxes.setdefault(a["image_id"], []).append(a["bbox"])
        for image_boxes in boxes.values():
            masks = np.zeros((len(image_boxes), split.canvas, split.canvas), dtype=bool)
            for m, (x, y, w, h) in zip(masks, image_boxes):
                m[y:y + h, x:x + w] = True
            for j, m in enumerate(masks):
                others = np.delete(masks, j, axis=0).any(0)
                assert (m & others).sum() <= limit * m.sum() + 1e-9


def test_occlusion_limit_between_boxes(built):
    """No box has more than max_occlusion of its area under the union of the other boxes (so no pair
    overlaps by more than that fraction of either box)."""
    _check_occlusion(built[1], OCCLUSION)


def _check_disjoint_sources(ds):
    src = {s: [a["source_index"] for a in d.coco["annotations"]] for s, d in ds.items()}
    assert all(0 <= i < 50000 for i in src["train"]) and all(50000 <= i < 60000 for i in src["val"])
    assert all(0 <= i < 10000 for i in src["test"]) and ds["test"].coco["info"]["source_file"] == "test"
    assert ds["train"].coco["info"]["source_file"] == ds["val"].coco["info"]["source_file"] == "train"
    assert not set(src["train"]) & set(src["val"])
    assert all(len(set(v)) == len(v) for v in src.values())  # no repeat before a pool is used up


def test_source_images_are_disjoint_between_splits(built):
    _check_disjoint_sources(built[1])


def test_coco_json_loads_in_pycocotools(built):
    from pycocotools.coco import COCO
    _, ds = built
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(ds["val"].coco_json))
    assert sorted(coco.getImgIds()) == list(range(1, 11)) and coco.getCatIds() == list(range(1, 11))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
    assert len(coco.getAnnIds()) == len(ds["val"].coco["annotations"])
    first = json.loads(ds["val"].coco_json.read_text())["images"][0]
    assert first == {"id": 1, "width": 128, "height": 128, "file_name": "val.npz#0", "num_drawn": first["num_drawn"]}


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
def test_coco_evaluate_perfect_shifted_and_empty(built, backend):
    _, ds = built
    val = ds["val"]
    perfect = coco_evaluate(val.coco_json, _gt_as_detections(val.coco), backend=backend)
    assert list(perfect) == ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    assert perfect["AP"] == perfect["AP50"] == perfect["AP75"] == 1.0
    assert math.isnan(perfect["APl"])  # no box reaches 96 x 96: COCO's -1, reported as nan
    shifted = coco_evaluate(val.coco, _gt_as_detections(val.coco, shift=4.0), backend=backend)
    assert shifted["AP"] < 0.8 and shifted["AP50"] > shifted["AP75"]
    empty = coco_evaluate(val.coco_json, [], backend=backend)
    assert empty["AP"] == empty["AP50"] == empty["AP75"] == empty["APm"] == 0.0 and math.isnan(empty["APl"])
    # the model-side path: normalised cxcywh targets and class indices back to COCO results
    images, targets = val.__getitems__(range(len(val)))
    from relformer.models.detection.set_prediction import postprocess, to_coco_results

    for t in targets:  # one-hot "logits" (no-object column last) that reproduce the targets
        t["logits"] = torch.nn.functional.one_hot(t["labels"], len(CLASSES) + 1).float() * 50
    results = [postprocess({"logits": t["logits"][None], "pred_boxes": t["boxes"][None]},
                           [[val.canvas, val.canvas]])[0] for t in targets]
    dets = to_coco_results(results, [t["image_id"] for t in targets])
    assert coco_evaluate(val.coco_json, dets, backend=backend)["AP"] == pytest.approx(1.0)
    assert val.coco["annotations"][0]["category_id"] == dets[0]["category_id"]


def test_backends_agree_on_random_detections(built):
    _, ds = built
    coco = ds["train"].coco
    rng = np.random.default_rng(0)
    dets = []
    for a in coco["annotations"]:
        for _ in range(2):
            x, y, w, h = np.asarray(a["bbox"], dtype=float) + rng.normal(0, 3, 4)
            dets.append({"image_id": a["image_id"], "score": float(rng.random()), "bbox": [x, y, abs(w), abs(h)],
                         "category_id": a["category_id"] if rng.random() < 0.8 else int(rng.integers(1, 11))})
    for image_id in rng.integers(1, len(ds["train"]) + 1, 30).tolist():  # false positives
        x, y = rng.uniform(0, 100, 2)
        dets.append({"image_id": image_id, "category_id": int(rng.integers(1, 11)), "score": float(rng.random()),
                     "bbox": [x, y, *rng.uniform(8, 40, 2)]})
    fast = coco_evaluate(coco, dets)
    slow = coco_evaluate(coco, dets, backend="pycocotools")
    assert _same(fast, slow, tol=1e-6) and 0.1 < fast["AP"] < 0.9, (fast, slow)


def test_bad_arguments_name_themselves(built):
    root, _ = built
    cases = [(dict(min_objects=5, max_objects=3), "min_objects"), (dict(max_size=200), "max_size"),
             (dict(sizes=(10, -1, 5)), "sizes"), (dict(sizes=(10, 5)), "sizes"), (dict(canvas=0), "canvas"),
             (dict(min_size=0), "min_size"), (dict(max_occlusion=1.5), "max_occlusion"), (dict(seed=-1), "seed")]
    for kwargs, name in cases:
        with pytest.raises(ValueError, match=name):
            build_fashion_detection(root, **kwargs)
    coco = built[1]["val"].coco
    with pytest.raises(ValueError, match="category_id"):
        coco_evaluate(coco, [{"image_id": 1, "category_id": 0, "bbox": [0, 0, 5, 5], "score": 1.0}])
    with pytest.raises(ValueError, match="image_id"):
        coco_evaluate(coco, [{"image_id": 999, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 1.0}])
    with pytest.raises(ValueError, match="backend"):
        coco_evaluate(coco, [], backend="detectron")


def test_draw_detections(built):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    _, ds = built
    image, target = ds["val"][0]
    cx, cy, w, h = (target["boxes"] * 128).unbind(-1)
    fig, ax = plt.subplots()
    try:
        draw_detections(ax, image, torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1),
                        target["labels"], scores=torch.ones(len(target["labels"])))
        assert len(ax.patches) == len(target["labels"]) and ax.texts[0].get_text().endswith("1.00")
    finally:
        plt.close(fig)


# ---- the crowded multi-scale variant -------------------------------------------------------------

CROWDED_TEST_SIZES = (24, 8, 8)


@pytest.fixture(scope="module")
def crowded(tmp_path_factory):
    return build_fashion_crowded_detection(tmp_path_factory.mktemp("crowded"), sizes=CROWDED_TEST_SIZES)


@pytest.mark.slow
def test_crowded_is_deterministic_and_cached(crowded, tmp_path):
    again = build_fashion_crowded_detection(tmp_path, sizes=CROWDED_TEST_SIZES)
    assert _folder(again).name == _folder(crowded).name
    for name in FILES:
        assert (_folder(again) / name).read_bytes() == (_folder(crowded) / name).read_bytes(), name
    mtimes = {n: (_folder(again) / n).stat().st_mtime_ns for n in FILES}
    hit = build_fashion_crowded_detection(tmp_path, sizes=CROWDED_TEST_SIZES)  # loaded, not regenerated
    assert {n: (_folder(hit) / n).stat().st_mtime_ns for n in FILES} == mtimes
    assert torch.equal(hit["test"].images, crowded["test"].images)
    # the same arguments through the plain builder are the same cache entry
    plain = build_fashion_detection(tmp_path, sizes=CROWDED_TEST_SIZES, **CROWDED)
    assert _folder(plain) == _folder(hit)
    assert _folder(build_fashion_crowded_detection(tmp_path, sizes=CROWDED_TEST_SIZES, seed=1)) != _folder(hit)
    with pytest.raises(TypeError, match="min_sise"):
        build_fashion_crowded_detection(tmp_path, sizes=CROWDED_TEST_SIZES, min_sise=3)


def test_crowded_canvases_boxes_and_counts(crowded, fmnist):
    """256 x 256 canvases, 4-20 items drawn per canvas of 12-128 px, every box tight, inside the canvas
    and within the occlusion limit (re-rendered independently from the JSON's metadata)."""
    for split, ds in crowded.items():
        info = ds.coco["info"]
        assert info["arguments"] | dict(CROWDED) == info["arguments"]  # the variant's arguments were used
        assert ds.images.shape == (CROWDED_TEST_SIZES[("train", "val", "test").index(split)], 256, 256)
        drawn = np.array([im["num_drawn"] for im in ds.coco["images"]])
        assert ((4 <= drawn) & (drawn <= 20)).all()
        scales = np.array([a["scale"] for a in ds.coco["annotations"]])
        assert scales.min() >= 12 and scales.max() <= 128
        placed = np.bincount([a["image_id"] for a in ds.coco["annotations"]], minlength=len(ds) + 1)[1:]
        assert (placed <= drawn).all() and (drawn - placed).sum() == info["dropped_no_room"] + info["dropped_blank"]
    _check_rerender(crowded, fmnist)
    _check_occlusion(crowded, CROWDED["max_occlusion"])
    _check_disjoint_sources(crowded)


def test_area_counts_use_cocoevals_ranges(crowded):
    """area_counts against pycocotools' own area ranges (Params.areaRng, bounds inclusive as in
    COCOeval.evaluateImg), on the boxes and on boxes placed exactly on the bounds."""
    from pycocotools.cocoeval import Params

    params = Params(iouType="bbox")
    ranges = dict(zip(params.areaRngLbl, params.areaRng))
    edge = {"annotations": [{"area": v} for v in (1.0, 32.0 ** 2, 50.0 ** 2, 96.0 ** 2, 100.0 ** 2)]}
    for coco in (crowded["train"].coco, edge):
        areas = np.array([a["area"] for a in coco["annotations"]], dtype=float)
        expected = {name: int(((areas >= ranges[name][0]) & (areas <= ranges[name][1])).sum())
                    for name in ("small", "medium", "large")}
        assert area_counts(coco) == expected
    assert area_counts(edge) == {"small": 2, "medium": 3, "large": 2}


def test_crowded_coco_json_in_pycocotools_has_every_area_range(crowded):
    """The JSON loads in pycocotools, and its ground truth as detections scores AP = APs = APm = APl = 1
    (each COCO area range holds boxes, unlike the 128 x 128 canvases' APl)."""
    from pycocotools.coco import COCO
    ds = crowded["test"]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(ds.coco_json))
    assert sorted(coco.getImgIds()) == list(range(1, len(ds) + 1)) and len(coco.getAnnIds()) == len(
        ds.coco["annotations"])
    assert json.loads(ds.coco_json.read_text())["images"][0]["width"] == 256
    perfect = coco_evaluate(ds.coco_json, _gt_as_detections(ds.coco), backend="pycocotools")
    assert all(perfect[k] == 1.0 for k in ("AP", "AP75", "APs", "APm", "APl")), perfect


def _dataset_card() -> dict[str, list[int]]:
    """The table in the module docstring: split -> [canvases, boxes, small, medium, large, dropped]."""
    rows = re.findall(r"^\s+(val|test)((?:\s+\d+){6})\s*$", fashion_detection.__doc__, flags=re.M)
    return {split: [int(v) for v in numbers.split()] for split, numbers in rows}


@pytest.mark.slow
def test_dataset_card_in_the_docstring_matches_the_default_crowded_build(tmp_path):
    """The card's numbers are those of the default crowded build (its val and test splits: with
    train's size set to 0 they are the same canvases, since each split has its own random stream)."""
    card = _dataset_card()
    assert set(card) == {"val", "test"}
    sizes = (0, *fashion_detection.CROWDED_SIZES[1:])
    data = build_fashion_crowded_detection(tmp_path, sizes=sizes)
    for split in ("val", "test"):
        ds, counts = data[split], area_counts(data[split].coco)
        info = ds.coco["info"]
        assert card[split] == [len(ds), info["num_placed"], counts["small"], counts["medium"], counts["large"],
                               info["dropped_no_room"] + info["dropped_blank"]], split
        assert min(counts.values()) > 0
