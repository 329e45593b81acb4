"""Recipe studies: models x data sets x seeds, each run one `relformer train` under the same CPU-time
budget, aggregated into a section of the family's results page; resumable, also across machines.

    python bench/study.py grounding --dry-run          # the commands of the runs still to do
    python bench/study.py grounding                    # train them (2 side by side), then aggregate
    python bench/study.py temporal --sets uci --seeds 0 --models dygformer
    python bench/study.py detection --report-only      # aggregate the finished runs only
    python bench/study.py grounding temporal detection --start-before 18:30   # one queue; no start after 18:30

Studies (``STUDIES``): ``detection`` (DETR, Group DETR, RT-DETR, Rank-DETR and its ablation on both
canvas sets -> bench/results/detection.md), ``temporal`` (DyGFormer, Todyformer, PyG's TGN on UCI,
hospital, MovieLens, EdgeBank beside them -> bench/results/temporal.md), ``grounding`` (TransRefer3D,
its plain-attention ablation, ReferIt3DNet on the generated Sr3D-style rooms -> bench/results/grounding.md).
Each run is

    OMP_NUM_THREADS=T relformer train RECIPE --set seed=S --set max_minutes=M --set budget_clock=cpu \\
        --out OUT/STUDY/SET/RECIPE-sS

``budget_clock=cpu``: the budget is the CPU time of the training process, so runs side by side (or
beside other work) get the same compute however the machine is shared. ``--workers`` runs at once
(default: the cores divided by ``--threads``); several studies share one queue, seed by seed, so no
core waits between them. ``--start-before``: no run starts after that time (a machine lent for a
while is handed back with no run cut short).

The ledger ``bench/results/studies/STUDY.json`` keeps every finished run's result (the metrics of its
best-val epoch, CPU and wall time, CPU model, command), rewritten atomically when a run ends. A run in
the ledger is finished whether or not its folder still exists, so a study spread over several
sessions keeps what it has by committing the ledger; a folder with checkpoints but no report is
continued with ``--resume``. CPU time is ``os.wait4``'s rusage of the training process, summed over
resumes. A study with ``whole_schedules`` (detection) counts only runs that trained their whole
schedule: one the budget ended early trained as far as its machine's speed allowed (the same CPU
model name has been seen to train 2.4-3.3x faster on another machine), so its result moves to the ledger's
``cut`` list, listed under the tables, and the run is queued again.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from benchlib import write_section  # noqa: E402
from study_defs import STUDIES, Study  # noqa: E402

from relformer.train.checkpoint import CheckpointDir, read_state  # noqa: E402
from relformer.utils import atomic_write_text  # noqa: E402
from relformer.utils.cpu import cpu_model  # noqa: E402

SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class Job:
    study: Study
    set: str
    model: str
    seed: int

    @property
    def recipe(self) -> str:
        return self.study.recipe(self.model, self.set)

    @property
    def key(self) -> str:
        return f"{self.set}/{self.recipe}-s{self.seed}"

    def folder(self, out: Path) -> Path:
        return out / self.study.name / self.key


def command(job: Job, out: Path, minutes: float, resume: bool) -> list[str]:
    budget = [] if job.study.own_budget else ["--set", f"max_minutes={minutes:g}"]
    cmd = [sys.executable, "-m", "relformer.cli", "train", job.recipe, "--set", f"seed={job.seed}", *budget,
           "--set", "budget_clock=cpu", "--out", str(job.folder(out))]
    return cmd + (["--resume"] if resume else [])


def shown(cmd: list[str]) -> str:
    """A command as one types it (``relformer`` for ``python -m relformer.cli``)."""
    return shlex.join(["relformer", *cmd[3:]])


# ---- the ledger ----------------------------------------------------------------------------------

class Ledger:
    """``{"runs": {job key: result}, "baselines": {set: metrics}}`` in one JSON file, written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {}
        self.runs: dict[str, dict] = self.data.setdefault("runs", {})
        self.baselines: dict[str, dict] = self.data.setdefault("baselines", {})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(self.data, indent=1, sort_keys=True) + "\n")


def finished(job: Job, out: Path, ledgers: dict[str, Ledger]) -> bool:
    return job.key in ledgers[job.study.name].runs or (job.folder(out) / "report.md").is_file()


