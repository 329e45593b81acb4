"""Issue 20's CLI edges: a clean --help, --version, `train --import` of the user's own task module
(by name and by .py path), the relformer.tasks entry points, --list wrapped at words, bench --help,
embed --out's suffix rule, and progress bars only on a terminal outside CI."""
import sys
from importlib.metadata import EntryPoint

import numpy as np
import pytest

import relformer
import relformer.tasks.registry as registry
from relformer.cli import main, plain_text
from relformer.tasks import list_recipes, recipe_summary
from relformer.train import logger
from relformer.train.logger import read_metrics

USER_MODULE = '''
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from relformer.tasks import TaskBase, register_recipe, register_task
from relformer.tasks.trainer import TensorBatches
from relformer.train.recipe import Recipe


@dataclass
class LineRecipe(Recipe):
    task: Literal["{name}"] = "{name}"


@register_task("{name}")
class LineTask(TaskBase):
    """y = 2x - 1 from 32 points: only the methods TaskBase has no default for."""
    recipe_type = LineRecipe
    main_metric, mode, metric_names = "mse", "min", ("mse",)

    def build_model(self):
        return nn.Linear(1, 1)

    def _data(self, n):
        x = torch.linspace(-1, 1, n)[:, None]
        return TensorBatches(x, 2 * x - 1)

    def train_dataset(self):
        return self._data(32)

    def eval_dataset(self):
        return self._data(8)

    def loss(self, model, batch):
        x, y = batch
        return F.mse_loss(model(x), y), {{}}

    def eval_step(self, model, batch):
        x, y = batch
        return {{"sq": ((model(x) - y) ** 2).sum(), "n": torch.tensor(float(len(x)))}}

    def metrics(self, sums):
        return {{"mse": sums["sq"] / sums["n"]}}


@register_recipe("{name}-run")
def line_run():
    """Fit a line with a custom task imported from the user's own module, a summary long enough to be wrapped
    across several lines of the terminal."""
    return LineRecipe(name="{name}-run", epochs=3, batch_size=8, device="cpu", optim={{"lr": 0.1}})
'''


def write_module(folder, name):
    path = folder / f"{name}.py"
    path.write_text(USER_MODULE.format(name=name).replace('optim={"lr": 0.1}', "").replace("optim={'lr': 0.1}", ""))
    return path


def test_help_is_plain_text_and_version_prints(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("The relformer command:") and "``" not in out and ":mod:" not in out
    assert "train --import" in out and "--version" in out
    main(["--version"])
    assert capsys.readouterr().out.strip() == f"relformer {relformer.__version__}"
    assert plain_text("see :mod:`relformer.tasks` and ``--set``") == "see relformer.tasks and --set"


def test_train_imports_a_module_by_path(tmp_path, capsys, monkeypatch):
    path = write_module(tmp_path, "line_task_by_path")
    main(["train", "--import", str(path), "line_task_by_path-run", "--out", str(tmp_path / "run")])
    evals = [r for r in read_metrics(tmp_path / "run" / "metrics.csv") if r["kind"] == "eval"]
    assert len(evals) == 3 and float(evals[-1]["eval_mse"]) < float(evals[0]["eval_mse"])


def test_train_imports_a_module_by_name_and_lists_its_recipe(tmp_path, capsys, monkeypatch):
    write_module(tmp_path, "line_task_by_name")
    monkeypatch.syspath_prepend(str(tmp_path))
    main(["train", "--import", "line_task_by_name", "--list"])
    out = capsys.readouterr().out
    assert "line_task_by_name-run" in out
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("line_task_by_name-run "))
    block = [lines[start][25:]]
    for line in lines[start + 1:]:
        if not line.startswith(" "):
            break
        block.append(line[25:])
    summary = plain_text(recipe_summary("line_task_by_name-run"))
    assert len(block) > 1 and " ".join(block) == summary  # wrapped over lines, at spaces only


def test_train_import_errors_are_one_line(capsys, tmp_path):
    for module, match in [("no_such_module_xyz", "no module named 'no_such_module_xyz'"),
                          (str(tmp_path / "missing.py"), "no such file")]:
        with pytest.raises(SystemExit) as e:
            main(["train", "--import", module, "--list"])
        assert e.value.code == 2 and match in capsys.readouterr().err


def test_entry_points_are_loaded_when_a_name_is_unknown(tmp_path, monkeypatch):
    write_module(tmp_path, "line_task_plugin")
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = EntryPoint(name="line", value="line_task_plugin", group=registry.ENTRY_POINT_GROUP)
    seen = []
    monkeypatch.setattr(registry.importlib.metadata, "entry_points",
                        lambda group: seen.append(group) or ([entry] if group == registry.ENTRY_POINT_GROUP else []))
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    assert "line_task_plugin-run" in list_recipes() and seen == [registry.ENTRY_POINT_GROUP]
    assert registry.get_task("line_task_plugin").__name__ == "LineTask"
    assert registry.load_plugins() == [] and seen == [registry.ENTRY_POINT_GROUP]  # loaded once


def test_train_list_never_cuts_a_word(capsys):
    main(["train", "--list"])
    out = capsys.readouterr().out
    for name in list_recipes():
        words = plain_text(recipe_summary(name)).split()
        assert all(w in out.split() for w in words), name


def test_bench_help_says_what_it_is(capsys):
    main(["bench", "--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: relformer bench attention") and "attention backends" in out


def test_embed_out_must_end_in_npy(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["embed", "hello there", "--out", str(tmp_path / "x.txt")])
    assert e.value.code == 2 and "must end in .npy" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_embed_out_writes_exactly_the_name_given(capsys, tmp_path):
    main(["embed", "hello there", "general kenobi", "--out", str(tmp_path / "x.npy")])
    assert [p.name for p in tmp_path.iterdir()] == ["x.npy"] and np.load(tmp_path / "x.npy").shape == (2, 384)


def test_progress_bars_only_on_a_terminal_outside_ci(monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    monkeypatch.delenv("CI", raising=False)
    assert logger.show_progress() and not logger.progress_bar(range(3), total=3).disable
    monkeypatch.setenv("CI", "true")
    assert not logger.show_progress() and logger.progress_bar(range(3), total=3).disable
    monkeypatch.delenv("CI")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert not logger.show_progress()
    assert list(logger.progress_bar(range(3), total=3)) == [0, 1, 2]
