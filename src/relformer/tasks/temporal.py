"""Temporal link prediction on an interaction stream, DyGLib's protocol (Yu et al. 2023) with the
evaluation negatives of Poursafaei et al. 2022 and TGB's MRR (Huang et al. 2023); the recipes.

* Data: a stream of :data:`~relformer.data.temporal.TEMPORAL_DATASETS` or an event CSV of one's own
  (``data.dataset=path.csv``; ``data.prefix``: its first N events only), split chronologically 70 / 15 / 15 with held-out nodes
  (:func:`~relformer.data.temporal.chronological_split`).
* Training: the training events **in time order**, batches of ``batch_size`` (200, DyGLib), each
  positive with one random negative destination (uniform over the training destinations), drawn
  afresh every step from the step's generator; binary cross-entropy on the 2B logits. The model reads
  a context over the training events only.
* Every epoch: the val events (``data.setting = "inductive"``: those touching a new node) against
  deterministic random negatives, AP and AUC over all of them, and MRR against ``data.mrr_negatives``
  (100) destinations on ``data.mrr_events`` evenly spaced val events (scoring 101 pairs per event on
  the whole split costs more than the epoch's training). The context is the whole stream (history
  strictly before each event). AP picks the best checkpoint; early stopping on it as DyGLib (patience).
* At the end, with the best weights: the **test table** (:func:`test_table`): transductive and
  inductive AP / AUC under random, historical and inductive negatives and MRR, every negative from
  :func:`~relformer.data.temporal.split_negatives` / :func:`~relformer.data.temporal.mrr_negatives`
  (fixed seeds: the same for every model). :func:`evaluate_edgebank` gives EdgeBank's table through
  the same code.

Memory models (whose ``observe`` is overridden) are reset before every pass, replay the stream up to
the pass's first event, and observe each batch after scoring it (the contract of
:mod:`relformer.models.temporal.base`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..data.temporal import (SPLIT_SEEDS, STRATEGIES, TEMPORAL_DATASETS, EventStream, TemporalNeighborSampler,
                             TemporalSplit, chronological_split, is_event_csv, load_temporal, mrr_negatives,
                             split_negatives)
from ..interop import pyg_temporal as _pyg_temporal  # noqa: F401  (registers the pyg_tgn peer)
from ..models.temporal import EdgeBank, TemporalContext, TemporalLinkPredictor
from ..train.recipe import EarlyStoppingSection, ModelSection, OptimSection, Recipe, RecipeError, suggest
from ..utils import atomic_write_text
from .base import TaskBase
from .classification import fill_model_options
from .registry import register_task
from .splits import gather_objects
from .temporal_metrics import link_prediction_metrics, reciprocal_ranks
from .temporal_report import scores_over_time_plot, table_markdown, validation_curves_plot

__all__ = ["TemporalLinkTask", "TemporalRecipe", "TemporalDataSection", "EventBatch", "EventSet", "test_table",
           "evaluate_edgebank", "EdgeBankPredictor"]

DATASETS = tuple(TEMPORAL_DATASETS)
CHUNK_PAIRS = 2048  # pairs per model call at evaluation (bounds the memory of a batch with MRR sets)


@dataclass
class TemporalDataSection:
    """``dataset``: one of :data:`DATASETS`, or the path of an event CSV of one's own
    (:func:`~relformer.data.temporal.load_event_csv`; ``bipartite``: its sources and destinations are
    two id spaces, as users and items); ``setting``: which val events the epochs are judged on
    (``transductive``: all; ``inductive``: those touching a node held out of training); ``neighbors``:
    the model's sampled neighbours (its ``num_neighbors``; None: the model's default); ``prefix``: the
    stream's first N events only (None: all); the split ratios; ``mrr_events`` / ``test_mrr_events``:
    how many evenly spaced val / test events get MRR against ``mrr_negatives`` destinations (0: none)."""

    dataset: str = "uci"
    bipartite: bool = False
    setting: Literal["transductive", "inductive"] = "transductive"
    neighbors: int | None = None
    prefix: int | None = None
    val_ratio: float = 0.15
    test_ratio: float = 0.15
    new_node_ratio: float = 0.1
    mrr_events: int = 50
    test_mrr_events: int = 200
    mrr_negatives: int = 100


@dataclass
class TemporalRecipe(Recipe):
    """DyGLib's schedule: Adam at a constant 1e-4, no weight decay, batch 200, early stopping after 20
    epochs without a better val AP."""

    task: Literal["temporal_link"] = "temporal_link"
    model: ModelSection = field(default_factory=lambda: ModelSection("dygformer"))
    data: TemporalDataSection = field(default_factory=TemporalDataSection)
    optim: OptimSection = field(default_factory=lambda: OptimSection(lr=1e-4, min_lr=1e-4, weight_decay=0.0,
                                                                     warmup_epochs=0.0, clip_grad=0.0))
    early_stopping: EarlyStoppingSection = field(default_factory=lambda: EarlyStoppingSection(patience=20))
    epochs: int = 100
    batch_size: int = 200
    eval_batch_size: int = 200

    def validate(self) -> None:
        super().validate()
        d = self.data
        if is_event_csv(d.dataset):
            if not Path(d.dataset).is_file():
                raise RecipeError(f"data.dataset: the event CSV {d.dataset} does not exist")
        elif d.dataset not in DATASETS:
            raise RecipeError(f"data.dataset: unknown dataset {d.dataset!r}{suggest(d.dataset, DATASETS)}; "
                              f"known: {', '.join(DATASETS)}, or the path of a .csv / .csv.gz event file")
        elif d.bipartite:
            raise RecipeError(f"data.bipartite is for event CSVs; {d.dataset!r} knows whether it is bipartite")
        if d.neighbors is not None and d.neighbors < 1:
            raise RecipeError(f"data.neighbors must be >= 1 (sampled neighbours) or null, got {d.neighbors}")
        if d.prefix is not None and d.prefix < 10:
            raise RecipeError(f"data.prefix must be >= 10 events or null (all), got {d.prefix}")
        for key in ("val_ratio", "test_ratio"):
            if not 0 < getattr(d, key) < 0.5:
                raise RecipeError(f"data.{key} must lie in (0, 0.5), got {getattr(d, key)}")
        if not 0 <= d.new_node_ratio < 1:
            raise RecipeError(f"data.new_node_ratio must lie in [0, 1), got {d.new_node_ratio}")
        for key in ("mrr_events", "test_mrr_events"):
            if getattr(d, key) < 0:
                raise RecipeError(f"data.{key} must be >= 0 (0: no MRR), got {getattr(d, key)}")
        if d.mrr_negatives < 1:
            raise RecipeError(f"data.mrr_negatives must be >= 1, got {d.mrr_negatives}")


# ---------------------------------------------------------------------------------------------
# Events as batches
# ---------------------------------------------------------------------------------------------
@dataclass
class EventBatch:
    """``B`` events of one stream in time order: ``event_ids`` (into the context's stream), ``src``,
    ``dst``, ``t`` ``(B,)``; ``negatives``: ``{strategy: (neg_src (B,), neg_dst (B,))}``; ``mrr_rows
    (Q,)``: the batch positions with MRR sets ``mrr_dst (Q, K)``; ``first``: the pass's first batch."""

    event_ids: Tensor
    src: Tensor
    dst: Tensor
    t: Tensor
    negatives: dict[str, tuple[Tensor, Tensor]]
    mrr_rows: Tensor
    mrr_dst: Tensor
    first: bool

    def __len__(self) -> int:
        return self.src.numel()

    def to(self, device) -> "EventBatch":
        move = lambda x: x.to(device)  # noqa: E731
        return replace(self, event_ids=move(self.event_ids), src=move(self.src), dst=move(self.dst), t=move(self.t),
                       negatives={k: (move(a), move(b)) for k, (a, b) in self.negatives.items()},
                       mrr_rows=move(self.mrr_rows), mrr_dst=move(self.mrr_dst))


class EventSet(Dataset):
    """The events ``event_ids (P,)`` of ``stream`` (increasing), with per-event negatives
    ``{strategy: (neg_src (P,), neg_dst (P,))}`` and MRR sets ``mrr = (positions (Q,), dst (Q, K))``;
    ``__getitems__`` of increasing indices gives one :class:`EventBatch`."""

    def __init__(self, stream: EventStream, event_ids: Tensor, negatives: dict | None = None,
                 mrr: tuple[Tensor, Tensor] | None = None) -> None:
        self.stream, self.event_ids, self.negatives = stream, event_ids.long(), negatives or {}
        P = self.event_ids.numel()
        self.mrr_row = torch.full((P,), -1, dtype=torch.long)
        positions, self.mrr_dst = mrr if mrr is not None else (torch.zeros(0, dtype=torch.long),
                                                               torch.zeros(0, 1, dtype=torch.long))
        self.mrr_row[positions] = torch.arange(positions.numel())

    def __len__(self) -> int:
        return self.event_ids.numel()

    def __getitems__(self, indices) -> EventBatch:
        i = torch.as_tensor(list(indices), dtype=torch.long)
        e, rows = self.event_ids[i], self.mrr_row[i]
        has = rows >= 0
        return EventBatch(e, self.stream.src[e], self.stream.dst[e], self.stream.t[e],
                          {k: (a[i], b[i]) for k, (a, b) in self.negatives.items()},
                          has.nonzero().flatten(), self.mrr_dst[rows[has]], bool(i.numel()) and int(i[0]) == 0)


def _evenly_spaced(n: int, count: int) -> Tensor:
    """``min(count, n)`` positions spread evenly over ``range(n)`` (a fixed MRR subset)."""
    count = min(count, n)
    return torch.linspace(0, n - 1, count).round().long().unique() if count else torch.zeros(0, dtype=torch.long)


def on_device(stream: EventStream, device: torch.device) -> TemporalContext:
    """A context over ``stream`` moved to ``device``, its sampler built there."""
    stream = stream.to(device)
    return TemporalContext(stream, TemporalNeighborSampler(stream))


def _unwrap(model: nn.Module) -> nn.Module:
    """The module behind DDP (``.module``) and ``torch.compile`` (``._orig_mod``)."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def has_memory(model: nn.Module) -> bool:
    """Whether ``model`` carries state across batches (it overrides ``observe``)."""
    return type(_unwrap(model)).observe is not TemporalLinkPredictor.observe


def start_pass(model: nn.Module, ctx: TemporalContext, first_event: int, batch_size: int) -> None:
    """Before a pass from ``first_event`` on: a memory model forgets, then observes the earlier events."""
    m = _unwrap(model)
    if not has_memory(m):
        return
    m.reset_state()
    s = ctx.stream
    for a in range(0, first_event, batch_size):
        e = torch.arange(a, min(a + batch_size, first_event), device=s.device)
        m.observe(s.src[e], s.dst[e], s.t[e], e, ctx)


def score_batch(model: nn.Module, batch: EventBatch, ctx: TemporalContext) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """Logits of the positives ``(B,)``, of each negative set ``{strategy: (B,)}`` and of the MRR sets
    ``(Q, K)``, in calls of at most :data:`CHUNK_PAIRS` pairs; a memory model then observes the batch."""
    B = len(batch)
    Q, K = batch.mrr_dst.shape
    srcs = [batch.src, *(a for a, _ in batch.negatives.values()), batch.src[batch.mrr_rows].repeat_interleave(K)]
    dsts = [batch.dst, *(b for _, b in batch.negatives.values()), batch.mrr_dst.flatten()]
    times = [batch.t] * (1 + len(batch.negatives)) + [batch.t[batch.mrr_rows].repeat_interleave(K)]
    src, dst, t = torch.cat(srcs), torch.cat(dsts), torch.cat(times)
    logits = torch.cat([model(src[a:a + CHUNK_PAIRS], dst[a:a + CHUNK_PAIRS], t[a:a + CHUNK_PAIRS], ctx)
                        for a in range(0, src.numel(), CHUNK_PAIRS)])
    negatives = {name: logits[B * (j + 1):B * (j + 2)] for j, name in enumerate(batch.negatives)}
    if has_memory(model):
        _unwrap(model).observe(batch.src, batch.dst, batch.t, batch.event_ids, ctx)
    return logits[:B], negatives, logits[B * (1 + len(batch.negatives)):].view(Q, K)


def evaluation_set(split: TemporalSplit, name: str, strategies=("random",), mrr_events: int = 0,
                   mrr_k: int = 100) -> EventSet:
    """The events of split ``name`` with their deterministic negatives and MRR sets on ``mrr_events``
    evenly spaced events (the seeds of :data:`~relformer.data.temporal.SPLIT_SEEDS`)."""
    ids = getattr(split, name).nonzero().flatten()
    negatives = {s: split_negatives(split, name, s) for s in strategies}
    positions = _evenly_spaced(ids.numel(), mrr_events)
    mrr_k = mrr_sets_size(split.stream, mrr_k)
    mrr = None
    if positions.numel():
        mrr = positions, mrr_negatives(split.stream, ids[positions], mrr_k, seed=SPLIT_SEEDS[name])
    return EventSet(split.stream, ids, negatives, mrr)


def mrr_sets_size(stream: EventStream, num_negatives: int) -> int:
    """``num_negatives``, or all the other destinations where the stream has fewer (a small contact network)."""
    return min(num_negatives, torch.unique(stream.dst).numel() - 1)


def run_pass(model: nn.Module, events: EventSet, ctx: TemporalContext, batch_size: int) -> dict[str, Tensor]:
    """Score every event of ``events`` in time order: ``{"pos": (P,), <strategy>: (P,), "mrr": (Q,)
    reciprocal ranks}``."""
    pos, negs, ranks = [], {k: [] for k in events.negatives}, []
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    for a in range(0, len(events), batch_size):
        batch = events.__getitems__(range(a, min(a + batch_size, len(events)))).to(device)
        if batch.first:
            start_pass(model, ctx, int(batch.event_ids[0]), batch_size)
        p, n, m = score_batch(model, batch, ctx)
        pos.append(p.float().cpu())
        for k in negs:
            negs[k].append(n[k].float().cpu())
        if m.numel():
            ranks.append(reciprocal_ranks(p[batch.mrr_rows], m))
    out = {"pos": torch.cat(pos), **{k: torch.cat(v) for k, v in negs.items()}}
    out["mrr"] = torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.float64)
    return out


@torch.no_grad()
def test_table(model: nn.Module, split: TemporalSplit, batch_size: int = 200, mrr_events: int = 200,
               mrr_k: int = 100) -> tuple[dict[str, float], dict[str, Tensor]]:
    """The test table: ``{"<setting>_<strategy>_ap" | "_auc", "<setting>_mrr", "<setting>_events"}`` for
    settings ``transductive`` (the test split) and ``inductive`` (its events touching a new node), and
    the transductive pass's scores (for the scores-over-time plot). ``model`` reads the whole stream."""
    was = model.training
    model.eval()
    ctx = on_device(split.stream, next((p.device for p in model.parameters()), split.stream.device))
    table, scores = {}, {}
    try:
        for setting, name in (("transductive", "test"), ("inductive", "new_node_test")):
            events = evaluation_set(split, name, STRATEGIES, mrr_events, mrr_k)
            table[f"{setting}_events"] = float(len(events))
            if len(events) == 0:
                continue
            out = run_pass(model, events, ctx, batch_size)
            for s in STRATEGIES:
                for k, v in link_prediction_metrics(out["pos"], out[s]).items():
                    table[f"{setting}_{s}_{k}"] = v
            table[f"{setting}_mrr"] = float(out["mrr"].mean()) if out["mrr"].numel() else float("nan")
            if setting == "transductive":
                scores = {"t": split.stream.t[events.event_ids].double(), **out}
    finally:
        model.train(was)
    return table, scores


class EdgeBankPredictor(TemporalLinkPredictor):
    """EdgeBank behind the link-predictor contract, for :func:`test_table`: logit 1 for a remembered edge,
    0 otherwise; ``observe`` remembers a batch (DyGLib: every event before the current batch)."""

    def __init__(self, num_nodes: int, mode: str = "unlimited", window: float | None = None) -> None:
        super().__init__()
        self.args = (num_nodes, mode, window)
        self.bank = EdgeBank(*self.args)

    def forward(self, src: Tensor, dst: Tensor, t: Tensor, ctx: TemporalContext) -> Tensor:
        return self.bank.predict(src, dst, t)

    def observe(self, src, dst, t, edge_ids, ctx) -> None:
        self.bank.update(ctx.stream.select(edge_ids.sort().values))

    def reset_state(self) -> None:
        self.bank = EdgeBank(*self.args)


def evaluate_edgebank(dataset: str = "uci", mode: str = "unlimited", window: float | None = None,
                      prefix: int | None = None, batch_size: int = 200, mrr_events: int = 200) -> dict[str, float]:
    """EdgeBank's test table (:func:`test_table`) on ``dataset`` (its first ``prefix`` events), split as
    the task splits it; ``window`` for ``mode="time_window"`` (the paper: the test split's span)."""
    recipe = TemporalRecipe(data=TemporalDataSection(dataset=dataset, prefix=prefix, test_mrr_events=mrr_events))
    recipe.validate()
    split = _split(recipe.data)
    return test_table(EdgeBankPredictor(split.stream.num_nodes, mode, window), split, batch_size, mrr_events)[0]


def _split(d: TemporalDataSection) -> TemporalSplit:
    try:
        stream = load_temporal(d.dataset, bipartite=d.bipartite)
    except ValueError as e:
        raise RecipeError(f"data.dataset: {e}") from None
    if d.prefix is not None:
        stream = stream[: d.prefix]
    return chronological_split(stream, d.val_ratio, d.test_ratio, d.new_node_ratio)


# ---------------------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------------------
@register_task("temporal_link")
class TemporalLinkTask(TaskBase):
    """Temporal link prediction (see the module)."""

    recipe_type = TemporalRecipe
    main_metric, mode = "ap", "max"
    log_names = ("ap",)
    metric_names = ("ap", "auc", "mrr", "events")
    shuffle_train = False  # the engine keeps the training events in time order

    def __init__(self, recipe: TemporalRecipe) -> None:
        super().__init__(recipe)
        recipe.validate()
        d = recipe.data
        self.split = _split(d)
        if not bool(self.split.train.any()):
            raise RecipeError(f"data.prefix = {d.prefix}: no training events are left after the split")
        train = self.split.events("train")
        self.train_ctx = TemporalContext(train, TemporalNeighborSampler(train))
        self.eval_ctx = TemporalContext(self.split.stream, TemporalNeighborSampler(self.split.stream))
        self.train_destinations = torch.unique(train.dst)
        self._contexts: dict[tuple[str, str], TemporalContext] = {}
        self._val_name = "val" if d.setting == "transductive" else "new_node_val"
        self._val: EventSet | None = None
        self._scores: dict[str, list] = {"pos": [], "neg": [], "mrr": []}

    def context(self, which: str, device: torch.device) -> TemporalContext:
        """The ``"train"`` or ``"eval"`` context on ``device`` (built there once)."""
        key = (which, str(device))
        if key not in self._contexts:
            base = self.train_ctx if which == "train" else self.eval_ctx
            self._contexts[key] = base if base.stream.device == device else on_device(base.stream, device)
        return self._contexts[key]

    @property
    def eval_description(self) -> str:
        d = self.recipe.data
        return (f"the {len(self.eval_dataset()):,} {self._val_name} events of {d.dataset} ({d.setting}) against "
                f"fixed random negatives (AP, AUC), MRR against {mrr_sets_size(self.split.stream, d.mrr_negatives)} "
                "destinations on "
                f"{min(d.mrr_events, len(self.eval_dataset()))} evenly spaced of them")

    def build_model(self) -> nn.Module:
        s, d = self.split.stream, self.recipe.data
        facts = dict(num_nodes=s.num_nodes, node_feature_dim=0 if s.node_features is None else s.node_features.shape[1],
                     edge_feature_dim=0 if s.edge_features is None else s.edge_features.shape[1])
        if d.neighbors is not None:
            facts["num_neighbors"] = d.neighbors
        return fill_model_options(self.recipe.model, **facts).build()

    def train_dataset(self) -> EventSet:
        return EventSet(self.train_ctx.stream, torch.arange(len(self.train_ctx.stream)))

    def eval_dataset(self) -> EventSet:
        if self._val is None:
            d = self.recipe.data
            self._val = evaluation_set(self.split, self._val_name, ("random",), d.mrr_events, d.mrr_negatives)
            if len(self._val) == 0:
                raise RecipeError(f"data.setting = {d.setting!r}: the {self._val_name} split has no events")
        return self._val

    def collate(self, batch: EventBatch) -> EventBatch:
        return batch

    def batch_size_of(self, batch: EventBatch) -> int:
        return len(batch)

    def augment(self, batch: EventBatch, generator: torch.Generator) -> EventBatch:
        """One random negative destination per positive, uniform over the training destinations."""
        pick = torch.randint(self.train_destinations.numel(), (len(batch),), generator=generator)
        return replace(batch, negatives={"random": (batch.src, self.train_destinations[pick])})

    def loss(self, model: nn.Module, batch: EventBatch) -> tuple[Tensor, dict[str, Tensor]]:
        ctx = self.context("train", batch.src.device)
        if batch.first:
            start_pass(model, ctx, 0, len(batch))
        pos, neg, _ = score_batch(model, batch, ctx)
        logits = torch.cat([pos, neg["random"]]).float()
        labels = torch.cat([torch.ones_like(pos), torch.zeros_like(neg["random"])]).float()
        ap = link_prediction_metrics(pos.detach(), neg["random"].detach())["ap"]
        return F.binary_cross_entropy_with_logits(logits, labels), {"ap": torch.tensor(ap)}

    def eval_step(self, model: nn.Module, batch: EventBatch) -> dict[str, Tensor]:
        ctx = self.context("eval", batch.src.device)
        if batch.first:
            start_pass(model, ctx, int(batch.event_ids[0]), len(batch))
        pos, neg, mrr_logits = score_batch(model, batch, ctx)
        self._scores["pos"].append(pos.float().cpu())
        self._scores["neg"].append(neg["random"].float().cpu())
        if mrr_logits.numel():
            self._scores["mrr"].append(reciprocal_ranks(pos[batch.mrr_rows], mrr_logits))
        return {"events": torch.tensor(float(len(batch)))}

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        parts = {k: gather_objects(v) for k, v in self._scores.items()}
        self._scores = {k: [] for k in self._scores}
        out = link_prediction_metrics(torch.cat(parts["pos"]), torch.cat(parts["neg"]))
        out["mrr"] = float(torch.cat(parts["mrr"]).mean()) if parts["mrr"] else float("nan")
        return {**out, "events": sums["events"]}

    def report_figures(self, model: nn.Module, run_dir: Path) -> list[tuple[str, Path]]:
        """The test table of the best checkpoint (``plots/test_table.md``, ``plots/test_metrics.json`` and a
        picture of it), the val curves per epoch and the test scores over time."""
        from ..train.checkpoint import load_weights

        best = _unwrap(model)
        if (run_dir / "checkpoints" / "best").is_dir():
            best = self.build_model().to(next(iter(model.parameters())).device)
            load_weights(run_dir, best)
        d = self.recipe.data
        table, scores = test_table(best, self.split, self.recipe.eval_batch_size, d.test_mrr_events, d.mrr_negatives)
        plots = run_dir / "plots"
        plots.mkdir(parents=True, exist_ok=True)
        title = f"{self.recipe.model.name} on {d.dataset}, best val checkpoint"
        atomic_write_text(plots / "test_metrics.json", json.dumps(table, indent=1))
        markdown, picture = table_markdown(table, title, d.test_mrr_events, mrr_sets_size(self.split.stream, d.mrr_negatives),
                                           plots / "test_table.png")
        atomic_write_text(plots / "test_table.md", markdown)
        figures = [(f"Test table ({title}; also in plots/test_table.md)", picture)]
        if (run_dir / "metrics.csv").is_file():
            figures.append(("Val AP, AUC and MRR per epoch", validation_curves_plot(run_dir / "metrics.csv",
                                                                                 plots / "val_curves.png")))
        if scores:
            figures.append(("Scores on the test split over time (positives vs random negatives)",
                            scores_over_time_plot(scores, plots / "test_scores_over_time.png")))
        return figures
