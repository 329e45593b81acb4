"""GPS layers: relformer (graphs packed into rows) vs PyG ``GPSConv`` (padded per batch), side by side.

    python bench/graph.py --components          # -> bench/results/graph-bench.md (+ .json beside it)
    python bench/graph.py --quick --out /tmp/graph-quick.md
    python bench/graph.py --reps 2 --no-memory --cases zinc molecules --zinc-limit 10 300 10 --zinc-batches 2 \
        --out /tmp/graph-smoke.md                  # a smoke run (seconds; not a measurement)

A 4-layer, hidden-64 stack of PyG ``GPSConv(64, GINEConv(MLP 64-64-64, edge_dim=64), heads=4)``
(BatchNorm, dropout 0, train mode) and the same stack converted with
``relformer.interop.pyg.from_pyg`` (identical weights), run two ways:

* **model path**: one :class:`~relformer.models.graph.GraphLayout` built per forward and passed to
  every layer, as relformer's GPS model does;
* **drop-in path**: each layer called exactly like PyG's, ``layer(x, edge_index, batch,
  edge_attr=...)``; the layers share one cached layout per batch.

One step = forward of the stack, a fixed random linear loss ``(out * cotangent).sum()`` (a dense
upstream gradient, as a real loss gives after a head; ``out.sum()`` would hand the last layer an
expanded stride-0 gradient, which some kernels take a slow path on), backward. Batches:

* ``zinc``: real molecules, ``--zinc-batches`` batches of 128 from the val and test splits of the
  project's ZINC-like 12k dataset (``relformer.data.zinc``; built once with RDKit + molsets, then
  cached), atom and bond types embedded by fixed random tables; a step runs all of them;
* ``molecules``: 128 random molecule-like graphs of 9-40 nodes (a random tree plus n/5 extra
  edges, held-out seed), edge features ``(E, 64)``;
* ``skewed``: 124 graphs of 10-30 nodes and 4 of 200-400 nodes (peptide / protein-like spread);
* ``spread-S``: 127 graphs of 10-30 nodes and one of S nodes, S = 30 ... 400: how each library's
  cost grows with the size spread (PyG pads every graph to the largest one).

Peers alternate within each repetition (rotating order, ``benchlib.time_interleaved``); the speed-ups
are medians of per-repetition paired ratios with 95% bootstrap intervals (``benchlib.paired_speedup``).
Peak memory: the peak RSS of one (first) step above the RSS before it, each (case, peer) in a fresh
process.
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

from benchlib import paired_speedup, paired_verdict, time_interleaved, write_lines

ROOT = Path(__file__).resolve().parent
DIM, HEADS, LAYERS, GRAPHS = 64, 4, 4, 128
PYG, MODEL, DROP_IN = "PyG GPSConv", "relformer model path", "relformer drop-in"
PEERS = (PYG, MODEL, DROP_IN)
TARGETS = {"zinc": 1.5, "molecules": 1.5, "skewed": 3.0}  # drop-in path vs PyG (issue 18)
SPREADS = (30, 60, 120, 200, 400)
HELD_OUT_SEED = 7  # graphs unlike any the layers were tuned on


# ---- batches ---------------------------------------------------------------------------------------
def random_graphs(sizes: list[int], seed: int) -> tuple[torch.Tensor, ...]:
    """``x (N, 64)``, undirected ``edge_index (2, E)`` (both directions; a random tree plus n/5 extra
    edges per graph), ``batch (N,)``, ``edge_attr (E, 64)``."""
    g = torch.Generator().manual_seed(seed)
    edges, start = [], 0
    for n in sizes:
        parent = (torch.rand(n - 1, generator=g) * torch.arange(1, n)).long()  # a random tree
        src, dst = torch.arange(1, n), parent
        extra = n // 5
        if n > 2 and extra:
            a, b = torch.randint(0, n, (2, extra), generator=g)
            keep = a != b
            src, dst = torch.cat((src, a[keep])), torch.cat((dst, b[keep]))
        edges.append(torch.stack((torch.cat((src, dst)), torch.cat((dst, src)))) + start)
        start += n
    edge_index = torch.cat(edges, 1)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    x = torch.randn(start, DIM, generator=g)
    return x, edge_index, batch, torch.randn(edge_index.shape[1], DIM, generator=g)


def case_sizes(case: str, seed: int = HELD_OUT_SEED) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    small = lambda k: torch.randint(10, 31, (k,), generator=g).tolist()
    if case == "molecules":
        return torch.randint(9, 41, (GRAPHS,), generator=g).tolist()
    if case == "skewed":
        return small(124) + torch.randint(200, 401, (4,), generator=g).tolist()
    if case.startswith("spread-"):
        return small(127) + [int(case.split("-")[1])]
    raise ValueError(case)


def zinc_batches(count: int, limit: tuple[int, int, int] | None) -> list[tuple[torch.Tensor, ...]]:
    """``count`` batches of 128 molecules from the ZINC-like val + test splits, as float stacks' inputs."""
    from relformer.data.zinc import NUM_ATOM_TYPES, NUM_BOND_TYPES, build_zinc

    splits = build_zinc("12k", limit=limit, progress=False)
    g = torch.Generator().manual_seed(HELD_OUT_SEED)
    atoms, bonds = torch.randn(NUM_ATOM_TYPES, DIM, generator=g), torch.randn(NUM_BOND_TYPES, DIM, generator=g)
    out = []
    for split in ("val", "test"):
        ds = splits[split]
        for start in range(0, len(ds) - GRAPHS + 1, GRAPHS):
            b = ds.__getitems__(range(start, start + GRAPHS))
            out.append((atoms[b.x], b.edge_index, b.batch, bonds[b.edge_attr]))
    if len(out) < count:
        raise ValueError(f"the ZINC splits hold {len(out)} batches of {GRAPHS}, --zinc-batches asks {count}")
    return out[:count]


