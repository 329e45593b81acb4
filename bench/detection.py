"""DETR training steps and Hungarian matching: relformer vs HF ``transformers``, side by side.

    python bench/detection.py                    # -> bench/results/detection-bench.md (+ .json beside it)
    python bench/detection.py --quick --out /tmp/detection-quick.md

Training step = forward, the set-prediction loss (Hungarian matching, CE + L1 + GIoU on the final
and every auxiliary decoder output), backward, AdamW step. relformer: :class:`relformer.models.DETR`
+ :class:`relformer.models.detection.set_prediction.SetCriterion`; HF: ``DetrForObjectDetection`` (HF ResNet
backbone, ``auxiliary_loss=True``) called with ``labels``, its own matcher and loss. Both start from
the same weights (HF's is loaded with the relformer model's: :class:`relformer.interop.transformers.HFDETR`,
the ``hf_detr_fashion`` variant);
the backbone is trainable in both (HF's ``unfreeze_backbone``), BatchNorms frozen as in DETR.

* ``fashion``: the ``detr_fashion`` variant (3 + 3 layers of 128, 25 queries) on 32 real 128 x 128
  canvases of the Fashion-MNIST detection set with their boxes;
* ``base``: DETR's Transformer (6 + 6 layers of 256, 8 heads, FFN 2048, 100 queries) on a
  ResNet-18-like backbone, 4 random 256 x 256 images with 1-20 random boxes each.

Matcher: 16 images, 100 queries, 92 classes (COCO's 91 + no object), 1-50 targets per image
(uniform), relformer's batched ``HungarianMatcher`` vs HF's; both call scipy's
``linear_sum_assignment`` per image and return the same indices (checked here).

Peers alternate within each repetition (rotating order); medians of ``--reps``, and the median of
the per-repetition ratios with a 95% bootstrap interval (``benchlib.paired_speedup``); ``spread`` =
(max - min) / median over the repetitions.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from benchlib import paired_speedup, paired_verdict, time_interleaved, write_lines

ROOT = Path(__file__).resolve().parent


def random_targets(batch: int, max_targets: int, num_classes: int, seed: int, min_targets: int = 1) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batch):
        m = int(torch.randint(min_targets, max_targets + 1, (1,), generator=g))
        xy = torch.rand(m, 2, generator=g) * 0.6 + 0.2
        wh = torch.rand(m, 2, generator=g) * 0.3 + 0.02
        out.append({"labels": torch.randint(0, num_classes, (m,), generator=g), "boxes": torch.cat([xy, wh], 1)})
    return out


def step_case(case: str, quick: bool):
    """(relformer model, HF model, images, targets, description) with identical weights."""
    from relformer.models import DETR, model_config
    from relformer.interop.transformers import HFDETR

    if case == "fashion":
        from relformer.data.fashion_detection import build_fashion_detection

        config = model_config("detr_fashion", backbone_norm="frozen")
        n = 8 if quick else 32
        images, targets = build_fashion_detection(sizes=(64, 8, 8) if quick else (10000, 1000, 1000))["train"] \
            .__getitems__(list(range(n)))
        desc = f"`detr_fashion` (3 + 3 layers of 128, 25 queries, 1.75 M params), {n} real 128×128 canvases"
    else:
        config = model_config("detr_fashion", backbone_norm="frozen", in_channels=3, stem_channels=64,
                              widths=(64, 128, 256, 512), depths=(2, 2, 2, 2), dim=256, num_heads=8,
                              encoder_layers=2 if quick else 6, decoder_layers=2 if quick else 6,
                              encoder_mlp=2048, decoder_mlp=2048, num_queries=100, num_classes=91)
        n, size = (2, 128) if quick else (4, 256)
        images = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))
        targets = random_targets(n, 20, 91, seed=1)
        desc = f"DETR's Transformer (6 + 6 layers of 256, 100 queries) + ResNet-18-like backbone, {n} × {size}²"
    torch.manual_seed(0)
    ours = DETR(config).train()
    torch.manual_seed(0)
    hf = HFDETR(config).hf.train()
    return ours, hf, images, targets, desc


def make_steps(ours, hf, images, targets) -> dict:
    from relformer.models.detection.set_prediction import HungarianMatcher, SetCriterion

    c = hf.config
    criterion = SetCriterion(c.num_labels, HungarianMatcher(c.class_cost, c.bbox_cost, c.giou_cost),
                             weight_bbox=c.bbox_loss_coefficient, weight_giou=c.giou_loss_coefficient,
                             eos_coef=c.eos_coefficient)
    hf_labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
    opt_ours = torch.optim.AdamW(ours.parameters(), 1e-5)
    opt_hf = torch.optim.AdamW(hf.parameters(), 1e-5)

    def step_ours():
        loss = criterion(ours(images), targets)["loss"]
        opt_ours.zero_grad(set_to_none=True)
        loss.backward()
        opt_ours.step()

    def step_hf():
        loss = hf(pixel_values=images, labels=hf_labels).loss
        opt_hf.zero_grad(set_to_none=True)
        loss.backward()
        opt_hf.step()

    return {"relformer": step_ours, "HF": step_hf}


def matcher_steps(quick: bool):
    from transformers.loss.loss_for_object_detection import HungarianMatcher as HFMatcher

    from relformer.models.detection.set_prediction import HungarianMatcher

    B, Q, C = (4, 100, 92) if quick else (16, 100, 92)
    g = torch.Generator().manual_seed(0)
    outputs = {"logits": torch.randn(B, Q, C, generator=g), "pred_boxes": torch.rand(B, Q, 4, generator=g) * 0.4 + 0.1}
    targets = random_targets(B, 50, C - 1, seed=2)
    hf_targets = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
    ours, hf = HungarianMatcher(1.0, 5.0, 2.0), HFMatcher(1.0, 5.0, 2.0)
    same = all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
               for a, b in zip(ours(outputs, targets), hf(outputs, hf_targets)))
    desc = f"{B} images × {Q} queries × {C} classes, {sum(len(t['labels']) for t in targets)} targets (1–50 per image)"
    return {"relformer": lambda: ours(outputs, targets), "HF": lambda: hf(outputs, hf_targets)}, desc, same


def summarise(name: str, desc: str, times: dict, extra: dict | None = None) -> dict:
    ms = {p: statistics.median(t) * 1e3 for p, t in times.items()}
    spread = {p: (max(t) - min(t)) / statistics.median(t) for p, t in times.items()}
    paired, low, high = paired_speedup(times, "relformer", "HF")
    row = dict(case=name, description=desc, ms=ms, spread=spread, speedup=ms["HF"] / ms["relformer"],
               paired=paired, ci=(low, high), reps=len(times["HF"]), **(extra or {}))
    print(f"{name}: relformer {ms['relformer']:.1f} ms, HF {ms['HF']:.1f} ms, {row['speedup']:.2f}x "
          f"(paired {paired:.3f}, 95% CI {low:.3f}-{high:.3f})", flush=True)
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cases", nargs="+", default=["fashion", "base", "matcher"])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "detection-bench.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    rows = []
    for case in args.cases:
        if case == "matcher":
            steps, desc, same = matcher_steps(args.quick)
            rows.append(summarise(case, desc, time_interleaved(steps, args.reps, args.warmup), {"same_indices": same}))
            continue
        ours, hf, images, targets, desc = step_case(case, args.quick)
        rows.append(summarise(f"train step: {case}", desc,
                              time_interleaved(make_steps(ours, hf, images, targets), args.reps, args.warmup)))
    import transformers

    meta = dict(date=datetime.datetime.now().isoformat(), elapsed=time.time() - start, threads=args.threads,
                torch=torch.__version__, transformers=transformers.__version__, reps=args.reps,
                command="python bench/detection.py " + " ".join(sys.argv[1:] if argv is None else argv))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    write_report(meta, rows, args.out)


def write_report(meta: dict, rows: list[dict], out: Path) -> None:
    lines = [
        "# DETR — relformer vs HF `DetrForObjectDetection`: training step and Hungarian matcher",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {meta['threads']} torch threads; "
        f"torch {meta['torch']}, transformers {meta['transformers']}; fp32; measured "
        f"{meta['date'][:16].replace('T', ' ')} ({meta['elapsed'] / 60:.1f} min).",
        "",
        "Training step = forward + set-prediction loss (matching, CE + L1 + GIoU on the final and auxiliary "
        "outputs) + backward + AdamW step, the same initial weights in both. Matcher: the indices of one batch. "
        "Median of interleaved repetitions; `paired` = median over repetitions of HF ms / relformer ms of the "
        "two back-to-back runs, with its 95% bootstrap interval (robust to the machine's slow phases, which hit "
        "both); spread = (max − min) / median.",
        "",
        f"Command: `{meta['command'].strip()}`",
        "",
        "| case | setting | reps | relformer ms | HF ms | speed-up (medians) | paired speed-up [95% CI] | spread (rf / HF) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['case']} | {r['description']} | {r['reps']} | {r['ms']['relformer']:.1f} | {r['ms']['HF']:.1f} | "
                     f"{r['speedup']:.2f}× | {r['paired']:.3f}× [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] | "
                     f"{r['spread']['relformer']:.0%} / {r['spread']['HF']:.0%} |")
    lines += ["", "## Target (from the issue): relformer ≥ HF", "",
              "Verdict from the paired speed-up: FASTER when its whole 95% interval is above 1, LEVEL when the "
              "interval contains 1 (no difference the repetitions can resolve), SLOWER when it is below 1.", ""]
    for r in rows:
        low, high = r["ci"]
        lines.append(f"- {paired_verdict(r['ci'])} {r['case']}: {r['paired']:.3f}× [{low:.3f}, {high:.3f}]"
                     + (f" (same indices: {r['same_indices']})" if "same_indices" in r else ""))
    write_lines(lines, out)


if __name__ == "__main__":
    main()
