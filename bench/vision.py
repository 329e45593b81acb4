"""relformer ViT/Swin vs HF transformers ViT/Swin, side by side in one process.

    python bench/vision.py                      # full run -> bench/results/vision-bench.md
    python bench/vision.py --quick --out /tmp/vision-quick.md   # smoke run: batch 8, 2 repeats
    python bench/vision.py --cases swin_tiny --modes train --reps 5
    python bench/vision.py --profile swin_tiny:train            # top ops of one step per peer

Cases are the registered variants ``vit_micro`` / ``swin_micro`` (28x28 grey) and ``vit_tiny`` /
``swin_tiny`` (224x224 RGB), each with a 10-class head. For every case the HF
``ViTForImageClassification`` / ``SwinForImageClassification`` is built from a config that
mirrors the relformer variant (random weights, no download), the ``eager`` twin gets the same
weights, and :func:`relformer.interop.transformers.from_hf` converts it, so all peers hold the
same weights; their logits and last hidden states are compared once (eval mode) before timing.

Modes: ``infer`` = ``model.eval()`` + ``torch.inference_mode()``, one forward of the batch;
``train`` = ``model.train()``, forward + cross-entropy on the logits + backward + ``AdamW.step()``.
fp32. Peers: relformer (``backend="auto"``), HF ``sdpa``, HF ``eager``; they are interleaved
per repetition (the order rotates each repetition) after warm-ups, and the median time of
``--reps`` repetitions is reported as images/s. The ratio is relformer / best HF images/s
(> 1 means relformer is faster). Rows are saved per (case, mode, peer) in the ``.jsonl``
beside the report, so a partial re-run (``--cases``/``--modes``) replaces only its own rows.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import gc
import importlib.util
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import relformer
from relformer.models import SwinConfig, ViTConfig, model_config

from benchlib import paired_speedup, paired_verdict, time_interleaved

ROOT = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("bench_attention", ROOT / "attention.py")
_house = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_house)
_fmt, _write = _house._fmt, _house._write  # the attention benchmark's report helpers

CASES = ("vit_micro", "swin_micro", "vit_tiny", "swin_tiny")
MODES = ("infer", "train")
PEERS = ("relformer", "hf-sdpa", "hf-eager")
NUM_LABELS = 10
DEFAULT_BATCH = 64
SWIN_TARGET = 1.2  # the target on Swin: relformer >= 1.2x the best HF
EQUIV_TOL = 1e-4  # from_hf's promise: outputs equal HF's within this


def default_reps(case: str) -> int:
    return 3 if model_config(case).image_size == 224 else 10


def default_warmup(case: str) -> int:
    return 1 if model_config(case).image_size == 224 else 3


# ---------------------------------------------------------------------------------------------
# Models: one HF config per relformer variant, converted to relformer with the same weights
# ---------------------------------------------------------------------------------------------
def hf_config(cfg):
    """The transformers config computing what the relformer variant computes (10 labels)."""
    import transformers

    if isinstance(cfg, ViTConfig):
        if cfg.pool != "cls" or cfg.pos_embed != "learned" or cfg.rel_pos_bias:
            raise ValueError(f"HF ViT has a class token and learned positions only: {cfg}")
        return transformers.ViTConfig(
            image_size=cfg.image_size, patch_size=cfg.patch_size, num_channels=cfg.in_chans,
            hidden_size=cfg.dim, num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
            intermediate_size=cfg.mlp_hidden or int(cfg.dim * cfg.mlp_ratio), hidden_act="gelu",
            qkv_bias=cfg.qkv_bias, layer_norm_eps=cfg.norm_eps, hidden_dropout_prob=cfg.dropout,
            attention_probs_dropout_prob=cfg.attn_dropout, num_labels=NUM_LABELS)
    if isinstance(cfg, SwinConfig):
        return transformers.SwinConfig(
            image_size=cfg.image_size, patch_size=cfg.patch_size, num_channels=cfg.in_chans,
            embed_dim=cfg.embed_dim, depths=list(cfg.depths), num_heads=list(cfg.num_heads),
            window_size=cfg.window_size, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias,
            layer_norm_eps=cfg.norm_eps, hidden_dropout_prob=cfg.dropout,
            attention_probs_dropout_prob=cfg.attn_dropout, drop_path_rate=cfg.drop_path,
            use_absolute_embeddings=cfg.abs_pos_embed, hidden_act="gelu", num_labels=NUM_LABELS)
    raise TypeError(type(cfg).__name__)


def fix_hf_swin_windows(model, stage_windows: tuple[int, ...]) -> int:
    """Give every HF Swin layer whose feature map is smaller than the window a bias table of the
    window it really uses (the map's size), as the reference code and transformers 4.x build it.

    transformers 5.x builds every layer's ``SwinRelativePositionBias`` at ``config.window_size``,
    then clamps the window to the map at run time, so e.g. ``swin_micro``'s 4x4 last stage fails
    (a 49x49 bias for 16-token windows). The replacement is HF's own module, so its cost is HF's.
    ``stage_windows``: the window per stage at the configured image size (relformer's
    ``SwinConfig.stage_windows``; HF's ``input_resolution`` floors odd maps that patch merging
    pads, 3 instead of 4). Returns the number of layers fixed."""
    fixed = 0
    for stage, ws in zip(model.swin.encoder.layers, stage_windows):
        for layer in stage.blocks:
            bias = layer.attention.relative_position_bias
            if ws < bias.window_size[0]:
                new = type(bias)(bias.relative_position_bias_table.shape[1], (ws, ws))
                torch.nn.init.trunc_normal_(new.relative_position_bias_table, std=0.02)
                layer.attention.relative_position_bias = new
                fixed += 1
    return fixed


def _hidden(cfg) -> dict:
    """Config fields for comparison, with a ViT's MLP width resolved (ratio vs explicit hidden)."""
    d = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.compare}
    if isinstance(cfg, ViTConfig):
        d["mlp_hidden"], d["mlp_ratio"] = cfg.mlp_hidden or int(cfg.dim * cfg.mlp_ratio), None
    return d


