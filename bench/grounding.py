"""Grounding speed: TransRefer3D (and the ReferIt3DNet-style baseline) on packed scenes vs the same model
padded to the largest scene, same weights, same batches of the generated Sr3D-style benchmark.

    python bench/grounding.py --speed            # -> the "Speed" section of bench/results/grounding.md
    python bench/grounding.py --speed --quick    # transrefer3d, one batch of 16, 3 repetitions (< 2 min)

Packed: objects, words and object pairs are flat ``(N, C)`` states (MLPs, norms and heads see only real
elements) and attention runs on rows of whole scenes planned by first-fit decreasing
(:mod:`relformer.models.grounding.layout`). Padded: ``model(batch, padded=True)``, the twin path of the
same module -- every scene padded to the largest scene's objects (and words, and pairs), every object to
the most points, one scene per row; its outputs equal the packed ones (tests/models/test_grounding.py).
Training = forward + backward of ReferIt3D's loss (no optimizer step, so both see the same weights);
inference = eval-mode forward under ``torch.no_grad``. The frozen MiniLM word features are cached per
sentence and warmed before timing, so neither path pays for the text encoder. Times from interleaved
repetitions (``benchlib.time_interleaved``); speed-up = median of the per-repetition ratios padded / packed
with its 95% bootstrap interval, and the conservative figure (the lower of that median and the ratio of the
fastest runs, :func:`relformer.utils.cpu.paired_ratio`'s rule).
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from benchlib import paired_speedup, time_interleaved, write_section  # noqa: E402

from relformer.data.grounding import ReferringDataset, collate  # noqa: E402
from relformer.models import create_model  # noqa: E402
from relformer.models.grounding import grounding_loss  # noqa: E402
from relformer.utils.cpu import cpu_model  # noqa: E402

RESULTS = ROOT / "results" / "grounding.md"


def batches(data: ReferringDataset, batch_size: int, count: int) -> list:
    """``count`` batches of utterances taken at a fixed stride through the split, so a batch mixes scenes."""
    step = max(len(data) // (batch_size * count), 1)
    order = list(range(0, len(data), step)) + [i for i in range(len(data)) if i % step]
    return [collate([data[i] for i in order[k * batch_size:(k + 1) * batch_size]]) for k in range(count)]


def padding(batch) -> tuple[float, float]:
    """Share of padding slots at the scene level (objects) and the pair level (object pairs)."""
    n = batch.object_offsets.diff().double()
    return 1 - float(n.sum() / (n.numel() * n.max())), 1 - float((n ** 2).sum() / (n.numel() * n.max() ** 2))


def run_case(name: str, data: ReferringDataset, batch_size: int, reps: int, count: int) -> dict:
    torch.manual_seed(0)
    model = create_model(name)
    work = batches(data, batch_size, count)
    for b in work:
        model(b)  # warm the word-feature cache

    def train(padded: bool):
        def step():
            for b in work:
                model.train()
                loss, _ = grounding_loss(model(b, padded=padded), b)
                loss.backward()
                model.zero_grad(set_to_none=True)
        return step

    def infer(padded: bool):
        def step():
            model.eval()
            with torch.no_grad():
                for b in work:
                    model(b, padded=padded)
        return step

    row = {"model": name, "batch": batch_size, "batches": count, "padding": [padding(b) for b in work]}
    for mode, make in (("train", train), ("infer", infer)):
        times = time_interleaved({"packed": make(False), "padded": make(True)}, reps=reps, warmup=1)
        scenes = batch_size * len(work)
        med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        speed = paired_speedup(times, "packed", "padded")
        row[mode] = {"packed": scenes / med["packed"], "padded": scenes / med["padded"], "speedup": speed,
                     "conservative": min(speed[0], min(times["padded"]) / min(times["packed"]))}
    print(row, flush=True)
    return row


def speed_section(rows: list[dict], threads: int, reps: int, quick: bool) -> list[str]:
    lines = ["## Speed", "",
             f"CPU: {cpu_model()} ({platform.machine()}), {threads} threads, torch {torch.__version__}; "
             f"{reps} interleaved repetitions per cell after one warm-up, each over {rows[0]['batches']} batch(es)"
             f"{' (`--quick`)' if quick else ''}. Scenes/s = utterances (each with its scene) per second, "
             "median repetition. Speed-up: padded time / packed time, median of the per-repetition ratios "
             "[95% bootstrap interval]; `cons.`: the lower of that median and the ratio of the fastest runs. "
             "Padding: share of padded object slots / object-pair slots in the padded twin.", "",
             "| model | batch | padding (objects / pairs) | train packed | train padded | train speed-up "
             "| infer packed | infer padded | infer speed-up |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pad = sum(p[0] for p in r["padding"]) / len(r["padding"]), sum(p[1] for p in r["padding"]) / len(r["padding"])
        cells = []
        for mode in ("train", "infer"):
            m = r[mode]
            cells += [f"{m['packed']:.1f}", f"{m['padded']:.1f}",
                      "{:.2f}x [{:.2f}, {:.2f}], cons. {:.2f}x".format(*m["speedup"], m["conservative"])]
        lines.append(f"| {r['model']} | {r['batch']} | {pad[0]:.0%} / {pad[1]:.0%} | " + " | ".join(cells) + " |")
    lines += ["", "Data: the generated benchmark's train split (seed 0, 40 scenes; every object keeps at most "
              "`points_per_object` points, and generated objects have at least 64, so the point level is not "
              "padded -- the difference is the scene level: objects, words and the object pairs of RA). "
              "The machine is shared with other jobs: read the intervals, not only the medians.", ""]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--speed", action="store_true", help="packed vs padded scenes/s, training and inference")
    ap.add_argument("--quick", action="store_true", help="transrefer3d, one batch of 16, 3 repetitions")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if not args.speed:
        ap.error("choose a benchmark: --speed")
    torch.set_num_threads(args.threads)
    reps = 3 if args.quick else args.reps
    cases = [("transrefer3d", 16)] if args.quick else [
        ("transrefer3d", 16), ("transrefer3d", 32), ("transrefer3d_plain", 32), ("referit3dnet", 32)]
    with tempfile.TemporaryDirectory() as tmp:
        data = ReferringDataset.generated("train", num_scenes=(40, 1, 1), root=tmp)
        rows = [run_case(name, data, bs, reps, 1 if args.quick else 2) for name, bs in cases]
    write_section(speed_section(rows, args.threads, reps, args.quick), args.out, "Speed", "# Grounding benchmarks")


if __name__ == "__main__":
    main()
