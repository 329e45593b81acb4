"""Sentence-encoder fine-tuning on text pairs: the task's differentiable embeddings equal
SentenceEncoder.encode, the loss is MultipleNegativesRanking, retrieval metrics count ranks over
the whole eval set, pairs train from Python and from a YAML recipe, and (slow) fine-tuning
all-MiniLM-L6-v2 on standard-library docstring pairs raises recall@1 on held-out modules."""
import math

import pytest
import torch
import yaml

from relformer.cli import main
from relformer.models.text import SentenceEncoder
from relformer.tasks import TextPairTask, Trainer, parse_recipe
from relformer.tasks.search import default_model_path
from relformer.tasks.text_pairs import (_held_out, embed, multiple_negatives_ranking_loss, read_pairs,
                                        stdlib_doc_pairs)
from relformer.train import Callback
from relformer.train.logger import read_metrics

MICRO = {"name": "text_micro", "options": {"dim": 32, "depth": 1, "num_heads": 2, "mlp_hidden": 64}}
WORDS = "apple river stone cloud tiger piano garden rocket silver planet candle forest".split()


def toy_pairs(n, shift=0):
    return [(f"{WORDS[(i + shift) % 12]} and {WORDS[(3 * i + 1) % 12]}", f"the {WORDS[(i + shift) % 12]} near "
             f"a {WORDS[(3 * i + 1) % 12]}") for i in range(n)]


def recipe_dict(out, **data):
    return {"task": "text_pairs", "model": MICRO, "device": "cpu", "epochs": 2, "batch_size": 8,
            "eval_batch_size": 8, "out_dir": str(out), "optim": {"lr": 1e-3, "warmup_epochs": 0},
            "data": {"max_length": 32, **data}}


def test_embed_equals_sentence_encoder_encode():
    encoder = SentenceEncoder.from_pretrained(default_model_path())
    task = TextPairTask(parse_recipe({"task": "text_pairs", "data": {"source": "memory"}}),
                        train=toy_pairs(4), eval=toy_pairs(4), encoder=encoder)
    batch = task.collate(toy_pairs(4))
    with torch.no_grad():
        ours = embed(encoder.eval(), *batch.columns[1])
    torch.testing.assert_close(ours, encoder.encode([p for _, p in toy_pairs(4)]), rtol=0, atol=1e-5)


def test_the_loss_is_cross_entropy_over_scaled_cosines():
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(4, 8, generator=g, dtype=torch.float64), dim=-1)
    c = torch.nn.functional.normalize(torch.randn(6, 8, generator=g, dtype=torch.float64), dim=-1)
    expected = sum(-math.log(math.exp(20 * float(a[i] @ c[i])) / sum(math.exp(20 * float(a[i] @ c[j]))
                                                                       for j in range(6))) for i in range(4)) / 4
    assert float(multiple_negatives_ranking_loss(a, c, 20.0)) == pytest.approx(expected, rel=1e-12)


def test_retrieval_metrics_rank_against_all_eval_positives():
    task = TextPairTask(parse_recipe({**recipe_dict("x"), "data": {"source": "memory"}}), train=toy_pairs(4),
                        eval=toy_pairs(3))
    eye = torch.eye(3)
    task._eval_store = [(eye[:2], eye[[0, 2]]), (eye[2:], eye[[1]])]  # anchor 0 -> rank 1; 1 -> 3 (tie: 2); 2 -> ...
    anchors, positives = eye, eye[[0, 2, 1]]
    scores = anchors @ positives.T
    ranks = [(scores[i] > scores[i, i]).sum().item() + 1 for i in range(3)]
    out = task.metrics({"pairs": 3.0})
    assert out["recall@1"] == pytest.approx(sum(r == 1 for r in ranks) / 3)
    assert out["mrr"] == pytest.approx(sum(1 / r for r in ranks) / 3) and out["pairs"] == 3.0


def test_pairs_train_from_python_with_triplets(tmp_path):
    triplets = [(a, p, n) for (a, p), (_, n) in zip(toy_pairs(16), toy_pairs(16, shift=5))]
    task = TextPairTask(parse_recipe(recipe_dict(tmp_path / "run", source="memory")), train=triplets,
                        eval=toy_pairs(12, shift=1))
    trainer = Trainer(task=task)
    trainer.fit()
    evals = [r for r in read_metrics(trainer.run_dir / "metrics.csv") if r["kind"] == "eval"]
    assert len(evals) == 2 and all(0 < float(r["eval_mrr"]) <= 1 and float(r["eval_pairs"]) == 12 for r in evals)


def test_pair_files_train_from_the_cli(tmp_path):
    (tmp_path / "train.tsv").write_text("\n".join("\t".join(p) for p in toy_pairs(16)) + "\n")
    (tmp_path / "eval.jsonl").write_text("\n".join(f'{{"anchor": "{a}", "positive": "{p}"}}'
                                                   for a, p in toy_pairs(8, 2)))
    recipe = tmp_path / "pairs.yaml"
    recipe.write_text(yaml.safe_dump(recipe_dict(tmp_path / "run", source="files", train=str(tmp_path / "train.tsv"),
                                                 eval=str(tmp_path / "eval.jsonl"))))
    main(["train", str(recipe), "--set", "epochs=1"])
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert [r["kind"] for r in rows] == ["train", "eval"] and 0 <= float(rows[1]["eval_recall@1"]) <= 1
    (tmp_path / "bad.tsv").write_text("only one column\n")
    with pytest.raises(ValueError, match=r"bad.tsv:1 is not an \(anchor, positive"):
        read_pairs(tmp_path / "bad.tsv", "train")


@pytest.mark.slow
def test_stdlib_pairs_are_split_by_module():
    train, held_out = stdlib_doc_pairs("train"), stdlib_doc_pairs("eval")
    assert len(train) > 500 and len(held_out) > 100 and not set(train) & set(held_out)
    assert all(len(a.split()) >= 6 and len(p.split()) >= 6 for a, p in train[:50])
    assert _held_out("json.decoder", 0.2) == _held_out("json", 0.2)  # a package stays on one side


@pytest.mark.slow
def test_fine_tuning_minilm_raises_recall_on_held_out_stdlib_pairs(tmp_path):
    sets = {"task": "text_pairs", "device": "cpu", "epochs": 1, "batch_size": 16, "eval_batch_size": 64,
            "max_steps": 24, "out_dir": str(tmp_path / "run"),
            "optim": {"lr": 3e-5, "warmup_epochs": 0.1, "weight_decay": 0.01},
            "data": {"source": "stdlib", "train_pairs": 384, "eval_pairs": 200, "max_length": 64}}
    seen = []

    class Record(Callback):
        def on_train_start(self, engine):
            seen.append(engine.evaluate())  # the pretrained encoder, the same evaluation

        def on_eval(self, engine, metrics):
            seen.append(metrics)

    Trainer(task=TextPairTask(parse_recipe(sets)), callbacks=[Record()]).fit()
    first, last = seen[0], seen[-1]
    assert last["recall@1"] > first["recall@1"] and last["mrr"] > first["mrr"], seen
