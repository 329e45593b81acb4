"""Checkpoints: exact round trip of model + optimizer + scheduler, and atomicity under a crash."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from relformer.train import checkpoint as ckpt
from relformer.train.checkpoint import CheckpointDir, optimizer_state_from, optimizer_tensors, read_checkpoint
from relformer.train.engine import WarmupCosine, param_groups


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)
        self.tied = self.head.weight  # a second name for one tensor

    def forward(self, x):
        return self.head(self.norm(self.embed(x)).relu())


def make(seed=0):
    torch.manual_seed(seed)
    model = Tiny()
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-2, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(3, 20, 0.1))
    return model, opt, sched


def steps(model, opt, sched, n, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x, y = torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def test_optimizer_flattening_round_trips():
    model, opt, sched = make()
    steps(model, opt, sched, 2, seed=1)
    tensors, rest = optimizer_tensors(opt.state_dict())
    assert set(tensors) == {f"state.{i}.{k}" for i in range(6) for k in ("step", "exp_avg", "exp_avg_sq")}
    json.dumps(rest)  # everything else is JSON
    back = optimizer_state_from(tensors, json.loads(json.dumps(rest)))
    assert back["param_groups"] == opt.state_dict()["param_groups"]  # tuples (betas) restored
    assert all(torch.equal(back["state"][i][k], v) for i, s in opt.state_dict()["state"].items() for k, v in s.items())


def test_round_trip_continues_bit_identically(tmp_path):
    model, opt, sched = make()
    steps(model, opt, sched, 5, seed=1)
    CheckpointDir(tmp_path).save(5, model, opt, sched, {"epoch": 1, "history": [{"accuracy": 0.5}]})
    steps(model, opt, sched, 4, seed=2)  # the uninterrupted run

    model2, opt2, sched2 = make(seed=123)  # different initial weights, all overwritten by the load
    state = read_checkpoint(CheckpointDir(tmp_path).latest(), model2, opt2, sched2)
    assert state == {"epoch": 1, "history": [{"accuracy": 0.5}]}
    assert sched2.last_epoch == 5 and sched2.get_last_lr() == pytest.approx([1e-2 * WarmupCosine(3, 20, 0.1)(5)] * 2)
    steps(model2, opt2, sched2, 4, seed=2)
    for (name, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), name
    assert opt.param_groups[0]["lr"] == opt2.param_groups[0]["lr"]
    weights = load_file(tmp_path / "step-00000005" / ckpt.MODEL_FILE)
    assert "tied" in weights and "_orig_mod" not in "".join(weights)


def test_latest_survives_a_crash_at_any_rename(tmp_path, monkeypatch):
    model, opt, sched = make()
    checkpoints = CheckpointDir(tmp_path)
    checkpoints.save(1, model, opt, sched, {"step": 1})
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    steps(model, opt, sched, 1, seed=3)
    real_replace = os.replace
    renames = 6  # model, optimizer, state, manifest (in the hidden folder), the folder, latest
    for crash_at in range(renames):
        calls = []

        def replace(src, dst):
            calls.append(dst)
            if len(calls) > crash_at:
                raise OSError("killed")
            real_replace(src, dst)

        monkeypatch.setattr(ckpt.os, "replace", replace)
        with pytest.raises(OSError, match="killed"):
            checkpoints.save(2, model, opt, sched, {"step": 2})
        monkeypatch.setattr(ckpt.os, "replace", real_replace)
        fresh, _, _ = make(seed=9)
        assert checkpoints.latest().name == "step-00000001"
        assert read_checkpoint(checkpoints.latest(), fresh) == {"step": 1}
        assert all(torch.equal(saved[k], v) for k, v in fresh.state_dict().items())
        checkpoints.clean()  # the leftovers of the crashed write go
        expected = ["latest", "step-00000001"] + (["step-00000002"] if crash_at == renames - 1 else [])
        assert sorted(p.name for p in tmp_path.iterdir()) == expected
    checkpoints.save(2, model, opt, sched, {"step": 2})  # an interrupted step is simply written again
    assert read_checkpoint(checkpoints.latest(), make()[0]) == {"step": 2}


def test_keeps_the_last_k_and_best(tmp_path):
    model, opt, sched = make()
    checkpoints = CheckpointDir(tmp_path, keep=2)
    for step in (4, 8, 12):
        checkpoints.save(step, model, opt, sched, {"step": step, "best_step": 4}, best=step == 4)
    assert [p.name for p in checkpoints.steps()] == ["step-00000004", "step-00000008", "step-00000012"]  # best kept
    checkpoints.save(16, model, opt, sched, {"step": 16, "best_step": 16}, best=True)  # replaces best/
    assert [p.name for p in checkpoints.steps()] == ["step-00000012", "step-00000016"]
    assert read_checkpoint(checkpoints.best, make()[0]) == {"step": 16, "best_step": 16}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "latest", "step-00000012", "step-00000016"]


def test_incomplete_checkpoint_is_refused(tmp_path):
    model, opt, sched = make()
    path = CheckpointDir(tmp_path).save(1, model, opt, sched, {})
    (path / ckpt.OPTIMIZER_FILE).unlink()
    with pytest.raises(ckpt.CheckpointError, match="incomplete: missing optimizer.safetensors"):
        read_checkpoint(path, model)


def test_a_registry_model_checkpoint_loads_in_one_call_and_its_config_is_checksummed(tmp_path):
    from relformer.models import create_model, from_pretrained

    torch.manual_seed(0)
    model = create_model("vit_micro", num_classes=3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    CheckpointDir(tmp_path / "run" / "checkpoints").save(4, model, opt, None, {"epoch": 1}, best=True)
    manifest = ckpt.verify_checkpoint(tmp_path / "run" / "checkpoints" / "best")
    assert "config.json" in manifest["sha256"]
    loaded = from_pretrained(tmp_path / "run")  # the run folder: picks best/
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model.eval()(x).logits)
    assert loaded.variant == "vit_micro" and loaded.config.num_classes == 3
    config = tmp_path / "run" / "checkpoints" / "best" / "config.json"
    config.write_text(config.read_text().replace('"num_classes": 3', '"num_classes": 4'))
    with pytest.raises(ckpt.CheckpointError, match="config.json is damaged"):
        ckpt.verify_checkpoint(config.parent)


def test_a_plain_module_checkpoint_has_no_config(tmp_path):
    model, opt, sched = make()
    ckpt.write_checkpoint(tmp_path / "c", model, opt, sched, {"epoch": 0})
    assert not (tmp_path / "c" / "config.json").exists()
    assert set(ckpt.verify_checkpoint(tmp_path / "c")["sha256"]) == {"model.safetensors", "optimizer.safetensors",
                                                                     "trainer_state.json"}
