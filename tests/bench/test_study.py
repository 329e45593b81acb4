"""bench/study.py on run folders the test writes: the best-val-epoch test metrics, mean ± std over
seeds and metric per CPU-minute in the page's section (the rest of the page kept), the ledger
(finished runs kept when their folders are gone), resumable scheduling (finished runs skipped,
interrupted ones resumed), the dry run, the CPU time recorded, the temporal reader and baseline."""
from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
COLUMNS = ["kind", "epoch", "step", "wall_s", "train_loss", "eval_val_AP"]


@pytest.fixture(scope="module")
def study():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("study", BENCH / "study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)
        sys.path.remove(str(BENCH))


def _fake_run(run_dir: Path, val: list[float], tests: list[dict[str, float]], cpu_s: float | None,
              report: bool = True, select: str = "eval_val_AP") -> None:
    """A run folder as the engine leaves it: metrics.csv (train and eval rows), report.md, study.json."""
    run_dir.mkdir(parents=True)
    keys = sorted({k for t in tests for k in t})
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS[:-1] + [select] + [f"eval_test_{k}" for k in keys])
        w.writeheader()
        for epoch, (v, test) in enumerate(zip(val, tests), start=1):
            w.writerow({"kind": "train", "epoch": epoch, "step": 10 * epoch, "wall_s": 60.0 * epoch - 5, "train_loss": 1.0})
            w.writerow({"kind": "eval", "epoch": epoch, "step": 10 * epoch, "wall_s": 60.0 * epoch, select: v,
                        **{f"eval_test_{k}": x for k, x in test.items()}})
    if report:
        (run_dir / "report.md").write_text("# run\n")
    if cpu_s is not None:
        (run_dir / "study.json").write_text(json.dumps({"cpu_s": cpu_s, "cpu_model": "Test CPU 9000"}))


def _metrics(rng, large: bool) -> dict[str, float]:
    names = ["AP", "AP50", "AP75", "APs", "APm"] + (["APl"] if large else [])
    return {k: float(rng.uniform(0.05, 0.6)) for k in names}


def _row(page: str, set_name: str, recipe: str) -> list[str]:
    for line in page.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 3 and cells[0] == set_name and cells[2] == f"`{recipe}`":
            return cells
    raise AssertionError(f"no row for {set_name} {recipe} in\n{page}")


def _pm(values) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def test_aggregation_of_fake_runs_and_the_ledger(study, tmp_path):
    rng = np.random.default_rng(0)
    out, page, ledger = tmp_path / "runs", tmp_path / "detection.md", tmp_path / "detection.json"
    page.write_text("# Detection family — results\n\n## Earlier results\n\nkept as it is\n")
    expected: dict[tuple[str, str], list[tuple[dict, float]]] = {}
    for set_name, suffix in (("fashion", ""), ("crowded", "-crowded")):
        for model in ("detr-fashion", "group-detr-fashion"):
            for seed in (0, 1, 2):
                if (set_name, model, seed) == ("crowded", "group-detr-fashion", 2):
                    continue  # not finished: listed, not averaged
                val = [0.1, 0.3, 0.2]  # the best val AP is epoch 2's, not the last
                tests = [_metrics(rng, set_name == "crowded") for _ in val]
                cpu_s = float(rng.uniform(1500, 1800))
                _fake_run(out / "detection" / set_name / f"{model}{suffix}-s{seed}", val, tests, cpu_s)
                expected.setdefault((set_name, model), []).append((tests[1], cpu_s))
    _fake_run(out / "detection" / "crowded" / "group-detr-fashion-crowded-s2", [0.5], [_metrics(rng, True)], None,
              report=False)

    argv = ["detection", "--report-only", "--out", str(out), "--results", str(page), "--ledgers", str(tmp_path),
            "--models", "detr-fashion", "group-detr-fashion"]
    study.main(argv)
    assert len(json.loads(ledger.read_text())["runs"]) == 11
    for folder in (out / "detection" / "fashion").iterdir():  # the folders go; the ledger keeps their results
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    study.main(argv)  # a second aggregation replaces the section
    text = page.read_text()
    assert "kept as it is" in text and text.count(f"## {study.STUDIES['detection'].title}") == 1
    assert "CPU: Test CPU 9000." in text and f"python bench/study.py detection --out {out}" in text  # the training command
    assert "--report-only" not in text
    assert "Not finished: `group-detr-fashion-crowded` seed 2." in text
    for (set_name, model), runs in expected.items():
        recipe = model + ("-crowded" if set_name == "crowded" else "")
        cells = _row(text, set_name, recipe)
        metrics = cells[4:10]
        for name, cell in zip(("AP", "AP50", "AP75", "APs", "APm"), metrics):
            assert cell == _pm([t[name] for t, _ in runs]), name
        assert metrics[5] == (_pm([t["APl"] for t, _ in runs]) if set_name == "crowded" else "–")
        assert cells[3] == ("0, 1" if len(runs) == 2 else "0, 1, 2") and cells[10] == ", ".join(["2"] * len(runs))
        cpu_min = [c / 60 for _, c in runs]
        assert cells[11] == f"{np.mean(cpu_min):.1f} ± {np.std(cpu_min, ddof=1):.1f}"
        per_min = [t["AP"] / c for (t, _), c in zip(runs, cpu_min)]
        assert cells[12] == f"{np.mean(per_min):.4f} ± {np.std(per_min, ddof=1):.4f}"