def _record(run_dir: Path, cpu_s: float, wall_s: float, threads: int, cpu: str, cmd: list[str]) -> None:
    """Add one process's CPU and wall time to the run's ``study.json`` (a run may take several)."""
    path = run_dir / "study.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    data = {"cpu_s": old.get("cpu_s", 0.0) + cpu_s, "wall_s": old.get("wall_s", 0.0) + wall_s, "threads": threads,
            "cpu_model": cpu, "command": shown(cmd)}
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def read_run(job: Job, run_dir: Path) -> dict:
    """A finished run's result for the ledger: the study's metrics, the cost of the run, whether the
    budget ended it before its schedule and its training throughput (from its last checkpoint)."""
    result = job.study.read(run_dir)
    cost = json.loads((run_dir / "study.json").read_text()) if (run_dir / "study.json").is_file() else {}
    result.update(cpu_s=cost.get("cpu_s", math.nan), wall_s=cost.get("wall_s", math.nan),
                  threads=cost.get("threads"), cpu_model=cost.get("cpu_model"), command=cost.get("command"))
    last = CheckpointDir(run_dir / "checkpoints").latest()
    if last is not None:
        state = read_state(last)["trainer"]
        result["train_samples_per_s"] = state["train_samples"] / max(state["train_seconds"], 1e-9)
        result["steps"] = state.get("global_step")
        if "budget_stopped" in state:
            result["budget_stopped"] = state["budget_stopped"]
    return result


def budget_cut(result: dict) -> bool:
    """Whether the budget ended the run before its schedule. Runs recorded before the engine kept
    ``budget_stopped``: the budget can only end a run whose CPU time reached it."""
    if "budget_stopped" in result:
        return bool(result["budget_stopped"])
    budget = re.search(r"max_minutes=([0-9.]+)", result.get("command") or "")
    return budget is not None and result.get("cpu_s", 0.0) >= 60 * float(budget.group(1))


def cut_folder(folder: Path, n: int) -> Path:
    """Where the ``n``-th (from 1) set-aside run of a job's ``folder`` lies."""
    return folder.with_name(f"{folder.name}-cut{n}")


def set_aside_cut(jobs: list[Job], out: Path, ledger: Ledger) -> None:
    """For a ``whole_schedules`` study: move the runs the budget cut short from the ledger's ``runs``
    to its ``cut`` (their folders to ``<folder>-cutN``), so that they are run again."""
    cut = ledger.data.setdefault("cut", {})
    moved = [j for j in jobs if j.study.whole_schedules and j.key in ledger.runs and budget_cut(ledger.runs[j.key])]
    for job in moved:
        cut.setdefault(job.key, []).append(ledger.runs.pop(job.key))
        folder = job.folder(out)
        if folder.exists():
            folder.rename(cut_folder(folder, len(cut[job.key])))
        print(f"set aside (the budget ended it before its schedule): {job.key}", flush=True)
    if moved:
        ledger.save()


LATER_FIELDS = ("train_samples_per_s", "steps")  # what read_run records that the first entries lack


def collect(jobs: list[Job], out: Path, ledger: Ledger) -> None:
    """Put the finished run folders that the ledger does not hold yet into it (and re-read the
    entries, counted or set aside, that lack :data:`LATER_FIELDS`, while their folders are there)."""
    def lacking(entry: dict) -> bool:
        return any(f not in entry for f in LATER_FIELDS)

    new = [j for j in jobs if (j.folder(out) / "report.md").is_file() and lacking(ledger.runs.get(j.key, {}))]
    for job in new:
        ledger.runs[job.key] = read_run(job, job.folder(out))
    refreshed = 0
    for job in jobs:
        for n, entry in enumerate(ledger.data.get("cut", {}).get(job.key, []), start=1):
            folder = cut_folder(job.folder(out), n)
            if lacking(entry) and (folder / "report.md").is_file():
                entry.update(read_run(job, folder))
                refreshed += 1
    if new or refreshed:
        ledger.save()


def prepare_data(jobs: list[Job]) -> None:
    """Build the data set of every set the jobs train on, once, before any of them starts
    (``Study.prepare``; the studies whose data is read straight from files have none)."""
    first: dict[tuple[str, str], Job] = {}
    for job in jobs:
        first.setdefault((job.study.name, job.set), job)
    for job in first.values():
        if job.study.prepare is not None:
            print(f"data of {job.study.name}/{job.set} ({job.recipe})", flush=True)
            job.study.prepare(job.recipe)