def build_peers(case: str, peers) -> tuple[dict, list[str]]:
    """``{peer: model}`` with identical weights, and notes on how the relformer model was made."""
    cfg = model_config(case, num_classes=NUM_LABELS)
    notes, models = [], {}
    if not any(p.startswith("hf") for p in peers):
        torch.manual_seed(0)
        models["relformer"] = relformer.models.build_model(cfg)
        notes.append("relformer alone (no HF peer): built from the registry, random weights")
        return models, notes
    import transformers
    from relformer.interop.transformers import from_hf

    hcfg = hf_config(cfg)
    cls = (transformers.ViTForImageClassification if isinstance(cfg, ViTConfig)
           else transformers.SwinForImageClassification)
    torch.manual_seed(0)
    ref = None
    for impl in ("sdpa", "eager"):
        try:  # _from_config mutates the config it is given: a fresh copy per model
            m = cls._from_config(copy.deepcopy(hcfg), attn_implementation=impl)
        except (ValueError, ImportError) as e:
            notes.append(f"HF {impl} unavailable for {cls.__name__}: {e}")
            continue
        if isinstance(cfg, SwinConfig) and (n := fix_hf_swin_windows(m, cfg.stage_windows)) and impl == "sdpa":
            notes.append(f"HF Swin workaround: {n} layer(s) whose map is smaller than the window get a bias table "
                         "of the window they use (transformers 5.x sizes it at config.window_size and then fails)")
        if ref is None:
            ref = m
        else:
            m.load_state_dict(ref.state_dict())
        if f"hf-{impl}" in peers:
            models[f"hf-{impl}"] = m
    if ref is None:
        raise RuntimeError(f"no HF attention implementation could be built for {case}")
    if "relformer" in peers:
        rel = from_hf(ref)
        got = rel.config
        want, have = _hidden(cfg), _hidden(got)
        diff = {k: (want[k], have[k]) for k in want if want[k] != have[k]}
        if diff:
            notes.append(f"from_hf config differs from `{case}` (variant, converted): {diff}")
        if got.backend != "auto":
            notes.append(f"from_hf set backend={got.backend!r}; the benchmark wants 'auto'")
        models["relformer"] = rel
    return {p: models[p] for p in PEERS if p in models}, notes


def _outputs(peer: str, model, x) -> dict:
    """Logits and last hidden state (after the final norm) of one eval forward."""
    if peer == "relformer":
        out = model(x)
        return dict(logits=out.logits, last_hidden_state=out.last_hidden_state)
    base = model.vit if hasattr(model, "vit") else model.swin
    hidden = base(pixel_values=x).last_hidden_state
    return dict(logits=model(pixel_values=x).logits, last_hidden_state=hidden)


