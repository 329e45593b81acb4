"""The kill harness (issue 19): SIGKILL a small training at >= 20 moments, inside every checkpoint
write phase (stopped there by RELFORMER_TEST_PAUSE, see relformer.train.checkpoint) and at timed
moments between, then ``relformer train --resume``; every time the run must finish with weights,
``best/``, report and metrics bit-identical to an uninterrupted run, and the user's files in the run
folder (one beside the run's files, one in ``tb/``) untouched.

The runs are forked from this process (the imports are paid once), each writing its output to a
log. ``RELFORMER_KILLS=<n>`` adds ``n - 20`` more timed kills for release checks.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import sys
import time
import traceback
from pathlib import Path

import matplotlib.figure  # noqa: F401  (imported once here, not in every forked run)
import pytest
from safetensors.torch import load_file

import relformer.train.checkpoint as ckpt
from relformer.cli import main
from relformer.train.logger import read_metrics

from . import tiny_task  # noqa: F401  (registers the task 'tiny' and the recipe 'tiny-kill')

PAUSE_MARK = "relformer-test-pause: "
# (phase, occurrence): saves happen at steps 3, 6, 8 (epoch end), 9, 12, 15, 16, 18, 21, 24;
# best/ is written at epoch ends (steps 8, 16, 24 when the eval MSE improves)
PHASE_KILLS = [("files", 1), ("files", 3), ("files", 5), ("folder", 2), ("folder", 3), ("folder", 7),
               ("installed", 1), ("installed", 3), ("installed", 6), ("best-aside", 1), ("best", 1), ("best", 2),
               ("latest", 1), ("latest", 3), ("latest", 6)]
TIMED_KILLS = max(5, int(os.environ.get("RELFORMER_KILLS", "20")) - len(PHASE_KILLS))
STABLE = ("kind", "epoch", "step", "lr", "train_loss", "train_mse", "eval_mse", "eval_samples")


def _fork_cli(args: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    """``relformer train ARGS`` in a forked child writing to ``log``; returns its pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        os.environ.pop("RELFORMER_TEST_PAUSE", None)
        os.environ.update(env or {})
        main(["train", "tiny-kill", *args])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _wait(pid: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"run {pid} did not finish in {timeout} s")


def _run(run: Path, log: Path, resume: bool = False) -> None:
    code = _wait(_fork_cli(["--out", str(run), *(["--resume"] if resume else [])], log))
    assert code == 0, log.read_text()[-3000:]