def test_paired_differences_compare_the_same_seeds(study, tmp_path):
    """Rank-DETR against RT-DETR: per seed both finished, the difference of AP / AP50 / AP75, mean ±
    std and how many seeds it is ahead in; a seed only one of them finished is left out."""
    out, page = tmp_path / "runs", tmp_path / "detection.md"
    rng = np.random.default_rng(1)
    tests = {m: {seed: _metrics(rng, False) for seed in (0, 1, 2)} for m in ("rtdetr-fashion", "rank-rtdetr-fashion")}
    for model, seeds in tests.items():
        for seed, metrics in seeds.items():
            if (model, seed) != ("rtdetr-fashion", 2):  # the reference lacks seed 2
                _fake_run(out / "detection" / "fashion" / f"{model}-s{seed}", [0.3], [metrics], 1700.0)
    study.main(["detection", "--report-only", "--out", str(out), "--results", str(page), "--ledgers", str(tmp_path),
                "--models", "rtdetr-fashion", "rank-rtdetr-fashion", "--sets", "fashion"])
    text = page.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| fashion | RT-DETR + Rank-DETR − RT-DETR |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    for cell, metric in zip(cells[3:], ("AP", "AP50", "AP75")):
        diffs = [tests["rank-rtdetr-fashion"][s][metric] - tests["rtdetr-fashion"][s][metric] for s in (0, 1)]
        assert cell == f"{_pm(diffs)} ({sum(d > 0 for d in diffs)} of 2)", metric
    assert "RT-DETR − DETR" not in text  # no DETR runs: no row


def _budget_state(run_dir: Path, budget_stopped: bool) -> None:
    """The run's last checkpoint as the engine writes it, with its ``budget_stopped``."""
    import torch

    from relformer.train.checkpoint import CheckpointDir

    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    CheckpointDir(run_dir / "checkpoints").save(10, model, optimizer, scheduler, {
        "global_step": 10, "best_step": 10, "train_samples": 640, "train_seconds": 8.0, "budget_stopped": budget_stopped})