def case_data(case: str, args) -> list[tuple[torch.Tensor, ...]]:
    if case == "zinc":
        return zinc_batches(args.zinc_batches, tuple(args.zinc_limit) if args.zinc_limit else None)
    return [random_graphs(case_sizes(case), HELD_OUT_SEED)]


# ---- peers -----------------------------------------------------------------------------------------
def build_stacks():
    from torch_geometric.nn import GINEConv, GPSConv

    from relformer.interop.pyg import from_pyg

    torch.manual_seed(0)
    mlp = lambda: torch.nn.Sequential(torch.nn.Linear(DIM, DIM), torch.nn.ReLU(), torch.nn.Linear(DIM, DIM))
    pyg = torch.nn.ModuleList(GPSConv(DIM, GINEConv(mlp(), edge_dim=DIM), heads=HEADS) for _ in range(LAYERS)).train()
    ours = torch.nn.ModuleList(from_pyg(layer) for layer in pyg).train()
    return pyg, ours


def forwards(pyg, ours) -> dict:
    """Each peer's forward of the stack on one batch ``(x, edge_index, batch, edge_attr)``."""
    from relformer.data.graph import ptr_from_batch
    from relformer.models.graph import GraphLayout

    def run_pyg(x, edge_index, batch, edge_attr):
        for layer in pyg:
            x = layer(x, edge_index, batch, edge_attr=edge_attr)
        return x

    def run_model(x, edge_index, batch, edge_attr):
        layout = GraphLayout.build(ptr_from_batch(batch, x.shape[0]), edge_index)  # once per forward
        for layer in ours:
            x = layer(x, edge_index, edge_attr=edge_attr, layout=layout)
        return x

    def run_drop_in(x, edge_index, batch, edge_attr):
        for layer in ours:
            x = layer(x, edge_index, batch, edge_attr=edge_attr)
        return x

    return {PYG: run_pyg, MODEL: run_model, DROP_IN: run_drop_in}


def training_steps(pyg, ours, batches) -> dict:
    """One step per peer: forward, ``(out * cotangent).sum()``, backward, over every batch."""
    cotangents = [torch.randn(b[0].shape, generator=torch.Generator().manual_seed(k)) for k, b in enumerate(batches)]

    def step_of(forward):
        def step():
            for m in (pyg, ours):
                m.zero_grad(set_to_none=True)
            for data, cot in zip(batches, cotangents):
                (forward(*data) * cot).sum().backward()
        return step
    return {name: step_of(fn) for name, fn in forwards(pyg, ours).items()}


def max_diffs(pyg, ours, batches) -> dict[str, float]:
    fns = forwards(pyg, ours)
    with torch.no_grad():
        ref = [fns[PYG](*b) for b in batches]
        return {n: max(float((fns[n](*b) - r).abs().max()) for b, r in zip(batches, ref)) for n in (MODEL, DROP_IN)}