@torch.no_grad()
def max_abs_diff(models: dict, x) -> dict:
    """Max |relformer - HF| over logits and last hidden state, per HF peer (and HF sdpa vs eager).
    Under ``no_grad``, not ``inference_mode``: the same models may be trained next."""
    for m in models.values():
        m.eval()
    outs = {p: _outputs(p, m, x) for p, m in models.items()}
    res = {}
    for a, b in (("relformer", "hf-sdpa"), ("relformer", "hf-eager"), ("hf-sdpa", "hf-eager")):
        if a in outs and b in outs:
            res[f"{a} vs {b}"] = max((outs[a][k] - outs[b][k]).abs().max().item() for k in outs[a])
    return res


# ---------------------------------------------------------------------------------------------
# Steps and timing
# ---------------------------------------------------------------------------------------------
def _logits(peer: str, model, x):
    return model(x).logits if peer == "relformer" else model(pixel_values=x).logits


def make_step(peer: str, model, mode: str, x, y):
    """A zero-arg callable running one inference forward or one training step."""
    if mode == "infer":
        model.eval()

        def step():
            with torch.inference_mode():
                _logits(peer, model, x)
        return step
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(_logits(peer, model, x), y).backward()
        opt.step()
    return step


class _Choices(logging.Handler):
    """Collects the backends ``backend="auto"`` picks (relformer logs each choice at DEBUG)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.seen: dict[str, int] = {}

    def emit(self, record):
        choice = str(record.args[-1]).split(":")[0].strip() if record.args else record.getMessage()
        self.seen[choice] = self.seen.get(choice, 0) + 1


def auto_choices(step) -> str:
    """Run ``step`` once, recording relformer's auto backend choices: e.g. ``sdpa×12``."""
    log = logging.getLogger("relformer.attention")
    handler, level = _Choices(), log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        step()
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    return ", ".join(f"{k}×{v}" for k, v in sorted(handler.seen.items())) or "?"


# ---------------------------------------------------------------------------------------------
# Run, save, report
# ---------------------------------------------------------------------------------------------
MALLOCS = ("system", "retained")
# glibc serves blocks above a (dynamic, at most 32 MiB) threshold with fresh mmaps and trims the heap
# top: a tensor's first touch then costs a page fault per 4 KiB, and which peer pays depends on the
# heap the others left. "retained" keeps every block in a heap that is never trimmed.
RETAINED_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"


def _key(r) -> tuple:
    return r.get("malloc", "system"), r["case"], r["mode"], r["peer"]


def load_rows(path: Path) -> dict:
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {_key(r): r for r in rows}


def describe(case: str) -> str:
    """The variant's shape, e.g. ``swin_micro: 28x28x1, patch 2, embed 64, depths (2, 4), ...``."""
    c = model_config(case)
    size = f"{c.image_size}x{c.image_size}x{c.in_chans}, patch {c.patch_size}"
    if isinstance(c, ViTConfig):
        return (f"{size}, dim {c.dim}, depth {c.depth}, heads {c.num_heads}, "
                f"mlp {c.mlp_hidden or int(c.dim * c.mlp_ratio)}")
    return (f"{size}, embed {c.embed_dim}, depths {c.depths}, heads {c.num_heads}, windows {c.stage_windows}, "
            f"mlp ratio {c.mlp_ratio}, drop path {c.drop_path}")


def _inputs(case: str, batch: int):
    cfg = model_config(case)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.in_chans, cfg.image_size, cfg.image_size, generator=g)
    return x, torch.randint(0, NUM_LABELS, (batch,), generator=g)


