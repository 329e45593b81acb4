"""DETR training steps, Hungarian matching and RT-DETR inference / training: relformer vs HF ``transformers``.

    python bench/detection.py                    # -> bench/results/detection-bench.md (+ .json beside it)
    python bench/detection.py --quick --out /tmp/detection-quick.md
    python bench/detection.py --cases rtdetr     # -> bench/results/detection-rtdetr.md (+ .2threads.json)
    python bench/detection.py --cases rtdetr --quick --rtdetr-out /tmp/rtdetr-quick.md   # < 3 min

RT-DETR: HF ``RTDetrForObjectDetection`` (HF's ``RTDetrResNet`` backbone) with random weights, eval mode,
converted by ``from_hf`` (same weights); R18 (``rtdetr_r18vd``'s config) and R50. Inference images/s at
batch 1 and 8, 640 x 640 and 256 x 256 (R50: 640, batch 1), max |diff| of logits / boxes; a training step
at batch 4, 256 x 256: forward with labels (denoising queries), RT-DETR's loss (HF's ``RTDetrLoss`` /
relformer's ``RTDetrCriterion`` on ``rtdetr_loss_outputs``), backward, AdamW step. Peak RSS growth of one
warm call, each in a fresh process (not in ``--quick``).

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

from benchlib import paired_speedup, paired_verdict, peak_rss_growth, time_interleaved, write_lines, write_section

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
    return train_steps(ours, hf, images, targets, lambda: criterion(ours(images), targets)["loss"])


def train_steps(ours, hf, images, targets, ours_loss) -> dict:
    """{"relformer", "HF"}: a training step each (``ours_loss()``; HF's model called with ``labels``), backward,
    AdamW."""
    hf_labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]

    def stepper(model, loss_fn):
        opt = torch.optim.AdamW(model.parameters(), 1e-5)

        def step():
            loss = loss_fn()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    return {"relformer": stepper(ours, ours_loss),
            "HF": stepper(hf, lambda: hf(pixel_values=images, labels=hf_labels).loss)}


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
    ap.add_argument("--rtdetr-out", type=Path, default=ROOT / "results" / "detection-rtdetr.md")
    ap.add_argument("--no-memory", action="store_true", help="RT-DETR: skip the peak-RSS child processes")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if "rtdetr" in args.cases:
        rtdetr_run(args, "python bench/detection.py " + " ".join(sys.argv[1:] if argv is None else argv))
        args.cases = [c for c in args.cases if c != "rtdetr"]
        if not args.cases:
            return
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
        machine_line(meta) + ".",
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


# ---- RT-DETR -------------------------------------------------------------------------------------
# HF RTDetrResNetConfig / RTDetrConfig fields; R18 as HF's rtdetr_r18vd (convert_rt_detr_original_pytorch_
# checkpoint_to_pytorch.py): basic blocks, hidden expansion 0.5, 3 decoder layers; R50: the defaults.
RTDETR_VARIANTS = {
    "R18": (dict(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2], layer_type="basic"),
            dict(encoder_in_channels=[128, 256, 512], hidden_expansion=0.5, decoder_layers=3)),
    "R50": (dict(embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3], layer_type="bottleneck"),
            dict(encoder_in_channels=[512, 1024, 2048], hidden_expansion=1.0, decoder_layers=6)),
}


def rtdetr_cells(quick: bool) -> list[dict]:
    """(variant, pass, batch, size) cells."""
    if quick:
        return [dict(variant="R18", kind="inference", batch=b, size=256) for b in (1, 8)] + \
            [dict(variant="R18", kind="train", batch=2, size=128)]
    cells = [dict(variant="R18", kind="inference", batch=b, size=s) for s in (640, 256) for b in (1, 8)]
    return cells + [dict(variant="R50", kind="inference", batch=1, size=640),
                    dict(variant="R18", kind="train", batch=4, size=256)]


def rtdetr_models(variant: str, train: bool):
    """(HF ``RTDetrForObjectDetection``, relformer RT-DETR from ``from_hf``), same weights, both in eval (or
    train) mode; COCO's 80 classes."""
    from transformers import RTDetrConfig, RTDetrForObjectDetection, RTDetrResNetConfig

    from relformer.interop.transformers import from_hf

    backbone, model = RTDETR_VARIANTS[variant]
    config = RTDetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, num_labels=80,
                          backbone_config=RTDetrResNetConfig(num_channels=3, out_indices=[2, 3, 4], **backbone),
                          **model)
    torch.manual_seed(0)
    hf = RTDetrForObjectDetection(config).train(train)
    return hf, from_hf(hf).train(train)


def rtdetr_steps(cell: dict) -> tuple[dict, dict]:
    """-> ({"relformer": step, "HF": step}, extra facts: max |diff| of logits and boxes in inference)."""
    hf, ours = rtdetr_models(cell["variant"], cell["kind"] == "train")
    images = torch.randn(cell["batch"], 3, cell["size"], cell["size"], generator=torch.Generator().manual_seed(0))
    if cell["kind"] == "inference":
        def infer(model):
            def step():
                with torch.inference_mode():
                    return model(images)
            return step

        a, b = infer(ours)(), infer(hf)()
        extra = {"logits_diff": (a.logits - b.logits).abs().max().item(),
                 "boxes_diff": (a.pred_boxes - b.pred_boxes).abs().max().item()}
        return {"relformer": infer(ours), "HF": infer(hf)}, extra
    targets = random_targets(cell["batch"], 20, 80, seed=1)
    hf_labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]

    def loss_ours():  # labels= adds the denoising queries and computes RT-DETR's loss (HF's terms: tested)
        return ours(images, labels=hf_labels).loss

    return train_steps(ours, hf, images, targets, loss_ours), {}


