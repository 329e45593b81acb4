"""The wall-clock budget (``max_minutes``): the run stops at the first step past it, still evaluates,
checkpoints and reports; the cosine schedule reaches its minimum within the budget; a resumed run
with a larger budget goes on from where it stopped."""
from __future__ import annotations

import json

import pytest

from relformer.tasks import build_task
from relformer.train import engine as engine_module
from relformer.train.engine import Engine
from relformer.train.loop import WarmupCosine
from relformer.train.recipe import RecipeError

from . import tiny_task  # noqa: F401  (registers the task 'tiny' and the recipe 'tiny-kill')


class FakeClock:
    """``time.perf_counter`` advancing ``tick`` seconds per call: deterministic wall time."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def _engine(tmp_path, resume=False, **changes):
    recipe = tiny_task.tiny_kill()
    recipe.out_dir = str(tmp_path / "run")
    for key, value in changes.items():
        setattr(recipe, key, value)
    return Engine(build_task(recipe), resume=resume)



def test_the_budget_stops_training_evaluates_and_reports(tmp_path, monkeypatch):
    monkeypatch.setattr(engine_module.time, "perf_counter", FakeClock(1.0))
    eng = _engine(tmp_path, max_minutes=0.5)  # 30 fake seconds: a few calls of the clock per step
    run = eng.fit()
    p = eng.progress
    assert 0 < p.global_step < eng.total_steps  # stopped by time, well before the 24 steps of 3 epochs
    assert p.history and p.history[-1]["step"] == p.global_step  # the stopping epoch was evaluated
    assert (run / "report.md").exists() and "max_minutes = 0.5" in (run / "report.md").read_text()
    assert (run / "checkpoints" / "best").is_dir()
    # the cosine followed the clock: at the stopping step the schedule is at its minimum although
    # steps were left, and the last step already ran on a small share of the peak LR
    o = eng.recipe.optim
    assert eng._cosine.time_fraction >= 1
    assert eng._cosine(p.global_step) == pytest.approx(o.min_lr / o.lr)
    assert eng._cosine(p.global_step) < WarmupCosine(eng._cosine.warmup_steps, eng.total_steps,
                                                     o.min_lr / o.lr)(p.global_step)
    assert eng._last_lr < 0.5 * o.lr

    # resumed with a larger budget: it goes on with the next epochs (the one it stopped in counts as
    # finished, as after an early stop)
    monkeypatch.setattr(engine_module.time, "perf_counter", FakeClock(1e-6))
    eng2 = _engine(tmp_path, resume=True, max_minutes=60.0)
    eng2.fit()
    assert eng2.progress.epoch == eng2.recipe.epochs
    assert eng2.progress.global_step == p.global_step + (eng2.recipe.epochs - 1) * eng2.steps_per_epoch


def test_without_a_budget_nothing_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(engine_module.time, "perf_counter", FakeClock(1000.0))  # hours pass; no budget
    eng = _engine(tmp_path)
    eng.fit()
    assert eng.progress.global_step == eng.total_steps and eng._cosine.time_fraction == 0


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf")])
def test_a_bad_budget_is_refused_by_name(bad, tmp_path):
    with pytest.raises(RecipeError, match="max_minutes"):
        _engine(tmp_path, max_minutes=bad)
