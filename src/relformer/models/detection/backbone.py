"""DETR's convolutional backbone (a ResNet, He et al. 2016, with DETR's frozen BatchNorm); its sine
positions of a feature map are :func:`relformer.nn.sine_positions` (re-exported here)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...nn.posenc import sine_positions

__all__ = ["FrozenBatchNorm2d", "ConvNorm", "conv_norm_parts", "conv_norm_act", "folded_conv", "inference_cached",
           "in_format", "is_channels_last", "prepacked_conv_act", "activate", "ResidualUnit", "ResNetBackbone",
           "sine_positions"]


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (all buffers), DETR's backbone norm:
    ``x * w / sqrt(var + eps) + (b - mean * w / sqrt(var + eps))``. ``x (B, C, H, W)``."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        for name, init in (("weight", torch.ones), ("bias", torch.zeros), ("running_mean", torch.zeros),
                           ("running_var", torch.ones)):
            self.register_buffer(name, init(num_features))

    def scale_shift(self) -> tuple[Tensor, Tensor]:
        """``(scale, shift)``, both ``(1, C, 1, 1)``: the norm is ``x * scale + shift``."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale[None, :, None, None], (self.bias - self.running_mean * scale)[None, :, None, None]

    def forward(self, x: Tensor) -> Tensor:
        scale, shift = self.scale_shift()
        return x * scale + shift


def conv_norm_parts(cin: int, cout: int, kernel: int = 3, stride: int = 1, norm: str = "batch",
                    act: bool | type[nn.Module] = True, eps: float = 1e-5,
                    padding: int | None = None) -> tuple[nn.Conv2d, nn.Module, nn.Module]:
    """The ``(conv, norm, act)`` of :class:`ConvNorm`: a bias-free ``k x k`` convolution (padding
    ``k // 2`` unless given), ``FrozenBatchNorm2d`` (``norm="frozen"``) or ``nn.BatchNorm2d``
    (``"batch"``) with ``eps``, and ``act``: ``True`` (ReLU), ``False`` (nothing) or a module class."""
    if norm not in ("batch", "frozen"):
        raise ValueError(f"norm must be 'batch' or 'frozen', got {norm!r}")
    conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2 if padding is None else padding, bias=False)
    bn = FrozenBatchNorm2d(cout, eps) if norm == "frozen" else nn.BatchNorm2d(cout, eps)
    if isinstance(act, bool):
        activation = nn.ReLU(inplace=True) if act else nn.Identity()
    else:
        activation = act()
    return conv, bn, activation


def _affine(norm: nn.Module) -> tuple[Tensor, Tensor] | None:
    """``(scale, shift)`` (each ``(1, C, 1, 1)``) of a norm that is a fixed affine map now: a
    :class:`FrozenBatchNorm2d`, or an ``nn.BatchNorm2d`` in eval mode with running statistics."""
    if isinstance(norm, FrozenBatchNorm2d):
        return norm.scale_shift()
    if isinstance(norm, nn.BatchNorm2d) and not norm.training and norm.running_var is not None and norm.affine:
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
        return scale[None, :, None, None], (norm.bias - norm.running_mean * scale)[None, :, None, None]
    return None


def _state_key(modules: tuple[nn.Module, ...]) -> tuple | None:
    """What the parameters and buffers of ``modules`` are now: storage, version counter, dtype and device of
    each, and the train / eval flags (None when a tensor keeps no version counter: an inference tensor)."""
    try:
        return tuple((t.data_ptr(), t._version, t.dtype, t.device) for m in modules
                     for t in (*m.parameters(), *m.buffers())) + tuple(s.training for m in modules for s in m.modules())
    except RuntimeError:
        return None


def inference_cached(store: nn.Module, name: str, compute, *sources: nn.Module, extra: tuple = ()):
    """``compute()``, kept on ``store`` while no gradient is recorded (inference) and recomputed when a
    parameter or buffer of ``sources`` (default: ``store``) changes (updated in place: a new version;
    replaced: a new storage) or one of them switches between train and eval; with gradients recorded,
    computed every call (the result must be part of the graph). For weights derived from parameters,
    such as norms folded into convolutions. ``extra``: more of the key (an input shape)."""
    if torch.is_grad_enabled():
        return compute()
    key = _state_key(sources or (store,))
    key = None if key is None else key + extra
    hit = store.__dict__.get(name)
    if key is not None and hit is not None and hit[0] == key:
        return hit[1]
    value = compute()
    if key is not None:
        store.__dict__[name] = (key, value)
    return value


