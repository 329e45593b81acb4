"""Temporal link prediction speed: Todyformer (and DyGFormer, where registered) against PyG's TGN on
the UCI messages stream, and Todyformer's cost as the number of sampled neighbours grows, packed
against padded.

    python bench/temporal.py            # -> the "Speed" section of bench/results/temporal.md
    python bench/temporal.py --quick    # fewer repetitions and batches (a smoke run, < 2 minutes)

Every model reads the same context (the whole UCI stream and one temporal neighbour sampler over it)
with the same ``k`` most recent neighbours per query. A training step is one batch of 200 events
(DyGLib's batch size) from the training split: positives and as many random negatives scored, BCE,
backward, an Adam step, then ``observe`` (TGN's memory update); an evaluation step scores the same
in ``no_grad`` evaluation mode and observes. Batches run in stream order from the same start for
every model (TGN's memory is reset when the window wraps). Times come from interleaved repetitions
(``benchlib.time_interleaved``: the models alternate, the order rotating); events/s = batch / median
step time; speed-up = the median of the per-repetition paired ratios with its 95% bootstrap interval.

The ``k`` sweep runs Todyformer's ``layout="packed"`` (token groups share attention rows, events as
sampled) against ``layout="padded"`` (every group alone in a row of ``num_patches`` slots and the
events padded to ``k``: what a padded implementation computes; the same outputs, tested).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from benchlib import paired_speedup, paired_verdict, time_interleaved, write_section  # noqa: E402

import relformer.interop.pyg_temporal  # noqa: E402,F401  (registers pyg_tgn)
from relformer.data.temporal import TemporalNeighborSampler, chronological_split, load_uci  # noqa: E402
from relformer.models import create_model, list_models  # noqa: E402
from relformer.models.temporal import TemporalContext  # noqa: E402
from relformer.utils.cpu import cpu_model  # noqa: E402

RESULTS = ROOT / "results" / "temporal.md"
BATCH = 200
KS = (16, 32, 64, 128)


class Runner:
    """One model's training and evaluation steps over consecutive batches of ``events`` (indices)."""

    def __init__(self, name: str, stream, ctx, events: torch.Tensor, seed: int = 0, **overrides) -> None:
        torch.manual_seed(seed)
        self.model = create_model(name, num_nodes=stream.num_nodes, **overrides)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.stream, self.ctx, self.events = stream, ctx, events
        self.g = torch.Generator().manual_seed(seed)
        self.pos = 0

    def _batch(self) -> torch.Tensor:
        if self.pos + BATCH > self.events.numel():
            self.pos = 0
            self.model.reset_state()
        b = self.events[self.pos:self.pos + BATCH]
        self.pos += BATCH
        return b

    def _score(self, b: torch.Tensor) -> torch.Tensor:
        s = self.stream
        neg = torch.randint(s.num_nodes, (b.numel(),), generator=self.g)
        pos = self.model(s.src[b], s.dst[b], s.t[b], self.ctx)
        return torch.cat([pos, self.model(s.src[b], neg, s.t[b], self.ctx)])

    def train_step(self) -> None:
        self.model.train()
        b = self._batch()
        logits = self._score(b)
        loss = F.binary_cross_entropy_with_logits(logits, torch.cat([torch.ones(b.numel()), torch.zeros(b.numel())]))
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        s = self.stream
        self.model.observe(s.src[b], s.dst[b], s.t[b], b, self.ctx)

    @torch.no_grad()
    def eval_step(self) -> None:
        self.model.eval()
        b = self._batch()
        self._score(b)
        s = self.stream
        self.model.observe(s.src[b], s.dst[b], s.t[b], b, self.ctx)


def _rate(times: list[float]) -> float:
    return BATCH / statistics.median(times)


