"""The temporal link-prediction task on a real UCI prefix: training batches in time order with fresh
random negatives, a short run beats the untrained model, the test table has every cell, EdgeBank's
table through the same evaluation equals a hand-run EdgeBank, bad recipe values name their key, and
the recipe runs from the command line."""
from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from torch import nn

from relformer.cli import main
from relformer.data.temporal import STRATEGIES, chronological_split, load_uci, split_negatives
from relformer.models.temporal import EdgeBank, TemporalLinkPredictor
from relformer.tasks import build_task, resolve_recipe
from relformer.tasks.temporal import evaluate_edgebank
from relformer.tasks.temporal_metrics import link_prediction_metrics
from relformer.train import engine
from relformer.train.recipe import RecipeError

PREFIX = 3000
SMALL = ["model.options.num_neighbors=7", "model.options.channel_dim=16", "model.options.time_dim=16",
         "model.options.output_dim=32", "data.mrr_events=10", "data.test_mrr_events=10", "max_minutes=null",
         f"data.prefix={PREFIX}", "optim.lr=1e-3", "optim.min_lr=1e-3", "checkpoint_every=0"]
CELLS = [f"{setting}_{s}_{m}" for setting in ("transductive", "inductive") for s in STRATEGIES for m in ("ap", "auc")]


@pytest.mark.parametrize("override, key", [
    ("data.dataset=ucii", "data.dataset"), ("data.neighbors=0", "data.neighbors"),
    ("data.setting=both", "data.setting"),
    ("data.prefix=3", "data.prefix"), ("data.mrr_negatives=0", "data.mrr_negatives")])
def test_bad_recipe_values_name_the_key(override, key):
    with pytest.raises(RecipeError, match=key.replace(".", r"\.")) as e:
        resolve_recipe("dygformer-uci", [override]).validate()
    if key == "data.dataset":
        assert "did you mean 'uci'" in str(e.value)


@pytest.mark.parametrize("name", ["dygformer-uci", "dygformer-hospital", "dygformer-movielens"])
def test_recipes_validate_within_the_budget(name):
    recipe = resolve_recipe(name)
    recipe.validate()
    assert recipe.task == "temporal_link" and recipe.batch_size == 200 and recipe.max_minutes <= 30


@pytest.mark.slow
def test_a_short_run_learns_in_time_order_and_writes_the_test_table(tmp_path):
    recipe = resolve_recipe("dygformer-uci", [*SMALL, "epochs=2", f"out_dir={tmp_path / 'run'}"])
    task = build_task(recipe)
    torch.manual_seed(recipe.seed)  # the engine's seed before build_model: the untrained twin of the run's model
    untrained = task.build_model().eval()
    with torch.no_grad():
        val = task.eval_dataset()
        sums = task.eval_step(untrained, val.__getitems__(range(len(val))))
        ap_untrained = task.metrics({k: float(v) for k, v in sums.items()})["ap"]
    seen = []
    loss = task.loss
    task.loss = lambda model, batch: (seen.append((batch.event_ids.clone(), batch.negatives["random"][1].clone())),
                                      loss(model, batch))[1]
    engine.train(task)

    steps = len(seen) // 2
    order = torch.cat([e for e, _ in seen[:steps]])
    assert torch.equal(order, torch.arange(steps * recipe.batch_size))  # chronological, every full batch once
    assert all(torch.equal(seen[i][0], seen[i + steps][0]) for i in range(steps))  # each epoch the same order
    assert not torch.equal(seen[0][1], seen[steps][1])  # fresh negatives every step
    train_dst = set(task.split.events("train").dst.tolist())
    assert set(torch.cat([n for _, n in seen]).tolist()) <= train_dst

    rows = [r for r in csv.DictReader(open(tmp_path / "run" / "metrics.csv")) if r["kind"] == "eval"]
    aps = [float(r["eval_ap"]) for r in rows]
    assert [float(r["eval_events"]) for r in rows] == [float(len(val))] * 2  # every val event, once
    assert max(aps) > max(ap_untrained, 0.5) + 0.05, (ap_untrained, aps)
    assert all(0 < float(r["eval_mrr"]) <= 1 for r in rows)

    table = json.loads((tmp_path / "run" / "plots" / "test_metrics.json").read_text())
    assert all(0 <= table[k] <= 1 for k in CELLS + ["transductive_mrr", "inductive_mrr"])
    assert table["transductive_events"] == float(task.split.test.sum())
    assert table["inductive_events"] == float(task.split.new_node_test.sum()) > 0
    report = (tmp_path / "run" / "report.md").read_text()
    for title in ("Test table", "Val AP, AUC and MRR per epoch", "Scores on the test split over time"):
        assert title in report
    markdown = (tmp_path / "run" / "plots" / "test_table.md").read_text()
    assert "| transductive |" in markdown and "| inductive |" in markdown and "n/a" not in markdown


