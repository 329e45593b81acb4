"""GMFlow's parts (Xu et al. 2022, "GMFlow: Learning Optical Flow via Global Matching"): the CNN
trunk, the windowed self/cross transformer, the matching layers (global, along rows, local), flow
propagation by self-attention and the upsamplers. Every attention runs on :func:`relformer.attend`
(the transformer through :class:`relformer.nn.Attention`); the matching softmax is an attention
whose values are pixel coordinates (or offsets), so it runs there too.

Maps are ``(B, C, h, w)``; tokens ``(B, h*w, C)`` in row-major order; a flow is ``(B, 2, h, w)``
with ``(dx, dy)`` channels, a disparity ``(B, 1, h, w)`` with ``x0 - x1 >= 0``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...attention import Relation, attend
from ...nn import MLP, Attention, Linear, sine_positions
from ...relations import Causal, ShiftedWindowRegions

__all__ = ["ResidualBlock", "CNNEncoder", "WindowLayout", "GMFlowLayer", "GMFlowBlock", "FeatureTransformer",
           "window_positions", "global_matching", "row_matching", "local_matching", "FlowPropagation",
           "ConvexUpsampler", "upsample_bilinear", "warp", "coordinates"]


# ---------------------------------------------------------------------------------------------
# CNN trunk
# ---------------------------------------------------------------------------------------------
class ResidualBlock(nn.Module):
    """RAFT / GMFlow residual block: two 3x3 convs with instance norm and ReLU, a 1x1 projection
    shortcut when the shape changes. ``(B, cin, H, W) -> (B, cout, H / stride, W / stride)``."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.InstanceNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.InstanceNorm2d(cout), nn.ReLU(inplace=True))
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout
                         else nn.Sequential(nn.Conv2d(cin, cout, 1, stride), nn.InstanceNorm2d(cout)))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.shortcut(x) + self.convs(x))


class CNNEncoder(nn.Module):
    """GMFlow's feature CNN: 7x7 stride-2 stem, three stages of two residual blocks (widths
    ``widths``, strides 1, 2, 2) and a 1x1 projection to ``dim``: features at 1/8. With
    ``num_scales=2`` the last stage keeps 1/4 and one shared 3x3 convolution is applied with
    stride 2 and 1 (GMFlow's "trident" convolution): features at 1/8 and 1/4.
    ``(B, C, H, W) -> [(B, dim, H/8, W/8), (B, dim, H/4, W/4)?]``, coarse first."""

    def __init__(self, in_chans: int, widths: tuple[int, int, int], dim: int, num_scales: int = 1) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.stem = nn.Sequential(nn.Conv2d(in_chans, w1, 7, 2, 3, bias=False), nn.InstanceNorm2d(w1),
                                  nn.ReLU(inplace=True))
        self.stages = nn.Sequential(
            ResidualBlock(w1, w1), ResidualBlock(w1, w1),                       # 1/2
            ResidualBlock(w1, w2, 2), ResidualBlock(w2, w2),                    # 1/4
            ResidualBlock(w2, w3, 2 if num_scales == 1 else 1), ResidualBlock(w3, w3))  # 1/8 or 1/4
        self.proj = nn.Conv2d(w3, dim, 1)
        self.shared = nn.Conv2d(dim, dim, 3, padding=1) if num_scales > 1 else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.proj(self.stages(self.stem(x)))
        if self.shared is None:
            return [x]
        w, b = self.shared.weight, self.shared.bias
        return [F.conv2d(x, w, b, stride=2, padding=1), F.conv2d(x, w, b, stride=1, padding=1)]


