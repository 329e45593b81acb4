"""Damaged checkpoints (issue 19, item 8): every kind of damage is detected by the manifest's
checksums or the pointer's checks, never loaded; resume falls back to the newest intact older
checkpoint with a warning, or stops with a one-line error when none is left."""
import os

import pytest
import torch

from relformer.train import checkpoint as ckpt
from relformer.train.checkpoint import CheckpointDir, CheckpointError, read_checkpoint

from .test_checkpoint import make, steps


def two_checkpoints(root):
    model, opt, sched = make()
    checkpoints = CheckpointDir(root, keep=3)
    checkpoints.save(1, model, opt, sched, {"step": 1})
    steps(model, opt, sched, 1, seed=3)
    checkpoints.save(2, model, opt, sched, {"step": 2})
    return checkpoints


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_bit(path):
    data = bytearray(path.read_bytes())
    data[len(data) - 3] ^= 0x01  # inside the tensor data: the file still parses
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated model": (lambda d: truncate(d / ckpt.MODEL_FILE), "model.safetensors is damaged"),
    "zero-byte optimizer": (lambda d: (d / ckpt.OPTIMIZER_FILE).write_bytes(b""), "optimizer.safetensors is damaged"),
    "bit-flipped model": (lambda d: flip_a_bit(d / ckpt.MODEL_FILE), "model.safetensors is damaged"),
    "garbage trainer state": (lambda d: (d / ckpt.STATE_FILE).write_text("{garbage"), "trainer_state.json is damaged"),
    "garbage manifest": (lambda d: (d / ckpt.MANIFEST_FILE).write_bytes(b"\xff\x00"), "manifest.json is not valid JSON"),
    "missing manifest": (lambda d: (d / ckpt.MANIFEST_FILE).unlink(), "incomplete: missing manifest.json"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_latest_is_detected_and_resume_falls_back(tmp_path, damage):
    checkpoints = two_checkpoints(tmp_path)
    spoil, message = DAMAGE[damage]
    spoil(tmp_path / "step-00000002")
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(tmp_path / "step-00000002", make()[0])
    with pytest.warns(UserWarning, match=f"{message}.*resuming from the newest intact checkpoint, step-00000001"):
        assert checkpoints.resume_point() == tmp_path / "step-00000001"
    assert read_checkpoint(checkpoints.resume_point.__self__.root / "step-00000001", make()[0]) == {"step": 1}


@pytest.mark.parametrize("content, message", [
    ("", "must name a step folder"), ("garbage\n", "must name a step folder"),
    ("../../etc\n", "must name a step folder"), ("/etc\n", "must name a step folder"),
    ("\xff\xfe", "unreadable"), ("step-00000009\n", "step-00000009 does not exist"),
])
def test_bad_latest_pointer_stays_inside_the_run(tmp_path, content, message):
    checkpoints = two_checkpoints(tmp_path)
    (tmp_path / "latest").write_bytes(content.encode("latin-1"))
    with pytest.raises(CheckpointError, match=message):
        checkpoints.latest()
    with pytest.warns(UserWarning, match="resuming from the newest intact checkpoint, step-00000002"):
        assert checkpoints.resume_point() == tmp_path / "step-00000002"


def test_symlinks_out_of_the_run_are_refused(tmp_path):
    outside = tmp_path / "outside"
    two_checkpoints(outside)
    run = tmp_path / "run"
    checkpoints = two_checkpoints(run)
    os.symlink(outside / "step-00000002", run / "step-00000007")
    (run / "latest").write_text("step-00000007\n")
    with pytest.raises(CheckpointError, match="a symbolic link"):
        checkpoints.latest()
    (run / "latest").unlink()
    os.symlink(outside / "latest", run / "latest")
    with pytest.raises(CheckpointError, match="not a regular file"):
        checkpoints.latest()
    assert [p.name for p in checkpoints.steps()] == ["step-00000001", "step-00000002"]  # the link is no step


def test_nothing_intact_left_is_a_one_line_error(tmp_path):
    checkpoints = two_checkpoints(tmp_path)
    for name in ("step-00000001", "step-00000002"):
        (tmp_path / name / ckpt.MODEL_FILE).write_bytes(b"")
    with pytest.raises(CheckpointError, match="no older intact checkpoint is left") as e:
        checkpoints.resume_point()
    assert "\n" not in str(e.value)


def test_a_step_folder_without_latest_is_resumable(tmp_path):
    """A kill between a folder's rename and the first ``latest``: the folder is complete, so resume uses it."""
    checkpoints = two_checkpoints(tmp_path)
    (tmp_path / "latest").unlink()
    with pytest.warns(UserWarning, match="latest does not exist; resuming from .* step-00000002"):
        assert checkpoints.resume_point() == tmp_path / "step-00000002"
    assert CheckpointDir(tmp_path / "none").resume_point() is None


def test_best_is_repaired_from_the_step_the_state_records(tmp_path):
    """The reproduction of item 7 at the folder level: best/ left a step behind (or half replaced)."""
    model, opt, sched = make()
    checkpoints = CheckpointDir(tmp_path, keep=1)
    checkpoints.save(4, model, opt, sched, {"best_step": 4}, best=True)
    steps(model, opt, sched, 1, seed=5)
    checkpoints.save(6, model, opt, sched, {"best_step": 4})
    assert [p.name for p in checkpoints.steps()] == ["step-00000004", "step-00000006"]  # best's step is kept
    checkpoints.save(8, model, opt, sched, {"best_step": 8})  # as if best/ had not been replaced (the old order)
    assert "held step 4" in checkpoints.repair_best(8)
    assert ckpt.verify_checkpoint(checkpoints.best)["step"] == 8
    assert checkpoints.repair_best(8) is None  # right now: nothing to do
    (checkpoints.best / ckpt.MODEL_FILE).write_bytes(b"")
    assert "model.safetensors is damaged" in checkpoints.repair_best(8)
    fresh = make(seed=7)[0]
    read_checkpoint(checkpoints.best, fresh)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
