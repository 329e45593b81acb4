"""Recipe studies: several recipes x seeds trained under one CPU budget, compared side by side.

    python bench/studies.py zinc run --out runs/zinc          # 3 recipes x 3 seeds, 2 runs at a time
    python bench/studies.py zinc report --out runs/zinc       # -> the table in bench/results/graph.md + plot
    python bench/studies.py detection run --out runs/detection --seeds 0
    python bench/studies.py detection report --out runs/detection

* ``zinc``: ``gps-zinc``, ``pyg-gps-zinc`` (the same model on PyG's GPSConv) and ``gt-zinc`` on the
  ZINC-like 12k dataset; test MAE at the best-val-MAE epoch.
* ``detection``: ``detr-fashion``, ``relation-detr-fashion``, ``group-detr-fashion`` and
  ``hf-detr-fashion`` (HF's DETR, same config and initial weights); test AP at the best-val-AP epoch.

``run`` trains every (recipe, seed) with ``relformer train`` on this 2-core machine as two
single-threaded runs side by side (each run holds one core: the budget is 30 minutes of one core
per run). ``report`` reads each finished run's ``metrics.csv``: the test metric at the epoch of the
best val metric (the checkpoint the engine keeps), the wall time and the val curves; it fills the
table between the study's markers in its results page and copies the seed-0 reports beside it.
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from dataclasses import dataclass

ROOT = Path(__file__).resolve().parent
SEEDS = (0, 1, 2)
BUDGET_S = 30 * 60


@dataclass(frozen=True)
class Study:
    recipes: dict[str, str]  # recipe -> what it is
    val: str                 # metrics.csv column that picks the epoch
    test: str                # the reported column
    mode: str                # "min" or "max" of ``val``
    page: str                # results page (under bench/results) holding the table markers
    folder: str              # where the seed-0 reports are copied (under bench/results)
    label: str               # the metric's name in the table and plot


STUDIES = {
    "zinc": Study({"gps-zinc": "relformer GPS", "pyg-gps-zinc": "PyG GPSConv (same model)", "gt-zinc": "relformer GT"},
                  "eval_val_mae", "eval_test_mae", "min", "graph.md", "graph", "MAE"),
    "detection": Study({"detr-fashion": "relformer DETR", "relation-detr-fashion": "relformer Relation-DETR",
                        "group-detr-fashion": "relformer Group DETR", "hf-detr-fashion": "HF DETR (same model)"},
                       "eval_val_AP", "eval_test_AP", "max", "detection.md", "detection", "AP"),
}


def run(out: Path, recipes, seeds, workers: int = 2) -> None:
    """Every (recipe, seed), ``workers`` processes at a time, one thread each."""
    jobs = [(r, s) for s in seeds for r in recipes]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    running: list[subprocess.Popen] = []
    while jobs or running:
        while jobs and len(running) < workers:
            recipe, seed = jobs.pop(0)
            run_dir = out / f"{recipe}-s{seed}"
            if (run_dir / "report.md").is_file():
                continue
            cmd = [sys.executable, "-m", "relformer.cli", "train", recipe, "--set", f"seed={seed}",
                   "--set", f"out_dir={run_dir}"]
            print(" ".join(cmd[2:]), flush=True)
            log = open(out / f"{recipe}-s{seed}.log", "w")
            running.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
        running[0].wait()
        running = [p for p in running if p.poll() is None]


def read_run(run_dir: Path, study: Study) -> dict:
    rows = [r for r in csv.DictReader(open(run_dir / "metrics.csv")) if r["kind"] == "eval"]
    pick = min if study.mode == "min" else max
    best = pick(rows, key=lambda r: float(r[study.val]))
    return dict(epochs=len(rows), wall=float(rows[-1]["wall_s"]), best_epoch=int(best["epoch"]),
                val=float(best[study.val]), test=float(best[study.test]), final_test=float(rows[-1][study.test]),
                curve=[(int(r["epoch"]), float(r[study.val])) for r in rows])


def _pm(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def report(study: Study, out: Path, results: Path) -> None:
    from matplotlib.figure import Figure

    runs = {r: {s: read_run(out / f"{r}-s{s}", study) for s in SEEDS if (out / f"{r}-s{s}" / "report.md").is_file()}
            for r in study.recipes}
    params = {}
    for r in (r for r in study.recipes if runs[r]):
        for line in (out / f"{r}-s{min(runs[r])}" / "report.md").read_text().splitlines():
            if line.startswith("| parameters |"):
                params[r] = line.split("|")[2].strip()
    fig = Figure(figsize=(6.5, 4))
    ax = fig.add_subplot()
    for (r, by_seed), color in zip(runs.items(), ("tab:blue", "tab:orange", "tab:green", "tab:red")):
        for k, (s, res) in enumerate(by_seed.items()):
            xs, ys = zip(*res["curve"])
            ax.plot(xs, ys, color=color, alpha=0.8, lw=1, label=study.recipes[r] if k == 0 else None)
    ax.set(xlabel="epoch", ylabel=f"val {study.label}", yscale="log" if study.mode == "min" else "linear",
           title=f"val {study.label} per epoch (every seed)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(results / f"{Path(study.page).stem}-curves.png", dpi=120)
    lines = [
        f"| recipe | model | params | seeds | test {study.label} (best-val epoch) | test {study.label} (last epoch) | "
        "best epoch | wall time per run | within 30 min |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r, by_seed in runs.items():
        res = list(by_seed.values())
        if not res:
            continue
        walls = [x["wall"] for x in res]
        lines.append(f"| `{r}` | {study.recipes[r]} | {params.get(r, '?')} | {len(res)} | {_pm([x['test'] for x in res])} | "
                     f"{_pm([x['final_test'] for x in res])} | {', '.join(str(x['best_epoch']) for x in res)} | "
                     f"{statistics.mean(walls) / 60:.1f} min (max {max(walls) / 60:.1f}) | "
                     f"{'yes' if max(walls) <= BUDGET_S else 'NO'} |")
    table = "\n".join(lines)
    page = results / study.page
    text = page.read_text() if page.is_file() else ""
    start, end = "<!-- study-table -->", "<!-- /study-table -->"
    if start in text and end in text:
        text = text[:text.index(start) + len(start)] + "\n" + table + "\n" + text[text.index(end):]
        page.write_text(text)
    else:
        print(f"{page} has no {start} ... {end} block; the table:")
    print(table)
    for r in study.recipes:  # the seed-0 reports (no checkpoints) next to the page
        src, dst = out / f"{r}-s0", results / study.folder / r
        if (src / "report.md").is_file():
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints", "tb"))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("study", choices=list(STUDIES))
    ap.add_argument("command", choices=["run", "report"])
    ap.add_argument("--out", type=Path, default=None, help="run folders (default runs/<study>)")
    ap.add_argument("--recipes", nargs="+", default=None)
    ap.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    ap.add_argument("--results", type=Path, default=ROOT / "results")
    args = ap.parse_args(argv)
    study = STUDIES[args.study]
    out = args.out or Path("runs") / args.study
    out.mkdir(parents=True, exist_ok=True)
    if args.command == "run":
        run(out, args.recipes or list(study.recipes), args.seeds)
    else:
        report(study, out, args.results)


if __name__ == "__main__":
    main()
