"""The end-of-run report: ``report.md`` with the run's facts, the per-epoch table and PNG plots.

Plots use matplotlib's object API (``Figure`` + Agg), never pyplot's global state.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from torch import Tensor

from ..utils import atomic_write_text
from .logger import read_metrics

__all__ = ["write_report", "line_plot", "image_grid", "fmt"]


def fmt(value) -> str:
    """A table cell: integers plainly, other floats to 4 significant digits."""
    if isinstance(value, float):
        return f"{int(value):,}" if value.is_integer() and abs(value) < 1e12 else f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


def _figure(width: float = 6.0, height: float = 4.0):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def line_plot(path: str | os.PathLike, series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
              xlabel: str, ylabel: str, title: str) -> Path:
    """``series``: ``(label, xs, ys)``; one line each (markers when a series has few points)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = _figure()
    ax = fig.add_subplot()
    for label, xs, ys in series:
        if len(xs):
            ax.plot(xs, ys, label=label, marker="o" if len(xs) <= 30 else None)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    if any(len(xs) for _, xs, _ in series):
        ax.legend()
    fig.savefig(path)
    return path


def image_grid(path: str | os.PathLike, images: Tensor, titles: Sequence[str], overlays: Tensor | None = None,
               correct: Sequence[bool] | None = None, columns: int = 4) -> Path:
    """Grey ``images (N, H, W)`` in [0, 1] with a title each; ``overlays (N, h, w)`` (e.g. attention
    maps on a coarser grid) stretched over each image, semi-transparent; titles green if ``correct``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(images)
    rows = -(-n // columns)
    fig = _figure(2.2 * columns, 2.4 * rows)
    for i in range(n):
        ax = fig.add_subplot(rows, columns, i + 1)
        H, W = images[i].shape
        ax.imshow(images[i].clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1, extent=(0, W, H, 0))
        if overlays is not None:
            ax.imshow(overlays[i].numpy(), cmap="inferno", alpha=0.45, extent=(0, W, H, 0), interpolation="bilinear")
        color = None if correct is None else ("tab:green" if correct[i] else "tab:red")
        ax.set_title(titles[i], fontsize=8, color=color)
        ax.set_axis_off()
    fig.savefig(path)
    return path


def _table(rows: list[dict]) -> list[str]:
    if not rows:
        return ["(no rows)"]
    columns = list(rows[0])
    lines = ["| " + " | ".join(c.replace("_", " ") for c in columns) + " |",
             "|" + "---:|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return lines


def _curves(run_dir: Path, main_metric: str, train_has_main: bool) -> list[tuple[str, Path]]:
    """The loss curve (train per logged step, eval per epoch) and the main metric per epoch."""
    rows = read_metrics(run_dir / "metrics.csv")

    def points(kind: str, column: str) -> tuple[list[int], list[float]]:
        picked = [r for r in rows if r["kind"] == kind and r.get(column) not in (None, "")]
        return [int(r["step"]) for r in picked], [float(r[column]) for r in picked]

    loss_series = [("train", *points("train", "train_loss"))]
    if any(r.get("eval_loss") not in (None, "") for r in rows):
        loss_series.append(("eval", *points("eval", "eval_loss")))
    metric_series = [("eval", *points("eval", f"eval_{main_metric}"))]
    if train_has_main:
        metric_series.insert(0, ("train (running)", *points("train", f"train_{main_metric}")))
    plots = run_dir / "plots"
    return [("Loss", line_plot(plots / "loss.png", loss_series, "step", "loss", "Loss")),
            (f"Eval {main_metric}", line_plot(plots / f"{main_metric}.png", metric_series, "step", main_metric,
                                              main_metric.capitalize()))]


def write_report(run_dir: str | os.PathLike, *, title: str, facts: dict[str, str], history: list[dict],
                 best_epoch: int | None, main_metric: str, train_has_main: bool, eval_description: str,
                 figures: list[tuple[str, Path]], recipe_yaml: str) -> Path:
    """Write ``run_dir/report.md`` (and its curves under ``run_dir/plots``); returns its path.
    ``history``: one dict per epoch, ``eval_<metric>`` keys among others."""
    run_dir = Path(run_dir)
    lines = [f"# Training report: {title}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in facts.items()]
    lines += ["", f"Evaluation every epoch on {eval_description}, every sample counted once.", ""]
    if history:
        final = history[-1]
        lines += [f"## Final evaluation metrics (epoch {final['epoch']})", ""]
        lines += _table([{k[5:]: v for k, v in final.items() if k.startswith("eval_")}])
        if best_epoch is not None:
            best = history[best_epoch - 1]
            lines += ["", f"Best epoch: **{best_epoch}** ({main_metric} {fmt(best[f'eval_{main_metric}'])}; "
                      "its weights are in `checkpoints/best/`)."]
        lines += ["", "## Per-epoch metrics", ""] + _table(history)
    curves = _curves(run_dir, main_metric, train_has_main) if (run_dir / "metrics.csv").is_file() else []
    lines += ["", "## Plots", ""]
    for name, path in [*curves, *figures]:
        lines += [f"### {name}", "", f"![{name}]({Path(path).relative_to(run_dir).as_posix()})", ""]
    lines += ["## Recipe", "", "```yaml", recipe_yaml.rstrip(), "```", ""]
    out = run_dir / "report.md"
    atomic_write_text(out, "\n".join(lines))
    return out
