"""ZINC-like 12k: GPS and Graph Transformer vs PyG's GPSConv, each within a 30-minute CPU budget.

    python bench/zinc.py run --out runs/zinc          # the 9 trainings (3 recipes x 3 seeds), 2 at a time
    python bench/zinc.py report --out runs/zinc       # -> bench/results/graph.md (+ graph-zinc.png)

``run`` trains ``gps-zinc``, ``pyg-gps-zinc`` and ``gt-zinc`` (``relformer train``, 50 epochs each) for
seeds 0, 1, 2 on this 2-core machine as two single-threaded runs side by side (each run holds one
core: the budget is 30 minutes of one core per run). ``report`` reads each run's ``metrics.csv``:
the test MAE at the epoch of the best val MAE (the checkpoint the engine keeps), the wall time, and
the val-MAE-per-epoch curves, and writes the markdown table with the published anchors.
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

ROOT = Path(__file__).resolve().parent
RECIPES = {"gps-zinc": "relformer GPS", "pyg-gps-zinc": "PyG GPSConv (same model)", "gt-zinc": "relformer GT"}
SEEDS = (0, 1, 2)
BUDGET_S = 30 * 60


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


def read_run(run_dir: Path) -> dict:
    rows = [r for r in csv.DictReader(open(run_dir / "metrics.csv")) if r["kind"] == "eval"]
    best = min(rows, key=lambda r: float(r["eval_val_mae"]))
    return dict(epochs=len(rows), wall=float(rows[-1]["wall_s"]), best_epoch=int(best["epoch"]),
                val=float(best["eval_val_mae"]), test=float(best["eval_test_mae"]),
                final_test=float(rows[-1]["eval_test_mae"]),
                curve=[(int(r["epoch"]), float(r["eval_val_mae"])) for r in rows])


def _pm(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def report(out: Path, results: Path) -> None:
    from matplotlib.figure import Figure

    runs = {r: {s: read_run(out / f"{r}-s{s}") for s in SEEDS if (out / f"{r}-s{s}" / "report.md").is_file()}
            for r in RECIPES}
    params = {}
    for r in (r for r in RECIPES if runs[r]):
        for line in (out / f"{r}-s{min(runs[r])}" / "report.md").read_text().splitlines():
            if line.startswith("| parameters |"):
                params[r] = line.split("|")[2].strip()
    fig = Figure(figsize=(6.5, 4))
    ax = fig.add_subplot()
    colors = {"gps-zinc": "tab:blue", "pyg-gps-zinc": "tab:orange", "gt-zinc": "tab:green"}
    for r, by_seed in runs.items():
        for s, res in by_seed.items():
            xs, ys = zip(*res["curve"])
            ax.plot(xs, ys, color=colors[r], alpha=0.8, lw=1, label=RECIPES[r] if s == 0 else None)
    ax.set(xlabel="epoch", ylabel="val MAE", yscale="log", title="ZINC-like 12k: val MAE per epoch (3 seeds each)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(results / "graph-zinc.png", dpi=120)
    lines = [
        "| recipe | model | params | seeds | test MAE (best-val epoch) | test MAE (last epoch) | best epoch | "
        "wall time per run | within 30 min |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r, by_seed in runs.items():
        res = list(by_seed.values())
        if not res:
            continue
        walls = [x["wall"] for x in res]
        lines.append(f"| `{r}` | {RECIPES[r]} | {params.get(r, '?')} | {len(res)} | {_pm([x['test'] for x in res])} | "
                     f"{_pm([x['final_test'] for x in res])} | {', '.join(str(x['best_epoch']) for x in res)} | "
                     f"{statistics.mean(walls) / 60:.1f} min (max {max(walls) / 60:.1f}) | "
                     f"{'yes' if max(walls) <= BUDGET_S else 'NO'} |")
    table = "\n".join(lines)
    page = results / "graph.md"
    text = page.read_text() if page.is_file() else ""
    start, end = "<!-- zinc-table -->", "<!-- /zinc-table -->"
    if start in text and end in text:
        text = text[:text.index(start) + len(start)] + "\n" + table + "\n" + text[text.index(end):]
        page.write_text(text)
    else:
        print(f"{page} has no {start} ... {end} block; the table:")
    print(table)
    for r in RECIPES:  # the seed-0 reports (no checkpoints) next to the page
        src, dst = out / f"{r}-s0", results / "graph" / r
        if (src / "report.md").is_file():
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints", "tb"))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=["run", "report"])
    ap.add_argument("--out", type=Path, default=Path("runs/zinc"))
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES))
    ap.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    ap.add_argument("--results", type=Path, default=ROOT / "results")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.command == "run":
        run(args.out, args.recipes, args.seeds)
    else:
        report(args.out, args.results)


if __name__ == "__main__":
    main()
