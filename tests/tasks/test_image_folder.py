"""Generic image classification: a folder tree of tiny PNGs (3 classes, RGB, mixed sizes) and
in-memory tensors train a few steps from Python and from the CLI with a YAML recipe."""
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from relformer.cli import main
from relformer.tasks import ClassificationTask, Trainer, parse_recipe
from relformer.tasks.images import load_image_folder, read_image
from relformer.train.logger import read_metrics

TINY = {"name": "vit_micro", "options": {"dim": 16, "depth": 1, "num_heads": 2, "patch_size": 4}}
CLASSES = ("circle", "square", "triangle")


def write_tree(root, per_class=(6, 3)):
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val"), per_class):
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                size = 20 if i % 2 else 24
                pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
                pixels[..., c] += 150  # the class is the bright channel
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def recipe_dict(root, out, **data):
    return {"task": "classification", "name": "shapes", "model": TINY, "device": "cpu", "epochs": 2,
            "batch_size": 6, "eval_batch_size": 4, "log_every": 1000, "out_dir": str(out),
            "data": {"source": "folder", "root": str(root), "eval_split": "val", "image_size": 16, **data}}


def test_the_folder_reader_resizes_and_keeps_the_class_order(tmp_path):
    root = write_tree(tmp_path / "shapes")
    images, labels, classes = load_image_folder(root, "train", image_size=16)
    assert images.shape == (18, 3, 16, 16) and classes == list(CLASSES)
    assert labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    assert 0 <= images.min() and images.max() <= 1
    brightest = images.mean((2, 3)).argmax(1)  # the resized images keep their colour
    assert torch.equal(brightest, labels)
    grey = read_image(root / "train" / "circle" / "0.png", channels=1)
    rgb = read_image(root / "train" / "circle" / "0.png").float()
    expected = rgb[0] * 0.299 + rgb[1] * 0.587 + rgb[2] * 0.114  # ITU-R 601 luma, as Pillow's "L"
    assert grey.shape == (1, 24, 24) and (grey[0].float() - expected).abs().max() <= 1
    with pytest.raises(ValueError, match="not a folder"):
        load_image_folder(root, "test")


def test_a_folder_tree_trains_from_python(tmp_path):
    root = write_tree(tmp_path / "shapes")
    task = ClassificationTask(parse_recipe(recipe_dict(root, tmp_path / "run")))
    trainer = Trainer(task=task)
    model = trainer.fit()
    assert model.head.out_features == 3 and task.classes == list(CLASSES)  # num_classes from the folders
    rows = read_metrics(trainer.run_dir / "metrics.csv")
    assert [r["kind"] for r in rows] == ["train", "eval"] * 2 and all(float(r["eval_samples"]) == 9 for r in rows[1::2])


def test_a_folder_tree_trains_from_the_cli_with_a_yaml_recipe(tmp_path, capsys):
    root = write_tree(tmp_path / "shapes")
    recipe = tmp_path / "shapes.yaml"
    recipe.write_text(yaml.safe_dump(recipe_dict(root, tmp_path / "run", channels=1, augment=True)))
    main(["train", str(recipe), "--set", "epochs=1"])
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert [r["kind"] for r in rows] == ["train", "eval"] and 0 <= float(rows[1]["eval_accuracy"]) <= 1
    assert "in_chans: 1" not in (tmp_path / "run" / "recipe.yaml").read_text()  # filled in, not written back


def test_in_memory_tensors_train(tmp_path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, 1, 8, 8, generator=g), torch.arange(24) % 4
    recipe = parse_recipe({**recipe_dict("", tmp_path / "run"), "data": {"source": "memory"}})
    task = ClassificationTask(recipe, train=(x, y), eval=(x[:8], y[:8]))
    model = Trainer(task=task, max_steps=3).fit()
    assert model.head.out_features == 4 and model.config.in_chans == 1 and model.config.image_size == 8
    with pytest.raises(ValueError, match="memory"):
        ClassificationTask(recipe)