def folded_conv(conv: nn.Conv2d, norm: nn.Module) -> tuple[Tensor, Tensor] | None:
    """``(weight, bias)`` of one convolution equal to ``norm(conv(x))`` when the norm is a fixed affine map
    now (a :class:`FrozenBatchNorm2d`, or an ``nn.BatchNorm2d`` in eval): ``W * s`` per output channel and
    ``shift + b * s``; else None."""
    folded = _affine(norm)
    if folded is None:
        return None
    scale, shift = folded[0].flatten(), folded[1].flatten()
    bias = shift if conv.bias is None else shift + conv.bias * scale
    return conv.weight * scale.view(-1, 1, 1, 1), bias


_INPLACE = {nn.ReLU: F.relu_, nn.SiLU: lambda y: F.silu(y, inplace=True)}


def activate(y: Tensor, act: nn.Module | None) -> Tensor:
    """``act(y)``; ReLU and SiLU work in place on ``y`` when no gradient flows through it (inference: no
    second activation-sized buffer)."""
    if act is None:
        return y
    inplace = _INPLACE.get(type(act))
    if inplace is not None and not (torch.is_grad_enabled() and y.requires_grad):
        return inplace(y)
    return act(y)


def in_format(folded: tuple[Tensor, Tensor] | None, channels_last: bool) -> tuple[Tensor, Tensor] | None:
    """A conv's ``(weight, bias)`` with the weight in channels-last memory when ``channels_last``."""
    if folded is None or not channels_last:
        return folded
    return folded[0].contiguous(memory_format=torch.channels_last), folded[1]


#: activations oneDNN's fused convolution applies itself (its names)
_ONEDNN_ACT = {type(None): "none", nn.Identity: "none", nn.ReLU: "relu", nn.SiLU: "swish"}
_onednn = {"usable": None}