def run(args) -> None:
    import transformers

    torch.set_num_threads(args.threads)
    raw_path = args.out.with_suffix(".jsonl")
    saved = load_rows(raw_path)
    t_start = time.perf_counter()
    for case in args.cases:
        t_case = time.perf_counter()
        models, notes = build_peers(case, args.peers)
        x, y = _inputs(case, args.batch)
        diffs = max_abs_diff(models, x[: min(8, args.batch)])
        for n in notes:
            print(f"[{case}] note: {n}", flush=True)
        print(f"[{case}] max abs output difference: {diffs}", flush=True)
        reps = args.reps or default_reps(case)
        warmup = default_warmup(case) if args.warmup is None else args.warmup
        for i, mode in enumerate(args.modes):
            if i:  # fresh peers per mode: tensors a model caches under inference_mode must not meet autograd
                del models
                gc.collect()
                models, _ = build_peers(case, args.peers)
            steps = {p: make_step(p, m, mode, x, y) for p, m in models.items()}
            chosen = auto_choices(steps["relformer"]) if "relformer" in steps else None
            times = time_interleaved(steps, reps, warmup)
            for peer, ts in times.items():
                med = statistics.median(ts)
                row = dict(case=case, image=model_config(case).image_size, mode=mode, peer=peer, batch=args.batch,
                           config=describe(case), reps=reps, warmup=warmup, ms=med * 1e3, images_per_s=args.batch / med,
                           times_ms=[round(t * 1e3, 2) for t in ts], auto=chosen if peer == "relformer" else None,
                           max_abs_diff=diffs, notes=notes, threads=torch.get_num_threads(), malloc=args.malloc,
                           torch=torch.__version__, transformers=transformers.__version__,
                           date=datetime.datetime.now().isoformat(timespec="seconds"), command=_command(args))
                saved[_key(row)] = row
                raw_path.parent.mkdir(parents=True, exist_ok=True)
                raw_path.write_text("".join(json.dumps(r) + "\n" for r in saved.values()))  # nothing lost
                print(json.dumps({k: row[k] for k in ("case", "mode", "peer", "ms", "images_per_s", "auto")}),
                      flush=True)
            del steps
            gc.collect()
        del models
        gc.collect()
        print(f"[{case}] {time.perf_counter() - t_case:.0f} s", flush=True)
    elapsed = time.perf_counter() - t_start
    print(f"measured in {elapsed:.0f} s", flush=True)
    write_report(saved, args.out, elapsed)


def _command(args) -> str:
    return "python bench/vision.py " + " ".join(args.argv) if args.argv else "python bench/vision.py"


def _ratio(cell: dict) -> float | None:
    hf = [cell[p]["images_per_s"] for p in PEERS[1:] if cell.get(p)]
    return cell["relformer"]["images_per_s"] / max(hf) if cell.get("relformer") and hf else None


def _paired(cell: dict) -> tuple[float, float, float] | None:
    """Paired speed-up of relformer over the best HF peer (by median) with its 95% interval, from the
    per-repetition times of one run (``benchlib.paired_speedup``); None if the rows come from
    different runs (their repetitions are not paired)."""
    hf = [p for p in PEERS[1:] if cell.get(p)]
    rel = cell.get("relformer")
    if not rel or not hf:
        return None
    best = max(hf, key=lambda p: cell[p]["images_per_s"])
    a, b = rel["times_ms"], cell[best]["times_ms"]
    when = [datetime.datetime.fromisoformat(r["date"]) for r in (rel, cell[best])]
    if abs((when[0] - when[1]).total_seconds()) > 60 or len(a) != len(b):
        return None
    return paired_speedup({"relformer": a, "HF": b}, "relformer", "HF")


def _spread(r: dict | None) -> float | None:
    """(slowest - fastest) / median of a peer's repetitions."""
    return (max(r["times_ms"]) - min(r["times_ms"])) / r["ms"] if r else None


