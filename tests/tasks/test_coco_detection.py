"""Detection from a COCO JSON + image folder with any number of classes (here 3, with arbitrary
category ids): the reader's boxes and ground truth, training from Python and from a YAML recipe."""
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from relformer.cli import main
from relformer.tasks import CocoDetectionTask, Trainer, parse_recipe
from relformer.tasks.coco_detection import read_coco
from relformer.train.logger import read_metrics

CATEGORIES = [{"id": 7, "name": "red"}, {"id": 3, "name": "green"}, {"id": 12, "name": "blue"}]
TINY = {"name": "detr_micro", "options": {"num_queries": 4, "encoder_layers": 1, "decoder_layers": 1}}


def write_coco(folder, n, seed):
    """``n`` images of 40 x 48 (H x W) with one or two coloured rectangles each."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    images, annotations = [], []
    for i in range(n):
        pixels = np.zeros((40, 48, 3), np.uint8)
        for _ in range(1 + i % 2):
            c = int(rng.integers(0, 3))
            x, y = int(rng.integers(0, 28)), int(rng.integers(0, 20))
            w, h = int(rng.integers(8, 20)), int(rng.integers(8, 20))
            pixels[y:y + h, x:x + w, c] = 255
            annotations.append({"id": len(annotations) + 1, "image_id": 100 + i, "category_id": CATEGORIES[c]["id"],
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        Image.fromarray(pixels).save(folder / "images" / f"im{i}.png")
        images.append({"id": 100 + i, "file_name": f"im{i}.png", "width": 48, "height": 40})
    (folder / "coco.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                  "categories": CATEGORIES}))
    return folder


def recipe_dict(tmp_path, out):
    train, val = write_coco(tmp_path / "train", 8, 0), write_coco(tmp_path / "val", 4, 1)
    return {"task": "coco_detection", "model": TINY, "device": "cpu", "epochs": 2, "batch_size": 4,
            "eval_batch_size": 4, "out_dir": str(out), "optim": {"warmup_epochs": 0},
            "data": {"train_json": str(train / "coco.json"), "train_images": str(train / "images"),
                     "eval_json": str(val / "coco.json"), "eval_images": str(val / "images"), "image_size": 32}}


def test_the_reader_keeps_boxes_relative_and_maps_categories(tmp_path):
    folder = write_coco(tmp_path / "d", 3, 0)
    data, ids, names = read_coco(str(folder / "coco.json"), str(folder / "images"), "train_json", image_size=32,
                                 channels=3)
    coco = json.loads((folder / "coco.json").read_text())
    assert ids == [3, 7, 12] and names == ["green", "red", "blue"] and data.images.shape == (3, 3, 32, 32)
    first = [a for a in coco["annotations"] if a["image_id"] == 100]
    x, y, w, h = first[0]["bbox"]
    expected = torch.tensor([(x + w / 2) / 48, (y + h / 2) / 40, w / 48, h / 40])
    torch.testing.assert_close(data.targets[0]["boxes"][0], expected)
    assert data.targets[0]["labels"].tolist() == [ids.index(first[0]["category_id"])]
    gt = data.coco["annotations"][0]
    assert gt["category_id"] == data.targets[0]["labels"][0] + 1 and gt["bbox"] == pytest.approx(
        [x * 32 / 48, y * 32 / 40, w * 32 / 48, h * 32 / 40])
    box = data.targets[0]["boxes"][0]  # the resized image is bright in its box's colour channel
    c = int(data.targets[0]["labels"][0])
    channel = [1, 0, 2][c]  # classes in id order: green (3), red (7), blue (12)
    cx, cy = int(box[0] * 32), int(box[1] * 32)
    assert data.images[0, channel, cy, cx] > 0.5


def test_coco_detection_trains_from_python_with_three_classes(tmp_path):
    task = CocoDetectionTask(parse_recipe(recipe_dict(tmp_path, tmp_path / "run")))
    trainer = Trainer(task=task)
    model = trainer.fit()
    assert model.config.num_classes == 3 and model.config.in_channels == 3
    evals = [r for r in read_metrics(trainer.run_dir / "metrics.csv") if r["kind"] == "eval"]
    assert len(evals) == 2 and all(float(r["eval_images"]) == 4 and 0 <= float(r["eval_AP"]) <= 1 for r in evals)


def test_coco_detection_trains_from_the_cli(tmp_path):
    recipe = tmp_path / "coco.yaml"
    recipe.write_text(yaml.safe_dump(recipe_dict(tmp_path, tmp_path / "run")))
    main(["train", str(recipe), "--set", "epochs=1", "--set", "data.channels=1"])
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert [r["kind"] for r in rows] == ["train", "eval"]
