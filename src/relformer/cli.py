"""The ``relformer`` command.

    relformer bench attention [--quick] [...]    attention backends side by side (bench/attention.py)
    relformer explain --length 2048 --relation window [--train]
                                                 which backend auto picks, and why
    relformer train RECIPE [--set key=value ...] [--resume] [--deterministic] [--out DIR]
                                                 train a registered recipe or a YAML file
    relformer train --list                       the registered recipes
    torchrun --nproc_per_node=2 -m relformer.cli train RECIPE ...
                                                 the same run with DDP over 2 processes
"""
from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path


def _bench_dir() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "bench" / "attention.py").is_file():
            return parent / "bench"
    raise SystemExit("relformer bench needs a source checkout (bench/ lives beside src/); "
                     "clone the repository and install it with `pip install -e .`")


def _bench(args: list[str]) -> None:
    if not args or args[0] not in ("attention",):
        raise SystemExit("usage: relformer bench attention [--quick] [--lengths ...] [--out FILE]")
    script = _bench_dir() / f"{args[0]}.py"
    sys.argv = [str(script), *args[1:]]
    runpy.run_path(str(script), run_name="__main__")


def _explain(argv: list[str]) -> None:
    import torch

    import relformer
    from relformer import relations as R

    ap = argparse.ArgumentParser(prog="relformer explain")
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
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
    from .train import RecipeError, list_recipes, resolve_recipe, train
    from .train.recipe import recipe_summary

    ap = argparse.ArgumentParser(prog="relformer train", description="Train a recipe (a registered name or a "
                                 "YAML file); the run folder gets recipe.yaml, metrics.csv, tb/, checkpoints/, report.md.")
    ap.add_argument("recipe", nargs="?", help="a registered recipe name (see --list) or a YAML file")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a recipe value, e.g. --set optim.lr=3e-4 --set model.options.depth=4")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/latest")
    ap.add_argument("--deterministic", action="store_true", help="deterministic kernels (same as --set deterministic=true)")
    ap.add_argument("--out", metavar="DIR", help="the run folder (default: the recipe's out_dir, else runs/NAME)")
    ap.add_argument("--list", action="store_true", help="list the registered recipes and exit")
    a = ap.parse_args(argv)
    if a.list:
        for name in list_recipes():
            print(f"{name:24s} {recipe_summary(name)}")
        return
    if a.recipe is None:
        ap.error("RECIPE is required (or --list)")
    overrides = list(a.overrides)
    if a.deterministic:
        overrides.append("deterministic=true")
    if a.out is not None:
        overrides.append(f"out_dir={a.out}")
    try:
        train(resolve_recipe(a.recipe, overrides), resume=a.resume)
    except RecipeError as e:
        raise SystemExit(f"relformer train: {e}") from None


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    cmd, rest = argv[0], argv[1:]
    if cmd == "bench":
        _bench(rest)
    elif cmd == "explain":
        _explain(rest)
    elif cmd == "train":
        _train(rest)
    else:
        raise SystemExit(f"relformer: unknown command {cmd!r}\n{__doc__}")


if __name__ == "__main__":
    main()
