"""RT-DETR and Rank-DETR through the detection tasks: the eight recipes (plain and crowded canvases; plain
RT-DETR, all Rank-DETR parts, architecture only, loss + cost only) build the model their name says; a
sigmoid-class model is post-processed as HF ``RTDetrImageProcessorPil.post_process_object_detection`` (the
same scores, labels and boxes, exactly, for its top Q); each recipe trains a few steps through the
``labels=`` path (finite losses, the model's own terms logged) and evaluates every val and test canvas."""
from __future__ import annotations

import csv
import math

import pytest
import torch
from transformers.models.rt_detr.image_processing_pil_rt_detr import RTDetrImageProcessorPil  # (the other one needs torchvision)

from relformer.models.detection import RTDETR, RTDETROutput
from relformer.tasks import resolve_recipe, train
from relformer.tasks.detection import DetectionTask

RECIPES = [f"{stem}-fashion{tail}" for tail in ("", "-crowded")
           for stem in ("rtdetr", "rank-rtdetr", "rank-rtdetr-arch", "rank-rtdetr-loss")]
FLAGS = {"rtdetr": (False, False, False), "rank-rtdetr": (True, True, True), "rank-rtdetr-arch": (True, False, False),
         "rank-rtdetr-loss": (False, True, True)}


@pytest.mark.parametrize("name", RECIPES)
def test_rtdetr_recipes_validate_and_build(name):
    recipe = resolve_recipe(name)
    recipe.validate()
    crowded = name.endswith("-crowded")
    assert recipe.task == ("fashion_crowded_detection" if crowded else "detection") and recipe.max_minutes == 30
    model = recipe.model.build()
    c = model.config
    assert isinstance(model, RTDETR) and c.num_queries == (100 if crowded else 50) and c.num_denoising > 0
    assert (c.rank_architecture, c.rank_loss, c.high_order_cost) == FLAGS[name.split("-fashion")[0]]
    assert c.in_channels == 1 and c.num_classes == 10 and c.decoder_layers == 3 and c.encoder_dim == 128


def test_sigmoid_models_are_postprocessed_as_hf_rtdetr():
    task = DetectionTask(resolve_recipe("rtdetr-fashion"))
    g = torch.Generator().manual_seed(0)
    B, Q, K = 3, 50, 10
    out = RTDETROutput(logits=torch.randn(B, Q, K, generator=g) * 3, pred_boxes=torch.rand(B, Q, 4, generator=g))
    images = torch.zeros(B, 1, 96, 128)
    ours = task.predict(lambda x: out, images)            # the task's eval path: top 100 over Q x K
    theirs = RTDetrImageProcessorPil().post_process_object_detection(out, threshold=0.0, target_sizes=[(96, 128)] * B)
    for a, b in zip(ours, theirs):
        assert len(a["scores"]) == 100 and len(b["scores"]) == Q
        torch.testing.assert_close(a["scores"][:Q], b["scores"], atol=0, rtol=0)
        assert torch.equal(a["labels"][:Q], b["labels"])
        torch.testing.assert_close(a["boxes"][:Q], b["boxes"], atol=1e-5, rtol=0)
        assert (a["scores"].diff() <= 0).all()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("canvases")


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_rtdetr_recipes_train_and_evaluate(name, cache, tmp_path):
    crowded = name.endswith("-crowded")
    overrides = [f"data.root={cache}", "data.sizes=[16, 4, 4]", "max_steps=3", "epochs=1", "batch_size=4",
                 "eval_batch_size=4", f"out_dir={tmp_path / name}", "checkpoint_every=0", "log_every=1",
                 "optim.warmup_epochs=0"]
    train(resolve_recipe(name, overrides))
    rows = list(csv.DictReader(open(tmp_path / name / "metrics.csv")))
    steps = [r for r in rows if r["kind"] == "train"]
    term = "train_loss_giou_aware" if FLAGS[name.split("-fashion")[0]][1] else "train_loss_vfl"
    assert len(steps) == 3 and all(math.isfinite(float(r["train_loss"])) and float(r[term]) > 0 for r in steps)
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [float(r["eval_val_images"]) for r in evals] == [4.0] and [float(r["eval_test_images"]) for r in evals] == [4.0]
    for key in ("eval_val_AP", "eval_test_AP75", *(("eval_test_APl",) if crowded else ())):
        assert 0.0 <= float(evals[0][key]) <= 1.0
