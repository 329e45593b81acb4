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
    """Graph-level regression or classification from a list of graphs (see the module)."""

    recipe_type = GraphRecipe

    def __init__(self, recipe: GraphRecipe, *, train: Sequence[Any] | None = None,
                 eval: Sequence[Any] | None = None) -> None:
        super().__init__(recipe)
        d = recipe.data
        train = train if train is not None else (_read_graphs(d.train, "train") if d.train else None)
        eval = eval if eval is not None else (_read_graphs(d.eval, "eval") if d.eval else None)
        if train is None or eval is None:
            raise RecipeError("data.train / data.eval: give graph-list files, or train= and eval= graphs from Python")
        self.train_set, self.eval_set = GraphList(train), GraphList(eval)
        self.classify = d.target == "classification"
        if self.classify:
            labels = [int(torch.as_tensor(g["y"]).reshape(-1)[0]) for g in self.train_set.graphs + self.eval_set.graphs]
            self.num_classes = d.num_classes or max(labels) + 1
            self.main_metric, self.mode, self.log_names = "accuracy", "max", ("accuracy",)
            self.metric_names = ("accuracy", "loss", "graphs")
        else:
            self.num_classes = None
            self.main_metric, self.mode, self.log_names = "mae", "min", ("mae",)
            self.metric_names = ("mae", "mse", "graphs")

    @property
    def eval_description(self) -> str:
        return f"the {len(self.eval_set):,} eval graphs ({self.recipe.data.target})"

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
        return self.train_set

    def eval_dataset(self) -> Dataset:
        return self.eval_set

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
        loss = F.l1_loss(out, y) if self.recipe.data.loss == "l1" else F.mse_loss(out, y)
        return loss, {"mae": F.l1_loss(out, y).detach()}

    def eval_step(self, model: nn.Module, batch: GraphBatch) -> dict[str, Tensor]:
        out, y = self._outputs(model, batch)
        count = torch.tensor(float(batch.num_graphs), device=out.device)
        if self.classify:
            return {"count": count, "correct": (out.argmax(-1) == y).sum(),
                    "loss_sum": F.cross_entropy(out, y, reduction="sum")}
        err = out - y  # (G, T): the mean over targets, summed over graphs
        return {"count": count, "abs": err.abs().mean(-1).sum(), "sq": (err ** 2).mean(-1).sum()}

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        n = sums["count"]
        if self.classify:
            return {"accuracy": sums["correct"] / n, "loss": sums["loss_sum"] / n, "graphs": n}
        return {"mae": sums["abs"] / n, "mse": sums["sq"] / n, "graphs": n}

    def batch_size_of(self, batch: GraphBatch) -> int:
        return batch.num_graphs