def run_jobs(jobs: list[Job], out: Path, ledgers: dict[str, Ledger], minutes: float, threads: int, workers: int,
             dry_run: bool, start_before: datetime | None = None) -> list[str]:
    """Train the unfinished jobs, ``workers`` at a time, each result into its study's ledger as it
    ends, none started after ``start_before``; returns the failures (one line each)."""
    todo = [(job, command(job, out, minutes, (job.folder(out) / "checkpoints").is_dir()))
            for job in jobs if not finished(job, out, ledgers)]
    for job in jobs:
        if finished(job, out, ledgers):
            print(f"done: {job.key}")
    if dry_run:
        for _, cmd in todo:
            print(f"OMP_NUM_THREADS={threads} {shown(cmd)}")
        return []
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cpu, running, failures = cpu_model(), {}, []
    while todo or running:
        if start_before is not None and datetime.now() >= start_before and todo:
            print(f"not started (--start-before {start_before:%Y-%m-%d %H:%M}): "
                  + ", ".join(job.key for job, _ in todo), flush=True)
            todo = []
        while todo and len(running) < workers:
            job, cmd = todo.pop(0)
            job.folder(out).parent.mkdir(parents=True, exist_ok=True)
            print(f"OMP_NUM_THREADS={threads} {shown(cmd)}", flush=True)
            log = open(job.folder(out).with_suffix(".log"), "a")
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
            running[proc.pid] = (job, cmd, proc, log, time.perf_counter())
        if not running:
            break
        pid, status, usage = os.wait4(-1, 0)  # the first training to end, with its CPU time
        if pid not in running:
            continue
        job, cmd, proc, log, start = running.pop(pid)
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.close()
        _record(job.folder(out), usage.ru_utime + usage.ru_stime, time.perf_counter() - start, threads, cpu, cmd)
        if proc.returncode != 0:
            failures.append(f"{shown(cmd)}: exit {proc.returncode} (log: {job.folder(out).with_suffix('.log')})")
        elif (job.folder(out) / "report.md").is_file():
            ledgers[job.study.name].runs[job.key] = read_run(job, job.folder(out))
            ledgers[job.study.name].save()
    return failures


# ---- aggregation ---------------------------------------------------------------------------------

def mean_std(values: list[float], digits: int = 3) -> str:
    """``mean ± std`` (sample std) of the finite values, ``–`` when there is none."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def section(study: Study, jobs: list[Job], ledger: Ledger, invocation: str, minutes: float) -> list[str]:
    """The study's markdown section: one table per metric group, mean ± std over the seeds."""
    done = [j for j in jobs if j.key in ledger.runs]
    groups: dict[tuple[str, str], list[dict]] = {}
    for job in sorted(done, key=lambda j: (list(study.sets).index(j.set), list(study.models).index(j.model))):
        groups.setdefault((job.set, job.model), []).append({"seed": job.seed, **ledger.runs[job.key]})
    cpus = sorted({r["cpu_model"] for rs in groups.values() for r in rs if r.get("cpu_model")})
    lines = [f"## {study.title}", "",
             f"`{invocation}`: each run `relformer train RECIPE --set seed=S "
             + ("" if study.own_budget else f"--set max_minutes={minutes:g} ") +
             "--set budget_clock=cpu` (the budget is the CPU time of the training process"
             + ("; the recipes' own max_minutes" if study.own_budget else "") + f"). {study.protocol} "
             "Mean ± std over the seeds; CPU min: the CPU time of the training process (user + system, all its "
             f"threads); {study.per_minute} / CPU-min: divided by the CPU minutes of the whole run.", "",
             f"CPU: {', '.join(cpus) if cpus else cpu_model() + ' (this machine; the runs did not record one)'}.", ""]
    lines += [f"- `{name}`: {text}" for name, text in study.sets.items() if any(s == name for s, _ in groups)]
    baselines = {s: ledger.baselines[s] for s in study.sets if s in ledger.baselines}
    for i, (caption, columns) in enumerate(study.tables):
        costs = ["best epoch", "CPU min per run", f"{study.per_minute} / CPU-min"] if i == 0 else []
        head = ["set", "model", "recipe", "seeds", *(h for _, h in columns), *costs]
        lines += ["", f"**{caption}**", "", "| " + " | ".join(head) + " |",
                  "|---|---|---|" + "---:|" * (len(head) - 3)]
        for (set_name, model), runs in groups.items():
            runs = sorted(runs, key=lambda r: r["seed"])
            cells = [set_name, study.models.get(model, model), f"`{study.recipe(model, set_name)}`",
                     ", ".join(str(r["seed"]) for r in runs), *(mean_std([r.get(k) for r in runs]) for k, _ in columns)]
            if costs:
                cpu_min = [r["cpu_s"] / 60 for r in runs]
                cells += [", ".join(str(r.get("best_epoch", "–")) for r in runs), mean_std(cpu_min, 1),
                          mean_std([r.get(study.per_minute, math.nan) / c for r, c in zip(runs, cpu_min) if c > 0], 4)]
            lines.append("| " + " | ".join(cells) + " |")
        for set_name, metrics in baselines.items():
            cells = [set_name, study.baseline_label, "(no training)", "–", *(mean_std([metrics.get(k)]) for k, _ in columns)]
            lines.append("| " + " | ".join(cells + ["–"] * len(costs)) + " |")
    lines += comparison_table(study, groups) + cut_table(study, jobs, ledger)
    missing = [j for j in jobs if j.key not in ledger.runs]
    if missing:
        lines += ["", "Not finished: " + ", ".join(f"`{j.recipe}` seed {j.seed}" for j in missing) + "."]
    return lines + [""]


