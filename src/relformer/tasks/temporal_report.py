"""The temporal link-prediction report's pieces: the test table (markdown and a picture of it), the
val AP / AUC / MRR curves per epoch and the test scores over time (matplotlib's object API)."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from ..data.temporal import STRATEGIES
from ..train.logger import read_metrics
from ..train.report import line_plot

__all__ = ["table_markdown", "table_rows", "validation_curves_plot", "scores_over_time_plot"]

SETTINGS = ("transductive", "inductive")


def _cell(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def table_rows(table: dict[str, float]) -> list[list[str]]:
    """Rows ``[setting, events, AP random, AP historical, AP inductive, AUC x3, MRR]`` of a test table."""
    rows = []
    for setting in SETTINGS:
        cells = [setting, f"{int(table.get(f'{setting}_events', 0)):,}"]
        cells += [_cell(table.get(f"{setting}_{s}_ap")) for s in STRATEGIES]
        cells += [_cell(table.get(f"{setting}_{s}_auc")) for s in STRATEGIES]
        rows.append(cells + [_cell(table.get(f"{setting}_mrr"))])
    return rows


HEADER = ["setting", "events", *(f"AP {s}" for s in STRATEGIES), *(f"AUC {s}" for s in STRATEGIES), "MRR"]


def table_markdown(table: dict[str, float], title: str, mrr_events: int, num_negatives: int,
                   picture: Path) -> tuple[str, Path]:
    """The table as markdown (with what MRR was computed on) and as a PNG at ``picture``."""
    lines = [f"# Test table: {title}", "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(table)]
    lines += ["", f"MRR: each of {mrr_events} evenly spaced events of the split against {num_negatives} "
              "destinations (TGB's one-vs-many, fixed seeds); AP / AUC over every event of the split.", ""]
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 1.6), dpi=100)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.table(cellText=table_rows(table), colLabels=HEADER, loc="center").auto_set_font_size(True)
    ax.set_title(title, fontsize=9)
    picture.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(picture, bbox_inches="tight")
    return "\n".join(lines), picture


def validation_curves_plot(metrics_csv: Path, path: Path) -> Path:
    """``eval_ap``, ``eval_auc`` and ``eval_mrr`` per epoch from a run's ``metrics.csv``."""
    rows = [r for r in read_metrics(metrics_csv) if r["kind"] == "eval"]
    series = []
    for name in ("ap", "auc", "mrr"):
        picked = [r for r in rows if r.get(f"eval_{name}") not in (None, "", "nan")]
        series.append((name.upper(), [int(r["epoch"]) for r in picked], [float(r[f"eval_{name}"]) for r in picked]))
    return line_plot(path, series, "epoch", "value", "Validation AP, AUC and MRR")


def scores_over_time_plot(scores: dict[str, torch.Tensor], path: Path) -> Path:
    """Sigmoid scores of the test positives and their random negatives against event time (days)."""
    from matplotlib.figure import Figure

    days = (scores["t"] / 86400.0).numpy()
    fig = Figure(figsize=(7, 4), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for key, label, color in (("pos", "positive events", "tab:green"), ("random", "random negatives", "tab:red")):
        ax.scatter(days, torch.sigmoid(scores[key].float()).numpy(), s=3, alpha=0.25, color=color, label=label,
                   rasterized=True)
    ax.set(xlabel="time (days since the stream's start)", ylabel="score (sigmoid of the logit)",
           title="Test split: scores over time")
    ax.legend(markerscale=4)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