def write_report(saved: dict, out_path: Path, elapsed: float | None) -> None:
    rows = sorted(saved.values(), key=lambda r: (CASES.index(r["case"]), MODES.index(r["mode"]), PEERS.index(r["peer"])))
    if not rows:
        raise SystemExit(f"no saved rows in {out_path.with_suffix('.jsonl')}")
    meta = rows[0]
    threads = sorted({r["threads"] for r in rows})
    batches = sorted({r["batch"] for r in rows})
    dates = sorted(r["date"] for r in rows)
    lines = [
        "# Vision models — relformer vs HF transformers (ViT, Swin)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{', '.join(map(str, threads))} torch threads; torch {meta['torch']}, transformers "
        f"{meta['transformers']}; fp32, batch {', '.join(map(str, batches))}; measured "
        f"{dates[0][:16].replace('T', ' ')}" + (f" – {dates[-1][:16].replace('T', ' ')}" if dates[-1][:16] != dates[0][:16] else "")
        + (f"; the run that wrote this page took {elapsed / 60:.1f} min." if elapsed else "."),
        "",
        "Peers hold the same weights: the HF `*ForImageClassification` model (10 labels) is built from a config "
        "mirroring the relformer variant, its `eager` twin loads the same state dict, and "
        "`relformer.interop.transformers.from_hf` converts it. `infer`: `eval()` + `inference_mode()`, one forward; "
        "`train`: forward + cross-entropy + backward + `AdamW.step()`; each mode gets freshly built peers (same weights). Peers are interleaved per repetition "
        "(rotating order); images/s from the median of the repetitions after warm-ups. "
        "`ratio` = relformer / best HF images/s (> 1: relformer faster). `spread` = (slowest − fastest) / median "
        "repetition, the worst over the peers. `auto→` = backends relformer's `auto` chose per attention call "
        "in one step. `max |Δ|` = max abs difference of logits and last hidden state, relformer vs HF "
        "(eval, first 8 images).",
        "",
        "Command: " + ", ".join(f"`{c}`" for c in dict.fromkeys(r.get("command", "?") for r in sorted(rows, key=lambda r: r["date"])))
        + " (rows are saved per case, mode and peer in the `.jsonl` beside this page; `--cases`/`--modes` "
        "re-measure a subset, `--report-only` rewrites this page from the saved rows).",
        "",
        "`malloc`: `system` is glibc as it comes; `retained` (`--malloc retained`, the process re-run with "
        f"`GLIBC_TUNABLES={RETAINED_TUNABLES}`) serves every block from a heap that is never trimmed, so "
        "no step pays page faults for memory another step (or peer) gave back. Under `system`, tensors above "
        "glibc's dynamic mmap threshold are fresh mappings, faulted in page by page on first touch; which "
        "peer pays depends on the heap the others left: the same code measured 1.07×, 0.71× and 0.70× "
        "(ViT-micro inference, before eager attention without autograd ran in batch tiles) in three runs "
        "of this page. Both are reported.",
    ]
    conditions = [m for m in MALLOCS if any(r.get("malloc", "system") == m for r in rows)]
    diffs, target_lines = {}, []
    for malloc in conditions:
        lines += _table(malloc, rows, diffs, target_lines)
    lines += ["", "Cases (registered variants, 10-class head):", ""]
    lines += [f"- `{case}`: {r['config']}" for case, r in {r["case"]: r for r in rows}.items()]
    notes = {n for r in rows for n in r.get("notes", [])}
    if notes:
        lines += ["", "Notes from the runs:", ""] + [f"- {n}" for n in sorted(notes)]
    lines += ["", "## Targets (from the issue)", ""]
    worst = max((d for d in diffs.values() if d is not None), default=None)
    if worst is not None:
        lines.append(f"- {'ok' if worst <= EQUIV_TOL else 'FAILED'} (precondition) same outputs: max |Δ| relformer vs "
                     f"HF {worst:.1e} over all cases (tolerance {EQUIV_TOL:g})")
    lines.append("Verdicts use the paired speed-up where the run has one (else the ratio of medians): FASTER / "
                 "LEVEL / SLOWER when its 95% interval lies above / contains / lies below the target ratio.")
    lines += target_lines
    _write(lines, out_path)


def _verdict(target: float, ratio: float, paired) -> str:
    if paired is None:
        return "MET" if ratio >= target else "NOT MET"
    return {"FASTER": "MET (faster)", "SLOWER": "NOT MET (slower)", "LEVEL": "LEVEL"}[paired_verdict(paired[1:], target)]


def _show(ratio, paired) -> str:
    return f"{paired[0]:.2f}× [{paired[1]:.2f}, {paired[2]:.2f}]" if paired else f"{ratio:.2f}×"


