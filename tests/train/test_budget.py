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
    report = (run / "report.md").read_text()
    assert "max_minutes = 0.5" in report and "the max_minutes budget ended the run" in report
    assert p.budget_stopped and (run / "checkpoints" / "best").is_dir()
    assert json.loads((run / "checkpoints" / f"step-{p.global_step:08d}" / "trainer_state.json").read_text()
                      )["trainer"]["budget_stopped"]  # what a study reads to set the run aside
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
    assert not eng2.progress.budget_stopped  # this fit ended with its schedule


def test_a_budget_spent_in_the_evaluation_ends_the_run_and_says_so(tmp_path, monkeypatch):
    """The budget runs out while epoch 1 is evaluated, not within a step: the run ends there, before its
    schedule, and its report and last checkpoint say the budget ended it."""
    clock = FakeClock(1e-6)
    monkeypatch.setattr(engine_module.time, "perf_counter", clock)
    eng = _engine(tmp_path, max_minutes=0.5)
    evaluate = eng.evaluate

    def slow_evaluate():
        clock.now += 100.0  # past the 30 s budget
        return evaluate()

    eng.evaluate = slow_evaluate
    run = eng.fit()
    p = eng.progress
    assert p.epoch == 1 and p.global_step == eng.steps_per_epoch < eng.total_steps and p.budget_stopped
    assert "the max_minutes budget ended the run" in (run / "report.md").read_text()
    assert json.loads((run / "checkpoints" / f"step-{p.global_step:08d}" / "trainer_state.json").read_text()
                      )["trainer"]["budget_stopped"]


def test_without_a_budget_nothing_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(engine_module.time, "perf_counter", FakeClock(1000.0))  # hours pass; no budget
    eng = _engine(tmp_path)
    eng.fit()
    assert eng.progress.global_step == eng.total_steps and eng._cosine.time_fraction == 0
    assert not eng.progress.budget_stopped and "budget ended" not in (tmp_path / "run" / "report.md").read_text()


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf")])
def test_a_bad_budget_is_refused_by_name(bad, tmp_path):
    with pytest.raises(RecipeError, match="max_minutes"):
        _engine(tmp_path, max_minutes=bad)


def test_the_cpu_clock_counts_cpu_time_not_elapsed_time(tmp_path, monkeypatch):
    # elapsed time races (another process holds the core) while the run's CPU time creeps: on the
    # cpu clock the run goes on to its last epoch; on the wall clock the same recipe stops early
    monkeypatch.setattr(engine_module.time, "perf_counter", FakeClock(1000.0))
    monkeypatch.setattr(engine_module.time, "process_time", FakeClock(1e-3))
    eng = _engine(tmp_path, max_minutes=0.5, budget_clock="cpu")
    run = eng.fit()
    assert eng.progress.global_step == eng.total_steps
    assert "cpu clock" in (run / "report.md").read_text()
    saved = json.loads((run / "checkpoints" / "best" / "trainer_state.json").read_text())["trainer"]
    assert 0 < saved["cpu_seconds"] < 30

    monkeypatch.setattr(engine_module.time, "process_time", FakeClock(1.0))  # now CPU time is what runs out
    eng = _engine(tmp_path / "b", max_minutes=0.5, budget_clock="cpu")
    eng.fit()
    assert 0 < eng.progress.global_step < eng.total_steps


def test_a_bad_budget_clock_is_refused_by_name(tmp_path):
    from relformer.train.recipe import apply_overrides

    with pytest.raises(RecipeError, match="budget_clock"):
        apply_overrides(tiny_task.tiny_kill(), ["budget_clock=gpu"])


def test_the_task_hears_the_share_of_training_before_every_step(tmp_path, monkeypatch):
    """``on_step``: steps done / total steps without a budget; with one, the budget's share once it is
    further along (what the LR schedule follows); a task without the hook trains as before."""
    seen = []
    eng = _engine(tmp_path / "steps")
    eng._on_step = lambda model, share: seen.append((model, share))
    eng.fit()
    n = eng.total_steps
    assert [s for _, s in seen] == pytest.approx([i / n for i in range(n)]) and all(m is eng.model for m, _ in seen)

    monkeypatch.setattr(engine_module.time, "perf_counter", FakeClock(1.0))
    seen.clear()
    eng = _engine(tmp_path / "budget", max_minutes=0.5)
    eng._on_step = lambda model, share: seen.append(share)
    eng.fit()
    shares = seen
    assert shares == sorted(shares) and shares[-1] > eng.progress.global_step / eng.total_steps  # time ran ahead
    assert all(0 <= s <= 1 for s in shares)


def test_task_base_hands_the_share_to_the_model():
    from torch import nn

    from relformer.tasks.base import TaskBase
    from relformer.train.recipe import Recipe

    class Model(nn.Module):
        def set_training_progress(self, share):
            self.share = share

    task, model = TaskBase(Recipe()), Model()
    task.on_step(model, 0.25)
    assert model.share == 0.25
    task.on_step(nn.Linear(2, 2), 0.5)  # no hook: nothing happens
