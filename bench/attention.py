"""Attention backends side by side: eager vs sdpa vs flex vs chunked vs auto, for every relation.

    python bench/attention.py                 # full run -> bench/results/attention.md
    python bench/attention.py --quick         # L=512, 3 repeats, 9 relations (the README's main job)
    relformer bench attention [--quick]       # the same through the CLI

Times are medians of ``--reps`` runs after one warm-up (which also compiles Flex), all
backends in one process. Peak memory is measured in a fresh subprocess per case: the
process runs the case once (warm-up/compile), then runs it again while a thread samples
its resident set size; peak minus the RSS just before that run is reported. glibc is told
to return freed blocks to the OS (``MALLOC_MMAP_THRESHOLD_``) so the RSS tracks live
tensors. Ratios are against the ``sdpa`` backend on the same case (SDPA with the
relation's dense 4-D bias/mask). Flex has no CPU backward, so its training rows are empty.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import relformer
from relformer import relations as R

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # benchlib beside this file (also when run through `relformer bench`)
from benchlib import fmt, peak_rss_growth  # noqa: E402

BACKENDS = ("eager", "sdpa", "flex", "chunked", "auto")
B, H, D = 4, 8, 64


def _grid_shape(L: int) -> tuple[int, int]:
    side = int(math.sqrt(L))
    while L % side:
        side -= 1
    return side, L // side


def _segments(L: int, n_docs: int, seed: int) -> torch.Tensor:
    """(B, L) sorted segment ids with random document lengths (a packed batch)."""
    g = torch.Generator().manual_seed(seed)
    cuts = torch.sort(torch.randperm(L - 1, generator=g)[: n_docs - 1] + 1).values
    ids = torch.zeros(L, dtype=torch.long)
    ids[cuts] = 1
    return ids.cumsum(0).expand(B, L).contiguous()


def _learned(rel, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in rel.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if isinstance(rel, R.URPE) else 0.0))
    return rel


def _random_graph_rows(L: int, seed: int):
    """A packed batch of molecule-sized random graphs (10..40 nodes) filling B rows of L slots.

    Returns (edge_index (2, E) both directions, node_row (N,), node_pos (N,), segments (B, L)).
    """
    g = torch.Generator().manual_seed(seed)
    edges, node_row, node_pos, start = [], [], [], 0
    segments = torch.full((B, L), -1, dtype=torch.long)
    for row in range(B):
        pos = 0
        while pos < L:
            n = min(int(torch.randint(10, 41, (1,), generator=g)), L - pos)
            ring = torch.arange(n)
            src = torch.cat([ring, torch.randint(0, n, (n // 4,), generator=g)])
            dst = torch.cat([(ring + 1) % n, torch.randint(0, n, (n // 4,), generator=g)])
            edges.append(torch.stack([src, dst]) + start)
            node_row += [row] * n
            node_pos += list(range(pos, pos + n))
            segments[row, pos:pos + n] = start  # graph id = its first node
            pos += n
            start += n
    edge_index = torch.cat(edges, 1)
    edge_index = torch.cat([edge_index, edge_index.flip(0)], 1)
    edge_index = torch.unique(edge_index[:, edge_index[0] != edge_index[1]], dim=1)  # simple graphs
    return edge_index, torch.tensor(node_row), torch.tensor(node_pos), segments


def build_relation(name: str, L: int):
    """The relation of a benchmark case at sequence length L (B=4, H=8)."""
    if name == "none":
        return None
    if name == "causal":
        return R.Causal()
    if name == "window":
        return R.SlidingWindow(128)
    if name == "documents":
        return R.Documents(_segments(L, max(2, L // 128), 0))
    if name == "relative":
        return _learned(R.RelativeBias(H, 128))
    if name == "t5":
        return _learned(R.T5Bias(H))
    if name == "alibi":
        return R.ALiBi(H) & R.Causal()
    if name == "urpe":
        return _learned(R.URPE(H, 128))
    if name == "documents+relative":
        return R.Documents(_segments(L, max(2, L // 128), 0)) & _learned(R.RelativeBias(H, 128))
    gh, gw = _grid_shape(L)
    if name == "grid_bias":
        return _learned(R.GridRelativeBias(H, (8, 8), grid_size=(gh, gw))) & R.WindowMask((gh, gw), 8)
    if name == "shifted_window":
        return R.WindowMask((gh, gw), 8, shift=4)
    if name == "manhattan_decay":
        return R.ManhattanDecay(H, (gh, gw))
    if name in ("graph_adjacency", "spd", "edge_feature"):
        from relformer.relations import graph as G

        ei, row, pos, seg = _random_graph_rows(L, 0)
        adj = G.GraphAdjacency.from_edges(ei, row, pos, B, L)
        if name == "graph_adjacency":
            return adj
        if name == "spd":  # Graphormer: global attention inside each graph, biased by hop distance
            spd = G.dense_shortest_paths(ei, row, pos, B, L)
            return _learned(R.ShortestPathBias(H, 8)).bind(spd=spd) & R.Documents(seg)
        edge_attr = torch.randn(ei.shape[1], 4, generator=torch.Generator().manual_seed(1))
        module, ids = _learned(R.EdgeFeatureBias(4, H)), G.edge_id_matrix(ei, row, pos, B, L)
        rel = module.bind_edges(ids, edge_attr) & adj
        # edge_bias = proj(edge_attr) is recomputed every forward, as a model does
        rel.rebind = lambda: module.bind_edges(ids, edge_attr) & adj
        rel.owner = module
        return rel
    if name == "box_geometry":
        g = torch.Generator().manual_seed(0)
        boxes = torch.cat([torch.rand(B, L, 2, generator=g), torch.rand(B, L, 2, generator=g) * 0.3 + 0.01], -1)
        return _learned(R.BoxRelationBias(H)).bind(boxes=boxes)
    raise KeyError(name)


TARGET_LENGTH = 2048
# --quick: one relation per kind (mask, learnable bias, multiplier, grid, graph, geometry)
QUICK_RELATIONS = ("none", "causal", "window", "documents", "relative", "urpe", "grid_bias", "spd", "box_geometry")
RELATIONS = ("none", "causal", "window", "documents", "relative", "t5", "alibi", "urpe", "documents+relative",
             "grid_bias", "shifted_window", "manhattan_decay", "graph_adjacency", "spd", "edge_feature", "box_geometry")
# The eager reference materialises (B, Q, Q, 4*embed_dim) pair features: ~4 GiB per copy at Q=2048,
# and DETR-family decoders use <= 900 queries, so the box relation is measured up to Q=1024.
MAX_BOX_QUERIES = 1024


def supported(backend: str, rel, train: bool) -> bool:
    if backend == "flex" and (train or (rel is not None and rel.has_prob)):
        return False
    if backend == "sdpa" and rel is not None and rel.has_prob:
        return False
    return True


def make_case(name: str, L: int, backend: str, train: bool):
    """Returns a zero-arg callable running one forward (or forward+backward)."""
    torch.manual_seed(0)
    rel = build_relation(name, L)
    q, k, v = (torch.randn(B, H, L, D) for _ in range(3))
    if train:
        for t in (q, k, v):
            t.requires_grad_(True)
        cot = torch.randn(B, H, L, D)

        rebind = getattr(rel, "rebind", None)
        params = list(getattr(rel, "owner", rel).parameters()) if rel is not None else []

        def step():
            for t in (q, k, v, *params):
                t.grad = None
            relformer.attend(q, k, v, rebind() if rebind else rel, backend=backend).backward(cot)
    else:
        if rel is not None:
            rel.requires_grad_(False)

        def step():
            with torch.no_grad():
                relformer.attend(q, k, v, rel, backend=backend)
    return step, rel, (q, k, v)


def time_case(step, reps: int) -> float:
    step()  # warm-up (and Flex compile)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def measure_memory_here(name, L, backend, train) -> float:
    """Run in the child process: peak RSS growth (MiB) during one warm run of the case."""
    step, _, _ = make_case(name, L, backend, train)
    step()
    return peak_rss_growth(step)


def measure_memory(name, L, backend, train) -> float | None:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    cmd = [sys.executable, __file__, "--child", json.dumps([name, L, backend, train])]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        return None
    return float(res.stdout.strip().splitlines()[-1])


def grad_check(name: str, L: int) -> float:
    """Max relative difference of the relation's table gradient: chunked vs sdpa (math kernel)."""
    grads = {}
    for backend in ("sdpa", "chunked"):
        step, rel, _ = make_case(name, L, backend, True)
        step()
        grads[backend] = torch.cat([p.grad.flatten() for p in rel.parameters()])
    ref = grads["sdpa"]
    return ((grads["chunked"] - ref).abs().max() / ref.abs().max()).item()


