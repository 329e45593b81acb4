"""relformer's ``linear`` (oneDNN) vs torch's ``F.linear`` (MKL sgemm) on the layers of the vision models.

    python bench/linear.py                  # -> bench/results/linear.md (+ linear.jsonl)
    python bench/linear.py --quick --out /tmp/linear.md

Shapes are the projections of the vision models at batch 64 (``tokens x in -> out``: Swin-T
stage 1 and 3, its patch merging, ViT-T's block, the 28x28 models' layers) plus small products on both sides of
``MIN_MACS``, where :func:`relformer.nn.linear` switches kernels. Passes: ``forward`` under
``inference_mode``; ``train`` = forward + backward of ``(y * g).sum()`` with input and weight
gradients. The two peers alternate within each repetition (order rotating); the report gives
the median GFLOP/s of each and the paired speed-up (median of per-repetition ratios, 95%
bootstrap interval). ``max rel err`` compares the outputs and gradients with ``F.linear``'s,
relative to the largest reference entry. Run in one process, fp32, ``--threads`` threads.
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
PEERS = ("torch", "relformer")


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def make_steps(tokens: int, k: int, n: int, mode: str, g: torch.Generator):
    """The two peers' steps on shared inputs, and the max relative error of relformer's results."""
    x = torch.randn(tokens, k, generator=g)
    w = torch.randn(n, k, generator=g) * k ** -0.5
    b = torch.randn(n, generator=g)
    fns = {"torch": F.linear, "relformer": gemm.linear}
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
    ref, ours = step(fns["torch"]), step(fns["relformer"])
    err = max(_rel_err(o, r) for o, r in zip(ours, ref))
    del ref, ours
    return {p: (lambda f=fns[p]: step(f)) for p in PEERS}, err


def run(args) -> list[dict]:
    torch.set_num_threads(args.threads)
    rows, g = [], torch.Generator().manual_seed(0)
    for what, tokens, k, n in SHAPES:
        if args.quick and what not in QUICK:
            continue
        for mode in args.modes:
            steps, err = make_steps(tokens, k, n, mode, g)
            times = time_interleaved(steps, args.reps, args.warmup)
            flops = 2 * tokens * k * n * (1 if mode == "forward" else 3)
            gflops = {p: flops / statistics.median(t) / 1e9 for p, t in times.items()}
            speedup = paired_speedup(times, "relformer", "torch")
            rows.append(dict(layer=what, tokens=tokens, k=k, n=n, mode=mode, macs=tokens * k * n,
                             gflops=gflops, paired=speedup, max_rel_err=err, reps=args.reps,
                             onednn=tokens * k * n >= gemm.MIN_MACS,
                             weight_grad="oneDNN" if max(k, n) >= gemm.WIDE_WEIGHT_GRAD else "torch.mm",
                             times_ms={p: [round(t * 1e3, 3) for t in ts] for p, ts in times.items()}))
            print(json.dumps({key: rows[-1][key] for key in ("layer", "mode", "gflops", "paired", "max_rel_err")}),
                  flush=True)
            del steps
    return rows


def write_report(rows: list[dict], args) -> None:
    lines = [
        "# Linear layers: relformer (oneDNN) vs torch `F.linear` (MKL sgemm)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; torch "
        f"{torch.__version__}; fp32; measured {datetime.datetime.now():%Y-%m-%d %H:%M}. Command: "
        f"`{' '.join(['python bench/linear.py', *args.argv])}`",
        "",
        "`forward`: one product under `inference_mode`. `train`: forward + input, weight and bias "
        "gradients (3 products). GFLOP/s = 2 x tokens x in x out (x 3 for train) / median time of "
        f"{args.reps} interleaved repetitions after {args.warmup} warm-ups. `paired` = per-repetition "
        "ratio torch time / relformer time, median [95% bootstrap interval] (> 1: relformer faster). "
        f"`path`: relformer's kernel (oneDNN at or above `MIN_MACS` = {gemm.MIN_MACS:,} multiply-adds; "
        f"the weight gradient on oneDNN when in or out >= {gemm.WIDE_WEIGHT_GRAD}, summed over slices of at most "
        f"{gemm.WEIGHT_GRAD_ROWS} tokens).",
        "",
        "| layer | tokens x in -> out | pass | path | torch GFLOP/s | relformer GFLOP/s | paired [95% CI] | max rel err |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        path = "F.linear" if not r["onednn"] else "oneDNN" if r["mode"] == "forward" else f"oneDNN, dW {r['weight_grad']}"
        med, lo, hi = r["paired"]
        lines.append(f"| {r['layer']} | {r['tokens']} x {r['k']} -> {r['n']} | {r['mode']} | {path} | "
                     f"{r['gflops']['torch']:.0f} | {r['gflops']['relformer']:.0f} | {med:.2f} [{lo:.2f}, {hi:.2f}] | "
                     f"{r['max_rel_err']:.1e} |")
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
    gemm.set_linear_kernel("onednn")  # measure the kernel itself, whatever platform "auto" would pick
    write_report(run(args), args)


if __name__ == "__main__":
    main()
