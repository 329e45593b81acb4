"""Generic graph-level regression or classification from a list of graphs.

A graph is a PyG ``Data`` or a mapping with ``x`` (``(n, F)`` float or ``(n,)`` / ``(n, F)``
long categories), ``edge_index (2, e)`` (local node ids), optional ``edge_attr`` and a target
``y`` (a float per graph or a row of floats for regression, a class index for classification).
From Python: ``GraphTask(recipe, train=graphs, eval=graphs)``; from a recipe YAML,
``data.train`` / ``data.eval`` name files that ``torch.save`` wrote holding a list of such
mappings (for PyG: ``torch.save([g.to_dict() for g in graphs], path)``), read with
``torch.load(weights_only=True)``. The model's input and output sizes (``node_in_dim`` /
``node_types``, ``edge_in_dim`` / ``edge_types``, ``num_outputs``) are filled in from the data
unless ``model.options`` sets them.

Losses: regression ``l1`` (reported: ``mae``, ``mse``) or ``mse``; classification cross-entropy
(reported: ``accuracy``, ``loss``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..data.graph import GraphBatch
from ..train.recipe import ModelSection, Recipe, RecipeError
from .base import TaskBase
from .classification import fill_model_options
from .registry import register_task
from .splits import EvalSplits

__all__ = ["GraphTask", "GraphRecipe", "GraphDataSection", "GraphList", "graph_dict"]


@dataclass
class GraphDataSection:
    """``train`` / ``eval``: files of graph lists (see the module; None: given from Python);
    ``target``: ``"regression"`` or ``"classification"``; ``num_classes``: None = the largest
    label + 1; ``loss``: ``"l1"`` or ``"mse"`` (regression)."""

    train: str | None = None
    eval: str | None = None
    target: Literal["regression", "classification"] = "regression"
    num_classes: int | None = None
    loss: Literal["l1", "mse"] = "l1"


@dataclass
class GraphRecipe(Recipe):
    task: Literal["graph"] = "graph"
    model: ModelSection = field(default_factory=lambda: ModelSection("gps_micro"))
    data: GraphDataSection = field(default_factory=GraphDataSection)

    def validate(self) -> None:
        super().validate()
        if self.data.num_classes is not None and self.data.num_classes < 2:
            raise RecipeError(f"data.num_classes must be >= 2 or null, got {self.data.num_classes}")


def graph_dict(graph: Any, index: int = 0) -> Mapping[str, Any]:
    """A PyG ``Data`` or a mapping as a mapping with ``x`` and ``edge_index``."""
    if hasattr(graph, "to_dict") and hasattr(graph, "edge_index"):
        graph = graph.to_dict()
    if not isinstance(graph, Mapping) or "x" not in graph or "edge_index" not in graph:
        raise TypeError(f"graphs[{index}] must be a PyG Data or a mapping with x and edge_index, "
                        f"got {type(graph).__name__}")
    if graph.get("y") is None:
        raise ValueError(f"graphs[{index}] has no target y")
    return graph


class GraphList(Dataset):
    """A list of graphs; ``__getitems__`` packs a batch into one :class:`GraphBatch`."""

    def __init__(self, graphs: Sequence[Any]) -> None:
        if len(graphs) == 0:
            raise ValueError("the list of graphs is empty")
        self.graphs = [graph_dict(g, i) for i, g in enumerate(graphs)]

    def __len__(self) -> int:
        return len(self.graphs)

    def __getitems__(self, indices: Sequence[int]) -> GraphBatch:
        return GraphBatch.from_list([self.graphs[i] for i in indices])


def _read_graphs(path: str, key: str) -> list:
    try:
        graphs = torch.load(path, weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"data.{key}: no such file {path}") from None
    except Exception as e:  # not a torch file, or one holding more than tensors and containers
        raise ValueError(f"data.{key}: {path} is not a torch.save'd list of graph dicts ({e})") from None
    if not isinstance(graphs, list):
        raise ValueError(f"data.{key}: {path} holds a {type(graphs).__name__}, not a list of graph dicts")
    return graphs


@register_task("graph")
class GraphTask(TaskBase):
    """Graph-level regression or classification from a list of graphs (see the module).

    Subclasses bring other data through :meth:`build_splits` (the training set and the named eval
    splits, each a dataset whose ``__getitems__`` packs a :class:`GraphBatch`) and
    :meth:`graph_target`: the built-in ZINC task is one (:mod:`relformer.tasks.graph_regression`).
    With several eval splits every metric is prefixed by its split (``val_mae``, ``test_mae``) and the
    first split's picks the best checkpoint."""

    recipe_type = GraphRecipe
    eval_splits: tuple[str, ...] = ("eval",)
    target_name = "target"

    def __init__(self, recipe: GraphRecipe, *, train: Sequence[Any] | None = None,
                 eval: Sequence[Any] | None = None) -> None:
        super().__init__(recipe)
        self._given = (train, eval)
        self._splits: tuple[Dataset, EvalSplits] | None = None
        self._num_classes: int | None = None
        target, _, _ = self.graph_target()
        self.classify = target == "classification"
        names = ("accuracy", "loss", "graphs") if self.classify else ("mae", "mse", "graphs")
        prefixes = [("" if len(self.eval_splits) == 1 else f"{split}_") for split in self.eval_splits]
        self.metric_names = tuple(p + m for p in prefixes for m in names)
        self.main_metric, self.mode = prefixes[0] + names[0], ("max" if self.classify else "min")
        self.log_names = (names[0],)
        if type(self).build_splits is GraphTask.build_splits:
            self.splits()  # from Python or files: read now, so bad graphs fail at construction

    # -- data -------------------------------------------------------------------------------------
    def graph_target(self) -> tuple[str, str, int | None]:
        """``(target, loss, num_classes)``: ``"regression"`` / ``"classification"``, ``"l1"`` /
        ``"mse"``, the class count (None: the largest label + 1)."""
        d = self.recipe.data
        return d.target, d.loss, d.num_classes

    def build_splits(self) -> tuple[Dataset, dict[str, Dataset]]:
        """The training set and the eval splits named by ``eval_splits`` (here: the given graphs)."""
        d = self.recipe.data
        train, eval = self._given
        train = train if train is not None else (_read_graphs(d.train, "train") if d.train else None)
        eval = eval if eval is not None else (_read_graphs(d.eval, "eval") if d.eval else None)
        if train is None or eval is None:
            raise RecipeError("data.train / data.eval: give graph-list files, or train= and eval= graphs from Python")
        return GraphList(train), {"eval": GraphList(eval)}

    def splits(self) -> tuple[Dataset, EvalSplits]:
        if self._splits is None:
            train, evals = self.build_splits()
            self._splits = train, EvalSplits({name: evals[name] for name in self.eval_splits})
        return self._splits

    @property
    def train_set(self) -> Dataset:
        return self.splits()[0]

    @property
    def eval_set(self) -> Dataset:
        return self.splits()[1].splits[self.eval_splits[-1]]

    @property
    def num_classes(self) -> int | None:
        if not self.classify:
            return None
        if self._num_classes is None:
            train, evals = self.splits()
            graphs = [g for part in (train, *evals.splits.values()) for g in part.graphs]
            self._num_classes = self.graph_target()[2] or max(int(torch.as_tensor(g["y"]).reshape(-1)[0])
                                                              for g in graphs) + 1
        return self._num_classes

    @property
    def eval_description(self) -> str:
        return f"the {len(self.eval_set):,} eval graphs ({self.graph_target()[0]})"

    def build_model(self) -> nn.Module:
        g = self.train_set.graphs[0]
        x, edge_attr = torch.as_tensor(g["x"]), g.get("edge_attr")
        facts: dict[str, int] = {"num_outputs": self.num_classes or int(torch.as_tensor(g["y"]).reshape(-1).numel())}
        if x.is_floating_point():
            facts.update(node_types=0, node_in_dim=x.shape[-1] if x.dim() == 2 else 1)
        else:
            facts.update(node_types=int(max(int(torch.as_tensor(h["x"]).max()) for h in self.train_set.graphs)) + 1,
                         node_in_dim=x.shape[-1] if x.dim() == 2 else 1)
        if edge_attr is None:
            facts.update(edge_types=0, edge_in_dim=0)
        elif torch.as_tensor(edge_attr).is_floating_point():
            facts.update(edge_types=0, edge_in_dim=torch.as_tensor(edge_attr).shape[-1])
        else:
            types = max(int(torch.as_tensor(h["edge_attr"]).max()) for h in self.train_set.graphs) + 1
            facts.update(edge_types=types, edge_in_dim=torch.as_tensor(edge_attr).shape[-1]
                         if torch.as_tensor(edge_attr).dim() == 2 else 1)
        return fill_model_options(self.recipe.model, **facts).build()

    def train_dataset(self) -> Dataset:
        return self.splits()[0]

    def eval_dataset(self) -> Dataset:
        return self.splits()[1]

    # -- steps ------------------------------------------------------------------------------------
    def _outputs(self, model: nn.Module, batch: GraphBatch) -> tuple[Tensor, Tensor]:
        out = model(batch)
        out = (out.logits if hasattr(out, "logits") else out).float()  # (G, num_outputs)
        if self.classify:
            return out, batch.y.long().reshape(-1)
        y = batch.y.float().reshape(len(out), -1)
        return out.reshape(y.shape), y

    def loss(self, model: nn.Module, batch: GraphBatch) -> tuple[Tensor, dict[str, Tensor]]:
        out, y = self._outputs(model, batch)
        if self.classify:
            return F.cross_entropy(out, y), {"accuracy": (out.argmax(-1) == y).float().mean().detach()}
        loss = F.l1_loss(out, y) if self.graph_target()[1] == "l1" else F.mse_loss(out, y)
        return loss, {"mae": F.l1_loss(out, y).detach()}

    def eval_step(self, model: nn.Module, batch: tuple) -> dict[str, Tensor]:
        sums = {}
        for split, part in zip(self.eval_splits, batch):
            zero = torch.zeros(())
            if part is None:
                sums.update({f"{split}:{k}": zero for k in ("count", "a", "b")})
                continue
            out, y = self._outputs(model, part)
            if self.classify:
                a, b = (out.argmax(-1) == y).sum().float(), F.cross_entropy(out, y, reduction="sum")
            else:
                err = out - y  # (G, T): the mean over targets, summed over graphs
                a, b = err.abs().mean(-1).sum(), (err ** 2).mean(-1).sum()
            sums.update({f"{split}:count": torch.tensor(float(part.num_graphs), device=out.device),
                         f"{split}:a": a, f"{split}:b": b})
        return sums

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        names = ("accuracy", "loss") if self.classify else ("mae", "mse")
        out = {}
        for split in self.eval_splits:
            prefix = self.splits()[1].prefix(split)
            n = sums[f"{split}:count"]
            out.update({prefix + names[0]: sums[f"{split}:a"] / max(n, 1), prefix + names[1]: sums[f"{split}:b"] / max(n, 1),
                        prefix + "graphs": n})
        return out

    def batch_size_of(self, batch) -> int:
        if isinstance(batch, tuple):
            return sum(part.num_graphs for part in batch if part is not None)
        return batch.num_graphs

    def report_figures(self, model: nn.Module, run_dir: Path) -> list[tuple[str, Path]]:
        """Regression: predicted vs true on the last eval split (none for classification)."""
        if self.classify:
            return []
        from matplotlib.figure import Figure  # optional, heavy: only when a report is written

        split = self.eval_splits[-1]
        data = self.splits()[1].splits[split]
        model.eval()
        preds, ys = [], []
        with torch.no_grad():
            for start in range(0, len(data), 1024):
                batch = data.__getitems__(list(range(start, min(start + 1024, len(data)))))
                pred, y = self._outputs(model, batch.to(next(model.parameters()).device))
                preds.append(pred[:, 0].cpu())
                ys.append(y[:, 0].cpu())
        pred, y = torch.cat(preds), torch.cat(ys)
        fig = Figure(figsize=(4.5, 4.5))
        ax = fig.add_subplot()
        ax.scatter(y, pred, s=4, alpha=0.5)
        lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
        ax.set(xlabel=f"true {self.target_name}", ylabel="predicted",
               title=f"{split}, MAE {float((pred - y).abs().mean()):.3f}")
        path = run_dir / "plots" / f"{split}_predictions.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        return [(f"Predicted vs true on the {split} split", path)]
