"""torch's ``F.linear`` (MKL sgemm) vs oneDNN vs relformer's measured choice, on the layers of the vision models.

    python bench/linear.py                  # -> bench/results/linear.md (+ linear.jsonl)
    python bench/linear.py --quick --out /tmp/linear.md

Shapes are the projections of the vision models at batch 64 (``tokens x in -> out``: Swin-T
stage 1 and 3, its patch merging, ViT-T's block, the 28x28 models' layers) plus small products on both sides of
``MIN_MACS``, below which :func:`relformer.nn.linear` always calls ``F.linear``. Peers: ``F.linear``,
relformer's ``linear`` forced to oneDNN (``RELFORMER_LINEAR=onednn``), and its default policy, whose
per-width choice (:func:`relformer.nn.gemm.linear_choice`) is re-measured at the start of the run (not
read from an earlier run's cache) and reported with its probe ratios. Passes: ``forward`` under
``inference_mode``; ``train`` = forward + backward of ``(y * g).sum()`` with input and weight
gradients. The peers alternate within each repetition (order rotating); the report gives the
median GFLOP/s and the paired speed-up over ``F.linear`` (median of per-repetition ratios, 95%
bootstrap interval). ``max rel err`` compares the outputs and gradients with ``F.linear``'s,
relative to the largest reference entry. Run in one process, fp32, ``--threads`` threads; the
report names the CPU model.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from relformer.nn import gemm

from benchlib import paired_speedup, time_interleaved, write_lines

ROOT = Path(__file__).resolve().parent
# (what, tokens, in, out): batch 64 of 224x224 images
SHAPES = [
    ("Swin-T stage 1 qkv", 200704, 96, 288),
    ("Swin-T stage 1 proj", 200704, 96, 96),
    ("Swin-T stage 1 fc1", 200704, 96, 384),
    ("Swin-T stage 1 fc2", 200704, 384, 96),
    ("Swin-T merge 1->2", 50176, 384, 192),
    ("Swin-T stage 3 qkv", 12544, 384, 1152),
    ("Swin-T stage 3 proj", 12544, 384, 384),
    ("Swin-T stage 3 fc1", 12544, 384, 1536),
    ("Swin-T stage 3 fc2", 12544, 1536, 384),
    ("ViT-T proj", 12608, 192, 192),
    ("ViT-T qkv", 12608, 192, 576),
    ("ViT-T fc1", 12608, 192, 768),
    ("ViT-T fc2", 12608, 768, 192),
    ("Swin-micro stage 1 qkv", 12544, 48, 144),
    ("Swin-micro stage 1 fc1", 12544, 48, 96),
    ("Swin-micro stage 2 qkv", 3136, 96, 288),
    ("Swin-micro stage 2 fc2", 3136, 192, 96),
    ("ViT-micro fc1", 3200, 64, 128),
    ("small, 2x MIN_MACS", 2048, 64, 64),
    ("small, 1/2 MIN_MACS", 512, 64, 64),
    ("head", 64, 768, 10),
]
QUICK = {"Swin-T stage 1 fc1", "Swin-T stage 3 fc2", "ViT-T qkv", "small, 1/2 MIN_MACS"}
PEERS = ("torch", "onednn", "default")  # F.linear; relformer's linear forced to oneDNN; its default (measured) choice
SHORT = {"forward": "fwd", "input_grad": "dX", "weight_grad": "dW"}


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _with_policy(policy: str):
    """relformer's ``linear`` under one kernel policy (set at each call: the peers alternate)."""
    def fn(x, w, b):
        gemm.set_linear_kernel(policy)
        return gemm.linear(x, w, b)
    return fn


def make_steps(tokens: int, k: int, n: int, mode: str, g: torch.Generator):
    """The peers' steps on shared inputs, and the max relative error of each relformer peer's results."""
    x = torch.randn(tokens, k, generator=g)
    w = torch.randn(n, k, generator=g) * k ** -0.5
    b = torch.randn(n, generator=g)
    fns = {"torch": F.linear, "onednn": _with_policy("onednn"), "default": _with_policy("auto")}
    if mode == "forward":
        def step(fn):
            with torch.inference_mode():
                return [fn(x, w, b)]
    else:
        x, w, b = x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
        grad = torch.randn(tokens, n, generator=g)

        def step(fn):
            y = fn(x, w, b)
            return [y.detach(), *torch.autograd.grad(y, (x, w, b), grad)]
    ref = step(F.linear)
    err = {p: max(_rel_err(o, r) for o, r in zip(step(fns[p]), ref)) for p in ("onednn", "default")}
    del ref
    return {p: (lambda f=fns[p]: step(f)) for p in PEERS}, err


def chosen(choice: dict, macs: int, mode: str) -> str:
    """What the default policy ran: ``F.linear``, or the kernel of each product of the pass."""
    ops = gemm.OPS[:1] if mode == "forward" else gemm.OPS
    if macs < gemm.MIN_MACS or all(choice["ops"][op] == "torch" for op in ops):
        return "F.linear"
    return ", ".join(f"{SHORT[op]} {'oneDNN' if choice['ops'][op] == 'onednn' else 'torch'}" for op in ops)


