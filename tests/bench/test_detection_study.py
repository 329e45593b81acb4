"""bench/detection_study.py on run folders the test writes: the best-val-epoch test metrics, mean ±
std over seeds and AP per CPU-minute in the page's section (the rest of the page kept), resumable
scheduling (finished runs skipped, interrupted ones resumed), the dry run, the CPU time recorded."""
from __future__ import annotations

import csv
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
    spec = importlib.util.spec_from_file_location("detection_study", BENCH / "detection_study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def _fake_run(run_dir: Path, val_ap: list[float], tests: list[dict[str, float]], cpu_s: float | None,
              report: bool = True) -> None:
    """A run folder as the engine leaves it: metrics.csv (train and eval rows), report.md, study.json."""
    run_dir.mkdir(parents=True)
    keys = sorted({k for t in tests for k in t})
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS + [f"eval_test_{k}" for k in keys])
        w.writeheader()
        for epoch, (val, test) in enumerate(zip(val_ap, tests), start=1):
            w.writerow({"kind": "train", "epoch": epoch, "step": 10 * epoch, "wall_s": 60.0 * epoch - 5, "train_loss": 1.0})
            w.writerow({"kind": "eval", "epoch": epoch, "step": 10 * epoch, "wall_s": 60.0 * epoch, "eval_val_AP": val,
                        **{f"eval_test_{k}": v for k, v in test.items()}})
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


def test_aggregation_of_fake_runs(study, tmp_path, capsys):
    rng = np.random.default_rng(0)
    out, page = tmp_path / "runs", tmp_path / "detection.md"
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
                _fake_run(out / set_name / f"{model}{suffix}-s{seed}", val, tests, cpu_s)
                expected.setdefault((set_name, model), []).append((tests[1], cpu_s))
    _fake_run(out / "crowded" / "group-detr-fashion-crowded-s2", [0.5], [_metrics(rng, True)], None, report=False)

    argv = ["--report-only", "--out", str(out), "--results", str(page), "--models", "detr-fashion", "group-detr-fashion"]
    study.main(argv)
    study.main(argv)  # a second aggregation replaces the section
    text = page.read_text()
    assert "kept as it is" in text and text.count(f"## {study.TITLE}") == 1
    assert "CPU: Test CPU 9000." in text and "python bench/detection_study.py --report-only" in text
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


def test_dry_run_prints_only_unfinished_runs_and_resumes_interrupted_ones(study, tmp_path, capsys):
    out, page = tmp_path / "runs", tmp_path / "page.md"
    _fake_run(out / "fashion" / "detr-fashion-s0", [0.2], [{"AP": 0.2}], 100.0)
    (out / "fashion" / "detr-fashion-s1" / "checkpoints").mkdir(parents=True)  # interrupted: no report yet
    study.main(["--dry-run", "--models", "detr-fashion", "--sets", "fashion", "--seeds", "0", "1", "2",
                "--minutes", "7", "--threads", "2", "--out", str(out), "--results", str(page)])
    lines = capsys.readouterr().out.splitlines()
    commands = [line for line in lines if line.startswith("OMP_NUM_THREADS=")]
    assert commands == [
        f"OMP_NUM_THREADS=2 relformer train detr-fashion --set seed=1 --set max_minutes=7 --out "
        f"{out / 'fashion' / 'detr-fashion-s1'} --resume",
        f"OMP_NUM_THREADS=2 relformer train detr-fashion --set seed=2 --set max_minutes=7 --out "
        f"{out / 'fashion' / 'detr-fashion-s2'}"]
    assert any(line.startswith("done:") and line.endswith("detr-fashion-s0") for line in lines)
    assert not page.exists()  # a dry run writes nothing
    with pytest.raises(SystemExit):
        study.main(["--dry-run", "--models", "no-such-recipe", "--out", str(out)])
    assert "unknown recipe(s) no-such-recipe" in capsys.readouterr().err


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


def test_runner_records_cpu_time_and_skips_finished_runs(study, tmp_path, monkeypatch, capsys):
    """The scheduler with a stand-in for `relformer train` (a short script): every job runs once,
    two at a time, its CPU time is recorded from wait4, a failure is reported, a rerun skips all."""
    started = []

    def fake_command(job, out, minutes, resume):
        started.append(job)
        return [sys.executable, "-c", _FAKE_TRAINER, str(job.folder(out)), str(job.seed)]

    monkeypatch.setattr(study, "command", fake_command)
    jobs = [study.Job("fashion", "detr-fashion", seed) for seed in (0, 1, 3)]
    failures = study.run_jobs(jobs, tmp_path, 1.0, 1, 2, dry_run=False)
    assert len(failures) == 1 and "exit 1" in failures[0]  # seed 3's stand-in exits 1
    for job in jobs:
        record = json.loads((job.folder(tmp_path) / "study.json").read_text())
        assert 0.25 <= record["cpu_s"] <= 5.0 and record["wall_s"] >= record["cpu_s"] * 0.5 and record["threads"] == 1
        assert study.read_run(job.folder(tmp_path))["AP"] == pytest.approx(job.seed / 10)
    assert len(started) == 3
    assert study.run_jobs(jobs, tmp_path, 1.0, 1, 2, dry_run=False) == [] and len(started) == 3  # all finished
    assert math.isnan(study.read_run(jobs[0].folder(tmp_path))["APl"])  # no such column: nan, shown as –