def packed_vs_padded(reps: int, n_seq: int = 64, seed: int = 0) -> list[dict]:
    """Variable-length batch (lengths 16..512, skewed): padded SDPA vs packed rows vs one packed sequence."""
    from relformer.data import Packed

    g = torch.Generator().manual_seed(seed)
    lengths = torch.exp(torch.randn(n_seq, generator=g) * 0.8 + math.log(64)).round().clamp(16, 512).long()
    x = Packed.from_list([torch.randn(int(n), H, D, generator=g) for n in lengths])
    total = int(lengths.sum())
    padded, mask = x.to_padded()
    P = padded.transpose(1, 2).contiguous()  # (n, H, Lmax, D)
    key_pad = R.Documents(torch.where(mask, 0, -1), torch.where(mask, 0, -1))
    rows = x.to_rows(512)
    xr = rows.gather(x.values).transpose(1, 2).contiguous()  # (R, H, 512, D)
    one = x.values.transpose(0, 1).unsqueeze(0).contiguous()  # (1, H, N, D)
    layouts = {
        "padded (key-padding mask)": (P, key_pad, P.shape[0] * P.shape[2]),
        "packed rows of 512 (block-diagonal)": (xr, rows.relation(), xr.shape[0] * xr.shape[2]),
        "one packed sequence (documents)": (one, x.relation(), total),
    }
    out = []
    for layout, (t, rel, slots) in layouts.items():
        for backend in ("sdpa", "flex", "auto"):
            def step():
                with torch.no_grad():
                    relformer.attend(t, t, t, rel, backend=backend)
            out.append(dict(layout=layout, backend=backend, slots=slots, tokens=total, n_seq=n_seq,
                            ms=time_case(step, reps)))
    return out


