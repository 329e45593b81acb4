"""Convert PyTorch Geometric layers into their relformer equivalents.

``from_pyg(module)`` takes a PyG ``GPSConv`` whose local model is a ``GINEConv`` (or None) and
whose global attention is ``multihead`` (``nn.MultiheadAttention``), and returns a
:class:`~relformer.models.graph.GPSLayer` with copies of its weights and buffers, called exactly
like the PyG layer, ``layer(x, edge_index, batch, edge_attr=...)``, with the same output in
training and evaluation mode. Where PyG pads every graph to the largest one
(``to_dense_batch``) and masks the padding, the relformer layer places whole graphs into rows
and masks between them. Supported norms: ``"batch_norm"`` (the default), PyG's ``LayerNorm`` in
``mode="node"``, torch's ``LayerNorm``, and None.

``to_pyg(layer)`` goes the other way: a relformer :class:`~relformer.models.graph.GPSLayer` (or
:class:`~relformer.models.graph.GINE`) becomes the PyG layer with the same weights. It builds the
PyG baseline of the ZINC benchmark, registered here as the model variants ``pyg_gps_zinc`` and
``pyg_gps_micro`` (:class:`PyGGPS`): the GPS model of ``gps_zinc`` / ``gps_micro``, built the same way
(so a seed gives both the same initial weights), with its layers converted to PyG's ``GPSConv``.
A model config never names another library; importing this module registers the baseline.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from ..data.graph import GraphBatch
from ..models.graph import GINE, GPS, NORM_LAYERS, GPSConfig, GPSLayer, gps_micro, gps_zinc
from ..models.registry import builds, register_model
from ..nn import Linear

__all__ = ["from_pyg", "to_pyg", "PyGGPSConfig", "PyGGPS"]


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise NotImplementedError(f"from_pyg: {what}")


def _linear(src: nn.Module) -> Linear:
    """A relformer :class:`~relformer.nn.Linear` (what :class:`GINE` builds itself) with the weights of a
    torch or PyG ``Linear``."""
    out = Linear(src.in_channels if hasattr(src, "in_channels") else src.in_features,
                    src.out_channels if hasattr(src, "out_channels") else src.out_features,
                    bias=src.bias is not None)
    out.load_state_dict(src.state_dict())
    return out


def _gine(conv) -> GINE:
    from torch_geometric.nn import GINEConv

    _require(isinstance(conv, GINEConv), f"local model {type(conv).__name__} (only GINEConv is supported)")
    _require(getattr(conv, "aggr", "add") in ("add", "sum"), f"GINEConv aggr={conv.aggr!r} (only 'add')")
    _require(conv.flow == "source_to_target", f"GINEConv flow={conv.flow!r}")
    gine = GINE(getattr(conv.lin, "out_channels", 1), mlp=copy.deepcopy(conv.nn), eps=float(conv.eps.detach()),
                train_eps=isinstance(conv.eps, nn.Parameter))
    if conv.lin is not None:
        gine.lin = _linear(conv.lin)
    return gine.to(conv.eps.device)


def _norm(norm: nn.Module | None, dim: int) -> tuple[str, nn.Module | None]:
    """PyG's norm module -> (its :data:`~relformer.models.graph.NORM_LAYERS` name, the torch module
    whose state to copy)."""
    from torch_geometric.nn.norm import BatchNorm, LayerNorm

    if norm is None:
        return "none", None
    if isinstance(norm, BatchNorm):
        _require(not norm.allow_single_element, "BatchNorm(allow_single_element=True)")
        bn = norm.module
        _require(bn.affine and bn.track_running_stats, "BatchNorm without affine parameters or running statistics")
        return "batch", bn
    if isinstance(norm, LayerNorm):
        _require(norm.mode == "node", f"PyG LayerNorm(mode={norm.mode!r}) (only mode='node': per-node LayerNorm)")
        _require(norm.affine, "LayerNorm without affine parameters")
        return "layer", norm
    if isinstance(norm, nn.LayerNorm):
        _require(norm.normalized_shape == (dim,) and norm.elementwise_affine, "LayerNorm over other dims")
        return "layer", norm
    raise NotImplementedError(f"from_pyg: norm {type(norm).__name__} (supported: batch_norm, layer_norm "
                              "in node mode, None)")


def _copy_norm(dst: nn.Module, src: nn.Module | None, kind: str) -> None:
    if kind == "batch":
        dst.load_state_dict(src.state_dict())
        dst.momentum, dst.eps = src.momentum, src.eps
    elif kind == "layer":
        dst.weight.data.copy_(src.weight.detach())
        dst.bias.data.copy_(src.bias.detach())
        dst.eps = src.eps


def _gps(module) -> GPSLayer:
    attn = module.attn
    _require(module.attn_type == "multihead" and isinstance(attn, nn.MultiheadAttention),
             f"attn_type={module.attn_type!r} (only 'multihead')")
    _require(attn._qkv_same_embed_dim and attn.in_proj_bias is not None and attn.bias_k is None
             and not attn.add_zero_attn and attn.batch_first,
             "MultiheadAttention with separate q/k/v widths, no bias, add_bias_kv or add_zero_attn")
    C = module.channels
    mlp = module.mlp
    _require(isinstance(mlp, nn.Sequential) and len(mlp) == 5 and mlp[0].weight.shape == (2 * C, C),
             "GPSConv.mlp is not Linear(C, 2C), act, Dropout, Linear(2C, C), Dropout")
    kinds = [_norm(n, C) for n in (module.norm1, module.norm2, module.norm3)]
    local = _gine(module.conv) if module.conv is not None else None
    layer = GPSLayer(C, module.heads, local, dropout=float(module.dropout), attn_dropout=float(attn.dropout),
                     norm_layer=NORM_LAYERS[kinds[0][0]], act=nn.ReLU)
    layer.mlp.act = copy.deepcopy(mlp[1])
    with torch.no_grad():
        layer.attn.qkv.weight.copy_(attn.in_proj_weight)  # [q; k; v], the same layout
        layer.attn.qkv.bias.copy_(attn.in_proj_bias)
        layer.attn.proj.weight.copy_(attn.out_proj.weight)
        layer.attn.proj.bias.copy_(attn.out_proj.bias)
        layer.mlp.fc1.load_state_dict(mlp[0].state_dict())
        layer.mlp.fc2.load_state_dict(mlp[3].state_dict())
    for dst, (kind, src) in zip((layer.norm1, layer.norm2, layer.norm3), kinds):
        _require(kind == kinds[0][0], "GPSConv with different norm types")
        _copy_norm(dst, src, kind)
    return layer.to(attn.in_proj_weight.device).train(module.training)


def from_pyg(module: nn.Module) -> nn.Module:
    """The relformer equivalent of a PyG module (weights copied; the PyG module is left as it is).

    Supported: ``GPSConv`` (local ``GINEConv`` or None, ``attn_type="multihead"``) ->
    :class:`~relformer.models.graph.GPSLayer`; ``GINEConv`` -> :class:`~relformer.models.graph.GINE`.
    Anything else raises ``NotImplementedError`` naming what is not supported.
    """
    from torch_geometric.nn import GINEConv, GPSConv

    if isinstance(module, GPSConv):
        return _gps(module)
    if isinstance(module, GINEConv):
        return _gine(module).train(module.training)
    raise NotImplementedError(f"from_pyg: {type(module).__name__} (supported: GPSConv, GINEConv)")


def _to_pyg_gine(gine: GINE):
    """A ``GINEConv`` with ``gine``'s weights (PyG's constructors re-initialise their submodules, so
    :func:`_copy_gine` runs again once the conv sits inside its ``GPSConv``)."""
    from torch_geometric.nn import GINEConv

    conv = GINEConv(copy.deepcopy(gine.mlp), eps=float(gine.eps.detach()), train_eps=isinstance(gine.eps, nn.Parameter),
                    edge_dim=gine.lin.in_features if gine.lin is not None else None)
    return _copy_gine(conv, gine).to(gine.eps.device).train(gine.training)


def _copy_gine(conv, gine: GINE):
    conv.nn.load_state_dict(gine.mlp.state_dict())
    if gine.lin is not None:
        conv.lin.load_state_dict(gine.lin.state_dict())
    with torch.no_grad():
        conv.eps.copy_(gine.eps)
    return conv


def _to_pyg_gps(layer: GPSLayer):
    from torch_geometric.nn import GPSConv

    attn = layer.attn
    C = attn.qkv.in_features
    _require(isinstance(layer.norm1, nn.BatchNorm1d), f"to_pyg: GPSLayer norm {type(layer.norm1).__name__} "
             "(only BatchNorm)")
    _require(attn.qkv.bias is not None and attn.num_kv_heads == attn.num_heads and attn.rope is None,
             "to_pyg: attention without biases, with grouped keys or with RoPE")
    local = _to_pyg_gine(layer.local) if layer.local is not None else None
    conv = GPSConv(C, local, heads=attn.num_heads, dropout=layer.drop.p, act="relu", norm="batch_norm",
                   attn_kwargs={"dropout": attn.attn_dropout})
    if local is not None:
        _copy_gine(conv.conv, layer.local)
    _require(type(layer.mlp.act) is nn.ReLU, "to_pyg: GPSLayer MLP activation other than ReLU")
    with torch.no_grad():
        conv.attn.in_proj_weight.copy_(attn.qkv.weight)
        conv.attn.in_proj_bias.copy_(attn.qkv.bias)
        conv.attn.out_proj.weight.copy_(attn.proj.weight)
        conv.attn.out_proj.bias.copy_(attn.proj.bias)
    conv.mlp[0].load_state_dict(layer.mlp.fc1.state_dict())
    conv.mlp[3].load_state_dict(layer.mlp.fc2.state_dict())
    for dst, src in zip((conv.norm1, conv.norm2, conv.norm3), (layer.norm1, layer.norm2, layer.norm3)):
        dst.module.load_state_dict(src.state_dict())
        dst.module.momentum, dst.module.eps = src.momentum, src.eps
    return conv.to(attn.qkv.weight.device).train(layer.training)


def to_pyg(module: nn.Module) -> nn.Module:
    """The PyG equivalent of a relformer module (weights copied): :class:`GPSLayer` with BatchNorm ->
    ``GPSConv`` (``attn_type="multihead"``, local ``GINEConv`` or None); :class:`GINE` -> ``GINEConv``.
    Anything else raises ``NotImplementedError``."""
    if isinstance(module, GPSLayer):
        return _to_pyg_gps(module)
    if isinstance(module, GINE):
        return _to_pyg_gine(module)
    raise NotImplementedError(f"to_pyg: {type(module).__name__} (supported: GPSLayer, GINE)")


# ---------------------------------------------------------------------------------------------
# The PyG baseline of the GPS model
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PyGGPSConfig(GPSConfig):
    """A :class:`~relformer.models.graph.GPSConfig` built as :class:`PyGGPS` (PyG's ``GPSConv`` layers,
    padded per batch; needs ``torch_geometric``). ``norm`` must be ``"batch"``: the one norm that
    :func:`to_pyg` converts."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.norm != "batch":
            raise ValueError(f"PyGGPSConfig.norm must be 'batch' (PyG GPSConv's BatchNorm), got {self.norm!r}")

    @classmethod
    def of(cls, config: GPSConfig) -> "PyGGPSConfig":
        """The PyG baseline of a GPS config (the same fields)."""
        return cls(**{f.name: getattr(config, f.name) for f in fields(GPSConfig)})


@builds(PyGGPSConfig)
class PyGGPS(GPS):
    """The :class:`~relformer.models.graph.GPS` model with its layers converted to PyG ``GPSConv``
    (:func:`to_pyg`): built as the relformer model first, so a seed gives both the same initial
    weights; each layer is called the PyG way, ``layer(x, edge_index, batch, edge_attr=...)``."""

    def __init__(self, config: PyGGPSConfig) -> None:
        super().__init__(config)
        self.layers = nn.ModuleList(to_pyg(layer) for layer in self.layers)

    def _layers(self, h: Tensor, e: Tensor | None, graph: GraphBatch, row_len: int) -> Tensor:
        for layer in self.layers:
            h = layer(h, graph.edge_index, graph.batch, edge_attr=e)
        return h


@register_model
def pyg_gps_zinc() -> PyGGPSConfig:
    """The baseline of ``gps_zinc``: the same model and initial weights, with PyG's ``GPSConv`` layers."""
    return PyGGPSConfig.of(gps_zinc())


@register_model
def pyg_gps_micro() -> PyGGPSConfig:
    """The baseline of ``gps_micro`` (tests)."""
    return PyGGPSConfig.of(gps_micro())
