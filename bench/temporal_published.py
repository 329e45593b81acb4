"""The "Published numbers on UCI" section of bench/results/temporal.md: DyGLib's numbers beside the
study's, from the study's ledger (bench/results/studies/temporal.json), so the section follows the
seeds as they finish.

    python bench/temporal_published.py          # rewrites that section of bench/results/temporal.md

Published: DyGLib's implementations under DyGLib's protocol as reprinted by TPNet (Lu et al., NeurIPS
2024, arXiv 2410.04013, Tables 1 and 6-10; mean ± std over 5 runs, in %).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from benchlib import write_section  # noqa: E402

TITLE = "Published numbers on UCI (DyGLib protocol)"
NEGATIVES = ("random", "historical", "inductive")
#: (setting, negatives, metric) -> (DyGFormer, TGN, EdgeBank) as TPNet prints them
PUBLISHED = {
    ("transductive", "random", "ap"): ("95.79 ± 0.17", "92.34 ± 1.04", "76.20"),
    ("transductive", "random", "auc"): ("94.49 ± 0.26", "92.03 ± 1.13", "77.30"),
    ("transductive", "historical", "ap"): ("82.17 ± 0.82", "80.43 ± 2.12", "65.50"),
    ("transductive", "historical", "auc"): ("76.97 ± 0.24", "77.25 ± 2.68", "69.56"),
    ("transductive", "inductive", "ap"): ("72.25 ± 1.71", "70.94 ± 0.71", "57.43"),
    ("transductive", "inductive", "auc"): ("65.96 ± 1.18", "64.11 ± 1.04", "58.03"),
    ("inductive", "random", "ap"): ("94.54 ± 0.12", "88.12 ± 2.05", "–"),
    ("inductive", "random", "auc"): ("92.63 ± 0.13", "86.68 ± 2.29", "–"),
    ("inductive", "historical", "ap"): ("72.13 ± 1.87", "70.78 ± 0.78", "–"),
    ("inductive", "historical", "auc"): ("65.55 ± 1.01", "62.69 ± 0.90", "–"),
    ("inductive", "inductive", "ap"): ("72.13 ± 1.86", "70.73 ± 0.79", "–"),
    ("inductive", "inductive", "auc"): ("65.58 ± 1.00", "62.66 ± 0.91", "–"),
}


def ours(ledger: dict, model: str, metric: str) -> tuple[float, float | None, list[int]]:
    """Mean and sample std (None for one seed) x 100 of ``metric`` over the finished UCI seeds of ``model``."""
    runs = {int(k.rsplit("-s", 1)[1]): v for k, v in ledger["runs"].items() if k.startswith(f"uci/{model}-uci-s")}
    values = [100 * runs[s][metric] for s in sorted(runs) if math.isfinite(runs[s].get(metric, math.nan))]
    if not values:
        return math.nan, None, []
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None), sorted(runs)


def show(mean: float, std: float | None) -> str:
    return "–" if math.isnan(mean) else f"{mean:.1f}" + ("" if std is None else f" ± {std:.1f}")


def section(ledger: dict) -> list[str]:
    bank = {k: 100 * v for k, v in ledger["baselines"]["uci"].items()}
    got = {(m, key): ours(ledger, m, f"{key[0]}_{key[1]}_{key[2]}") for m in ("dygformer", "todyformer", "tgn")
           for key in PUBLISHED}
    seeds = sorted({s for m in ("dygformer", "todyformer", "tgn") for s in got[m, ("transductive", "random", "ap")][2]})
    rows = []
    for key, (dyg, tgn, edge) in PUBLISHED.items():
        mine = "–" if key[0] == "inductive" else f"{bank[f'{key[0]}_{key[1]}_{key[2]}']:.1f}"
        rows.append(f"| {key[0]} | {key[1]} | {key[2].upper()} | {dyg} | {show(*got['dygformer', key][:2])} | "
                    f"{show(*got['todyformer', key][:2])} | {tgn} | {show(*got['tgn', key][:2])} | {edge} | {mine} |")

    def cell(model, *key):
        return show(*got[model, key][:2])

    d_rand, t_rand = cell("dygformer", "transductive", "random", "ap"), cell("tgn", "transductive", "random", "ap")
    d_hist, t_hist = cell("dygformer", "transductive", "historical", "ap"), cell("tgn", "transductive", "historical", "ap")
    e = {n: f"{bank[f'transductive_{n}_ap']:.1f}" for n in NEGATIVES}
    return [
        f"## {TITLE}", "",
        "`python bench/temporal_published.py` (from the study's ledger). The DyGFormer paper's own table (Yu et al. "
        "2023) and the Todyformer paper's UCI row (Biparva et al. 2024) were not reachable from this offline machine "
        "(only their abstracts are stored; the Todyformer code repository's README is empty). The numbers below are "
        "DyGLib's implementations under DyGLib's protocol as reprinted by TPNet (Lu et al., NeurIPS 2024, \"Improving "
        "Temporal Link Prediction via Temporal Walk Matrix Projection\", arXiv 2410.04013, Tables 1 and 6–10; mean ± "
        "std over 5 runs, in %), which uses the same implementations and matches the DyGFormer paper's reported UCI "
        "numbers where other reprints quote them (TAWRMAC's README, DyG-Mamba). Ours: the study above, UCI, seeds "
        f"{', '.join(map(str, seeds))}, × 100.", "",
        "| setting | negatives | metric | DyGFormer (published) | DyGFormer (ours) | Todyformer (ours; not published "
        "here) | TGN (published) | TGN, PyG (ours) | EdgeBank (published) | EdgeBank (ours) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|", *rows, "",
        "What agrees and what does not:", "",
        f"* **Random negatives agree.** EdgeBank, which has no training and no budget, gives {e['random']} / "
        f"{bank['transductive_random_auc']:.1f} against the published 76.20 / 77.30: the split, the random negatives "
        f"and the metrics match DyGLib's. DyGFormer gives {d_rand} against the published 95.79 ± 0.17 (transductive "
        f"AP), TGN {t_rand} against 92.34 ± 1.04, although ours train for 22 CPU-minutes (about one pass over the "
        "training events for DyGFormer) where DyGLib trains up to 100 epochs with early stopping on a GPU.",
        f"* **Historical and inductive negatives do not.** Ours move the other way for EdgeBank (lower: {e['historical']} "
        f"vs 65.50) and for the trained models (higher: DyGFormer {d_hist} vs 82.17, TGN {t_hist} vs 80.43), so the "
        "gap is in how the negative pools are drawn, not in the models. Our pools (`relformer.data.temporal.negatives`) "
        "follow Poursafaei et al.'s definitions with DyGLib's half-pool / half-random mix, but the historical pool is "
        "the edges seen before the split starts (DyGLib: before the current batch of 200 events) and an edge is "
        "excluded only when it occurs at the positive's own timestamp (DyGLib: anywhere in the current batch). "
        "EdgeBank with unlimited memory scores every historical edge 1, so how many test positives are repeats of "
        "pool edges decides its AP; a trained model can tell a stale historical edge from a recent one, which makes a "
        "larger pool of older edges easier. The published Todyformer row could not be quoted: its paper's table was "
        "not reachable.",
        "* Budget: ours are 30 CPU-minutes per run (one thread each, two runs side by side on 2 cores; training stops "
        f"at 22, the rest is evaluation), {len(seeds)} seed{'s' if len(seeds) != 1 else ''} on UCI; theirs are full "
        "trainings, 5 runs.", ""]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ledger", type=Path, default=ROOT / "results" / "studies" / "temporal.json")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "temporal.md")
    args = ap.parse_args(argv)
    write_section(section(json.loads(args.ledger.read_text())), args.out, TITLE,
                  heading="# Temporal link prediction — results")


if __name__ == "__main__":
    main()