def run(args) -> list[dict]:
    torch.set_num_threads(args.threads)
    rows, g, choices = [], torch.Generator().manual_seed(0), {}
    for what, tokens, k, n in SHAPES:
        if args.quick and what not in QUICK:
            continue
        if (k, n) not in choices:  # measured now, on this machine, not read from an earlier run's cache
            gemm.set_linear_kernel("auto")
            choices[k, n] = gemm.linear_choice(k, n, remeasure=True)
        for mode in args.modes:
            steps, err = make_steps(tokens, k, n, mode, g)
            times = time_interleaved(steps, args.reps, args.warmup)
            flops = 2 * tokens * k * n * (1 if mode == "forward" else 3)
            gflops = {p: flops / statistics.median(t) / 1e9 for p, t in times.items()}
            rows.append(dict(layer=what, tokens=tokens, k=k, n=n, mode=mode, macs=tokens * k * n, gflops=gflops,
                             onednn_vs_torch=paired_speedup(times, "onednn", "torch"),
                             default_vs_torch=paired_speedup(times, "default", "torch"),
                             chosen=chosen(choices[k, n], tokens * k * n, mode), probe=choices[k, n]["ratios"],
                             max_rel_err=err, reps=args.reps,
                             times_ms={p: [round(t * 1e3, 3) for t in ts] for p, ts in times.items()}))
            print(json.dumps({key: rows[-1][key] for key in ("layer", "mode", "gflops", "onednn_vs_torch",
                                                            "default_vs_torch", "chosen")}), flush=True)
            del steps
    return rows


def _ci(paired) -> str:
    med, lo, hi = paired
    return f"{med:.2f} [{lo:.2f}, {hi:.2f}]"


def write_report(rows: list[dict], args) -> None:
    lines = [
        "# Linear layers: F.linear (MKL sgemm), oneDNN, and relformer's measured choice",
        "",
        f"CPU: {gemm.cpu_model()} ({platform.machine()}), {torch.get_num_threads()} threads; torch "
        f"{torch.__version__}; fp32; measured {datetime.datetime.now():%Y-%m-%d %H:%M}. Command: "
        f"`{' '.join(['python bench/linear.py', *args.argv])}`",
        "",
        "`forward`: one product under `inference_mode`. `train`: forward + input, weight and bias "
        "gradients (3 products). GFLOP/s = 2 x tokens x in x out (x 3 for train) / median time of "
        f"{args.reps} interleaved repetitions after {args.warmup} warm-ups. `oneDNN`: relformer's `linear` "
        "with `RELFORMER_LINEAR=onednn` (the weight gradient on oneDNN when in or out >= "
        f"{gemm.WIDE_WEIGHT_GRAD}, summed over slices of at most {gemm.WEIGHT_GRAD_ROWS} tokens). `default`: "
        "relformer's `linear` as it comes (`auto`): `chosen` is what its probe picked for the layer's width, "
        f"oneDNN for a product only where the probe measured it more than {gemm.MARGIN:.2f}x F.linear's rate "
        "(`probe` = F.linear time / oneDNN time of fwd, dX, dW, measured at the start of this run), F.linear "
        f"below `MIN_MACS` = {gemm.MIN_MACS:,} multiply-adds. Paired = per-repetition ratio torch time / peer "
        "time, median [95% bootstrap interval] (> 1: the peer is faster). `max rel err`: oneDNN / default "
        "against F.linear, relative to the largest reference entry.",
        "",
        "| layer | tokens x in -> out | pass | torch GFLOP/s | oneDNN GFLOP/s | oneDNN paired | chosen | probe fwd/dX/dW "
        "| default paired | max rel err |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        probe = "/".join(f"{r['probe'][op]:.2f}" for op in gemm.OPS)
        err = r["max_rel_err"]
        lines.append(f"| {r['layer']} | {r['tokens']} x {r['k']} -> {r['n']} | {r['mode']} | "
                     f"{r['gflops']['torch']:.0f} | {r['gflops']['onednn']:.0f} | {_ci(r['onednn_vs_torch'])} | "
                     f"{r['chosen']} | {probe} | {_ci(r['default_vs_torch'])} | "
                     f"{err['onednn']:.1e} / {err['default']:.1e} |")
    write_lines(lines, args.out)
    args.out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"only {sorted(QUICK)}, 3 repetitions")
    ap.add_argument("--modes", nargs="+", choices=("forward", "train"), default=["forward", "train"])
    ap.add_argument("--reps", type=int, default=None, help="default 15 (3 with --quick)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "linear.md")
    args = ap.parse_args(argv)
    args.argv = argv if argv is not None else sys.argv[1:]
    args.reps = args.reps or (3 if args.quick else 15)
    policy = gemm.linear_kernel()
    try:
        write_report(run(args), args)
    finally:
        gemm.set_linear_kernel(policy)


if __name__ == "__main__":
    main()