def cut_table(study: Study, jobs: list[Job], ledger: Ledger) -> list[str]:
    """The runs set aside because the budget ended them before their schedule (not in the tables above)."""
    cut = ledger.data.get("cut", {})
    rows = [(job, r) for job in jobs for r in cut.get(job.key, [])]
    if not rows:
        return []
    metric = study.tables[0][1][0]
    lines = ["", "**Set aside: the budget ended these runs before their schedule** (not in the tables above; "
             "run again)", "", f"| set | recipe | seed | CPU | epochs | steps | {metric[1]} | CPU min | train samples/s |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for job, r in rows:
        speed, steps = r.get("train_samples_per_s"), r.get("steps")
        lines.append(f"| {job.set} | `{job.recipe}` | {job.seed} | {r.get('cpu_model') or '–'} | {r.get('epochs', '–')} | "
                     f"{'–' if steps is None else f'{steps:,}'} | {mean_std([r.get(metric[0])])} | {r['cpu_s'] / 60:.1f} | "
                     f"{'–' if speed is None else f'{speed:.1f}'} |")
    return lines


def paired_difference(runs: list[dict], reference: list[dict], metric: str) -> tuple[str, int, int]:
    """``mean ± std`` of ``run - reference`` over the seeds both finished, how many of those
    differences are positive, and how many seeds there are."""
    ref = {r["seed"]: r.get(metric) for r in reference}
    diffs = [r[metric] - ref[r["seed"]] for r in runs
             if r.get(metric) is not None and ref.get(r["seed"]) is not None
             and math.isfinite(r[metric]) and math.isfinite(ref[r["seed"]])]
    return mean_std(diffs), sum(d > 0 for d in diffs), len(diffs)


def comparison_table(study: Study, groups: dict[tuple[str, str], list[dict]]) -> list[str]:
    """Per set, each comparison of ``study.comparisons``: the paired (same seed) differences of the
    ``study.paired`` metrics, mean ± std, and in how many seeds the model is ahead."""
    rows = []
    for set_name in study.sets:
        for model, reference, question in study.comparisons:
            runs, base = groups.get((set_name, model)), groups.get((set_name, reference))
            if not runs or not base:
                continue
            cells, seeds = [], 0
            for metric, _ in study.paired:
                text, ahead, seeds = paired_difference(runs, base, metric)
                cells.append(f"{text} ({ahead} of {seeds})" if seeds else "–")
            if seeds:
                rows.append("| " + " | ".join([set_name, f"{study.models[model]} − {study.models[reference]}",
                                               question, *cells]) + " |")
    if not rows:
        return []
    head = ["set", "difference", "asks", *(h for _, h in study.paired)]
    return ["", "**Paired differences** (same seed; mean ± std over the seeds both runs finished, and in how "
            "many of them the first is ahead)", "", "| " + " | ".join(head) + " |",
            "|---|---|---|" + "---:|" * len(study.paired), *rows]


def _time(text: str) -> datetime:
    """``HH:MM`` (today) or an ISO date and time."""
    try:
        if len(text) <= 5:
            return datetime.combine(datetime.now().date(), datetime.strptime(text, "%H:%M").time())
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither HH:MM nor an ISO date and time") from None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("studies", nargs="+", choices=list(STUDIES), metavar="STUDY", help=", ".join(STUDIES))
    ap.add_argument("--models", nargs="+", default=None, help="model names of the study (default: all; one study)")
    ap.add_argument("--sets", nargs="+", default=None, help="data sets of the study (default: all; one study)")
    ap.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    ap.add_argument("--minutes", type=float, default=30.0, help="CPU-time budget per run (max_minutes)")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each run")
    ap.add_argument("--workers", type=int, default=None, help="runs side by side (default: cores / threads)")
    ap.add_argument("--start-before", type=_time, default=None, help="start no run after this time (HH:MM or ISO)")
    ap.add_argument("--out", type=Path, default=Path("runs/study"), help="the run folders")
    ap.add_argument("--ledgers", type=Path, default=ROOT / "results" / "studies",
                    help="the folder of the ledgers, STUDY.json each (default: bench/results/studies)")
    ap.add_argument("--results", type=Path, default=None, help="one study: the page whose study section is (re)written")
    ap.add_argument("--dry-run", action="store_true", help="print the commands of the unfinished runs, run nothing")
    ap.add_argument("--report-only", action="store_true", help="aggregate the finished runs, train nothing")
    args = ap.parse_args(argv)
    if args.minutes <= 0 or args.threads < 1 or (args.workers is not None and args.workers < 1):
        ap.error("--minutes must be > 0, --threads and --workers >= 1")
    names = list(dict.fromkeys(args.studies))
    if len(names) > 1 and any(v is not None for v in (args.models, args.sets, args.results)):
        ap.error("--models, --sets and --results need a single study")
    jobs: dict[str, list[Job]] = {}
    for name in names:
        study = STUDIES[name]
        models, sets = args.models or list(study.models), args.sets or list(study.sets)
        for what, given, known in (("--models", models, study.models), ("--sets", sets, study.sets)):
            if unknown := [g for g in given if g not in known]:
                ap.error(f"{what}: unknown {', '.join(unknown)} for the {name} study; known: {', '.join(known)}")
        jobs[name] = [Job(study, s, m, seed) for seed in args.seeds for s in sets for m in models]  # seed by seed
    queue = [job for seed in args.seeds for name in names for job in jobs[name] if job.seed == seed]
    if not args.report_only:
        from relformer.tasks import list_recipes

        registered = set(list_recipes())
        if unknown := sorted({j.recipe for j in queue} - registered):
            ap.error(f"unknown recipe(s) {', '.join(unknown)}")
    ledgers = {name: Ledger(args.ledgers / f"{name}.json") for name in names}
    for name in names:
        collect(jobs[name], args.out, ledgers[name])
        set_aside_cut(jobs[name], args.out, ledgers[name])
    workers = args.workers or max(1, (os.cpu_count() or 1) // args.threads)
    if not (args.report_only or args.dry_run):
        prepare_data([job for job in queue if not finished(job, args.out, ledgers)])
    failures = [] if args.report_only else run_jobs(queue, args.out, ledgers, args.minutes, args.threads, workers,
                                                   args.dry_run, args.start_before)
    if args.dry_run:
        return
    given = sys.argv[1:] if argv is None else argv  # the command that trains the runs, not the re-report
    invocation = shlex.join(["python", "bench/study.py", *(a for a in given if a != "--report-only")])
    for name in names:
        study, ledger = STUDIES[name], ledgers[name]
        set_aside_cut(jobs[name], args.out, ledger)
        if study.baseline is not None and not args.report_only:
            for s in dict.fromkeys(j.set for j in jobs[name]):
                if s not in ledger.baselines:
                    print(f"{study.baseline_label} on {s}", flush=True)
                    ledger.baselines[s] = study.baseline(s)
                    ledger.save()
        write_section(section(study, jobs[name], ledger, invocation, args.minutes),
                      args.results or ROOT / "results" / study.page, study.title, heading=study.heading)
    if failures:
        raise SystemExit("failed runs:\n" + "\n".join(failures))


if __name__ == "__main__":
    main()
