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
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import relformer
from relformer.models import SwinConfig, ViTConfig, model_config

from benchlib import time_interleaved
from vision_report import CASES, MALLOCS, MODES, PEERS, RETAINED_TUNABLES, load_rows, row_key, write_report

ROOT = Path(__file__).resolve().parent

NUM_LABELS = 10
DEFAULT_BATCH = 64


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
# Run and save (the page: vision_report.py)
# ---------------------------------------------------------------------------------------------
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
                saved[row_key(row)] = row
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