def test_edgebank_table_equals_a_hand_run_edgebank():
    table = evaluate_edgebank("uci", prefix=PREFIX, mrr_events=50)
    assert all(0 <= table[k] <= 1 for k in CELLS + ["transductive_mrr", "inductive_mrr"])
    split = chronological_split(load_uci()[:PREFIX])
    ids = split.test.nonzero().flatten()
    s = split.stream
    for strategy in STRATEGIES:  # DyGLib's EdgeBank: memory of every event before the current batch
        neg_src, neg_dst = split_negatives(split, "test", strategy)
        bank, pos, neg = EdgeBank(s.num_nodes).update(s[: int(ids[0])]), [], []
        for a in range(0, ids.numel(), 200):
            e = ids[a:a + 200]
            pos.append(bank.predict(s.src[e], s.dst[e]))
            neg.append(bank.predict(neg_src[a:a + 200], neg_dst[a:a + 200]))
            bank.update(s.select(e))
        want = link_prediction_metrics(torch.cat(pos), torch.cat(neg))
        assert table[f"transductive_{strategy}_ap"] == pytest.approx(want["ap"], abs=1e-12)
        assert table[f"transductive_{strategy}_auc"] == pytest.approx(want["auc"], abs=1e-12)
    assert table["transductive_random_ap"] > table["transductive_historical_ap"]  # the known EdgeBank pattern
    assert not math.isnan(table["inductive_mrr"])


@pytest.mark.slow
def test_the_recipe_runs_from_the_command_line(tmp_path, capsys):
    main(["train", "dygformer-uci", "--out", str(tmp_path / "cli"), "--set", "max_steps=2", "--set", "epochs=1",
          *(x for o in SMALL for x in ("--set", o)), "--set", "data.prefix=1000"])
    assert (tmp_path / "cli" / "report.md").is_file() and (tmp_path / "cli" / "plots" / "test_table.png").is_file()


class _Recorder(TemporalLinkPredictor):
    """A memory model that scores nothing and records the calls the task makes."""

    def __init__(self) -> None:
        super().__init__()
        self.w, self.calls = nn.Parameter(torch.zeros(())), []

    def forward(self, src, dst, t, ctx):
        return self.w + 0.0 * src

    def observe(self, src, dst, t, edge_ids, ctx):
        self.calls.append(edge_ids.clone())

    def reset_state(self):
        self.calls.append("reset")


def test_memory_models_are_reset_and_observe_every_batch_in_order():
    task = build_task(resolve_recipe("dygformer-uci", ["data.prefix=2000"]))
    model, data = _Recorder(), task.train_dataset()
    for a in (0, 200, 400):
        task.loss(model, task.augment(data.__getitems__(range(a, a + 200)), torch.Generator().manual_seed(a)))
    assert model.calls[0] == "reset" and "reset" not in model.calls[1:]
    assert torch.equal(torch.cat(model.calls[1:]), torch.arange(600))  # the training stream, in order
    model.calls.clear()
    val = task.eval_dataset()
    task.eval_step(model, val.__getitems__(range(0, 100)))
    task.eval_step(model, val.__getitems__(range(100, 200)))
    first = int(val.event_ids[0])  # replayed: the whole stream before the val split, then each val batch
    assert model.calls[0] == "reset"
    assert torch.equal(torch.cat(model.calls[1:]), torch.cat([torch.arange(first), val.event_ids[:200]]))
