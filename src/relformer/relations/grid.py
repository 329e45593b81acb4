"""Relations over 2-D grids of tokens (image patches in row-major order): Swin's relative
position bias and (shifted) window masks, and RMT's Manhattan decay.

Token ``i`` of a grid of ``(Gh, Gw)`` tokens sits at row ``i // Gw``, column ``i % Gw``.
Two layouts are supported, as in Swin:

* **full grid** (``L = Gh * Gw``): :class:`WindowMask` restricts attention to windows
  (block-sparse, so Flex and ``chunked`` skip the empty tiles) and :class:`GridRelativeBias`
  with ``grid_size=(Gh, Gw)`` adds the window bias;
* **partitioned** (batch = images * windows, ``L = Wh * Ww``, Swin's ``window_partition``):
  :class:`GridRelativeBias` with the default ``grid_size`` and, for shifted windows,
  :class:`ShiftedWindowRegions`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention.relation import Relation, check_float, check_int
from .sequence import _check_heads

__all__ = ["GridRelativeBias", "WindowMask", "ShiftedWindowRegions", "ManhattanDecay",
           "relative_position_index", "resize_relative_position_table"]


def _pair(x, name: str, low: int = 1) -> tuple[int, int]:
    t = (x, x) if isinstance(x, int) else tuple(x)
    if len(t) != 2 or not all(isinstance(v, int) and v >= low for v in t):
        raise ValueError(f"{name} must be an int >= {low} or a pair of them, got {x!r}")
    return t


def _check_length(name: str, grid: tuple[int, int], Lq: int, Lk: int, prefix: int = 0) -> None:
    L = prefix + grid[0] * grid[1]
    if Lq != L or Lk != L:
        extra = f" (with {prefix} prefix tokens)" if prefix else ""
        raise ValueError(f"{name} {grid} has {L} tokens{extra}, but q has {Lq} and k has {Lk}")


def relative_position_index(window_size: tuple[int, int]) -> Tensor:
    """Swin's ``(Wh*Ww, Wh*Ww)`` index into the ``((2Wh-1)*(2Ww-1), H)`` bias table (Liu et al. 2021)."""
    Wh, Ww = window_size
    coords = torch.stack(torch.meshgrid(torch.arange(Wh), torch.arange(Ww), indexing="ij")).flatten(1)  # (2, Wh*Ww)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (Wh*Ww, Wh*Ww, 2)
    return (rel[..., 0] + Wh - 1) * (2 * Ww - 1) + (rel[..., 1] + Ww - 1)


def resize_relative_position_table(table: Tensor, new_window_size: tuple[int, int],
                                   old_window_size: tuple[int, int] | None = None) -> Tensor:
    """Bicubically resample a Swin table ``((2Wh-1)*(2Ww-1), H)`` to ``new_window_size``
    (timm's ``resize_rel_pos_bias_table``). ``old_window_size`` defaults to a square window."""
    n, H = table.shape
    if old_window_size is None:
        side = math.isqrt(n)
        if side * side != n or side % 2 == 0:
            raise ValueError(f"relative_position_bias_table has {n} rows, not (2W-1)^2 for a square window; "
                             "pass old_window_size")
        src = (side, side)
    else:
        src = (2 * old_window_size[0] - 1, 2 * old_window_size[1] - 1)
        if src[0] * src[1] != n:
            raise ValueError(f"relative_position_bias_table has {n} rows, not {src[0]}*{src[1]} for "
                             f"window {old_window_size}")
    dst = (2 * new_window_size[0] - 1, 2 * new_window_size[1] - 1)
    if src == dst:
        return table
    grid = table.t().reshape(1, H, *src)  # (1, H, 2Wh-1, 2Ww-1)
    grid = F.interpolate(grid.float(), size=dst, mode="bicubic", align_corners=False).to(table.dtype)
    return grid.reshape(H, dst[0] * dst[1]).t().contiguous()


