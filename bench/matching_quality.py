"""Matching quality: every registered method on the same pairs, one markdown table.

* matchers (``MATCHERS``: ``match(image0, image1) -> (kpts0 (N, 2), kpts1 (N, 2), scores (N,))``, images
  ``(h, w, 3)`` uint8 RGB NumPy arrays): homography AUC@3/5/10 px (corner error, the HPatches
  protocol of LoFTR / LightGlue) and match precision at 3 px on (a) the held-out homography pairs
  of the test photos (fixed seed, 240 pairs) and (b) graf1 -> graf3;
* flows (``FLOWS``: ``flow(image0, image1) -> (h, w, 2)``): end-point error and bad-pixel rate (> 3 px)
  on the held-out homography pairs, over the pixels of image 0 seen in image 1;
* stereo (``STEREO``: ``stereo(left, right) -> (h, w)`` disparity): EPE and bad-pixel rate (> 3 px) on
  Aloe and Motorcycle over the pixels with known disparity; a flow method answers ``-flow_x``.

Adding a method is one line, e.g. ``MATCHERS["my-matcher"] = my_callable``. relformer's own:
``lightglue-disk`` (published weights) always; ``loftr`` and ``gmflow`` from trained run folders
(``--loftr runs/loftr``, ``--gmflow runs/gmflow``: ``relformer train loftr-homography`` /
``gmflow-homography``). Not a timing benchmark (seconds per pair are shown only as a guide). Writes
the "Quality" section of ``bench/results/matching.md`` (the "Speed" section is bench/matching.py's)::

    PYTHONPATH=src python bench/matching_quality.py [--pairs 240] [--only sift,sgbm] [--loftr DIR] [--gmflow DIR]
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from relformer.data.matching import (DEFAULT_SIZE, HELDOUT_LENGTH, HELDOUT_SEED, STEREO_PAIRS, HomographyPair,
                                     heldout_pairs, load_graf)
from relformer.interop.opencv import OrbMatcher, SgbmStereo, SiftMatcher, dis_flow, farneback_flow
from relformer.models import from_pretrained
from relformer.tasks.matchers import GMFlowMatcher, LightGlueMatcher, LoFTRMatcher, flow_as_disparity
from relformer.tasks.matching_metrics import (AUC_THRESHOLDS, bad_pixel_rate, corner_error, endpoint_error, error_auc,
                                              estimate_homography, match_precision)
from relformer.utils.cpu import cpu_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import write_section  # noqa: E402

Matcher = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


MATCHERS: dict[str, Matcher] = {"sift": SiftMatcher(), "orb": OrbMatcher()}
FLOWS: dict[str, Callable] = {"dis": dis_flow, "farneback": farneback_flow}
STEREO: dict[str, Callable] = {"sgbm": SgbmStereo(), "dis": flow_as_disparity(dis_flow),
                               "farneback": flow_as_disparity(farneback_flow)}


def to_rgb_uint8(image: torch.Tensor) -> np.ndarray:
    """A dataset image ``(C, h, w)`` float in [0, 1] -> ``(h, w, 3)`` uint8 RGB."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return np.ascontiguousarray(np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array)


def heldout_homography_pairs(n: int) -> list[HomographyPair]:
    """The first ``n`` held-out pairs as uint8 RGB images with their ground truth."""
    pairs = heldout_pairs(length=n)
    return [HomographyPair(f"heldout-{i}", to_rgb_uint8(item["image0"]), to_rgb_uint8(item["image1"]),
                           item["H_0to1"].numpy()) for i, item in ((i, pairs[i]) for i in range(n))]


def evaluate_matcher(matcher: Matcher, pairs: list[HomographyPair]) -> dict[str, float]:
    """AUC@3/5/10 of the corner error, mean precision@3px, mean match count and seconds per pair."""
    errors, precisions, counts, start = [], [], [], time.perf_counter()
    for pair in pairs:
        kpts0, kpts1, _ = matcher(pair.image0, pair.image1)
        h, w = pair.image0.shape[:2]
        errors.append(corner_error(estimate_homography(kpts0, kpts1), pair.H_0to1, w, h))
        precisions.append(match_precision(kpts0, kpts1, pair.H_0to1))
        counts.append(len(kpts0))
    aucs = error_auc(errors)
    return {**{f"auc@{t:g}": aucs[t] for t in AUC_THRESHOLDS}, "precision@3px": float(np.mean(precisions)),
            "matches": float(np.mean(counts)), "median corner error": float(np.median(errors)),
            "s/pair": (time.perf_counter() - start) / len(pairs)}


def evaluate_flow(flow: Callable, n: int) -> dict[str, float]:
    """Mean EPE and bad-pixel rate over the first ``n`` held-out pairs (pixels seen in image 1)."""
    pairs, epes, bads, motion, start = heldout_pairs(length=n, dense=True), [], [], [], time.perf_counter()
    for i in range(n):
        item = pairs[i]
        pred = flow(to_rgb_uint8(item["image0"]), to_rgb_uint8(item["image1"]))
        gt, valid = item["flow_0to1"].permute(1, 2, 0).numpy(), item["valid_0to1"].numpy()
        epes.append(endpoint_error(pred, gt, valid))
        bads.append(bad_pixel_rate(pred, gt, valid))
        motion.append(float(np.linalg.norm(gt[valid], axis=1).mean()))
    return {"epe": float(np.mean(epes)), "bad>3px": float(np.mean(bads)), "motion": float(np.mean(motion)),
            "s/pair": (time.perf_counter() - start) / n}


