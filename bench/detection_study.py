"""The detection study: models x canvas sets x seeds, each run one `relformer train` under the same
wall-clock budget, aggregated into a section of bench/results/detection.md.

    python bench/detection_study.py --dry-run                   # the commands of the runs still to do
    python bench/detection_study.py                             # train them (resumable), then aggregate
    python bench/detection_study.py --models detr-fashion group-detr-fashion rtdetr-fashion rank-rtdetr-fashion \\
        rank-rtdetr-arch-fashion rank-rtdetr-loss-fashion --sets fashion crowded \\
        --seeds 0 1 2 --minutes 30 --threads 1                  # the defaults, spelled out
    python bench/detection_study.py --report-only               # aggregate the finished runs only

A model is a recipe name for the 128 x 128 canvases (``--sets fashion``: ``detr-fashion``); its
recipe for the crowded multi-scale canvases (``--sets crowded``) is the same name + ``-crowded``
(``detr-fashion-crowded``). Each run is

    relformer train RECIPE --set seed=S --set max_minutes=M --out OUT/SET/RECIPE-sS

with ``OMP_NUM_THREADS=--threads``, ``--workers`` runs side by side (default: the cores divided by
``--threads``). A run whose folder has ``report.md`` is finished and skipped; one with checkpoints
but no report is continued with ``--resume``. The runner writes ``study.json`` beside each run:
the CPU time the training process used (``os.wait4``'s rusage, summed over resumes), its wall time,
the threads and the CPU model (``lscpu``).

Aggregation: per run, the test metrics (``eval_test_AP``, ``AP50``, ``AP75``, ``APs``, ``APm``,
``APl`` of ``metrics.csv``) at the epoch of the best ``eval_val_AP`` (the checkpoint the engine
keeps); per (set, model), their mean ± standard deviation over the seeds, the CPU minutes per run
and the test AP per CPU-minute (test AP / CPU minutes of the whole run, mean over seeds).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from benchlib import write_section  # noqa: E402

SETS = {"fashion": ("", "128 × 128, 1–8 items of 16–64 px (`relformer.data.fashion_detection`)"),
        "crowded": ("-crowded", "crowded multi-scale: 256 × 256, 4–20 items of 12–128 px")}
LABELS = {"detr-fashion": "DETR", "group-detr-fashion": "Group DETR", "relation-detr-fashion": "Relation-DETR",
          "hf-detr-fashion": "HF DETR", "rtdetr-fashion": "RT-DETR", "rank-rtdetr-fashion": "RT-DETR + Rank-DETR",
          "rank-rtdetr-arch-fashion": "RT-DETR + Rank-DETR architecture", "rank-rtdetr-loss-fashion":
          "RT-DETR + Rank-DETR loss and cost"}
MODELS = ("detr-fashion", "group-detr-fashion", "rtdetr-fashion", "rank-rtdetr-fashion", "rank-rtdetr-arch-fashion",
          "rank-rtdetr-loss-fashion")
SEEDS = (0, 1, 2)
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
TITLE = "Detection study: both canvas sets, seeds, one wall-clock budget per run"


@dataclass(frozen=True)
class Job:
    set: str
    model: str
    seed: int

    @property
    def recipe(self) -> str:
        return self.model + SETS[self.set][0]

    def folder(self, out: Path) -> Path:
        return out / self.set / f"{self.recipe}-s{self.seed}"


def cpu_model() -> str:
    """``lscpu``'s model name (the CPU every number depends on)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown (lscpu failed)"
    for line in text.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def command(job: Job, out: Path, minutes: float, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "relformer.cli", "train", job.recipe, "--set", f"seed={job.seed}",
           "--set", f"max_minutes={minutes:g}", "--out", str(job.folder(out))]
    return cmd + (["--resume"] if resume else [])


def shown(cmd: list[str]) -> str:
    """A command as one types it (``relformer`` for ``python -m relformer.cli``)."""
    return shlex.join(["relformer", *cmd[3:]])