def rtdetr_child(spec: str) -> None:
    """In a fresh process: peak RSS growth (MiB) of one warm call of one peer on one cell."""
    cell, peer, threads = json.loads(spec)
    torch.set_num_threads(threads)
    step = rtdetr_steps(cell)[0][peer]
    step()
    print(peak_rss_growth(step))


def rtdetr_memory(cell: dict, peer: str, threads: int) -> float | None:
    import subprocess

    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536", OMP_NUM_THREADS=str(threads))
    res = subprocess.run([sys.executable, __file__, "--child", json.dumps([cell, peer, threads])], env=env,
                         capture_output=True, text=True)
    return float(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else None


def rtdetr_run(args, command: str) -> None:
    import transformers

    start, rows = time.time(), []
    for cell in rtdetr_cells(args.quick):
        reps = max(3, args.reps // (4 if cell["size"] == 640 and cell["batch"] > 1 else 2)) if not args.quick else 3
        steps, extra = rtdetr_steps(cell)
        load = os.getloadavg()[0]
        name = f"{cell['variant']} {cell['kind']} b{cell['batch']} {cell['size']}²"
        row = summarise(name, "", time_interleaved(steps, reps, 1), dict(cell, load=load, **extra))
        row["images_s"] = {p: cell["batch"] / (ms / 1e3) for p, ms in row["ms"].items()}
        if not (args.no_memory or args.quick):
            row["memory_mib"] = {p: rtdetr_memory(cell, p, args.threads) for p in steps}
        rows.append(row)
    meta = dict(date=datetime.datetime.now().isoformat(), elapsed=time.time() - start, threads=args.threads,
                torch=torch.__version__, transformers=transformers.__version__, command=command, cpu=cpu_model())
    args.rtdetr_out.parent.mkdir(parents=True, exist_ok=True)
    args.rtdetr_out.with_suffix(f".{args.threads}threads.json").write_text(json.dumps({"meta": meta, "rows": rows},
                                                                                     indent=1))
    rtdetr_report(meta, rows, args.rtdetr_out)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_line(meta: dict) -> str:
    return (f"CPU: {cpu_model()}, {os.cpu_count()} cores, {meta['threads']} torch threads; torch {meta['torch']}, "
            f"transformers {meta['transformers']}; fp32; measured {meta['date'][:16].replace('T', ' ')} "
            f"({meta['elapsed'] / 60:.1f} min)")


def rtdetr_report(meta: dict, rows: list[dict], out: Path) -> None:
    """The ``## {threads} threads`` section of ``out`` (its other sections, the profile notes, are kept)."""
    title = f"{meta['threads']} thread{'s' if meta['threads'] > 1 else ''}"
    lines = [
        f"## {title}",
        "",
        machine_line(meta) + f". Command: `{meta['command'].strip()}`",
        "",
        "Same random weights (HF's model converted by `from_hf`), eval mode for inference (`torch.inference_mode`). "
        "Training step: forward with labels (denoising queries), RT-DETR's loss (HF `RTDetrLoss` / relformer "
        "`RTDetrCriterion`), backward, AdamW. Peers interleaved; `paired` = median over repetitions of HF ms / "
        "relformer ms with its 95% bootstrap interval; load = 1-min load average when the cell started (the "
        "machine is shared: a load above the core count means the two threads were often descheduled). Peak RSS "
        "growth of one warm call, in a fresh process per cell and peer.",
        "",
        "| model | pass | batch | size | reps | load | relformer img/s | HF img/s | paired speed-up [95% CI] | "
        "max abs diff logits / boxes | peak RSS MiB (rf / HF) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        diff = f"{r['logits_diff']:.1e} / {r['boxes_diff']:.1e}" if "logits_diff" in r else "—"
        mem = r.get("memory_mib")
        mem = "—" if not mem else " / ".join("—" if mem[p] is None else f"{mem[p]:.0f}"
                                             for p in ("relformer", "HF"))
        lines.append(f"| {r['variant']} | {r['kind']} | {r['batch']} | {r['size']} | {r['reps']} | {r['load']:.1f} | "
                     f"{r['images_s']['relformer']:.2f} | {r['images_s']['HF']:.2f} | {r['paired']:.3f}× "
                     f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] | {diff} | {mem} |")
    lines += ["", "Targets (from the issue): inference ≥ 1.3× HF, training ≥ HF; verdict from the paired interval:",
              ""]
    for r in rows:
        target = 1.3 if r["kind"] == "inference" else 1.0
        lines.append(f"- {paired_verdict(r['ci'], target)} (vs {target}×) {r['case']}: {r['paired']:.3f}× "
                     f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]")
    heading = "# RT-DETR — relformer vs HF `RTDetrForObjectDetection`: inference and training step"
    write_section(lines, out, title, heading)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        rtdetr_child(sys.argv[2])
    else:
        main()