def test_runs_the_budget_cut_short_are_set_aside_and_run_again(study, tmp_path, capsys):
    """detection counts whole schedules only: a run the budget ended early (its checkpoint says so, or,
    recorded before the engine kept that, its CPU time reached the budget) leaves the tables and the
    ledger's runs for its "cut" list, its folder is renamed and a dry run lists it again."""
    out, page = tmp_path / "runs", tmp_path / "detection.md"
    folder = out / "detection" / "fashion"
    command = "relformer train rtdetr-fashion --set seed={} --set max_minutes=30 --set budget_clock=cpu"
    for seed, cpu_s, stopped in ((0, 1850.0, None), (1, 900.0, True), (2, 1850.0, False)):
        run = folder / f"rtdetr-fashion-s{seed}"
        _fake_run(run, [0.3], [{"AP": 0.1 * (seed + 1)}], cpu_s)
        (run / "study.json").write_text(json.dumps({"cpu_s": cpu_s, "cpu_model": "Test CPU 9000",
                                                    "command": command.format(seed)}))
        if stopped is not None:
            _budget_state(run, stopped)
    common = ["detection", "--out", str(out), "--results", str(page), "--ledgers", str(tmp_path),
              "--models", "rtdetr-fashion", "--sets", "fashion"]
    study.main([*common, "--report-only"])
    ledger = json.loads((tmp_path / "detection.json").read_text())
    assert sorted(ledger["runs"]) == ["fashion/rtdetr-fashion-s2"]  # flag False wins over CPU time
    assert sorted(ledger["cut"]) == ["fashion/rtdetr-fashion-s0", "fashion/rtdetr-fashion-s1"]
    assert ledger["cut"]["fashion/rtdetr-fashion-s1"][0]["train_samples_per_s"] == pytest.approx(80.0)
    assert ledger["runs"]["fashion/rtdetr-fashion-s2"]["budget_stopped"] is False
    assert sorted(p.name for p in folder.iterdir()) == ["rtdetr-fashion-s0-cut1", "rtdetr-fashion-s1-cut1",
                                                         "rtdetr-fashion-s2"]
    text = page.read_text()
    assert _row(text, "fashion", "rtdetr-fashion")[3:5] == ["2", "0.300"]  # seed 2 alone in the means
    assert "| fashion | `rtdetr-fashion` | 0 | Test CPU 9000 | 1 | – | 0.100 | 30.8 | – |" in text
    assert "| fashion | `rtdetr-fashion` | 1 | Test CPU 9000 | 1 | 10 | 0.200 | 15.0 | 80.0 |" in text
    # a set-aside entry recorded before the ledger kept the steps gets them from its renamed folder
    del ledger["cut"]["fashion/rtdetr-fashion-s1"][0]["steps"]
    (tmp_path / "detection.json").write_text(json.dumps(ledger))
    study.main([*common, "--report-only"])
    ledger = json.loads((tmp_path / "detection.json").read_text())
    assert ledger["cut"]["fashion/rtdetr-fashion-s1"][0]["steps"] == 10
    # an entry recorded before the ledger kept the throughput gets it from its folder
    del ledger["runs"]["fashion/rtdetr-fashion-s2"]["train_samples_per_s"]
    (tmp_path / "detection.json").write_text(json.dumps(ledger))
    study.main([*common, "--report-only"])
    entry = json.loads((tmp_path / "detection.json").read_text())["runs"]["fashion/rtdetr-fashion-s2"]
    assert entry["train_samples_per_s"] == pytest.approx(80.0) and entry["test_AP"] == pytest.approx(0.3)
    capsys.readouterr()
    study.main([*common, "--dry-run"])
    printed = capsys.readouterr().out
    assert "seed=0" in printed and "seed=1" in printed and "seed=2" not in printed  # run again, fresh folders
    assert "--resume" not in printed


def test_dry_run_prints_only_unfinished_runs_and_resumes_interrupted_ones(study, tmp_path, capsys):
    out, page = tmp_path / "runs", tmp_path / "page.md"
    _fake_run(out / "grounding" / "sr3d-gen" / "referit3dnet-sr3d-gen-s0", [0.2], [{"accuracy": 0.2}], 100.0,
              select="eval_val_accuracy")
    (out / "grounding" / "sr3d-gen" / "referit3dnet-sr3d-gen-s1" / "checkpoints").mkdir(parents=True)  # interrupted
    common = ["--out", str(out), "--results", str(page), "--ledgers", str(tmp_path)]
    study.main(["grounding", "--dry-run", "--models", "referit3dnet", "--seeds", "0", "1", "2", "--minutes", "7",
                "--threads", "2", *common])
    lines = capsys.readouterr().out.splitlines()
    folder = out / "grounding" / "sr3d-gen"
    assert [line for line in lines if line.startswith("OMP_NUM_THREADS=")] == [
        f"OMP_NUM_THREADS=2 relformer train referit3dnet-sr3d-gen --set seed=1 --set max_minutes=7 --set "
        f"budget_clock=cpu --out {folder / 'referit3dnet-sr3d-gen-s1'} --resume",
        f"OMP_NUM_THREADS=2 relformer train referit3dnet-sr3d-gen --set seed=2 --set max_minutes=7 --set "
        f"budget_clock=cpu --out {folder / 'referit3dnet-sr3d-gen-s2'}"]
    assert "done: sr3d-gen/referit3dnet-sr3d-gen-s0" in lines
    assert not page.exists()  # a dry run writes no page
    # the temporal recipes keep their own budgets (training stops early enough for the test table)
    study.main(["temporal", "--dry-run", "--models", "tgn", "--sets", "uci", "--seeds", "0", *common])
    assert "max_minutes" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        study.main(["detection", "--dry-run", "--models", "no-such-model", *common])
    assert "--models: unknown no-such-model" in capsys.readouterr().err


