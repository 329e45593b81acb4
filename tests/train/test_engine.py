"""The engine's parts (decay groups, schedule, sample order, eval sharding, augmentation) and a
smoke run on real Fashion-MNIST images that checks every file a run leaves behind."""
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DistributedSampler

from relformer.models import create_model
from relformer.tasks.classification import random_crop_flip
from relformer.tasks import resolve_recipe, train
from relformer.train.engine import WarmupCosine, _epoch_batches, _eval_batches, param_groups, step_seed
from relformer.train.logger import read_metrics

from .runs import TINY_VIT


def test_no_weight_decay_on_biases_norms_tokens_and_positions():
    model = create_model("vit_micro", dim=32, depth=1, num_heads=2)
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    undecayed = {names[id(p)] for p in no_decay["params"]}
    assert {"cls_token", "pos_embed", "patch_embed.bias", "encoder.layers.0.norm1.weight"} <= undecayed
    assert {names[id(p)] for p in decay["params"]} == {"patch_embed.weight", "encoder.layers.0.attn.qkv.weight",
                                                        "encoder.layers.0.attn.proj.weight", "encoder.layers.0.mlp.fc1.weight",
                                                        "encoder.layers.0.mlp.fc2.weight", "head.weight"}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    swin = create_model("swin_micro")
    assert not any("bias_table" in names for names, p in swin.named_parameters()
                   if any(p is q for q in param_groups(swin, 0.05)[0]["params"]))


def test_warmup_then_cosine_to_min():
    f = WarmupCosine(warmup_steps=4, total_steps=20, min_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(12) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(20) == pytest.approx(0.1) and f(25) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(4, 25))


def test_two_ranks_see_the_global_batches_of_one():
    data = list(range(200))
    one = _epoch_batches(DistributedSampler(data, num_replicas=1, rank=0, seed=3, drop_last=True), 5, 32)
    two = [_epoch_batches(DistributedSampler(data, num_replicas=2, rank=r, seed=3, drop_last=True), 5, 16)
           for r in range(2)]
    assert len(one) == len(two[0]) == len(two[1]) == 6  # full batches only
    assert all(sorted(a + b) == sorted(g) for g, a, b in zip(one, *two))
    other_epoch = _epoch_batches(DistributedSampler(data, num_replicas=1, rank=0, seed=3, drop_last=True), 6, 32)
    assert other_epoch != one


@pytest.mark.parametrize("n, world, batch", [(257, 1, 64), (257, 2, 64), (10, 3, 4), (5, 4, 100)])
def test_eval_shards_cover_every_sample_once(n, world, batch):
    seen = [i for rank in range(world) for b in _eval_batches(n, rank, world, batch) for i in b]
    assert sorted(seen) == list(range(n))
    assert all(len(b) <= batch for rank in range(world) for b in _eval_batches(n, rank, world, batch))


def test_augmentation_is_a_function_of_the_generator():
    images = torch.randn(64, 1, 28, 28)
    a = random_crop_flip(images, torch.Generator().manual_seed(step_seed(0, 7, 0, 1)), fill=-1.0)
    b = random_crop_flip(images, torch.Generator().manual_seed(step_seed(0, 7, 0, 1)), fill=-1.0)
    c = random_crop_flip(images, torch.Generator().manual_seed(step_seed(0, 8, 0, 1)), fill=-1.0)
    assert a.shape == images.shape and torch.equal(a, b) and not torch.equal(a, c)
    for i in range(64):  # each output is a shifted (maybe mirrored) window of the padded input
        padded = nn.functional.pad(images[i], (2,) * 4, value=-1.0)
        windows = [padded[:, y:y + 28, x:x + 28] for y in range(5) for x in range(5)]
        assert any(torch.equal(a[i], w) or torch.equal(a[i], w.flip(-1)) for w in windows)
    assert len({step_seed(0, s, r) for s in range(100) for r in range(4)}) == 400


@pytest.mark.slow
def test_smoke_on_fashion_mnist_writes_the_whole_run(tmp_path):
    sets = [*TINY_VIT, "data.train_subset=1000", "data.eval_subset=257", "eval_batch_size=64", "epochs=2",
            "batch_size=100", "log_every=3", "checkpoint_every=4", f"out_dir={tmp_path}"]
    run_dir = train(resolve_recipe("vit-fashion-mnist", sets))
    rows = read_metrics(run_dir / "metrics.csv")
    # every log_every steps, and at each epoch's end (steps 10, 20) whatever log_every says
    assert [int(r["step"]) for r in rows if r["kind"] == "train"] == [3, 6, 9, 10, 12, 15, 18, 20]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [(int(r["epoch"]), int(r["step"])) for r in evals] == [(1, 10), (2, 20)]
    assert all(float(r["eval_samples"]) == 257 for r in evals)  # every sample of 257, batches of 64
    assert all(0 <= float(r["eval_accuracy"]) <= 1 for r in evals)
    assert all(0 < float(r["train_loss"]) < 5 and float(r["lr"]) > 0 for r in rows if r["kind"] == "train")

    report = (run_dir / "report.md").read_text()
    assert "| epoch | step | last lr | train loss | train accuracy | eval accuracy | eval loss | eval samples |" in report
    assert "## Final evaluation metrics (epoch 2)" in report and "first 257 images of the Fashion-MNIST test split" in report
    for png in ("loss.png", "accuracy.png", "attention.png"):
        assert (run_dir / "plots" / png).stat().st_size > 1000 and f"(plots/{png})" in report
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert (run_dir / "recipe.yaml").is_file() and resolve_recipe(str(run_dir / "recipe.yaml")).epochs == 2
    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "step-00000020"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best", "latest", "step-00000016", "step-00000020"]

    with pytest.raises(ValueError, match="already holds checkpoints"):  # no silent clobbering
        train(resolve_recipe("vit-fashion-mnist", sets))


def test_bf16_autocast_trains(tmp_path):
    sets = [*TINY_VIT, "amp=bf16", "data.train_subset=256", "data.eval_subset=100", "batch_size=64", "epochs=1",
            "log_every=2", f"out_dir={tmp_path}"]
    run_dir = train(resolve_recipe("vit-fashion-mnist", sets))
    rows = read_metrics(run_dir / "metrics.csv")
    assert all(math.isfinite(float(r["train_loss"])) for r in rows if r["kind"] == "train")
    assert [float(r["eval_samples"]) for r in rows if r["kind"] == "eval"] == [100.0]
    assert "bf16" in (run_dir / "report.md").read_text()