# ---- memory (fresh process per case and peer) -------------------------------------------------------
def child(case: str, peer: str, args) -> None:
    """Peak RSS growth (MiB) of one step, printed as JSON."""
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    pyg, ours = build_stacks()
    step = training_steps(pyg, ours, case_data(case, args))[peer]
    before = _status_kib("VmRSS")  # resident set before the step (model, data and libraries loaded)
    step()
    # VmHWM: this process's own peak (getrusage's ru_maxrss keeps the parent's peak across exec)
    print(json.dumps({"mib": (_status_kib("VmHWM") - before) / 1024}))


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def peak_mib(case: str, peer: str, args) -> float | None:
    extra = ["--zinc-batches", str(args.zinc_batches)] + (["--zinc-limit", *map(str, args.zinc_limit)]
                                                          if args.zinc_limit else [])
    out = subprocess.run([sys.executable, __file__, "--child", case, peer, *extra], capture_output=True, text=True,
                         env={**os.environ, "BENCH_THREADS": str(args.threads)}, timeout=600)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])["mib"]
    except (IndexError, ValueError, KeyError):
        print(out.stderr[-2000:], file=sys.stderr)
        return None


# ---- one case --------------------------------------------------------------------------------------
def attention_scores(batches, row_len: int) -> dict[str, int]:
    """Score-matrix entries per head and batch (masked ones included: they cost as much): PyG pads every
    graph to the largest (``G * L^2``); relformer computes its rows (``R * W^2``)."""
    from relformer.data.graph import ptr_from_batch
    from relformer.models.graph import GraphLayout

    pyg, ours = 0, 0
    for x, edge_index, batch, _ in batches:
        sizes = torch.bincount(batch)
        pyg += len(sizes) * int(sizes.max()) ** 2
        R, W = GraphLayout.build(ptr_from_batch(batch, x.shape[0]), edge_index, row_len).shape
        ours += R * W * W
    return {"PyG": pyg // len(batches), "relformer": ours // len(batches)}


def measure(case: str, pyg, ours, args, reps: int, memory: bool) -> dict:
    batches = case_data(case, args)
    steps = training_steps(pyg, ours, batches)
    times = time_interleaved(steps, reps, warmup=1)
    per_batch = {n: statistics.median(t) * 1e3 / len(batches) for n, t in times.items()}
    sizes = [int(n) for b in batches for n in torch.bincount(b[2]).tolist()]
    row = dict(case=case, batches=len(batches), graphs=len(sizes) // len(batches),
               nodes=sum(b[0].shape[0] for b in batches) // len(batches),
               edges=sum(b[1].shape[1] for b in batches) // len(batches), min=min(sizes), max=max(sizes),
               padded_slots=sum(GRAPHS * int(torch.bincount(b[2]).max()) for b in batches) // len(batches),
               ms=per_batch, spread={n: (max(t) - min(t)) / statistics.median(t) for n, t in times.items()},
               max_abs_diff=max_diffs(pyg, ours, batches), scores=attention_scores(batches, ours[0].row_len))
    for path in (MODEL, DROP_IN):
        median, low, high = paired_speedup(times, path, PYG)
        row[path] = dict(speedup=median, ci=[low, high], verdict=paired_verdict((low, high)))
    row["mib"] = {n: (peak_mib(case, n, args) if memory else None) for n in PEERS}
    return row


def attention_choice(ours) -> str:
    """What ``backend="auto"`` runs the layers' training attention with on the molecules case, and why
    (the choice depends on the CPU: SDPA's fused kernel against matmul + softmax on small rows)."""
    import relformer
    from relformer.data.graph import ptr_from_batch
    from relformer.models.graph import GraphLayout

    x, edge_index, batch, _ = random_graphs(case_sizes("molecules"), HELD_OUT_SEED)
    layout = GraphLayout.build(ptr_from_batch(batch, x.shape[0]), edge_index)
    R, W = layout.shape
    q = torch.zeros(R, HEADS, W, DIM // HEADS, requires_grad=True)
    return f"{ours[0].attn.backend} -> {relformer.explain(q, q, q, layout.documents)}"


# ---- where the time goes: one layer's components, forward + backward ---------------------------------
def component_steps(pyg_layer, our_layer, data) -> dict:
    """Each component of the first layer alone on one batch (the same input, a dense cotangent):
    global attention (PyG: ``to_dense_batch`` + ``nn.MultiheadAttention`` with a padding mask;
    relformer: rows with the block-diagonal mask, on its ``auto`` backend and on SDPA), the GINE
    message passing, the MLP and one norm."""
    from torch_geometric.utils import to_dense_batch

    from relformer.data.graph import ptr_from_batch
    from relformer.models.graph import GraphLayout

    x0, edge_index, batch, edge_attr = data
    layout = GraphLayout.build(ptr_from_batch(batch, x0.shape[0]), edge_index, our_layer.row_len)
    x = x0.clone().requires_grad_(True)
    cot = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    auto = our_layer.attn.backend

    def pyg_attention():
        h, mask = to_dense_batch(x, batch)
        h, _ = pyg_layer.attn(h, h, h, key_padding_mask=~mask, need_weights=False)
        return h[mask]

    def our_attention(backend):
        def run():
            our_layer.attn.backend = backend
            try:
                return our_layer.attn(x, layout.documents, rows=layout.rows)
            finally:
                our_layer.attn.backend = auto
        return run

    parts = {"attention": (pyg_attention, our_attention(auto)), "attention (SDPA)": (None, our_attention("sdpa")),
             "GINE": (lambda: pyg_layer.conv(x, edge_index, edge_attr), lambda: our_layer.local(x, edge_index, edge_attr)),
             "MLP": (lambda: pyg_layer.mlp(x), lambda: our_layer.mlp(x)),
             "norm": (lambda: pyg_layer.norm1(x), lambda: our_layer.norm1(x))}

    def step(fn):
        def run():
            x.grad = None
            (fn() * cot).sum().backward()
        return run
    steps = {}
    for part, (theirs, ours) in parts.items():
        if theirs is not None:
            steps[f"PyG {part}"] = step(theirs)
        steps[f"relformer {part}"] = step(ours)
    return steps


def profile_components(case: str, pyg, ours, args, reps: int) -> dict:
    steps = component_steps(pyg[0], ours[0], case_data(case, args)[0])
    times = time_interleaved(steps, reps, warmup=1)
    ms = {n: statistics.median(t) * 1e3 for n, t in times.items()}
    row = {"case": case, "ms": ms}
    for name in ms:
        if name.startswith("relformer"):
            peer = "PyG attention" if "attention" in name else name.replace("relformer", "PyG")
            median, low, high = paired_speedup(times, name, peer)
            row[name] = dict(speedup=median, ci=[low, high])
    return row


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=min(2, len(os.sched_getaffinity(0))))
    ap.add_argument("--quick", action="store_true", help="3 repetitions, no memory, two spreads")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    ap.add_argument("--zinc-batches", type=int, default=8, help="ZINC batches of 128 molecules per step")
    ap.add_argument("--zinc-limit", type=int, nargs=3, metavar=("TRAIN", "VAL", "TEST"),
                    help="build a smaller ZINC-like dataset (smoke runs; not the documented 12k)")
    ap.add_argument("--components", action="store_true",
                    help="also time one layer's components (attention, GINE, MLP, norm) on zinc and molecules")
    ap.add_argument("--cases", nargs="+", help="only these cases (default: all; --quick: two spreads)")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "graph-bench.md")
    ap.add_argument("--child", nargs=2, metavar=("CASE", "PEER"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(*args.child, args)
    torch.set_num_threads(args.threads)
    import torch_geometric

    from relformer.nn import gemm

    cases = args.cases or ["zinc", "molecules", "skewed"] + [f"spread-{s}" for s in (SPREADS[::2] if args.quick else SPREADS)]
    reps = 3 if args.quick else args.reps
    pyg, ours = build_stacks()
    rows, t_start = [], time.perf_counter()
    for case in cases:
        rows.append(measure(case, pyg, ours, args, reps, memory=not (args.quick or args.no_memory)))
        print(json.dumps(rows[-1]), flush=True)
    components = [profile_components(case, pyg, ours, args, reps) for case in ("zinc", "molecules")
                  if args.components and case in cases]
    meta = dict(reps=reps, threads=torch.get_num_threads(), torch=torch.__version__, pyg=torch_geometric.__version__,
                cpu=cpu_name(), linear_kernel=getattr(gemm, "linear_kernel", lambda: "unknown")(),
                attention=attention_choice(ours), row_len=ours[0].row_len, zinc_limit=args.zinc_limit,
                date=datetime.datetime.now().isoformat(timespec="seconds"), elapsed=time.perf_counter() - t_start,
                command="python bench/graph.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(dict(meta=meta, rows=rows, components=components), indent=1))
    write_report(meta, rows, args.out, components)


def _mib(x):
    return "—" if x is None else f"{x:.0f}"


def _batches(r: dict) -> str:
    return f" ({r['batches']} batches)" if r["batches"] > 1 else ""


def _speedup(r: dict, path: str) -> str:
    s = r[path]
    return f"{s['speedup']:.2f}× [{s['ci'][0]:.2f}, {s['ci'][1]:.2f}] {s['verdict']}"


def component_lines(components: list[dict]) -> list[str]:
    if not components:
        return []
    lines = ["", "## Where the time goes (one layer, forward + backward, first batch of the case)", "",
             "Each component alone on the same input; speed-up = PyG time / relformer time (paired, 95% interval). "
             "`attention (SDPA)`: relformer's attention forced onto SDPA, against PyG's attention.", "",
             "| case | component | PyG ms | relformer ms | speed-up |", "|---|---|---:|---:|---|"]
    for c in components:
        for name, s in c.items():
            if not name.startswith("relformer"):
                continue
            part = name[len("relformer "):]
            peer = "PyG attention" if "attention" in part else f"PyG {part}"
            lines.append(f"| {c['case']} | {part} | {c['ms'][peer]:.2f} | {c['ms'][name]:.2f} | "
                         f"{s['speedup']:.2f}× [{s['ci'][0]:.2f}, {s['ci'][1]:.2f}] |")
    return lines


def write_report(meta: dict, rows: list[dict], out: Path, components: list[dict] = ()) -> None:
    zinc = ("the ZINC-like 12k val + test splits" if not meta["zinc_limit"]
            else f"a ZINC-like dataset built with limit={tuple(meta['zinc_limit'])} (a smoke run, not the 12k splits)")
    lines = [
        "# GPS layers — relformer (packed rows) vs PyG `GPSConv` (padded)",
        "",
        f"CPU: {meta['cpu']}, {os.cpu_count()} cores, {meta['threads']} torch threads; torch {meta['torch']}, "
        f"torch_geometric {meta['pyg']}; relformer linear kernel `{meta['linear_kernel']}`; fp32; measured "
        f"{meta['date'][:16].replace('T', ' ')} ({meta['elapsed'] / 60:.1f} min).",
        "",
        f"Attention backend of the layers (training, molecules case): {meta['attention']}.",
        "",
        f"4 × `GPSConv(64, GINEConv(MLP 64-64-64, edge_dim=64), heads=4)` (BatchNorm, train mode) vs the same "
        "stack converted by `relformer.interop.pyg.from_pyg` (identical weights), run as the **model path** "
        "(one row layout per forward, passed to every layer) and the **drop-in path** (layers called like PyG's, "
        "`layer(x, edge_index, batch, edge_attr=...)`, sharing one cached layout). Step = forward + "
        "`(out * cotangent).sum()` + backward, per batch of 128 graphs. Speed-up = PyG time / relformer time: median "
        f"of {meta['reps']} paired, interleaved repetitions with its 95% bootstrap interval (FASTER / LEVEL / SLOWER: "
        f"the interval above / containing / below 1). `zinc`: {zinc}; the other cases are random molecule-like graphs "
        "(a tree plus n/5 extra edges, held-out seed). `padded slots` = graphs × largest graph (what PyG's "
        "`to_dense_batch` allocates per layer); `scores per head`: attention score entries per head, masked ones "
        "included (PyG: graphs × largest graph²; relformer: rows × row width², rows of "
        f"{meta.get('row_len', 64)} slots). Peak MiB: peak RSS of one step above the RSS before it, each peer "
        "in a fresh process.",
        "",
        f"Command: `{meta['command'].strip()}`",
        "",
        "| case | graphs | nodes | edges | sizes | padded slots | scores per head PyG / relformer | PyG ms | model ms | "
        "drop-in ms | model speed-up | drop-in speed-up | PyG / model / drop-in MiB | max \\|Δ\\| |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---|---|---:|",
    ]
    for r in rows:
        ms, mib = r["ms"], r["mib"]
        lines.append(
            f"| {r['case']}{_batches(r)} | {r['graphs']} | "
            f"{r['nodes']:,} | {r['edges']:,} | {r['min']}–{r['max']} | {r['padded_slots']:,} | "
            f"{r['scores']['PyG']:,} / {r['scores']['relformer']:,} | {ms[PYG]:.1f} | "
            f"{ms[MODEL]:.1f} | {ms[DROP_IN]:.1f} | {_speedup(r, MODEL)} | {_speedup(r, DROP_IN)} | "
            f"{' / '.join(_mib(mib[n]) for n in PEERS)} | {max(r['max_abs_diff'].values()):.1e} |")
    lines += ["", "## Targets (issue 18: the drop-in path against PyG)", ""]
    by = {r["case"]: r for r in rows}
    for case, target in TARGETS.items():
        if case not in by:
            continue
        s = by[case][DROP_IN]
        lines.append(f"- {'MET' if s['speedup'] >= target else 'NOT MET'} {case}: drop-in ≥ {target}× PyG — "
                     f"{s['speedup']:.2f}× [{s['ci'][0]:.2f}, {s['ci'][1]:.2f}]")
    write_lines(lines + component_lines(list(components)), out)


if __name__ == "__main__":
    main()