def _kill_when(pid: int, ready, log: Path, timeout: float = 120) -> bool:
    """SIGKILL ``pid`` once ``ready()``; False when the run ended first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if os.waitpid(pid, os.WNOHANG)[0]:
            return False
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == -signal.SIGKILL


def _has_checkpoint(run: Path) -> bool:
    root = run / "checkpoints"
    return (root / "latest").exists() or any(p.name.startswith("step-") for p in root.glob("step-*"))


def _snapshot(run: Path) -> dict:
    """What must be identical to the uninterrupted run."""
    root = run / "checkpoints"
    latest = (root / "latest").read_text().strip()
    best_state = json.loads((root / "best" / ckpt.STATE_FILE).read_text())["trainer"]
    final_state = json.loads((root / latest / ckpt.STATE_FILE).read_text())["trainer"]
    report = (run / "report.md").read_text()
    return {"latest": latest, "final": load_file(root / latest / ckpt.MODEL_FILE),
            "best": load_file(root / "best" / ckpt.MODEL_FILE), "best_step": ckpt.verify_checkpoint(root / "best")["step"],
            "state_best_step": final_state["best_step"], "best_epoch": best_state["epoch"],
            "report_best": re.search(r"Best epoch: \*\*(\d+)\*\*", report).group(1),
            "history": final_state["history"],
            "metrics": [tuple(r[c] for c in STABLE) for r in read_metrics(run / "metrics.csv")]}


def _assert_same(a: dict, b: dict, where: str) -> None:
    for key in a:
        if key in ("final", "best"):
            assert a[key].keys() == b[key].keys()
            assert all(a[key][n].equal(b[key][n]) for n in a[key]), f"{where}: {key} weights differ"
        else:
            assert a[key] == b[key], f"{where}: {key} differs: {a[key]!r} != {b[key]!r}"


def _user_files(run: Path) -> dict[Path, bytes]:
    files = {run / "notes.txt": b"my notes, not the run's\n", run / "tb" / "mine.txt": b"my own tb file\n"}
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def _kill_and_resume(tmp_path: Path, name: str, arm, reference: dict, second_kill=None) -> None:
    """One moment: start fresh, kill when ``arm`` says, resume (killed again by ``second_kill`` if
    given) until the run finishes; then compare with the reference."""
    run, log = tmp_path / name, tmp_path / f"{name}.log"
    user = _user_files(run)
    env, ready = arm(run, log)
    pid = _fork_cli(["--out", str(run)], log, env)
    assert _kill_when(pid, ready, log), f"{name}: the run finished before the kill\n{log.read_text()[-2000:]}"
    if second_kill is not None:
        env2, ready2 = second_kill(run, log)
        pid = _fork_cli(["--out", str(run), *(["--resume"] if _has_checkpoint(run) else [])], log, env2)
        assert _kill_when(pid, ready2, log), f"{name}: the resumed run finished before the second kill"
    _run(run, log, resume=_has_checkpoint(run))
    _assert_same(reference, _snapshot(run), name)
    assert all(path.read_bytes() == data for path, data in user.items()), f"{name}: a user file was touched"


def _at_phase(phase: str, nth: int):
    def arm(run: Path, log: Path):
        return ({"RELFORMER_TEST_PAUSE": f"{phase}:{nth}"},
                lambda: log.is_file() and f"{PAUSE_MARK}{phase}" in log.read_text(errors="replace"))
    return arm


def _after_latest(changes: int, delay: float):
    """Kill ``delay`` seconds after ``latest`` changed ``changes`` times (polling the file system)."""
    def arm(run: Path, log: Path):
        seen = []

        def ready() -> bool:
            pointer = run / "checkpoints" / "latest"
            try:
                name = pointer.read_text()
            except OSError:
                return False
            if not seen or seen[-1][0] != name:
                seen.append((name, time.monotonic()))
            return len(seen) >= changes and time.monotonic() - seen[changes - 1][1] >= delay
        return {}, ready
    return arm


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("kill-reference")
    _user_files(out / "run")
    _run(out / "run", out / "log.txt")
    snap = _snapshot(out / "run")
    assert snap["state_best_step"] == snap["best_step"] and int(snap["report_best"]) == snap["best_epoch"]
    assert snap["best_epoch"] >= 2, "the harness needs best/ to be replaced at least once"
    return snap


@pytest.mark.slow
@pytest.mark.parametrize("phase, nth", PHASE_KILLS)
def test_kill_inside_a_checkpoint_phase_then_resume(reference, tmp_path, phase, nth):
    assert phase in ckpt.PHASES
    _kill_and_resume(tmp_path, f"{phase}-{nth}", _at_phase(phase, nth), reference)


@pytest.mark.slow
@pytest.mark.parametrize("kill", range(TIMED_KILLS))
def test_kill_at_a_timed_moment_then_resume(reference, tmp_path, kill):
    rng = random.Random(kill)
    _kill_and_resume(tmp_path, f"timed-{kill}", _after_latest(rng.randint(1, 9), rng.uniform(0, 0.03)), reference)


@pytest.mark.slow
def test_killed_again_while_resuming(reference, tmp_path):
    _kill_and_resume(tmp_path, "twice", _at_phase("best", 1), reference, second_kill=_at_phase("best-aside", 1))


def test_every_phase_is_covered():
    assert {phase for phase, _ in PHASE_KILLS} == set(ckpt.PHASES)
    assert len(PHASE_KILLS) + TIMED_KILLS + 1 >= 20