def _onednn_usable() -> bool:
    if _onednn["usable"] is None:
        _onednn["usable"] = (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
                             and hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight"))
    return _onednn["usable"]


def is_channels_last(x: Tensor) -> bool:
    """Whether a 4-d ``x`` is laid out channels-last and not also contiguous (one channel, or 1 x 1 maps,
    are both: they carry no choice of format)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def prepacked_conv_act(x: Tensor, fold, conv: nn.Conv2d, act: nn.Module | None, store: nn.Module,
                       *sources: nn.Module) -> Tensor | None:
    """``act(conv2d(x, *fold()))`` by oneDNN with the weight of ``fold() -> (weight, bias) | None`` reordered
    once into its blocked layout (kept on ``store`` by :func:`inference_cached` for the state of ``sources``
    and the input shape; the unpacked weight is not kept) and the activation fused, as ``torch.compile``'s
    frozen CPU graphs run it; for fp32 channels-last CPU inputs in inference, else None (the caller runs
    ``F.conv2d``; also when ``fold()`` is None). Equal to ``F.conv2d`` to rounding (oneDNN runs both)."""
    attr = _ONEDNN_ACT.get(type(act))
    if (attr is None or torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != torch.float32
            or not is_channels_last(x) or conv.groups != 1 or isinstance(conv.padding, str) or not _onednn_usable()):
        return None
    args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)

    def pack():
        folded = fold()
        if folded is None:
            return None
        return torch._C._nn.mkldnn_reorder_conv2d_weight(folded[0].to_mkldnn(), *args, list(x.shape)), folded[1]

    try:  # one packed weight per store, for the last input shape
        packed = inference_cached(store, "_prepacked", pack, *sources, extra=tuple(x.shape))
        if packed is None:
            return None
        return torch.ops.mkldnn._convolution_pointwise(x, *packed, *args, attr, [], "")
    except (RuntimeError, NotImplementedError):  # a build without these kernels: plain convolutions from now on
        _onednn["usable"] = False
        return None


def conv_norm_act(x: Tensor, conv: nn.Conv2d, norm: nn.Module, act: nn.Module | None = None) -> Tensor:
    """``act(norm(conv(x)))`` (``act=None``: none). A norm that is a fixed affine map (frozen, or BatchNorm in
    eval) is folded into the convolution's weight and bias (:func:`folded_conv`): one pass, no activation-sized
    buffer of its own."""
    cl = not torch.is_grad_enabled() and is_channels_last(x)
    if cl:  # oneDNN's fused kernel on the folded weight, packed once (:func:`prepacked_conv_act`)
        fused = prepacked_conv_act(x, lambda: folded_conv(conv, norm), conv, act, conv, conv, norm)
        if fused is not None:
            return fused
    # otherwise the folded weights are kept (one fold per state of the weights), in the input's memory
    # format: a channels-last input with a contiguous weight makes oneDNN convert the weight every call
    folded = inference_cached(conv, "_folded_cl" if cl else "_folded", lambda: in_format(folded_conv(conv, norm), cl),
                              conv, norm)
    if folded is None:
        return activate(norm(conv(x)), act)
    return activate(F.conv2d(x, folded[0], folded[1], conv.stride, conv.padding, conv.dilation, conv.groups), act)


class ConvNorm(nn.Module):
    """``act(norm(conv(x)))``: a bias-free ``k x k`` convolution (padding ``k // 2``), a norm, ReLU,
    nothing or a given activation class (see :func:`conv_norm_parts`). ``norm``: ``"frozen"``
    (:class:`FrozenBatchNorm2d`) or ``"batch"`` (trainable). A frozen norm, or a BatchNorm in eval
    mode, is folded into the convolution (:func:`conv_norm_act`); the ReLU works in place."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, norm: str = "batch",
                 act: bool | type[nn.Module] = True, eps: float = 1e-5) -> None:
        super().__init__()
        self.conv, self.norm, self.act = conv_norm_parts(cin, cout, kernel, stride, norm, act, eps)

    def forward(self, x: Tensor) -> Tensor:
        return conv_norm_act(x, self.conv, self.norm, self.act)


class ResidualUnit(nn.Module):
    """ResNet's basic block (two 3x3 convs) or bottleneck (1x1 reduce by 4, 3x3, 1x1 expand), He et al.
    2016, with a projection shortcut when the shape changes. ``stride`` sits on the 3x3 conv of a
    bottleneck unless ``downsample_in_bottleneck`` (then on its first 1x1), as HF ``ResNet``."""

    def __init__(self, cin: int, cout: int, stride: int, kind: str, norm: str,
                 downsample_in_bottleneck: bool = False) -> None:
        super().__init__()
        self.shortcut = (ConvNorm(cin, cout, 1, stride, norm, act=False) if cin != cout or stride != 1
                         else nn.Identity())
        if kind == "basic":
            self.convs = nn.Sequential(ConvNorm(cin, cout, 3, stride, norm), ConvNorm(cout, cout, 3, 1, norm, act=False))
        else:
            mid, first = cout // 4, downsample_in_bottleneck
            self.convs = nn.Sequential(ConvNorm(cin, mid, 1, stride if first else 1, norm),
                                       ConvNorm(mid, mid, 3, 1 if first else stride, norm),
                                       ConvNorm(mid, cout, 1, 1, norm, act=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.convs(x).add_(self.shortcut(x)).relu_()


class ResNetBackbone(nn.Module):
    """ResNet feature extractor (He et al. 2016): 7x7 stride-2 stem + 3x3 stride-2 max pool, then
    ``len(widths)`` stages of residual units (stride 2 at the start of every stage but the first,
    unless ``downsample_first_stage``). ``x (B, C, H, W) -> (B, widths[-1], H / s, W / s)``,
    ``s = 4 * 2 ** (len(widths) - 1)`` (x2 with ``downsample_first_stage``)."""

    def __init__(self, in_channels: int, stem_channels: int, widths: tuple[int, ...], depths: tuple[int, ...],
                 kind: str = "basic", norm: str = "batch", downsample_first_stage: bool = False,
                 downsample_in_bottleneck: bool = False) -> None:
        super().__init__()
        self.stem = ConvNorm(in_channels, stem_channels, 7, 2, norm)
        self.pool = nn.MaxPool2d(3, 2, padding=1)
        stages, cin = [], stem_channels
        for i, (cout, depth) in enumerate(zip(widths, depths)):
            stride = 2 if (i > 0 or downsample_first_stage) else 1
            units = [ResidualUnit(cin if k == 0 else cout, cout, stride if k == 0 else 1, kind, norm,
                                  downsample_in_bottleneck) for k in range(depth)]
            stages.append(nn.Sequential(*units))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.out_channels = cin

    def forward(self, x: Tensor) -> Tensor:
        return self.stages(self.pool(self.stem(x)))
