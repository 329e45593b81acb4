"""Multi-scale deformable attention: relformer's packed-level sampler against HF transformers' function.

    python bench/deformable.py              # -> bench/results/deformable.md
    python bench/deformable.py --quick      # 5 repetitions (a smoke run)

Shapes of RT-DETR's decoder at 640 x 640 (3 levels 80x80 / 40x40 / 20x20, S = 8400) and at the crowded
canvases' 256 x 256 (32x32 / 16x16 / 8x8, S = 1344), 300 queries, 8 heads
of D = 32, 4 points per head and level; batch 1 and 4; forward (no grad) and forward + backward (the
gradients of value, sampling locations and attention weights). Peers on the same inputs:

* ``relformer``: :func:`relformer.attention.multi_scale_deformable_attend` with ``sampler="auto"``;
* ``packed``: ``sampler="packed"`` (one ``embedding_bag`` over the packed levels, no loop per level);
* ``grid_sample``: ``sampler="grid_sample"``, the plain twin (one ``grid_sample`` per level);
* ``hf``: ``transformers.models.rt_detr.modeling_rt_detr.MultiScaleDeformableAttention`` (what RT-DETR runs
  on CPU; also one ``grid_sample`` per level).

Times come from interleaved repetitions (``benchlib.time_interleaved``: the peers alternate, the order
rotating); speed-up = the median of the per-repetition paired ratios ``t_peer / t_ours`` with its 95%
bootstrap interval. ``max |diff|``: the largest difference of relformer's output from HF's.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import torch
from transformers.models.rt_detr.modeling_rt_detr import MultiScaleDeformableAttention as HFCore

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from benchlib import paired_speedup, paired_verdict, time_interleaved, write_lines  # noqa: E402

from relformer.attention import multi_scale_deformable_attend  # noqa: E402
from relformer.attention.deformable import (auto_sampler, grid_sample_deformable_attend,  # noqa: E402
                                            level_start_index_of)
from relformer.utils.cpu import cpu_model  # noqa: E402

RESULTS = ROOT / "results" / "deformable.md"
LEVELS = {640: [(80, 80), (40, 40), (20, 20)], 256: [(32, 32), (16, 16), (8, 8)]}  # image size -> level maps
QUERIES, HEADS, HEAD_DIM, POINTS = 300, 8, 32, 4


def inputs(batch: int, grad: bool, shapes_hw, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    S, L = sum(h * w for h, w in shapes_hw), len(shapes_hw)
    value = torch.randn(batch, S, HEADS, HEAD_DIM, generator=g)
    loc = torch.rand(batch, QUERIES, HEADS, L, POINTS, 2, generator=g) * 1.1 - 0.05
    weights = torch.rand(batch, QUERIES, HEADS, L, POINTS, generator=g).softmax(-1)
    return [t.requires_grad_(grad) for t in (value, loc, weights)]


def peers(value, loc, weights, shapes_hw):
    shapes = torch.tensor(shapes_hw)
    starts = level_start_index_of(shapes)
    hf = HFCore()
    return {"relformer": lambda: multi_scale_deformable_attend(value, shapes, loc, weights, starts),
            "packed": lambda: multi_scale_deformable_attend(value, shapes, loc, weights, starts, sampler="packed"),
            "grid_sample": lambda: grid_sample_deformable_attend(value, shapes, loc, weights, starts),
            "hf": lambda: hf(value, shapes, shapes_hw, starts, loc, weights, 64)}


def steps(batch: int, mode: str, shapes_hw):
    tensors = inputs(batch, mode == "forward+backward", shapes_hw)
    calls = peers(*tensors, shapes_hw)
    if mode == "forward":
        def wrap(fn):
            def step():
                with torch.no_grad():
                    fn()
            return step
    else:
        def wrap(fn):
            def step():
                for t in tensors:
                    t.grad = None
                fn().sum().backward()
            return step
    with torch.no_grad():
        diff = max((calls[n]() - calls["hf"]()).abs().max().item() for n in ("packed", "grid_sample"))
    with torch.set_grad_enabled(mode == "forward+backward"):
        auto = auto_sampler(*tensors, shapes_hw)
    return {name: wrap(fn) for name, fn in calls.items()}, diff, auto


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1], help="one table per thread count")
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--quick", action="store_true", help="5 repetitions")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    reps = 5 if args.quick else args.reps
    lines = ["# Multi-scale deformable attention", "",
             f"CPU: {cpu_model()} ({platform.machine()}), torch {torch.__version__}; fp32; RT-DETR's levels at 640 x 640 "
             f"(80x80 / 40x40 / 20x20) and at 256 x 256 (32x32 / 16x16 / 8x8), {QUERIES} queries, {HEADS} heads, D = {HEAD_DIM}, "
             f"{POINTS} points; {reps} interleaved repetitions. Command: `python bench/deformable.py"
             f"{' --quick' if args.quick else ''}`."]
    for threads in args.threads:
        torch.set_num_threads(threads)
        lines += ["", f"## {threads} thread{'s' if threads > 1 else ''}", "",
                  f"Load average (1 min) when the table started: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs.", "",
                  "| image | batch | pass | auto runs | relformer (auto) ms | packed ms | grid_sample ms | HF ms | "
                  "relformer vs HF (95% CI) | packed vs grid_sample (95% CI) | max abs diff vs HF |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for (size, shapes_hw), batch, mode in ((lv, b, m) for lv in LEVELS.items() for b in (1, 4)
                                               for m in ("forward", "forward+backward")):
            calls, diff, auto = steps(batch, mode, shapes_hw)
            times = time_interleaved(calls, reps=reps, warmup=2)
            ms = {n: 1e3 * sorted(t)[len(t) // 2] for n, t in times.items()}
            hf = paired_speedup(times, "relformer", "hf")
            twin = paired_speedup(times, "packed", "grid_sample")
            lines.append(f"| {size} | {batch} | {mode} | {auto} | {ms['relformer']:.1f} | {ms['packed']:.1f} | "
                         f"{ms['grid_sample']:.1f} | {ms['hf']:.1f} | "
                         f"{hf[0]:.2f}x ({hf[1]:.2f}-{hf[2]:.2f}) {paired_verdict(hf[1:])} | "
                         f"{twin[0]:.2f}x ({twin[1]:.2f}-{twin[2]:.2f}) {paired_verdict(twin[1:])} | {diff:.1e} |")
            print(lines[-1], flush=True)
    lines += ["", "Speed-up > 1: the first named is faster. Times: medians of the repetitions. Where the load average "
              "exceeds the free CPUs, multi-threaded rows measure oversubscription (each parallel op waits for a "
              "descheduled thread; relformer's sampler runs more, smaller ops than a grid_sample call) more than the "
              "kernels: read the 1-thread table, or rerun on an idle machine. `auto runs`: the sampler "
              "`sampler=\"auto\"` chose (inference: packed; training: the rule's guess -- packed from 8000 value rows "
              "(batch x tokens) per thread, else grid_sample -- kept unless the other sampler measured 1.10x faster "
              "in the probe on this CPU: `relformer/attention/deformable.py`'s module doc)."]
    write_lines(lines, args.out)


if __name__ == "__main__":
    main()
