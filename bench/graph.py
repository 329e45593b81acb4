"""GPS layers: relformer (graphs packed into rows) vs PyG ``GPSConv`` (padded per batch), side by side.

    python bench/graph.py                       # -> bench/results/graph-bench.md (+ .json beside it)
    python bench/graph.py --quick --out /tmp/graph-quick.md

A 4-layer, hidden-64 stack of PyG ``GPSConv(64, GINEConv(MLP 64-64-64, edge_dim=64), heads=4)``
(BatchNorm, dropout 0, train mode) and the same stack converted with
``relformer.interop.pyg.from_pyg`` (identical weights; relformer builds the row layout once per
forward and shares it across the layers, as its GPS model does). One step = forward of the stack,
sum of the outputs, backward. Batches (random molecule-like graphs: a random tree plus ~10% extra
edges, edge features ``(E, 64)``):

* ``molecules``: 128 graphs of 9–40 nodes;
* ``skewed``: 124 graphs of 10–30 nodes and 4 of 200–400 nodes (peptide / protein-like spread);
* ``spread-S``: 127 graphs of 10–30 nodes and one of S nodes, S = 30 ... 400: how each library's
  cost grows with the size spread (PyG pads every graph to the largest one).

Peers alternate within each repetition (rotating order); medians of ``--reps``. Peak memory: the
peak RSS of one (first) step above the RSS before it, each (case, peer) in a fresh process.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchlib import write_lines

ROOT = Path(__file__).resolve().parent
DIM, HEADS, LAYERS = 64, 4, 4
TARGETS = {"molecules": 1.5, "skewed": 3.0}
SPREADS = (30, 60, 120, 200, 400)


def random_graphs(sizes: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x (N, 64)``, undirected ``edge_index (2, E)`` (both directions), ``batch (N,)``, ``edge_attr (E, 64)``."""
    g = torch.Generator().manual_seed(seed)
    edges, start = [], 0
    for n in sizes:
        parent = (torch.rand(n - 1, generator=g) * torch.arange(1, n)).long()  # a random tree
        src, dst = torch.arange(1, n), parent
        extra = max(n // 10, 0)
        if n > 2 and extra:
            a, b = torch.randint(0, n, (2, extra), generator=g)
            keep = a != b
            src, dst = torch.cat((src, a[keep])), torch.cat((dst, b[keep]))
        e = torch.stack((torch.cat((src, dst)), torch.cat((dst, src)))) + start
        edges.append(e)
        start += n
    edge_index = torch.cat(edges, 1)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    x = torch.randn(start, DIM, generator=g)
    return x, edge_index, batch, torch.randn(edge_index.shape[1], DIM, generator=g)


def case_sizes(case: str, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    small = lambda k: torch.randint(10, 31, (k,), generator=g).tolist()
    if case == "molecules":
        return torch.randint(9, 41, (128,), generator=g).tolist()
    if case == "skewed":
        return small(124) + torch.randint(200, 401, (4,), generator=g).tolist()
    if case.startswith("spread-"):
        return small(127) + [int(case.split("-")[1])]
    raise ValueError(case)


def build_stacks():
    from torch_geometric.nn import GINEConv, GPSConv

    from relformer.interop.pyg import from_pyg

    torch.manual_seed(0)
    mlp = lambda: torch.nn.Sequential(torch.nn.Linear(DIM, DIM), torch.nn.ReLU(), torch.nn.Linear(DIM, DIM))
    pyg = torch.nn.ModuleList(GPSConv(DIM, GINEConv(mlp(), edge_dim=DIM), heads=HEADS) for _ in range(LAYERS)).train()
    ours = torch.nn.ModuleList(from_pyg(layer) for layer in pyg).train()
    return pyg, ours


def steps(pyg, ours, data):
    from relformer.models.graph import GraphLayout
    from relformer.data.graph import ptr_from_batch

    x, edge_index, batch, edge_attr = data

    def run_pyg():
        h = x
        for layer in pyg:
            h = layer(h, edge_index, batch, edge_attr=edge_attr)
        return h

    def run_ours():
        layout = GraphLayout.build(ptr_from_batch(batch, x.shape[0]), edge_index)  # once per forward
        h = x
        for layer in ours:
            h = layer(h, edge_index, batch, edge_attr=edge_attr, layout=layout)
        return h

    def fwd_bwd(fn):
        def step():
            for m in (pyg, ours):
                m.zero_grad(set_to_none=True)
            fn().sum().backward()
        return step
    return {"relformer": fwd_bwd(run_ours), "PyG GPSConv": fwd_bwd(run_pyg)}, run_ours, run_pyg


def child(case: str, peer: str) -> None:
    """Peak RSS growth (MiB) of one step, printed as JSON (run in a fresh process)."""
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    pyg, ours = build_stacks()
    fns, _, _ = steps(pyg, ours, random_graphs(case_sizes(case), 1))
    before = _status_kib("VmRSS")  # resident set before the step (model, data and libraries loaded)
    fns[peer]()
    # VmHWM: this process's own peak (getrusage's ru_maxrss keeps the parent's peak across exec)
    print(json.dumps({"mib": (_status_kib("VmHWM") - before) / 1024}))


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def peak_mib(case: str, peer: str, threads: int) -> float | None:
    out = subprocess.run([sys.executable, __file__, "--child", case, peer], capture_output=True, text=True,
                         env={**os.environ, "BENCH_THREADS": str(threads)}, timeout=600)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])["mib"]
    except (IndexError, ValueError, KeyError):
        print(out.stderr[-2000:], file=sys.stderr)
        return None


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=min(2, len(os.sched_getaffinity(0))))
    ap.add_argument("--quick", action="store_true", help="3 repetitions, no memory, two spreads")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "graph-bench.md")
    ap.add_argument("--child", nargs=2, metavar=("CASE", "PEER"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(*args.child)
    torch.set_num_threads(args.threads)
    import torch_geometric

    cases = ["molecules", "skewed"] + [f"spread-{s}" for s in (SPREADS[::2] if args.quick else SPREADS)]
    reps = 3 if args.quick else args.reps
    pyg, ours = build_stacks()
    rows, t_start = [], time.perf_counter()
    for case in cases:
        sizes = case_sizes(case)
        data = random_graphs(sizes, 1)
        fns, run_ours, run_pyg = steps(pyg, ours, data)
        with torch.no_grad():
            diff = float((run_ours() - run_pyg()).abs().max())
        for fn in fns.values():  # warm-up
            fn()
        names, times = list(fns), {n: [] for n in fns}
        for r in range(reps):
            for n in names[r % 2:] + names[:r % 2]:
                t0 = time.perf_counter()
                fns[n]()
                times[n].append(time.perf_counter() - t0)
        med = {n: statistics.median(t) * 1e3 for n, t in times.items()}
        mem = {n: (None if args.quick else peak_mib(case, n, args.threads)) for n in names}
        N = sum(sizes)
        row = dict(case=case, graphs=len(sizes), nodes=N, min=min(sizes), max=max(sizes),
                   edges=int(data[1].shape[1]), padded_slots=len(sizes) * max(sizes), ms=med,
                   spread={n: (max(t) - min(t)) / statistics.median(t) for n, t in times.items()},
                   speedup=med["PyG GPSConv"] / med["relformer"], mib=mem, max_abs_diff=diff)
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = dict(reps=reps, threads=torch.get_num_threads(), torch=torch.__version__, pyg=torch_geometric.__version__,
                date=datetime.datetime.now().isoformat(timespec="seconds"), elapsed=time.perf_counter() - t_start,
                command="python bench/graph.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    write_report(meta, rows, args.out)


def _mib(x):
    return "—" if x is None else f"{x:.0f}"


def write_report(meta: dict, rows: list[dict], out: Path) -> None:
    lines = [
        "# GPS layers — relformer (packed rows) vs PyG `GPSConv` (padded)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {meta['threads']} torch threads; "
        f"torch {meta['torch']}, torch_geometric {meta['pyg']}; fp32; measured {meta['date'][:16].replace('T', ' ')} "
        f"({meta['elapsed'] / 60:.1f} min).",
        "",
        f"4 × `GPSConv(64, GINEConv(MLP 64-64-64, edge_dim=64), heads=4)` (BatchNorm, train mode) vs the same "
        "stack converted by `relformer.interop.pyg.from_pyg` (identical weights; one row layout per forward, "
        f"shared by the layers). Step = forward + backward; median of {meta['reps']} interleaved repetitions. "
        "`padded slots` = graphs × largest graph (what PyG's `to_dense_batch` allocates per layer). "
        "Peak MiB: peak RSS of one step above the RSS before it, each peer in a fresh process.",
        "",
        f"Command: `{meta['command'].strip()}`",
        "",
        "| case | graphs | nodes | sizes | padded slots | relformer ms | PyG ms | speed-up | spread | relformer MiB | PyG MiB | max \\|Δ\\| |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['graphs']} | {r['nodes']:,} | {r['min']}–{r['max']} | {r['padded_slots']:,} | "
            f"{r['ms']['relformer']:.1f} | {r['ms']['PyG GPSConv']:.1f} | {r['speedup']:.2f}× | "
            f"{max(r['spread'].values()):.0%} | {_mib(r['mib']['relformer'])} | {_mib(r['mib']['PyG GPSConv'])} | "
            f"{r['max_abs_diff']:.1e} |")
    lines += ["", "## Targets (from the issue)", ""]
    by = {r["case"]: r for r in rows}
    for case, target in TARGETS.items():
        s = by[case]["speedup"]
        lines.append(f"- {'MET' if s >= target else 'NOT MET'} {case}: relformer ≥ {target}× PyG — {s:.2f}×")
    write_lines(lines, out)


if __name__ == "__main__":
    main()