def finished(run_dir: Path) -> bool:
    return (run_dir / "report.md").is_file()


def _record(run_dir: Path, cpu_s: float, wall_s: float, threads: int, cpu: str, cmd: list[str]) -> None:
    path = run_dir / "study.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    data = {"cpu_s": old.get("cpu_s", 0.0) + cpu_s, "wall_s": old.get("wall_s", 0.0) + wall_s, "threads": threads,
            "cpu_model": cpu, "command": shown(cmd)}
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def run_jobs(jobs: list[Job], out: Path, minutes: float, threads: int, workers: int, dry_run: bool) -> list[str]:
    """Train the unfinished jobs, ``workers`` at a time; returns the failures (one line each)."""
    todo = [(job, command(job, out, minutes, (job.folder(out) / "checkpoints").is_dir()))
            for job in jobs if not finished(job.folder(out))]
    for job in jobs:
        if finished(job.folder(out)):
            print(f"done: {job.folder(out)}")
    if dry_run:
        for _, cmd in todo:
            print(f"OMP_NUM_THREADS={threads} {shown(cmd)}")
        return []
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cpu, running, failures = cpu_model(), {}, []
    while todo or running:
        while todo and len(running) < workers:
            job, cmd = todo.pop(0)
            job.folder(out).parent.mkdir(parents=True, exist_ok=True)
            print(f"OMP_NUM_THREADS={threads} {shown(cmd)}", flush=True)
            log = open(job.folder(out).with_suffix(".log"), "a")
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
            running[proc.pid] = (job, cmd, proc, log, time.perf_counter())
        pid, status, usage = os.wait4(-1, 0)  # the first training to end, with its CPU time
        if pid not in running:
            continue
        job, cmd, proc, log, start = running.pop(pid)
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.close()
        _record(job.folder(out), usage.ru_utime + usage.ru_stime, time.perf_counter() - start, threads, cpu, cmd)
        if proc.returncode != 0:
            failures.append(f"{shown(cmd)}: exit {proc.returncode} (log: {job.folder(out).with_suffix('.log')})")
    return failures


# ---- aggregation ---------------------------------------------------------------------------------

def _number(row: dict, key: str) -> float:
    value = row.get(key)
    try:
        return float(value) if value not in (None, "") else math.nan
    except ValueError:
        return math.nan


def read_run(run_dir: Path) -> dict:
    """The test metrics at the best-val-AP epoch of a finished run, its epochs and its cost."""
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == "eval"]
    if not rows:
        raise ValueError(f"{run_dir}/metrics.csv has no eval rows")
    best = max(rows, key=lambda r: (_number(r, "eval_val_AP"), -int(r["epoch"])))  # the first best epoch
    result = {m: _number(best, f"eval_test_{m}") for m in METRICS}
    result.update(best_epoch=int(best["epoch"]), epochs=len(rows), wall_s=_number(rows[-1], "wall_s"))
    study = json.loads((run_dir / "study.json").read_text()) if (run_dir / "study.json").is_file() else {}
    result["cpu_s"] = study.get("cpu_s", math.nan)
    result["cpu_model"] = study.get("cpu_model")
    return result


def mean_std(values: list[float], digits: int = 3) -> str:
    """``mean ± std`` (sample std) of the finite values, ``–`` when there is none."""
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def aggregate(jobs: list[Job], out: Path) -> tuple[dict[tuple[str, str], dict[int, dict]], list[Job]]:
    """``{(set, model): {seed: read_run(...)}}`` of the finished jobs, and the unfinished ones."""
    runs: dict[tuple[str, str], dict[int, dict]] = {}
    missing = []
    for job in jobs:
        if finished(job.folder(out)):
            runs.setdefault((job.set, job.model), {})[job.seed] = read_run(job.folder(out))
        else:
            missing.append(job)
    return runs, missing


