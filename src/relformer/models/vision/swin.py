"""Swin Transformer (Liu et al. 2021) on :func:`relformer.attend`: patch merging, window attention
whose relation is the 2-D relative position bias, shifted windows via the
:class:`~relformer.relations.ShiftedWindowRegions` mask. Windows are packed along the batch
(``window_partition``), so no ``L x L`` mask is built; feature maps that are not a multiple of
the window are zero-padded after the norm, as in Swin's reference code.
``model(pixel_values (B, C, H, W)) -> VisionOutput``."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...attention import Relation
from ...nn import MLP, Attention, DropPath, Linear
from ...relations import GridRelativeBias, ShiftedWindowRegions
from ..checks import check_count, check_eps, check_positive, check_rate
from ..registry import builds, register_model
from .common import Classifier, VisionOutput, init_weights, pair, prepare_pixels

__all__ = ["SwinConfig", "Swin", "SwinBlock", "SwinStage", "PatchMerging", "window_partition"]


def window_partition(x: Tensor, window: int) -> Tensor:
    """``(B, H, W, C) -> (B * nW, window * window, C)``, windows in row-major order (Swin's layout)."""
    B, H, W, C = x.shape
    x = x.view(B, H // window, window, W // window, window, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, C)


class _Permute(torch.autograd.Function):
    """``x.index_select(1, order)`` for a permutation ``order`` of ``x``'s tokens; the gradient is
    the inverse gather ``grad.index_select(1, inverse)`` (index_select's own backward is zeros +
    ``index_add``: two activation-sized passes, one of them a scatter)."""

    @staticmethod
    def forward(ctx, x: Tensor, order: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(inverse)
        return x.index_select(1, order)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(1, inverse), None, None


def _gather(perm: Tensor) -> tuple[Tensor, Tensor] | None:
    """``(perm, its inverse)`` for :class:`_Permute`, or None when ``perm`` is the identity."""
    if torch.equal(perm, torch.arange(len(perm), device=perm.device)):
        return None
    return perm, torch.argsort(perm)


class SwinBlock(nn.Module):
    """Swin Transformer block (Liu et al. 2021, Eq. 3): ``x + W-MSA(LN(x))`` then ``x + MLP(LN(x))``.

    The attention is :class:`~relformer.nn.Attention` on windows packed along the batch, with
    relation ``GridRelativeBias`` (+ ``ShiftedWindowRegions`` when shifted). A feature map not
    a multiple of ``window_size`` is zero-padded after ``norm1``; a map no larger than the window
    is one unshifted window. ``forward(x (B, H*W, C), grid=(H, W)) -> (B, H*W, C)``.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, shift: int, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, norm_eps: float = 1e-5, dropout: float = 0.0, attn_dropout: float = 0.0,
                 drop_path: float = 0.0, backend: str = "auto") -> None:
        super().__init__()
        if not 0 <= shift < window_size:
            raise ValueError(f"shift must be in [0, window_size={window_size}), got {shift}")
        self.window_size, self.shift = window_size, shift
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, backend=backend, attn_dropout=attn_dropout,
                              proj_dropout=dropout)
        self.rel_bias = GridRelativeBias(num_heads, window_size)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout=dropout)
        self.drop_path = DropPath(drop_path)
        self._layouts: dict = {}  # (Hp, Wp, shift, device) -> (relation, order, inverse)

    def layout(self, padded: tuple[int, int], shift: int, device) -> tuple[Relation, Tensor, Tensor]:
        """For a padded ``(Hp, Wp)`` map: the attention's relation (the window bias, plus the
        shifted-window region mask when ``shift > 0``) and the token permutation ``order`` that
        does Swin's cyclic shift and ``window_partition`` in one gather (``inverse`` undoes both).
        Built once per map size."""
        key = (*padded, shift, str(device))
        if key not in self._layouts:
            with torch.inference_mode(False):  # cached: must stay usable when later calls need grad
                self._layouts[key] = self._build_layout(padded, shift, device)
        return self._layouts[key]

    def _build_layout(self, padded: tuple[int, int], shift: int, device) -> tuple[Relation, Tensor, Tensor]:
        grid = torch.arange(padded[0] * padded[1], device=device).view(1, *padded, 1)
        rolled = torch.roll(grid, shifts=(-shift, -shift), dims=(1, 2)) if shift else grid
        order = window_partition(rolled, self.window_size).flatten()  # window order -> grid index
        relation = self.rel_bias
        if shift:
            relation = relation & ShiftedWindowRegions(self.window_size, padded, shift).to(device)
        return relation, order, torch.argsort(order)

    def effective_shift(self, grid: tuple[int, int]) -> int:
        """The shift on a ``grid`` map: none when the map is no larger than one window."""
        return self.shift if min(grid) > self.window_size else 0

    def _attention(self, x: Tensor, grid: tuple[int, int], probabilities: bool = False) -> Tensor:
        """``x (B, H*W, C)`` -> the attention branch ``(B, H*W, C)``, or with ``probabilities`` the
        attention each token receives, averaged over heads and queries of its window ``(B, Hp*Wp)``."""
        B, L, C = x.shape
        H, W = grid
        ws = self.window_size
        shift = self.effective_shift(grid)
        x = self.norm1(x)
        pad_b, pad_r = (-H) % ws, (-W) % ws
        if pad_b or pad_r:
            x = F.pad(x.view(B, H, W, C), (0, 0, 0, pad_r, 0, pad_b)).view(B, -1, C)
        Hp, Wp = H + pad_b, W + pad_r
        relation, order, inverse = self.layout((Hp, Wp), shift, x.device)
        windows = _Permute.apply(x, order, inverse).view(-1, ws * ws, C)  # (B * nW, ws*ws, C)
        if probabilities:
            probs = self.attn.probabilities(windows, relation).mean((1, 2))  # (B * nW, ws*ws)
            return probs.reshape(B, Hp * Wp).index_select(1, inverse)
        x = _Permute.apply(self.attn(windows, relation).view(B, Hp * Wp, C), inverse, order)
        if pad_b or pad_r:
            x = x.view(B, Hp, Wp, C)[:, :H, :W].reshape(B, L, C)
        return x

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        x = self.drop_path.add_to(x, self._attention(x, grid))
        return self.drop_path.add_to(x, self.mlp(self.norm2(x)))

    def forward_windows(self, x: Tensor, relation: Relation) -> Tensor:
        """The block on tokens already in its window order ``(B, L, C)`` (a map that needs no
        padding; :meth:`layout`'s ``order``): the same result, permuted, with no gathers."""
        B, L, C = x.shape
        windows = self.norm1(x).view(-1, self.window_size ** 2, C)  # (B * nW, ws*ws, C)
        x = self.drop_path.add_to(x, self.attn(windows, relation).view(B, L, C))
        return self.drop_path.add_to(x, self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """Swin's downsampling: concatenate each 2x2 neighbourhood (``x0 = (0,0), x1 = (1,0), x2 = (0,1),
    x3 = (1,1)``), LayerNorm, ``Linear(4C -> 2C)``. Odd maps are zero-padded.
    ``(B, H*W, C), (H, W) -> (B, ceil(H/2)*ceil(W/2), 2C)``."""

    def __init__(self, dim: int, norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, eps=norm_eps)
        self.reduction = Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        B, _, C = x.shape
        H, W = grid
        x = x.view(B, H, W, C)
        if H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.flatten(1, 2)))


class SwinStage(nn.Module):
    """``depth`` Swin blocks alternating plain and shifted windows, then optional patch merging."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, downsample: bool,
                 drop_path: list[float], **block_kw) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, drop_path=drop_path[i],
                      **block_kw) for i in range(depth))
        self.downsample = PatchMerging(dim, block_kw.get("norm_eps", 1e-5)) if downsample else None
        self._moves: dict = {}  # (H, W, device) -> per block (relation, gather), then the gather back

    def _plan(self, grid: tuple[int, int], device) -> tuple[list, tuple | None]:
        """For a map that needs no padding: per block its relation and the gather ``(perm, inverse)``
        (None for the identity) taking the stream from the previous block's window order (the grid
        order for the first) to its own, and the gather back to grid order after the last block."""
        key = (*grid, str(device))
        if key not in self._moves:
            with torch.inference_mode(False):
                moves, back = [], None  # back: the inverse of the current order (None: grid order)
                for block in self.blocks:
                    relation, order, inverse = block.layout(grid, block.effective_shift(grid), device)
                    perm = order if back is None else back[order]
                    moves.append((relation, _gather(perm)))
                    back = inverse
                self._moves[key] = moves, _gather(back)
        return self._moves[key]

    def forward(self, x: Tensor, grid: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
        ws = self.blocks[0].window_size if self.blocks else 1
        if grid[0] % ws or grid[1] % ws:  # padded windows: each block pads and gathers on its own
            for block in self.blocks:
                x = block(x, grid)
        else:  # the residual stream stays in window order: one gather between blocks, not two per block
            moves, back = self._plan(grid, x.device)
            for block, (relation, move) in zip(self.blocks, moves):
                x = block.forward_windows(_Permute.apply(x, *move) if move else x, relation)
            x = _Permute.apply(x, *back) if back else x
        if self.downsample is not None:
            x, grid = self.downsample(x, grid), ((grid[0] + 1) // 2, (grid[1] + 1) // 2)
        return x, grid


@dataclass(frozen=True)
class SwinConfig:
    """Swin hyper-parameters (defaults: Swin-T). ``depths`` / ``num_heads`` per stage; width doubles
    each stage from ``embed_dim``. A stage whose map at ``image_size`` is no larger than
    ``window_size`` uses one window of the map's size (as Swin's reference code)."""

    image_size: int | tuple[int, int] = 224
    patch_size: int | tuple[int, int] = 4
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-5
    patch_norm_eps: float = 1e-5
    abs_pos_embed: bool = False
    dropout: float = 0.0
    attn_dropout: float = 0.0
    drop_path: float = 0.1
    backend: str = "auto"

    def __post_init__(self) -> None:
        check_positive(self, "image_size", "patch_size", "in_chans", "embed_dim", "window_size")
        check_count(self, "num_classes")
        check_eps(self, "norm_eps", "patch_norm_eps")
        check_rate(self, "dropout", "attn_dropout", "drop_path")
        if not (isinstance(self.mlp_ratio, (int, float)) and self.mlp_ratio > 0):
            raise ValueError(f"SwinConfig.mlp_ratio must be > 0, got {self.mlp_ratio!r}")
        depths, heads = tuple(self.depths), tuple(self.num_heads)
        if not all(isinstance(v, int) and v > 0 for v in depths + heads):
            raise ValueError(f"SwinConfig.depths {self.depths} and num_heads {self.num_heads} must hold positive ints")
        if len(depths) != len(heads) or not depths:
            raise ValueError(f"SwinConfig.depths {self.depths} and num_heads {self.num_heads} need the same length > 0")
        for i, h in enumerate(heads):
            if (self.embed_dim * 2 ** i) % h:
                raise ValueError(f"SwinConfig: stage {i} width {self.embed_dim * 2 ** i} is not divisible by "
                                 f"num_heads[{i}] = {h}")
        object.__setattr__(self, "depths", depths)
        object.__setattr__(self, "num_heads", heads)

    @property
    def stage_windows(self) -> tuple[int, ...]:
        """The window of each stage at ``image_size``: ``window_size``, or the whole map when it is smaller."""
        grid, windows = self.grid_size, []
        for _ in self.depths:
            windows.append(min(*grid, self.window_size))
            grid = ((grid[0] + 1) // 2, (grid[1] + 1) // 2)
        return tuple(windows)

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(-(-i // p) for i, p in zip(pair(self.image_size), pair(self.patch_size)))

    @property
    def num_features(self) -> int:
        return self.embed_dim * 2 ** (len(self.depths) - 1)


@builds(SwinConfig)
class Swin(Classifier):
    """Swin Transformer: ``pixel_values (B, C, H, W) -> VisionOutput``; ``last_hidden_state
    (B, h*w, num_features)``, ``pooler_output`` the token mean. Images not a multiple of the
    patch size are zero-padded (right/bottom), as HF does."""

    def __init__(self, config: SwinConfig) -> None:
        super().__init__()
        c = self.config = config
        self.patch_embed = nn.Conv2d(c.in_chans, c.embed_dim, kernel_size=c.patch_size, stride=c.patch_size)
        self.patch_norm = nn.LayerNorm(c.embed_dim, eps=c.patch_norm_eps)
        Gh, Gw = c.grid_size
        self.pos_embed = nn.Parameter(torch.zeros(1, Gh * Gw, c.embed_dim)) if c.abs_pos_embed else None
        self.pos_drop = nn.Dropout(c.dropout)
        rates = torch.linspace(0, c.drop_path, sum(c.depths)).tolist() if sum(c.depths) > 1 else [c.drop_path]
        block_kw = dict(mlp_ratio=c.mlp_ratio, qkv_bias=c.qkv_bias, norm_eps=c.norm_eps, dropout=c.dropout,
                        attn_dropout=c.attn_dropout, backend=c.backend)
        stages, start = [], 0
        for i, (depth, heads) in enumerate(zip(c.depths, c.num_heads)):
            stages.append(SwinStage(c.embed_dim * 2 ** i, depth, heads, c.stage_windows[i],
                                    downsample=i < len(c.depths) - 1, drop_path=rates[start:start + depth], **block_kw))
            start += depth
        self.stages = nn.ModuleList(stages)
        self.norm = nn.LayerNorm(c.num_features, eps=c.norm_eps)
        self.head = Linear(c.num_features, c.num_classes) if c.num_classes > 0 else None
        self.apply(init_weights)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def embed(self, pixel_values: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """``(B, C, H, W) -> tokens (B, Gh*Gw, embed_dim)`` and the patch grid."""
        pixel_values = prepare_pixels(pixel_values, self.config.in_chans, self.patch_embed.weight.dtype)
        ph, pw = pair(self.config.patch_size)
        H, W = pixel_values.shape[-2:]
        if H % ph or W % pw:
            pixel_values = F.pad(pixel_values, (0, (-W) % pw, 0, (-H) % ph))
        x = self.patch_embed(pixel_values)  # (B, C, Gh, Gw)
        grid = tuple(x.shape[-2:])
        x = self.patch_norm(x.flatten(2).transpose(1, 2))
        if self.pos_embed is not None:
            if grid != self.config.grid_size:
                raise ValueError(f"abs_pos_embed is sized for a {self.config.grid_size} patch grid, got {grid}")
            x = x + self.pos_embed
        return self.pos_drop(x), grid

    def forward(self, pixel_values: Tensor, output_hidden_states: bool = False,
                labels: Tensor | None = None) -> VisionOutput:
        """``labels (B,)`` class ids (or float targets, see ``classification_loss``) add ``.loss``."""
        x, grid = self.embed(pixel_values)
        hidden = [x]
        for stage in self.stages:
            x, grid = stage(x, grid)
            hidden.append(x)
        x = self.norm(x)
        pooled = x.mean(1)
        return self._output(x, pooled, pooled, tuple(hidden) if output_hidden_states else None, labels)

    @torch.no_grad()
    def attention_maps(self, pixel_values: Tensor) -> Tensor:
        """Attention each token of the last stage receives in the last block, averaged over heads
        and the queries of its window: ``(B, h, w)`` on the last stage's grid."""
        x, grid = self.embed(pixel_values)
        for stage in self.stages[:-1]:
            x, grid = stage(x, grid)
        last = self.stages[-1]
        for block in last.blocks[:-1]:
            x = block(x, grid)
        block = last.blocks[-1]
        maps = block._attention(x, grid, probabilities=True)  # (B, Hp*Wp), grid order
        Wp = -(-grid[1] // block.window_size) * block.window_size
        maps = maps.view(maps.shape[0], -1, Wp)
        return maps[:, :grid[0], :grid[1]]


@register_model
def swin_tiny() -> SwinConfig:
    """Swin-T (Liu et al. 2021): 28M parameters at 224x224, windows of 7."""
    return SwinConfig()


@register_model
def swin_micro() -> SwinConfig:
    """A Swin for 28x28 grey images: 2x2 patches, windows of 7; stage 1 is 14x14 (4 windows,
    shifted every other block), stage 2 is 7x7 (one window)."""
    return SwinConfig(image_size=28, patch_size=2, in_chans=1, num_classes=10, embed_dim=48, depths=(2, 4),
                      num_heads=(2, 4), window_size=7, mlp_ratio=2.0, drop_path=0.0)

