"""Recipe studies: several recipes x seeds trained under one CPU budget, compared side by side.

    python bench/studies.py zinc run --out runs/zinc          # 3 recipes x 3 seeds, 2 runs at a time
    python bench/studies.py zinc report --out runs/zinc       # -> the table in bench/results/graph.md + plot
    python bench/studies.py detection run --out runs/detection --seeds 0
    python bench/studies.py detection report --out runs/detection

* ``zinc``: ``gps-zinc``, ``pyg-gps-zinc`` (the same model on PyG's GPSConv) and ``gt-zinc`` on the
  ZINC-like 12k dataset; test MAE at the best-val-MAE epoch.
* ``detection``: ``detr-fashion``, ``relation-detr-fashion``, ``group-detr-fashion`` and
  ``hf-detr-fashion`` (HF's DETR, same config and initial weights); test AP at the best-val-AP epoch.
  ``detr-fashion-12ep`` (a variant: the ``detr-fashion`` recipe with ``epochs=12``) gives DETR the
  wall time Group DETR's 8 epochs take (``--recipes detr-fashion-12ep --seeds 0``).

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

from dataclasses import dataclass, field

ROOT = Path(__file__).resolve().parent
SEEDS = (0, 1, 2)
BUDGET_S = 30 * 60


@dataclass(frozen=True)
class Study:
    recipes: dict[str, str]  # run name (a recipe, or a key of ``variants``) -> what it is
    val: str                 # metrics.csv column that picks the epoch
    test: str                # the reported column
    mode: str                # "min" or "max" of ``val``
    page: str                # results page (under bench/results) holding the table markers
    folder: str              # where the seed-0 reports are copied (under bench/results)
    label: str               # the metric's name in the table and plot
    variants: dict[str, tuple[str, ...]] = field(default_factory=dict)  # run name -> (recipe, key=value, ...)


STUDIES = {
    "zinc": Study({"gps-zinc": "relformer GPS", "pyg-gps-zinc": "PyG GPSConv (same model)", "gt-zinc": "relformer GT"},
                  "eval_val_mae", "eval_test_mae", "min", "graph.md", "graph", "MAE"),
    "detection": Study({"detr-fashion": "relformer DETR", "relation-detr-fashion": "relformer Relation-DETR",
                        "group-detr-fashion": "relformer Group DETR", "hf-detr-fashion": "HF DETR (same model)",
                        "detr-fashion-12ep": "relformer DETR, 12 epochs (Group DETR's budget)"},
                       "eval_val_AP", "eval_test_AP", "max", "detection.md", "detection", "AP",
                       variants={"detr-fashion-12ep": ("detr-fashion", "epochs=12")}),
}


def run(study: Study, out: Path, names, seeds, workers: int = 2) -> None:
    """Every (run name, seed), ``workers`` processes at a time, one thread each."""
    jobs = [(r, s) for s in seeds for r in names]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    running: list[subprocess.Popen] = []
    while jobs or running:
        while jobs and len(running) < workers:
            name, seed = jobs.pop(0)
            run_dir = out / f"{name}-s{seed}"
            if (run_dir / "report.md").is_file():
                continue
            recipe, *overrides = study.variants.get(name, (name,))
            cmd = [sys.executable, "-m", "relformer.cli", "train", recipe]
            for kv in (*overrides, f"seed={seed}", f"out_dir={run_dir}"):
                cmd += ["--set", kv]
            print(" ".join(cmd[2:]), flush=True)
            log = open(out / f"{name}-s{seed}.log", "w")
            running.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
        running[0].wait()
        running = [p for p in running if p.poll() is None]


def read_run(run_dir: Path, study: Study) -> dict:
    rows = [r for r in csv.DictReader(open(run_dir / "metrics.csv")) if r["kind"] == "eval"]
    pick = min if study.mode == "min" else max
    best = pick(rows, key=lambda r: float(r[study.val]))
    return dict(epochs=len(rows), wall=float(rows[-1]["wall_s"]), best_epoch=int(best["epoch"]),
                val=float(best[study.val]), test=float(best[study.test]), final_test=float(rows[-1][study.test]),
                curve=[(int(r["epoch"]), float(r[study.val])) for r in rows],
                wall_curve=[(float(r["wall_s"]) / 60, float(r[study.val])) for r in rows])


def _pm(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def epoch_table(runs: dict, study: Study, max_columns: int = 12) -> str:
    """Mean (over seeds) val metric after each epoch, one row per recipe: how fast each converges."""
    epochs = sorted({e for by_seed in runs.values() for res in by_seed.values() for e, _ in res["curve"]})
    if len(epochs) > max_columns:  # every k-th epoch and the last
        k = -(-len(epochs) // max_columns)
        epochs = sorted(set(epochs[k - 1::k]) | {epochs[-1]})
    lines = ["| recipe | seeds | " + " | ".join(f"ep {e}" for e in epochs) + " |",
             "|---|---:|" + "---:|" * len(epochs)]
    for r, by_seed in runs.items():
        if not by_seed:
            continue
        curves = [dict(res["curve"]) for res in by_seed.values()]
        cells = [f"{statistics.mean(c[e] for c in curves):.3f}" if all(e in c for c in curves) else "–" for e in epochs]
        lines.append(f"| `{r}` | {len(curves)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fill_block(page: Path, name: str, body: str, required: bool = False) -> None:
    """Replace the text between ``<!-- name -->`` and ``<!-- /name -->`` in ``page``."""
    text = page.read_text() if page.is_file() else ""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    if start in text and end in text:
        page.write_text(text[:text.index(start) + len(start)] + "\n" + body + "\n" + text[text.index(end):])
    elif required:
        print(f"{page} has no {start} ... {end} block; its content:\n{body}")


def report(study: Study, out: Path, results: Path) -> None:
    from matplotlib.figure import Figure

    runs = {r: {s: read_run(out / f"{r}-s{s}", study) for s in SEEDS if (out / f"{r}-s{s}" / "report.md").is_file()}
            for r in study.recipes}
    params = {}
    for r in (r for r in study.recipes if runs[r]):
        for line in (out / f"{r}-s{min(runs[r])}" / "report.md").read_text().splitlines():
            if line.startswith("| parameters |"):
                params[r] = line.split("|")[2].strip()
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for i, (r, by_seed) in enumerate(runs.items()):
        for k, res in enumerate(by_seed.values()):
            for ax, key in zip(axes, ("curve", "wall_curve")):
                xs, ys = zip(*res[key])
                ax.plot(xs, ys, color=f"C{i}", alpha=0.8, lw=1, marker=".", label=study.recipes[r] if k == 0 else None)
    for ax, xlabel in zip(axes, ("epoch", "wall time of the run (min, one core)")):
        ax.set(xlabel=xlabel, ylabel=f"val {study.label}", yscale="log" if study.mode == "min" else "linear")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right" if study.mode == "max" else "upper right")
    fig.suptitle(f"val {study.label} per epoch and per minute (every seed)")
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
    fill_block(page, "study-table", table, required=True)
    fill_block(page, "study-epochs", epoch_table(runs, study))
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
        run(study, out, args.recipes or list(study.recipes), args.seeds)
    else:
        report(study, out, args.results)


if __name__ == "__main__":
    main()