# ---------------------------------------------------------------------------------------------
# Transformer: self-attention in (shifted) windows, cross-attention to the other image
# ---------------------------------------------------------------------------------------------
class WindowLayout:
    """How one attention cuts a ``grid = (h, w)`` map into ``window = (wh, ww)`` windows after
    Swin's cyclic shift ``roll(x, -shift)``; ``relation`` is the shifted-window region mask
    (:class:`~relformer.relations.ShiftedWindowRegions`), None without a shift. A window of the
    whole map is global attention, a window ``(1, w)`` attention along rows."""

    def __init__(self, grid: tuple[int, int], window: tuple[int, int], shift: tuple[int, int], device) -> None:
        self.grid, self.window, self.shift = tuple(grid), tuple(window), tuple(shift)
        self.relation = ShiftedWindowRegions(window, grid, shift).to(device) if any(shift) else None

    def split(self, x: Tensor) -> Tensor:
        """``(B, h*w, C) -> (B * nW, wh*ww, C)``, windows in row-major order."""
        B, _, C = x.shape
        (h, w), (wh, ww) = self.grid, self.window
        x = x.view(B, h, w, C)
        if any(self.shift):
            x = torch.roll(x, shifts=(-self.shift[0], -self.shift[1]), dims=(1, 2))
        x = x.view(B, h // wh, wh, w // ww, ww, C).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(-1, wh * ww, C)

    def merge(self, x: Tensor) -> Tensor:
        """The inverse of :meth:`split`: ``(B * nW, wh*ww, C) -> (B, h*w, C)``."""
        (h, w), (wh, ww) = self.grid, self.window
        C = x.shape[-1]
        x = x.view(-1, h // wh, w // ww, wh, ww, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, C)
        if any(self.shift):
            x = torch.roll(x, shifts=self.shift, dims=(1, 2))
        return x.reshape(-1, h * w, C)


class GMFlowLayer(nn.Module):
    """GMFlow's transformer layer (LoFTR's post-norm message form): ``m = LN(attn(x -> y))`` with
    bias-free projections; with a feed-forward ``m = LN(MLP([x, m]))``; output ``x + m``.
    Self-attention when ``cross=False`` (``y = x``). ``(B, h*w, C) -> (B, h*w, C)``."""

    def __init__(self, dim: int, num_heads: int, cross: bool, ffn_expansion: int | None,
                 backend: str = "auto") -> None:
        super().__init__()
        self.cross = cross
        self.attn = Attention(dim, num_heads, qkv_bias=False, proj_bias=False, backend=backend, cross=cross)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = MLP(2 * dim, 2 * dim * ffn_expansion, dim, bias=False) if ffn_expansion else None
        self.norm2 = nn.LayerNorm(dim) if ffn_expansion else None

    def forward(self, x: Tensor, layout: WindowLayout, y: Tensor | None = None) -> Tensor:
        windows = layout.split(x)
        context = layout.split(y) if self.cross else None
        message = self.norm1(layout.merge(self.attn(windows, layout.relation, context=context)))
        if self.mlp is not None:
            message = self.norm2(self.mlp(torch.cat([x, message], dim=-1)))
        return x + message


class GMFlowBlock(nn.Module):
    """Self-attention (no feed-forward), then cross-attention to ``other`` with the feed-forward."""

    def __init__(self, dim: int, num_heads: int, ffn_expansion: int, backend: str = "auto") -> None:
        super().__init__()
        self.self_attn = GMFlowLayer(dim, num_heads, False, None, backend)
        self.cross_attn = GMFlowLayer(dim, num_heads, True, ffn_expansion, backend)

    def forward(self, x: Tensor, other: Tensor, self_layout: WindowLayout, cross_layout: WindowLayout) -> Tensor:
        return self.cross_attn(self.self_attn(x, self_layout), cross_layout, other)


class FeatureTransformer(nn.Module):
    """GMFlow's feature enhancement: ``num_layers`` blocks run on both images at once (batch
    ``[f0; f1]`` attends ``[f1; f0]``; each image's cross-attention reads the other image's input
    to the block). Self-attention in ``splits x splits`` windows, shifted by half a window in odd
    layers (Swin); cross-attention in the same windows (``"window"``), over the whole map
    (``"global"``) or along rows (``"rows"``, stereo). ``(B, C, h, w) x 2 -> (B, C, h, w) x 2``."""

    CROSS = ("window", "global", "rows")

    def __init__(self, dim: int, num_layers: int, num_heads: int, ffn_expansion: int, cross: str = "window",
                 backend: str = "auto") -> None:
        super().__init__()
        if cross not in self.CROSS:
            raise ValueError(f"cross must be one of {self.CROSS}, got {cross!r}")
        self.cross = cross
        self.blocks = nn.ModuleList(GMFlowBlock(dim, num_heads, ffn_expansion, backend) for _ in range(num_layers))
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def layouts(self, grid: tuple[int, int], splits: int, shifted: bool, device) -> tuple[WindowLayout, WindowLayout]:
        """The self- and cross-attention layouts of one layer on a ``grid`` map."""
        h, w = grid
        window = (h // splits, w // splits)
        shift = (window[0] // 2, window[1] // 2) if shifted and splits > 1 else (0, 0)
        own = WindowLayout(grid, window, shift, device)
        if self.cross == "window":
            return own, own
        other = (h, w) if self.cross == "global" else (1, w)
        return own, WindowLayout(grid, other, (0, 0), device)

    def forward(self, f0: Tensor, f1: Tensor, splits: int) -> tuple[Tensor, Tensor]:
        B, C, h, w = f0.shape
        if h % splits or w % splits:
            raise ValueError(f"a {h}x{w} feature map does not split into {splits} windows per side")
        x = torch.cat([f0, f1]).flatten(2).transpose(1, 2)  # (2B, h*w, C)
        plain, shifted = self.layouts((h, w), splits, False, x.device), self.layouts((h, w), splits, True, x.device)
        for i, block in enumerate(self.blocks):
            other = torch.cat(x.chunk(2)[::-1])
            x = block(x, other, *(shifted if i % 2 else plain))
        x = x.transpose(1, 2).reshape(2 * B, C, h, w)
        return x[:B], x[B:]


def window_positions(grid: tuple[int, int], splits: int, dim: int, device=None) -> Tensor:
    """GMFlow's positions: DETR's normalised 2-D sine positions of one ``(h/splits, w/splits)``
    window, repeated in every window (each window sees the same positions). ``-> (1, dim, h, w)``."""
    h, w = grid
    wh, ww = h // splits, w // splits
    pos = sine_positions(torch.ones(1, wh, ww, dtype=torch.bool, device=device), dim // 2)  # (1, wh*ww, dim)
    return pos.view(1, wh, ww, dim).permute(0, 3, 1, 2).repeat(1, 1, splits, splits)


# ---------------------------------------------------------------------------------------------
# Matching layers: expected correspondence under softmax(F0 F1^T / sqrt(C))
# ---------------------------------------------------------------------------------------------
def coordinates(h: int, w: int, device=None, dtype=torch.float32) -> Tensor:
    """Pixel coordinates ``(h*w, 2)`` as ``(x, y)``, row-major."""
    y, x = torch.meshgrid(torch.arange(h, device=device, dtype=dtype), torch.arange(w, device=device, dtype=dtype),
                          indexing="ij")
    return torch.stack([x, y], -1).view(-1, 2)


def _tokens(f: Tensor) -> Tensor:
    """``(B, C, h, w) -> (B, 1, h*w, C)``: one head of tokens for attend."""
    return f.flatten(2).transpose(1, 2).unsqueeze(1)


def global_matching(f0: Tensor, f1: Tensor, backend: str = "auto") -> Tensor:
    """GMFlow's global matching: correlation ``C = F0 F1^T / sqrt(C)`` over all pixel pairs,
    matching distribution ``M = softmax(C)`` (over image 1), correspondence ``G' = M G`` (``G`` the
    pixel coordinates), flow ``V = G' - G``. ``(B, C, h, w) x 2 -> (B, 2, h, w)``."""
    B, C, h, w = f0.shape
    grid = coordinates(h, w, f0.device, f0.dtype)  # (h*w, 2)
    matched = attend(_tokens(f0), _tokens(f1), grid.expand(B, 1, h * w, 2), backend=backend)  # (B, 1, h*w, 2)
    return (matched[:, 0] - grid).transpose(1, 2).reshape(B, 2, h, w)


def row_matching(f0: Tensor, f1: Tensor, backend: str = "auto") -> Tensor:
    """Stereo matching along rows (GMFlow's 1-D form for rectified pairs): pixel ``(x0, y)`` of
    image 0 is compared with ``(x1, y)`` of image 1 for ``x1 <= x0`` only (a :class:`Causal` mask
    along the row), disparity ``x0 - E[x1]``. ``(B, C, h, w) x 2 -> (B, 1, h, w)``."""
    B, C, h, w = f0.shape
    rows0 = f0.permute(0, 2, 3, 1).reshape(B * h, 1, w, C)  # (B*h, 1, w, C)
    rows1 = f1.permute(0, 2, 3, 1).reshape(B * h, 1, w, C)
    x = torch.arange(w, device=f0.device, dtype=f0.dtype)
    matched = attend(rows0, rows1, x.view(1, 1, w, 1).expand(B * h, 1, w, 1), Causal(), backend=backend)
    return (x - matched.view(B, h, w)).unsqueeze(1)


class _InsideMap(Relation):
    """Key ``j`` of query pixel ``b % (h*w)``'s neighbourhood is attended iff it lies inside the
    map: ``inside (h*w, K)`` bool. The batch is ``images * h*w`` queries of one pixel each."""

    has_mask = True

    def __init__(self, inside: Tensor) -> None:
        super().__init__()
        self.register_buffer("inside", inside, persistent=False)

    def mask_mod(self, b, h, q_idx, kv_idx):
        return self.inside[b % self.inside.shape[0], kv_idx]

    def check(self, B, H, Lq, Lk):
        if Lk != self.inside.shape[1] or B % self.inside.shape[0]:
            raise ValueError(f"neighbourhood mask {tuple(self.inside.shape)} does not fit batch {B} and {Lk} keys")


def _neighbourhood(h: int, w: int, radius: tuple[int, int], device, dtype) -> tuple[Tensor, Relation]:
    """The offsets ``(K, 2)`` (dx, dy) of a ``(2ry+1) x (2rx+1)`` neighbourhood in ``F.unfold``'s
    order and the mask of the neighbours inside an ``(h, w)`` map."""
    ry, rx = radius
    dy, dx = torch.meshgrid(torch.arange(-ry, ry + 1, device=device), torch.arange(-rx, rx + 1, device=device),
                            indexing="ij")
    offsets = torch.stack([dx, dy], -1).view(-1, 2)  # (K, 2)
    target = coordinates(h, w, device, torch.long)[:, None] + offsets  # (h*w, K, 2)
    inside = (target[..., 0] >= 0) & (target[..., 0] < w) & (target[..., 1] >= 0) & (target[..., 1] < h)
    return offsets.to(dtype), _InsideMap(inside)


def _unfold(x: Tensor, radius: tuple[int, int]) -> Tensor:
    """Each pixel's neighbourhood: ``(B, C, h, w) -> (B*h*w, 1, K, C)`` (zeros outside the map)."""
    B, C, h, w = x.shape
    ry, rx = radius
    windows = F.unfold(x, (2 * ry + 1, 2 * rx + 1), padding=(ry, rx))  # (B, C*K, h*w)
    return windows.view(B, C, -1, h * w).permute(0, 3, 2, 1).reshape(B * h * w, 1, -1, C)


def _pixels(x: Tensor) -> Tensor:
    """``(B, C, h, w) -> (B*h*w, 1, 1, C)``: one query per pixel."""
    return x.permute(0, 2, 3, 1).reshape(-1, 1, 1, x.shape[1])


def local_matching(f0: Tensor, f1: Tensor, radius: tuple[int, int], backend: str = "auto") -> Tensor:
    """GMFlow's local matching (refinement): the softmax of ``F0 F1^T / sqrt(C)`` over the
    ``(2ry+1) x (2rx+1)`` neighbours of each pixel inside the map, expected offset ``(dx, dy)``.
    ``(B, C, h, w) x 2 -> (B, 2, h, w)``."""
    B, C, h, w = f0.shape
    offsets, inside = _neighbourhood(h, w, radius, f0.device, f0.dtype)
    values = offsets.expand(B * h * w, 1, *offsets.shape)  # (B*h*w, 1, K, 2)
    out = attend(_pixels(f0), _unfold(f1, radius), values, inside, backend=backend)  # (B*h*w, 1, 1, 2)
    return out.view(B, h, w, 2).permute(0, 3, 1, 2)


class FlowPropagation(nn.Module):
    """GMFlow's flow propagation: ``V' = softmax((F0 W_q)(F0 W_k)^T / sqrt(C)) V``, the features of
    image 0 as queries and keys and the flow (or disparity) as values, over the whole map
    (``radius=-1``) or each pixel's ``(2r+1)^2`` neighbours inside the map (GMFlow pads with zero
    keys; here the outside is masked). ``(B, C, h, w), (B, D, h, w) -> (B, D, h, w)``."""

    def __init__(self, dim: int, backend: str = "auto") -> None:
        super().__init__()
        self.backend = backend
        self.q_proj, self.k_proj = Linear(dim, dim), Linear(dim, dim)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, feature: Tensor, value: Tensor, radius: int = -1) -> Tensor:
        B, C, h, w = feature.shape
        D = value.shape[1]
        tokens = feature.flatten(2).transpose(1, 2)  # (B, h*w, C)
        q, k = self.q_proj(tokens), self.k_proj(tokens)
        if radius < 0:
            out = attend(q.unsqueeze(1), k.unsqueeze(1), _tokens(value), backend=self.backend)  # (B, 1, h*w, D)
            return out[:, 0].transpose(1, 2).reshape(B, D, h, w)
        r = (radius, radius)
        _, inside = _neighbourhood(h, w, r, feature.device, feature.dtype)
        k_map = k.transpose(1, 2).reshape(B, C, h, w)
        out = attend(q.reshape(-1, 1, 1, C), _unfold(k_map, r), _unfold(value, r), inside, backend=self.backend)
        return out.view(B, h, w, D).permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------------------------
# Warping and upsampling
# ---------------------------------------------------------------------------------------------
def warp(feature: Tensor, flow: Tensor) -> Tensor:
    """``feature`` of image 1 sampled at ``p + flow(p)`` (bilinear, zeros outside):
    ``(B, C, h, w), (B, 2, h, w) -> (B, C, h, w)``, aligned with image 0."""
    B, _, h, w = feature.shape
    grid = coordinates(h, w, feature.device, feature.dtype).view(1, h, w, 2) + flow.permute(0, 2, 3, 1)
    scale = torch.tensor([max(w - 1, 1), max(h - 1, 1)], device=feature.device, dtype=feature.dtype)
    return F.grid_sample(feature, 2 * grid / scale - 1, mode="bilinear", padding_mode="zeros", align_corners=True)


def upsample_bilinear(value: Tensor, factor: int) -> Tensor:
    """A flow or disparity at ``1/factor`` to full size: bilinear (corners aligned), times ``factor``."""
    return F.interpolate(value, scale_factor=factor, mode="bilinear", align_corners=True) * factor


class ConvexUpsampler(nn.Module):
    """RAFT's convex upsampling (Teed & Deng 2020), as GMFlow: each full-size pixel is a convex
    combination (softmax weights predicted from ``[flow, feature]``) of its 3x3 coarse
    neighbours, times ``factor``. ``(B, 2, h, w), (B, C, h, w) -> (B, 2, h*factor, w*factor)``."""

    def __init__(self, dim: int, factor: int, hidden: int = 256) -> None:
        super().__init__()
        self.factor = factor
        self.mask = nn.Sequential(nn.Conv2d(2 + dim, hidden, 3, 1, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(hidden, factor * factor * 9, 1))

    def forward(self, flow: Tensor, feature: Tensor) -> Tensor:
        B, D, h, w = flow.shape
        f = self.factor
        weights = self.mask(torch.cat([flow, feature], 1)).view(B, 1, 9, f, f, h, w).softmax(2)
        patches = F.unfold(flow * f, 3, padding=1).view(B, D, 9, 1, 1, h, w)
        up = (weights * patches).sum(2)  # (B, D, f, f, h, w)
        return up.permute(0, 1, 4, 2, 5, 3).reshape(B, D, h * f, w * f)