def _compare(runners: dict[str, Runner], step: str, reps: int, warmup: int) -> dict[str, list[float]]:
    for r in runners.values():
        r.pos = 0
        r.model.reset_state()
    return time_interleaved({n: getattr(r, step) for n, r in runners.items()}, reps, warmup)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 repetitions instead of 10: a smoke run")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    reps, warmup = (3, 1) if args.quick else (10, 2)
    uci = load_uci()
    ctx = TemporalContext(uci, TemporalNeighborSampler(uci))
    split = chronological_split(uci)
    train = split.train.nonzero().flatten()
    events = train[len(train) // 2:][: BATCH * (reps + warmup + 1)]  # a stretch with long histories
    k = 32
    names = ["todyformer"] + (["dygformer"] if "dygformer" in list_models() else []) + ["pyg_tgn"]
    lines = ["## Speed", "",
             f"UCI messages ({len(uci):,} events), batches of {BATCH} events (+ {BATCH} random negatives) from the "
             f"training split, k = {k} most recent neighbours for every model; CPU: {cpu_model()}, "
             f"{torch.get_num_threads()} thread(s), torch {torch.__version__}, load average {os.getloadavg()[0]:.1f} "
             f"at the start (other jobs on the machine inflate and scatter times); {reps} interleaved repetitions"
             f"{' (--quick)' if args.quick else ''}. Command: `python bench/temporal.py{' --quick' * args.quick}`.",
             "", "| model | train events/s | eval events/s | train speed-up vs pyg_tgn (95% CI) "
             "| eval speed-up vs pyg_tgn |",
             "|---|---|---|---|---|"]
    runners = {n: Runner(n, uci, ctx, events, num_neighbors=k) for n in names}
    train_t = _compare(runners, "train_step", reps, warmup)
    eval_t = _compare(runners, "eval_step", reps, warmup)
    for n in names:
        cells = [n, f"{_rate(train_t[n]):,.0f}", f"{_rate(eval_t[n]):,.0f}"]
        if n == "pyg_tgn":
            cells += ["1", "1"]
        else:
            for times in (train_t, eval_t):
                med, lo, hi = paired_speedup(times, n, "pyg_tgn")
                cells.append(f"{med:.2f}x [{lo:.2f}, {hi:.2f}] {paired_verdict((lo, hi))}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Cost against k (Todyformer, training and evaluation steps; packed vs padded to k, same weights "
              "and outputs; pyg_tgn at the same k for reference):", "",
              "| k | packed train ev/s | padded train ev/s | packed speed-up (95% CI) | packed eval ev/s | "
              "padded eval ev/s | packed eval speed-up | pyg_tgn train ev/s |", "|---|---|---|---|---|---|---|---|"]
    for kk in KS:
        sweep = {"packed": Runner("todyformer", uci, ctx, events, num_neighbors=kk),
                 "padded": Runner("todyformer", uci, ctx, events, num_neighbors=kk, layout="padded"),
                 "pyg_tgn": Runner("pyg_tgn", uci, ctx, events, num_neighbors=kk)}
        tt = _compare(sweep, "train_step", reps, warmup)
        sweep.pop("pyg_tgn")
        et = _compare(sweep, "eval_step", reps, warmup)
        cells = [str(kk), f"{_rate(tt['packed']):,.0f}", f"{_rate(tt['padded']):,.0f}"]
        med, lo, hi = paired_speedup(tt, "packed", "padded")
        cells.append(f"{med:.2f}x [{lo:.2f}, {hi:.2f}] {paired_verdict((lo, hi))}")
        cells += [f"{_rate(et['packed']):,.0f}", f"{_rate(et['padded']):,.0f}"]
        med, lo, hi = paired_speedup(et, "packed", "padded")
        cells.append(f"{med:.2f}x [{lo:.2f}, {hi:.2f}]")
        cells.append(f"{_rate(tt['pyg_tgn']):,.0f}")
        lines.append("| " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    if "dygformer" not in names:
        lines += ["", "DyGFormer was not registered when this ran (it is added separately); rerun to include it."]
    write_section(lines, args.out, "Speed", heading="# Temporal link prediction")


if __name__ == "__main__":
    main()
