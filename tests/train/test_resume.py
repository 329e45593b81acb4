"""The run-level guarantees, end to end through ``relformer train`` in subprocesses:
kill -9 mid-epoch + ``--resume`` == an uninterrupted run (bit for bit), DDP on 2 processes ==
1 process, and the same seed gives the same weights."""
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from relformer.tasks import resolve_recipe, train
from relformer.train.logger import read_metrics

from .runs import REPO, cli_command, cli_env, final_weights, run_cli, tiny

RANDOM = ["model.options.dropout=0.1", "model.options.drop_path=0.1"]  # so the per-step reseeding matters
STABLE_COLUMNS = ("kind", "epoch", "step", "lr", "train_loss", "train_accuracy", "eval_accuracy", "eval_loss",
                  "eval_samples")  # all but the timings


def stable_rows(run_dir):
    return [tuple(r[c] for c in STABLE_COLUMNS) for r in read_metrics(run_dir / "metrics.csv")]


def assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for name in a:
        if atol == 0:
            assert torch.equal(a[name], b[name]), f"{name} differs by {(a[name] - b[name]).abs().max():.3g}"
        else:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=lambda m: f"{name}: {m}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: 1024 images, batches of 32 (32 steps an epoch), 2 epochs, checkpoints every 3 steps
    (so all but the epoch-end ones are mid-epoch)."""
    out = tmp_path_factory.mktemp("reference")
    run_cli(*tiny(out / "run", *RANDOM), "--deterministic", "vit-fashion-mnist", log=out / "log.txt")
    return out / "run"


@pytest.mark.slow
def test_kill_mid_epoch_then_resume_equals_the_uninterrupted_run(reference, tmp_path):
    out = tmp_path / "run"
    args = [*tiny(out, *RANDOM), "--deterministic", "vit-fashion-mnist"]
    latest = out / "checkpoints" / "latest"
    with open(tmp_path / "killed.txt", "w") as log:
        proc = subprocess.Popen(cli_command(*args), stdout=log, stderr=subprocess.STDOUT, env=cli_env(), cwd=REPO)
        deadline = time.monotonic() + 240
        while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.txt").read_text()[-3000:]
    state = json.loads((out / "checkpoints" / latest.read_text().strip() / "trainer_state.json").read_text())
    assert 0 < state["trainer"]["step_in_epoch"] < 32 and not (out / "report.md").exists()  # killed mid-epoch

    run_cli(*args, "--resume", log=tmp_path / "resumed.txt")
    assert "resuming from" in (tmp_path / "resumed.txt").read_text()
    assert_same_weights(final_weights(reference), final_weights(out))
    final = json.loads((out / "checkpoints" / "step-00000064" / "trainer_state.json").read_text())["trainer"]
    expected = json.loads((reference / "checkpoints" / "step-00000064" / "trainer_state.json").read_text())["trainer"]
    assert final["history"] == expected["history"] and len(final["history"]) == 2  # every epoch's metrics
    assert stable_rows(out) == stable_rows(reference)  # metrics.csv reads as if never interrupted
    assert "Best epoch" in (out / "report.md").read_text()


def test_resume_refuses_a_changed_recipe_or_a_missing_checkpoint(reference, tmp_path):
    with pytest.raises(ValueError, match="--resume: the recipe differs .* in optim.lr"):
        train(resolve_recipe("vit-fashion-mnist", [*tiny(reference, *RANDOM)[1::2], "deterministic=true",
                                                   "optim.lr=0.5"]), resume=True)
    with pytest.raises(ValueError, match="--resume: no checkpoint"):
        train(resolve_recipe("vit-fashion-mnist", tiny(tmp_path)[1::2]), resume=True)


@pytest.mark.slow
def test_same_seed_same_weights(tmp_path):
    """Two runs in one process (different global RNG state in between) agree bit for bit; another seed does not."""
    def run(name, seed):
        sets = [*tiny(tmp_path / name, *RANDOM, train=256, epochs=1)[1::2], "deterministic=true", f"seed={seed}"]
        torch.manual_seed(1000 + len(name))  # whatever state the process is in must not matter
        return final_weights(train(resolve_recipe("vit-fashion-mnist", sets)))

    first, second, other = run("a", 0), run("bb", 0), run("c", 1)
    assert_same_weights(first, second)
    assert not all(torch.equal(first[k], other[k]) for k in first)


@pytest.mark.slow
def test_ddp_on_two_processes_equals_one_process(tmp_path):
    """torchrun --nproc_per_node=2 (gloo, 16 images per rank) vs 1 process (32), dropout 0, no augmentation:
    the same global batches, so the weights after 32 steps agree to 1e-5 (only the order in which
    gradients are summed differs; ~1e-7 measured). No qkv bias: the key bias has a zero gradient
    (softmax ignores a shift shared by all keys), and Adam would turn its rounding noise into
    lr-sized steps of random sign. The patchify stem: the recipe's convolutional stem has BatchNorm,
    whose statistics under DDP on CPU come from each process's half of the batch (SyncBatchNorm
    needs CUDA), so it differs from one process by design."""
    sets = ["data.augment=false", "loss.label_smoothing=0.0", "model.options.qkv_bias=false",
            "model.options.stem=patch"]
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    run_cli(*tiny(single, *sets, epochs=1), "vit-fashion-mnist", log=tmp_path / "single.txt", threads=1)
    with open(tmp_path / "ddp.txt", "w") as log:
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               "-m", "relformer.cli", "train", *tiny(ddp, *sets, epochs=1), "vit-fashion-mnist"],
                              stdout=log, stderr=subprocess.STDOUT, env=cli_env(threads=1), cwd=REPO, timeout=300)
    assert proc.returncode == 0, (tmp_path / "ddp.txt").read_text()[-4000:]
    assert "2 processes" in (ddp / "report.md").read_text()
    assert_same_weights(final_weights(single), final_weights(ddp), atol=1e-5)
    a, b = read_metrics(single / "metrics.csv"), read_metrics(ddp / "metrics.csv")
    assert [r["step"] for r in a] == [r["step"] for r in b]  # one writer: no duplicated rows
    assert [float(r["eval_samples"]) for r in b if r["kind"] == "eval"] == [256.0]  # the shards add up, no padding
    for ra, rb in zip(a, b):
        for column in ("train_loss", "eval_accuracy", "eval_loss"):
            if ra[column]:
                assert float(ra[column]) == pytest.approx(float(rb[column]), abs=1e-5)