def evaluate_stereo(stereo: Callable, pair) -> dict[str, float]:
    start = time.perf_counter()
    disparity = stereo(pair.left, pair.right)
    seconds = time.perf_counter() - start
    return {"epe": endpoint_error(disparity, pair.disparity), "bad>3px": bad_pixel_rate(disparity, pair.disparity),
            "s/pair": seconds}


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(row) + " |" for row in rows)]


def _matcher_rows(results: dict[str, dict[str, float]]) -> list[list[str]]:
    return [[name] + [f"{100 * r[f'auc@{t:g}']:.1f}" for t in AUC_THRESHOLDS]
            + [f"{100 * r['precision@3px']:.1f}", f"{r['matches']:.0f}", f"{r['median corner error']:.2f}",
               f"{r['s/pair']:.3f}"] for name, r in results.items()]


def _selected(registry: dict, only: set[str] | None) -> dict:
    return {name: method for name, method in registry.items() if only is None or name in only}


def run(n_pairs: int, only: set[str] | None) -> list[str]:
    """Evaluate the selected methods; -> the markdown report's lines."""
    lines = ["## Quality", "",
             f"CPU: {cpu_model()} (torch threads: {torch.get_num_threads()}, OpenCV threads: {cv2.getNumThreads()}); "
             f"OpenCV {cv2.__version__}, "
             f"NumPy {np.__version__}, Python {platform.python_version()}.", "",
             f"Held-out homography pairs: the first {n_pairs} of `heldout_pairs()` (test photos only, seed "
             f"{HELDOUT_SEED}, {DEFAULT_SIZE[0]} x {DEFAULT_SIZE[1]}, photometric augmentation; the full set is "
             f"{HELDOUT_LENGTH}). Homographies from the matches by OpenCV USAC MAGSAC++ at 3 px; AUC in % of the "
             "corner error (4 image corners), precision@3px in % (symmetric reprojection error under the true H).", ""]
    matchers = _selected(MATCHERS, only)
    if matchers:
        heldout, graf = heldout_homography_pairs(n_pairs), [load_graf()]
        header = ["matcher", "AUC@3", "AUC@5", "AUC@10", "prec@3px", "matches", "median err px", "s/pair"]
        for title, pairs in ((f"Held-out homographies ({n_pairs} pairs)", heldout),
                             ("graf1 -> graf3 (1 pair: AUC@t = 1 - e / 2t for its corner error e < t, else 0)", graf)):
            results = {name: evaluate_matcher(matcher, pairs) for name, matcher in matchers.items()}
            lines += [f"### {title}", "", *_table(header, _matcher_rows(results)), ""]
    flows = _selected(FLOWS, only)
    if flows:
        rows = [[name, f"{r['epe']:.2f}", f"{100 * r['bad>3px']:.1f}", f"{r['motion']:.1f}", f"{r['s/pair']:.3f}"]
                for name, r in ((name, evaluate_flow(flow, n_pairs)) for name, flow in flows.items())]
        lines += [f"### Dense flow on the held-out homography pairs ({n_pairs} pairs)", "",
                  "Pixels of image 0 seen in image 1; the true motion is large (its mean length is shown), "
                  "beyond what local coarse-to-fine flow follows.", "",
                  *_table(["flow", "EPE px", "bad >3px %", "mean true motion px", "s/pair"], rows), ""]
    stereo = _selected(STEREO, only)
    if stereo:
        rows = []
        for pair_name, load in STEREO_PAIRS.items():
            pair = load()
            for name, method in stereo.items():
                r = evaluate_stereo(method, pair)
                rows.append([pair_name, name, f"{r['epe']:.2f}", f"{100 * r['bad>3px']:.1f}", f"{r['s/pair']:.2f}"])
        lines += ["### Stereo disparity (pixels with known ground truth)", "",
                  *_table(["pair", "method", "EPE px", "bad >3px %", "s"], rows), ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=HELDOUT_LENGTH, help="held-out pairs to use (>= 200 for the table)")
    parser.add_argument("--only", default=None, help="comma-separated method names (default: all)")
    parser.add_argument("--loftr", help="a trained LoFTR folder (relformer train loftr-homography) to add as 'loftr'")
    parser.add_argument("--gmflow", help="a trained GMFlow folder (relformer train gmflow-homography): 'gmflow' flow "
                                         "and stereo")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "matching.md")
    args = parser.parse_args()
    MATCHERS["lightglue-disk"] = LightGlueMatcher()
    if args.loftr:
        MATCHERS["loftr"] = LoFTRMatcher(from_pretrained(args.loftr))
    if args.gmflow:
        gmflow = GMFlowMatcher(from_pretrained(args.gmflow))
        FLOWS["gmflow"], STEREO["gmflow"] = gmflow.flow, gmflow.stereo
    if not 1 <= args.pairs <= HELDOUT_LENGTH:
        parser.error(f"--pairs must be in [1, {HELDOUT_LENGTH}]")
    only = set(args.only.split(",")) if args.only else None
    known = set(MATCHERS) | set(FLOWS) | set(STEREO)
    if only and not only <= known:
        parser.error(f"unknown methods {sorted(only - known)}; known: {sorted(known)}")
    write_section(run(args.pairs, only), args.out, "Quality", "# Matching benchmarks")


if __name__ == "__main__":
    main()