def _key(r) -> tuple:
    return r["L"], r["relation"], r["mode"], r["backend"]


def load_rows(path: Path) -> dict:
    """Earlier rows of this benchmark, by case (a partial re-run replaces only its own cases)."""
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {_key(r): r for r in rows}


def run(lengths, reps, memory_lengths, relations, out_path: Path, packed_seqs: int = 64):
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    raw_path = out_path.with_suffix(".jsonl")
    saved = load_rows(raw_path)
    rows = []
    for L in lengths:
        for name in relations:
            for train in (False, True):
                if name == "box_geometry" and L > MAX_BOX_QUERIES:
                    continue
                for backend in BACKENDS:
                    step, rel, (q, k, v) = make_case(name, L, backend, train)
                    if not supported(backend, rel, train):
                        continue
                    with torch.set_grad_enabled(train):
                        chosen = relformer.explain(q, k, v, rel).backend if backend == "auto" else backend
                    ms = time_case(step, reps if not (backend == "eager" and L >= 2048) else max(5, reps // 2))
                    mem = measure_memory(name, L, backend, train) if L in memory_lengths else None
                    row = dict(L=L, relation=name, mode="fwd+bwd" if train else "fwd", backend=backend,
                               chosen=chosen, ms=ms, mib=mem)
                    rows.append(row)
                    saved[_key(row)] = row
                    raw_path.write_text("".join(json.dumps(r) + "\n" for r in saved.values()))  # nothing lost
                    print(json.dumps(row), flush=True)
    extras_path = out_path.with_suffix(".extras.json")
    extras = json.loads(extras_path.read_text()) if extras_path.exists() else {}
    if 2048 in lengths and "relative" in relations:
        extras["chunked_grad_rel_err"] = grad_check("relative", 2048)
    if "none" in relations or "packed" not in extras:
        extras["packed"] = packed_vs_padded(reps, n_seq=packed_seqs)
    extras_path.write_text(json.dumps(extras, indent=1))
    report_from(saved, extras, out_path, reps)


def report_from(saved: dict, extras: dict, out_path: Path, reps: int) -> None:
    """Write the report from every saved row (all lengths, in RELATIONS order)."""
    rows = sorted(saved.values(), key=lambda r: (r["L"], RELATIONS.index(r["relation"])))
    write_report(rows, extras["packed"], extras, out_path, sorted({r["L"] for r in rows}), reps)


def write_report(rows, packed, checks, out_path, lengths, reps):
    by = {(r["L"], r["relation"], r["mode"], r["backend"]): r for r in rows}
    lines = [
        "# Attention backends — eager vs sdpa vs flex vs chunked vs auto",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}. B={B}, H={H}, D={D}, fp32. Median of {reps} runs after a warm-up; "
        f"peak memory (MiB above the pre-run RSS, fresh process per case) at L in "
        f"{sorted({r['L'] for r in rows if r['mib'] is not None})}. "
        "`×sdpa` = time / time of the `sdpa` backend on the same case. `auto→` is the backend auto chose. "
        "Flex has no CPU backward (—). `box_geometry` is measured up to Q = "
        f"{MAX_BOX_QUERIES} queries (DETR-family decoders use ≤ 900; the eager reference alone would hold "
        "~4 GiB of pair features per copy at 2048).",
        "",
        f"Command: `python bench/attention.py --lengths {' '.join(map(str, lengths))} --reps {reps}` "
        "(rows are saved per case in the `.jsonl` beside this file; `--relations ...` re-measures a subset "
        "and `--report-only` rewrites this page from the saved rows).",
        "",
    ]
    targets = []
    for L in lengths:
        lines += [f"## L = {L}", "", "| relation | mode | eager ms | sdpa ms | flex ms | chunked ms | auto ms (auto→) "
                  "| eager MiB | sdpa MiB | flex MiB | chunked MiB | auto ×sdpa |", "|" + "---|" * 12]
        for name in dict.fromkeys(r["relation"] for r in rows if r["L"] == L):
            for mode in ("fwd", "fwd+bwd"):
                cell = {b: by.get((L, name, mode, b)) for b in BACKENDS}
                if not cell["auto"]:
                    continue
                base = cell["sdpa"]["ms"] if cell["sdpa"] else None
                ratio = cell["auto"]["ms"] / base if base else None
                lines.append(
                    f"| {name} | {mode} | " + " | ".join(fmt(cell[b] and cell[b]["ms"], ".1f") for b in BACKENDS[:4])
                    + f" | {cell['auto']['ms']:.1f} ({cell['auto']['chosen']}) | "
                    + " | ".join(fmt(cell[b] and cell[b]["mib"], ".0f") for b in BACKENDS[:4])
                    + f" | {fmt(ratio, '.2f')} |")
        lines.append("")
    L = TARGET_LENGTH
    if L not in lengths:
        lines += ["## Targets", "", f"The targets are defined at L = {L}; this run measured L = {lengths}. "
                  "Run `python bench/attention.py` for the full sweep "
                  "([bench/results/attention.md](attention.md) holds the recorded one).", ""]
        _packed_table(lines, packed)
        return _write(lines, out_path)
    lines += [f"## Targets at L = {L}", ""]
    for name in dict.fromkeys(r["relation"] for r in rows if r["L"] == L):
        auto, sd, fx = (by.get((L, name, "fwd", b)) for b in ("auto", "sdpa", "flex"))
        if not (sd or fx):
            ch, ea = by.get((L, name, "fwd", "chunked")), by.get((L, name, "fwd", "eager"))
            lines.append(f"- n/a auto inference, {name}: no SDPA/Flex form (post-softmax multiplier); auto "
                         f"{auto['ms']:.1f} ms ({auto['chosen']}) vs chunked {ch['ms']:.1f} / eager {ea['ms']:.1f} ms")
            continue
        best = min(x["ms"] for x in (sd, fx) if x)
        ok = auto["ms"] <= best * 1.10
        targets.append(ok)
        lines.append(f"- {'PASS' if ok else 'FAIL'} auto inference, {name}: {auto['ms']:.1f} ms vs best of "
                     f"sdpa/flex {best:.1f} ms (≤ 1.10× allowed for timing noise)")
    for name in ("window", "documents", "shifted_window"):
        sd, fx = by.get((L, name, "fwd", "sdpa")), by.get((L, name, "fwd", "flex"))
        if sd and fx:
            ok = sd["ms"] / fx["ms"] >= 3.0
            targets.append(ok)
            lines.append(f"- {'PASS' if ok else 'FAIL'} flex vs sdpa with the same {name} mask: "
                         f"{sd['ms'] / fx['ms']:.2f}× faster (target ≥ 3×)")
    ch, sd = by.get((L, "relative", "fwd+bwd", "chunked")), by.get((L, "relative", "fwd+bwd", "sdpa"))
    if ch and sd:
        mem_ok = ch["mib"] is not None and sd["mib"] is not None and ch["mib"] <= sd["mib"] / 5
        time_ok = ch["ms"] <= 1.2 * sd["ms"]
        grad = checks.get("chunked_grad_rel_err")
        grad_ok = grad is not None and grad < 1e-4
        targets += [mem_ok, time_ok, grad_ok]
        lines.append(f"- {'PASS' if mem_ok else 'FAIL'} chunked fwd+bwd with a learnable relative bias: peak "
                     f"{fmt(ch['mib'], '.0f')} MiB vs sdpa {fmt(sd['mib'], '.0f')} MiB (target ≤ 1/5)")
        lines.append(f"- {'PASS' if time_ok else 'FAIL'} chunked fwd+bwd time {ch['ms']:.0f} ms vs sdpa "
                     f"{sd['ms']:.0f} ms = {ch['ms'] / sd['ms']:.2f}× (target ≤ 1.2×)")
        lines.append(f"- {'PASS' if grad_ok else 'FAIL'} chunked table gradient vs sdpa: max relative "
                     f"difference {fmt(grad, '.1e')} (target < 1e-4)")
    _packed_table(lines, packed)
    lines += ["", f"**{sum(targets)} of {len(targets)} targets met.**", ""]
    _write(lines, out_path)


def _packed_table(lines: list[str], packed: list[dict]) -> None:
    n_seq = packed[0].get("n_seq", 64) if packed else 0  # rows saved before n_seq was recorded: 64
    lines += ["", f"## Packed vs padded ({n_seq} sequences, lengths 16..512 log-normal, H=8, D=64, fwd)", "",
              "| layout | backend | slots | real tokens | padding | ms |", "|---|---|---|---|---|---|"]
    for p in packed:
        lines.append(f"| {p['layout']} | {p['backend']} | {p['slots']} | {p['tokens']} | "
                     f"{1 - p['tokens'] / p['slots']:.0%} | {p['ms']:.1f} |")


def _write(lines: list[str], out_path: Path) -> None:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {out_path}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="L=512, 3 repeats, one relation of each kind (a few minutes)")
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 2048])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--memory-lengths", type=int, nargs="*", default=None, help="default: every length")
    ap.add_argument("--relations", nargs="+", default=list(RELATIONS), choices=RELATIONS)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--packed-seqs", type=int, default=64, help="sequences in the packed-vs-padded batch")
    ap.add_argument("--report-only", action="store_true", help="rewrite the report from the saved rows")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
        print(measure_memory_here(*json.loads(args.child)))
        return
    if args.quick:
        args.lengths, args.reps, args.memory_lengths, args.relations = [512], 3, [512], list(QUICK_RELATIONS)
    if args.memory_lengths is None:
        args.memory_lengths = args.lengths
    out = args.out or ROOT / "results" / ("attention-quick.md" if args.quick else "attention.md")
    if args.report_only:
        extras = json.loads(out.with_suffix(".extras.json").read_text())
        report_from(load_rows(out.with_suffix(".jsonl")), extras, out, args.reps)
        return
    run(args.lengths, args.reps, set(args.memory_lengths), args.relations, out, args.packed_seqs)


if __name__ == "__main__":
    main()