def _table(malloc: str, rows: list, diffs: dict, target_lines: list) -> list[str]:
    """The results table of one malloc condition; appends its target verdicts to ``target_lines``."""
    by = {_key(r): r for r in rows}
    lines = [
        "", f"### malloc: {malloc}", "",
        "| case | image | mode | reps | relformer img/s | HF sdpa img/s | HF eager img/s | ratio | paired [95% CI] | spread | auto→ | max \\|Δ\\| |",
        "|" + "---|" * 12,
    ]
    targets = []
    for case in dict.fromkeys(r["case"] for r in rows):
        for mode in MODES:
            cell = {p: by.get((malloc, case, mode, p)) for p in PEERS}
            any_row = next((c for c in cell.values() if c), None)
            if not any_row:
                continue
            ratio, paired = _ratio(cell), _paired(cell)
            spread = max((_spread(c) for c in cell.values() if c), default=None)
            rel = cell["relformer"]
            diff = max(v for k, v in any_row["max_abs_diff"].items() if k.startswith("relformer")) \
                if any(k.startswith("relformer") for k in any_row["max_abs_diff"]) else None
            lines.append(
                f"| {case} | {any_row['image']} | {mode} | {any_row['reps']} | "
                + " | ".join(_fmt(cell[p] and cell[p]["images_per_s"], ".1f") for p in PEERS)
                + f" | {_fmt(ratio, '.2f')} | "
                + (f"{paired[0]:.2f} [{paired[1]:.2f}, {paired[2]:.2f}]" if paired else "—")
                + f" | {_fmt(spread, '.0%')} | {rel['auto'] if rel else '—'} | {_fmt(diff, '.1e')} |")
            if ratio is not None:
                targets.append((case, mode, ratio, paired))
            diffs[case] = diff
    met = 0
    target_lines += ["", f"malloc `{malloc}`:", ""]
    for case, mode, ratio, paired in targets:
        v = _verdict(1.0, ratio, paired)
        met += v.startswith("MET") or v == "LEVEL"
        target_lines.append(f"- {v} relformer at least as fast as HF, {case} {mode}: {_show(ratio, paired)} the best HF peer")
    swin = [t for t in targets if t[0].startswith("swin")]
    for case, mode, ratio, paired in swin:
        v = _verdict(SWIN_TARGET, ratio, paired)
        met += v.startswith("MET")
        target_lines.append(f"- {v} ≥ {SWIN_TARGET}× on Swin, {case} {mode}: {_show(ratio, paired)}")
    target_lines += ["", f"**malloc `{malloc}`: {met} of {len(targets) + len(swin)} targets met** (LEVEL counts "
                         f"for 'at least as fast', not for ≥ {SWIN_TARGET}×)."]
    return lines


def profile(args) -> None:
    """Top ops (self CPU time) over ``--reps`` (default 2) steps per peer for ``case:mode``."""
    from torch.profiler import ProfilerActivity, profile as tprofile

    torch.set_num_threads(args.threads)
    case, mode = args.profile.split(":")
    models, notes = build_peers(case, args.peers)
    x, y = _inputs(case, args.batch)
    steps = args.reps or 2
    for peer, model in models.items():
        step = make_step(peer, model, mode, x, y)
        step()
        t0 = time.perf_counter()
        with tprofile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
        wall = (time.perf_counter() - t0) / steps
        ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in ops)
        print(f"\n### {case} {mode} — {peer}: {wall * 1e3:.0f} ms per step (profiled, {steps} steps, "
              f"batch {args.batch})\n\n| op | self ms / step | share | calls / step |\n|---|---|---|---|")
        for e in ops[:args.profile_rows]:
            print(f"| {e.key} | {e.self_cpu_time_total / 1e3 / steps:.1f} | {e.self_cpu_time_total / total:.0%} "
                  f"| {e.count // steps} |")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--peers", nargs="+", default=list(PEERS), choices=PEERS)
    ap.add_argument("--batch", type=int, default=DEFAULT_BATCH)
    ap.add_argument("--reps", type=int, default=None, help="default: 3 at 224x224, 10 at 28x28")
    ap.add_argument("--warmup", type=int, default=None, help="default: 1 at 224x224, 3 at 28x28")
    ap.add_argument("--threads", type=int, default=min(2, len(os.sched_getaffinity(0))))
    ap.add_argument("--quick", action="store_true", help="smoke run: batch 8, 2 repeats, 1 warm-up")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--report-only", action="store_true", help="rewrite the report from the saved rows")
    ap.add_argument("--profile", metavar="CASE:MODE", help="print the top ops of one step per peer instead")
    ap.add_argument("--profile-rows", type=int, default=15)
    ap.add_argument("--malloc", choices=MALLOCS, default="system",
                    help="'retained': re-run this process with glibc tunables that never trim the heap or mmap")
    args = ap.parse_args(argv)
    args.argv = argv
    if args.quick:
        args.batch, args.reps, args.warmup = 8, args.reps or 2, 1 if args.warmup is None else args.warmup
    args.out = args.out or ROOT / "results" / ("vision-bench-quick.md" if args.quick else "vision-bench.md")
    if args.malloc == "retained" and os.environ.get("GLIBC_TUNABLES") != RETAINED_TUNABLES and not args.report_only:
        env = dict(os.environ, GLIBC_TUNABLES=RETAINED_TUNABLES)  # glibc reads tunables at start-up only
        os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *argv], env)
    if args.profile:
        return profile(args)
    if args.report_only:
        return write_report(load_rows(args.out.with_suffix(".jsonl")), args.out, None)
    run(args)


if __name__ == "__main__":
    main()
