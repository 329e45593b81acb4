"""The temporal link-prediction recipes (:mod:`.temporal`): DyGFormer with DyGLib's settings, and
Todyformer and PyG's TGN with the same data, schedule and budgets, on UCI, hospital and MovieLens."""
from __future__ import annotations

from ..train.recipe import ModelSection
from .registry import register_recipe
from .temporal import TemporalDataSection, TemporalRecipe

def _dygformer(name: str, dataset: str, max_minutes: float, model_name: str = "dygformer", neighbors: int | None = None,
               **model) -> TemporalRecipe:
    data = TemporalDataSection(dataset=dataset)
    if neighbors is not None:
        data.neighbors = neighbors
    return TemporalRecipe(name=name, model=ModelSection(model_name, dict(model)), data=data, max_minutes=max_minutes,
                          log_every=20)


@register_recipe("dygformer-uci")
def dygformer_uci() -> TemporalRecipe:
    """DyGFormer on UCI messages with DyGLib's settings (the node + 31 neighbours, patch 1, Adam 1e-4,
    batch 200) under a 22-minute training budget, so the final evaluation and test table end within 30."""
    return _dygformer("dygformer-uci", "uci", 22)


@register_recipe("dygformer-hospital")
def dygformer_hospital() -> TemporalRecipe:
    """DyGFormer on the SocioPatterns hospital contacts with DyGLib's settings for its contact network
    (dropout 0), 22 minutes of training."""
    return _dygformer("dygformer-hospital", "hospital", 22, dropout=0.0)


@register_recipe("dygformer-movielens")
def dygformer_movielens() -> TemporalRecipe:
    """DyGFormer on the bipartite MovieLens ratings stream (the rating as edge feature), 17 minutes of
    training: its large val and test splits take the rest of the 30."""
    return _dygformer("dygformer-movielens", "movielens", 17)


# The same data, schedule and budgets for Todyformer and for PyG's TGN (the peer), so the study compares
# models, not set-ups. Todyformer reads 32 sampled neighbours (its patches cut them in time), TGN the
# 10 most recent of its example.
_BUDGETS = {"uci": 22, "hospital": 22, "movielens": 17}


def _register_peer_recipes(model_name: str, prefix: str, neighbors: int, what: str) -> None:
    for dataset, minutes in _BUDGETS.items():
        def recipe(dataset=dataset, minutes=minutes) -> TemporalRecipe:
            return _dygformer(f"{prefix}-{dataset}", dataset, minutes, model_name=model_name, neighbors=neighbors)

        recipe.__doc__ = (f"{what} on {dataset} with the DyGFormer recipes' data, schedule and budget "
                          f"({minutes} minutes of training, {neighbors} sampled neighbours).")
        register_recipe(f"{prefix}-{dataset}")(recipe)


_register_peer_recipes("todyformer", "todyformer", 32, "Todyformer (patches of each history, per-patch GINE tokens, "
                       "a transformer across patches)")
_register_peer_recipes("pyg_tgn", "tgn", 10, "PyG's TGN (TGNMemory + the example's TransformerConv embedding)")