def section(runs: dict[tuple[str, str], dict[int, dict]], missing: list[Job], invocation: str,
            minutes: float) -> list[str]:
    """The markdown section for bench/results/detection.md."""
    models = sorted({r["cpu_model"] for by_seed in runs.values() for r in by_seed.values() if r["cpu_model"]})
    lines = [f"## {TITLE}", "",
             f"`{invocation}`: each run `relformer train RECIPE --set seed=S --set max_minutes={minutes:g}`; "
             "test metrics (COCO box mAP, faster-coco-eval) at the epoch of the best val AP, mean ± std over the "
             "seeds; CPU min: the CPU time of the training process (user + system, all its threads); "
             "AP / CPU-min: test AP divided by the CPU minutes of the whole run.", "",
             f"CPU: {', '.join(models) if models else cpu_model() + ' (this machine; the runs did not record one)'}.",
             ""]
    for name, (_, text) in SETS.items():
        if any(s == name for s, _ in runs):
            lines.append(f"- `{name}`: {text}")
    lines += ["", "| set | model | recipe | seeds | AP | AP50 | AP75 | AP_small | AP_medium | AP_large | "
              "best epoch | CPU min per run | AP / CPU-min |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (set_name, model), by_seed in runs.items():
        res = [by_seed[s] for s in sorted(by_seed)]
        cpu_min = [r["cpu_s"] / 60 for r in res]
        per_min = [r["AP"] / c for r, c in zip(res, cpu_min) if c > 0]
        cells = [mean_std([r[m] for r in res]) for m in METRICS]
        lines.append(f"| {set_name} | {LABELS.get(model, model)} | `{model + SETS[set_name][0]}` | "
                     f"{', '.join(map(str, sorted(by_seed)))} | " + " | ".join(cells) +
                     f" | {', '.join(str(r['best_epoch']) for r in res)} | {mean_std(cpu_min, 1)} | "
                     f"{mean_std(per_min, 4)} |")
    if missing:
        lines += ["", "Not finished: " + ", ".join(f"`{j.recipe}` seed {j.seed}" for j in missing) + "."]
    return lines + [""]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--models", nargs="+", default=list(MODELS),
                    help="recipe names for the 128 x 128 canvases (the crowded set adds -crowded)")
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    ap.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    ap.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget per run (max_minutes)")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each run")
    ap.add_argument("--workers", type=int, default=None, help="runs side by side (default: cores / threads)")
    ap.add_argument("--out", type=Path, default=Path("runs/study"), help="the run folders")
    ap.add_argument("--results", type=Path, default=ROOT / "results" / "detection.md",
                    help="the page whose study section is (re)written")
    ap.add_argument("--dry-run", action="store_true", help="print the commands of the unfinished runs, run nothing")
    ap.add_argument("--report-only", action="store_true", help="aggregate the finished runs, train nothing")
    args = ap.parse_args(argv)
    if args.minutes <= 0 or args.threads < 1 or (args.workers is not None and args.workers < 1):
        ap.error("--minutes must be > 0, --threads and --workers >= 1")
    if not args.report_only:
        from relformer.tasks import list_recipes

        known = set(list_recipes())
        unknown = [m + SETS[s][0] for m in args.models for s in args.sets if m + SETS[s][0] not in known]
        if unknown:
            ap.error(f"unknown recipe(s) {', '.join(unknown)}; registered: {', '.join(sorted(known))}")
    jobs = [Job(s, m, seed) for s in args.sets for m in args.models for seed in args.seeds]
    workers = args.workers or max(1, (os.cpu_count() or 1) // args.threads)
    failures = [] if args.report_only else run_jobs(jobs, args.out, args.minutes, args.threads, workers, args.dry_run)
    if args.dry_run:
        return
    runs, missing = aggregate(jobs, args.out)
    invocation = shlex.join(["python", "bench/detection_study.py", *(sys.argv[1:] if argv is None else argv)])
    write_section(section(runs, missing, invocation, args.minutes), args.results, TITLE,
                  heading="# Detection family — results")
    if failures:
        raise SystemExit("failed runs:\n" + "\n".join(failures))


if __name__ == "__main__":
    main()