_FAKE_TRAINER = """
import csv, sys, time
from pathlib import Path
run = Path(sys.argv[1]); run.mkdir(parents=True, exist_ok=True)
t = time.process_time()
while time.process_time() - t < 0.3:  # some CPU work to be measured
    pass
with open(run / "metrics.csv", "w", newline="") as f:
    w = csv.writer(f); w.writerow(["kind", "epoch", "step", "wall_s", "eval_val_AP", "eval_test_AP"])
    w.writerow(["eval", 1, 5, 1.0, 0.25, float(sys.argv[2]) / 10])
(run / "report.md").write_text("done")
sys.exit(int(sys.argv[2]) == 3)
"""


def test_runner_records_cpu_time_and_skips_finished_runs(study, tmp_path, monkeypatch):
    """The scheduler with a stand-in for `relformer train` (a short script): every job runs once,
    two at a time, its CPU time is recorded from wait4 into the ledger, a failure is reported and
    kept out of the ledger, a rerun skips the finished ones."""
    started = []

    def fake_command(job, out, minutes, resume):
        started.append(job)
        return [sys.executable, "-c", _FAKE_TRAINER, str(job.folder(out)), str(job.seed)]

    monkeypatch.setattr(study, "command", fake_command)
    ledgers = {"detection": study.Ledger(tmp_path / "ledger.json")}
    jobs = [study.Job(study.STUDIES["detection"], "fashion", "detr-fashion", seed) for seed in (0, 1, 3)]
    failures = study.run_jobs(jobs, tmp_path, ledgers, 1.0, 1, 2, dry_run=False)
    assert len(failures) == 1 and "exit 1" in failures[0]  # seed 3's stand-in exits 1
    saved = json.loads((tmp_path / "ledger.json").read_text())["runs"]
    assert sorted(saved) == ["fashion/detr-fashion-s0", "fashion/detr-fashion-s1"]
    for job in jobs[:2]:
        record = saved[job.key]
        assert 0.25 <= record["cpu_s"] <= 5.0 and record["wall_s"] >= record["cpu_s"] * 0.5 and record["threads"] == 1
        assert record["test_AP"] == pytest.approx(job.seed / 10) and math.isnan(record["test_APl"])
    assert len(started) == 3
    # the failed run left a report (the stand-in writes one before exiting 1): finished on disk, so
    # the rerun trains nothing
    ledgers = {"detection": study.Ledger(tmp_path / "ledger.json")}
    assert study.run_jobs(jobs, tmp_path, ledgers, 1.0, 1, 2, dry_run=False) == []
    assert len(started) == 3
    # a deadline in the past: nothing starts, and the runner returns
    late = [study.Job(study.STUDIES["detection"], "fashion", "detr-fashion", 7)]
    assert study.run_jobs(late, tmp_path, ledgers, 1.0, 1, 2, False, study.datetime(2000, 1, 1)) == []
    assert not late[0].folder(tmp_path).exists() and "fashion/detr-fashion-s7" not in ledgers["detection"].runs