class GridRelativeBias(Relation):
    """Swin's 2-D relative position bias (Liu et al. 2021, "Swin Transformer", Eq. 4):
    ``bias[h, i, j] = B[h, dy + Wh - 1, dx + Ww - 1]`` with ``(dy, dx) = (y_i - y_j, x_i - x_j)``.

    ``relative_position_bias_table ((2Wh-1)*(2Ww-1), H)`` has Swin's / HF ``SwinSelfAttention``'s
    layout, so their weights load directly; ``relative_position_index (Wh*Ww, Wh*Ww)`` is a
    non-persistent buffer (a checkpoint's copy is ignored). Tokens lie row-major on a grid of
    ``grid_size`` (default ``window_size``: attention inside one window, batch = windows);
    on a larger grid the offsets are clamped to the table, and pairs from different windows
    are expected to be masked by :class:`WindowMask`. A checkpoint made for another window
    size is resized on load (bicubic, like timm); :meth:`resize` does it explicitly.

    ``num_prefix_tokens`` tokens (e.g. ViT's class token) may precede the grid: pairs involving
    them get no bias, and ``L = P + Gh * Gw``.
    """

    has_bias = True

    def __init__(self, num_heads: int, window_size, grid_size=None, num_prefix_tokens: int = 0) -> None:
        super().__init__()
        if not isinstance(num_prefix_tokens, int) or num_prefix_tokens < 0:
            raise ValueError(f"num_prefix_tokens must be an int >= 0, got {num_prefix_tokens!r}")
        self.num_prefix_tokens = num_prefix_tokens
        self.window_size = _pair(window_size, "window_size")
        self.grid_size = self.window_size if grid_size is None else _pair(grid_size, "grid_size")
        Wh, Ww = self.window_size
        num_heads = check_int("num_heads", num_heads)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * Wh - 1) * (2 * Ww - 1), num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(self.window_size), persistent=False)

    def bias_mod(self, b, h, q_idx, kv_idx):
        Wh, Ww = self.window_size
        Gw, P = self.grid_size[1], self.num_prefix_tokens
        q, kv = (q_idx - P).clamp(min=0), (kv_idx - P).clamp(min=0)
        dy = (q // Gw - kv // Gw).clamp(-(Wh - 1), Wh - 1)
        dx = (q % Gw - kv % Gw).clamp(-(Ww - 1), Ww - 1)
        bias = self.relative_position_bias_table[(dy + Wh - 1) * (2 * Ww - 1) + dx + Ww - 1, h]
        if P == 0:
            return bias
        return torch.where((q_idx >= P) & (kv_idx >= P), bias, torch.zeros((), dtype=bias.dtype, device=bias.device))

    def resize(self, new_window_size) -> "GridRelativeBias":
        """Resample the table to ``new_window_size`` in place and rebuild the index (returns self).
        A ``grid_size`` equal to the old window follows the window."""
        new = _pair(new_window_size, "new_window_size")
        with torch.no_grad():
            table = resize_relative_position_table(self.relative_position_bias_table.detach(), new, self.window_size)
        self.relative_position_bias_table = nn.Parameter(table.clone(), requires_grad=self.relative_position_bias_table.requires_grad)
        if self.grid_size == self.window_size:
            self.grid_size = new
        self.window_size = new
        self.relative_position_index = relative_position_index(new).to(self.relative_position_index.device)
        self._cache.clear()
        return self

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        state_dict.pop(prefix + "relative_position_index", None)  # derived; Swin checkpoints carry it
        key = prefix + "relative_position_bias_table"
        table = state_dict.get(key)
        if table is not None and table.shape != self.relative_position_bias_table.shape:
            state_dict[key] = resize_relative_position_table(table, self.window_size)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def check(self, B, H, Lq, Lk):
        _check_heads(self.relative_position_bias_table.shape[1], H)
        _check_length("grid_size", self.grid_size, Lq, Lk, self.num_prefix_tokens)

    def extra_repr(self) -> str:
        return (f"num_heads={self.relative_position_bias_table.shape[1]}, window_size={self.window_size}, "
                f"grid_size={self.grid_size}, num_prefix_tokens={self.num_prefix_tokens}")


def _shift_labels(grid_size: tuple[int, int], window_size: tuple[int, int], shift: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """For every token of the rolled grid (Swin's ``torch.roll(x, -shift)``), row-major:
    its window id and its region id (Swin's ``img_mask``: 3 bands per axis when shifted)."""
    def axis(G, W, s):
        p = torch.arange(G)
        region = (p >= G - W).long() + (p >= G - s).long() if s > 0 else torch.zeros(G, dtype=torch.long)
        return p // W, region

    (wy, ry), (wx, rx) = axis(grid_size[0], window_size[0], shift[0]), axis(grid_size[1], window_size[1], shift[1])
    windows = wy[:, None] * (grid_size[1] // window_size[1]) + wx[None, :]
    regions = ry[:, None] * 3 + rx[None, :]
    return windows, regions  # each (Gh, Gw), indexed by rolled coordinates


def _check_window(grid_size, window_size, shift) -> tuple[int, int]:
    shift = _pair(shift, "shift", low=0)
    for G, W, s in zip(grid_size, window_size, shift):
        if G % W != 0:
            raise ValueError(f"grid_size {grid_size} must be divisible by window_size {window_size} (pad the grid)")
        if not 0 <= s < W:
            raise ValueError(f"shift {shift} must be in [0, window_size) = [0, {window_size})")
    return shift


class WindowMask(Relation):
    """Swin's (shifted) window attention on the full grid (Liu et al. 2021, Sec. 3.2), without
    partitioning: tokens ``L = Gh * Gw`` in row-major order of the *unshifted* grid.

    Token ``i`` attends ``j`` iff, after Swin's cyclic shift ``roll(x, -shift)``, both fall in the
    same window and in the same region of Swin's shifted-window ``attn_mask``. The output equals
    Swin's roll + ``window_partition`` + masked attention + reverse, with no roll or copy.
    Stored as one label per token (``labels (L,)``, non-persistent): mask = equal labels.
    """

    has_mask = True

    def __init__(self, grid_size, window_size, shift=0) -> None:
        super().__init__()
        self.grid_size, self.window_size = _pair(grid_size, "grid_size"), _pair(window_size, "window_size")
        self.shift = _check_window(self.grid_size, self.window_size, shift)
        windows, regions = _shift_labels(self.grid_size, self.window_size, self.shift)
        # rolled[p'] belongs to original token p = p' + shift; undo the roll to label original tokens
        labels = torch.roll(windows * 9 + regions, shifts=self.shift, dims=(0, 1))
        self.register_buffer("labels", labels.flatten(), persistent=False)

    def mask_mod(self, b, h, q_idx, kv_idx):
        return self.labels[q_idx] == self.labels[kv_idx]

    def check(self, B, H, Lq, Lk):
        _check_length("grid_size", self.grid_size, Lq, Lk)

    def extra_repr(self) -> str:
        return f"grid_size={self.grid_size}, window_size={self.window_size}, shift={self.shift}"


class ShiftedWindowRegions(Relation):
    """Swin's shifted-window ``attn_mask`` for tokens already partitioned into windows
    (batch = images * num_windows in ``window_partition`` order, ``L = Wh * Ww``).

    Token ``i`` attends ``j`` iff ``region[w, i] == region[w, j]`` with window ``w = b % num_windows``
    and ``region (num_windows, Wh*Ww)`` (non-persistent) built as Swin's ``img_mask``.
    """

    has_mask = True

    def __init__(self, window_size, grid_size, shift) -> None:
        super().__init__()
        self.grid_size, self.window_size = _pair(grid_size, "grid_size"), _pair(window_size, "window_size")
        self.shift = _check_window(self.grid_size, self.window_size, shift)
        _, regions = _shift_labels(self.grid_size, self.window_size, self.shift)
        (Gh, Gw), (Wh, Ww) = self.grid_size, self.window_size
        regions = regions.view(Gh // Wh, Wh, Gw // Ww, Ww).permute(0, 2, 1, 3).reshape(-1, Wh * Ww)
        self.register_buffer("regions", regions, persistent=False)

    @property
    def num_windows(self) -> int:
        return self.regions.shape[0]

    def mask_mod(self, b, h, q_idx, kv_idx):
        w = b % self.num_windows
        return self.regions[w, q_idx] == self.regions[w, kv_idx]

    def check(self, B, H, Lq, Lk):
        _check_length("window_size", self.window_size, Lq, Lk)
        if B % self.num_windows != 0:
            raise ValueError(f"batch size {B} is not a multiple of num_windows {self.num_windows} "
                             f"(grid_size {self.grid_size} / window_size {self.window_size})")

    def extra_repr(self) -> str:
        return f"window_size={self.window_size}, grid_size={self.grid_size}, shift={self.shift}"


def manhattan_log_decay(num_heads: int, initial_value: float = 2.0, heads_range: float = 4.0) -> Tensor:
    """RMT's per-head ``log(gamma_h)``, ``gamma_h = 1 - 2 ** (-initial_value - heads_range * h / H)``."""
    h = torch.arange(num_heads, dtype=torch.float32)
    return torch.log(1 - 2 ** (-initial_value - heads_range * h / num_heads))


class ManhattanDecay(Relation):
    """RMT's Manhattan spatial decay (Fan et al. 2024, "RMT: Retentive Networks Meet Vision
    Transformers") as the additive log-decay its official code adds before softmax:
    ``bias[h, n, m] = log(gamma_h) * (|x_n - x_m| + |y_n - y_m|)``,
    ``gamma_h = 1 - 2 ** (-initial_value - heads_range * h / num_heads)``.

    Non-learnable: ``log_decay (H,)`` is a non-persistent buffer. Tokens lie row-major on ``grid_size``.
    """

    has_bias = True

    def __init__(self, num_heads: int, grid_size, initial_value: float = 2.0, heads_range: float = 4.0) -> None:
        super().__init__()
        self.grid_size = _pair(grid_size, "grid_size")
        num_heads = check_int("num_heads", num_heads)
        self.initial_value = check_float("initial_value", initial_value, positive=True)
        self.heads_range = check_float("heads_range", heads_range)
        if self.initial_value + min(0.0, self.heads_range) <= 0:
            raise ValueError(f"initial_value + heads_range must stay > 0 (every gamma_h < 1), got "
                             f"{initial_value} and {heads_range}")
        self.register_buffer("log_decay", manhattan_log_decay(num_heads, self.initial_value, self.heads_range),
                             persistent=False)

    def bias_mod(self, b, h, q_idx, kv_idx):
        Gw = self.grid_size[1]
        dist = (q_idx // Gw - kv_idx // Gw).abs() + (q_idx % Gw - kv_idx % Gw).abs()
        return self.log_decay[h] * dist

    def check(self, B, H, Lq, Lk):
        _check_heads(self.log_decay.shape[0], H)
        _check_length("grid_size", self.grid_size, Lq, Lk)

    def extra_repr(self) -> str:
        return (f"num_heads={self.log_decay.shape[0]}, grid_size={self.grid_size}, "
                f"initial_value={self.initial_value}, heads_range={self.heads_range}")