def test_each_data_set_is_built_once_before_the_runs(study, tmp_path, monkeypatch):
    built, order = [], []
    monkeypatch.setitem(study.STUDIES, "detection",
                        dataclasses.replace(study.STUDIES["detection"], prepare=lambda recipe: built.append(recipe)))
    monkeypatch.setattr(study, "run_jobs", lambda jobs, *a, **k: order.append((list(built), len(jobs))) or [])
    _fake_run(tmp_path / "runs" / "detection" / "fashion" / "detr-fashion-s0", [0.2], [{"AP": 0.2}], 60.0)
    study.main(["detection", "--models", "detr-fashion", "group-detr-fashion", "--seeds", "0", "--out",
                str(tmp_path / "runs"), "--results", str(tmp_path / "page.md"), "--ledgers", str(tmp_path)])
    assert built == ["group-detr-fashion", "detr-fashion-crowded"]  # fashion's first unfinished job, then crowded's
    assert order == [(built, 4)]  # before the runner; it gets the whole queue
    built.clear()
    study.main(["detection", "--models", "detr-fashion", "--seeds", "0", "--dry-run", "--out", str(tmp_path / "runs"),
                "--ledgers", str(tmp_path)])
    assert built == []  # a dry run builds nothing


def test_several_studies_share_one_queue_seed_by_seed(study, tmp_path, capsys):
    study.main(["grounding", "temporal", "--dry-run", "--seeds", "0", "1", "--out", str(tmp_path), "--ledgers",
                str(tmp_path)])
    recipes = [line.split()[3] + line.split()[5][-2:] for line in capsys.readouterr().out.splitlines()
               if line.startswith("OMP_NUM_THREADS=")]
    assert len(recipes) == 2 * (3 + 9) and recipes[0] == "transrefer3d-sr3d-gen=0" and recipes[12] == \
        "transrefer3d-sr3d-gen=1" and recipes[3] == "dygformer-uci=0"
    with pytest.raises(SystemExit):
        study.main(["grounding", "temporal", "--models", "tgn", "--dry-run", "--out", str(tmp_path)])
    assert "need a single study" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study.main(["grounding", "--start-before", "soon", "--dry-run"])
    assert "neither HH:MM" in capsys.readouterr().err


def test_temporal_runs_are_read_from_their_test_table_and_edgebank_is_a_row(study, tmp_path, monkeypatch):
    out, page = tmp_path / "runs", tmp_path / "temporal.md"
    tables = []
    for seed in (0, 1):
        run = out / "temporal" / "uci" / f"tgn-uci-s{seed}"
        _fake_run(run, [0.7, 0.9, 0.8], [{}, {}, {}], 600.0, select="eval_ap")
        table = {"transductive_random_ap": 0.8 + seed / 100, "transductive_mrr": 0.5 + seed / 10,
                 "inductive_historical_auc": 0.6 - seed / 100}
        (run / "plots").mkdir()
        (run / "plots" / "test_metrics.json").write_text(json.dumps(table))
        tables.append(table)
    edgebank = {"transductive_random_ap": 0.77, "inductive_historical_auc": 0.5}
    calls = []
    defs = sys.modules["study_defs"]
    monkeypatch.setattr(defs, "_edgebank", lambda name: calls.append(name) or edgebank)
    patched = defs.Study(**{**defs.TEMPORAL.__dict__, "baseline": defs._edgebank})  # a frozen dataclass: a copy
    monkeypatch.setitem(study.STUDIES, "temporal", patched)
    argv = ["temporal", "--models", "tgn", "--sets", "uci", "--seeds", "0", "1", "--out", str(out), "--results",
            str(page), "--ledgers", str(tmp_path)]
    study.main(argv)
    study.main(argv)  # the baseline is computed once and kept in the ledger
    assert calls == ["uci"]
    text = page.read_text()
    cells = _row(text, "uci", "tgn-uci")
    assert cells[4] == _pm([t["transductive_random_ap"] for t in tables])  # AP random, transductive table
    assert cells[10] == _pm([t["transductive_mrr"] for t in tables]) and cells[11] == "2, 2"
    assert "| uci | EdgeBank (unlimited memory) | (no training) | – | 0.770 |" in text
    inductive = text.split("**Inductive")[1]
    assert _row(inductive, "uci", "tgn-uci")[4 + 4] == _pm([t["inductive_historical_auc"] for t in tables])
