"""Pictures of matches and flow, for reports and ``relformer match`` / ``relformer flow``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["flow_to_rgb", "image_array", "draw_matches", "save_match_figure", "save_flow_figure"]


def flow_to_rgb(flow: Tensor | np.ndarray, max_norm: float | None = None) -> np.ndarray:
    """``(2, H, W)`` flow -> ``(H, W, 3)`` colours in [0, 1]: hue is the direction, saturation the
    magnitude (relative to ``max_norm``, default the largest), as the usual flow colour wheel."""
    from matplotlib.colors import hsv_to_rgb

    f = np.asarray(torch.as_tensor(flow).detach().cpu().float())
    angle = (np.arctan2(-f[1], -f[0]) / np.pi + 1) / 2  # [0, 1]
    norm = np.hypot(f[0], f[1])
    scale = max_norm or max(float(np.nanmax(norm)) if norm.size else 0.0, 1e-6)
    hsv = np.stack([angle, np.clip(norm / scale, 0, 1), np.ones_like(norm)], -1)
    return hsv_to_rgb(np.nan_to_num(hsv))


def image_array(image: Tensor | np.ndarray) -> np.ndarray:
    """A ``(C, H, W)`` float tensor in [0, 1] or an ``(H, W[, C])`` uint8 / float array -> ``(H, W, 3)``
    float in [0, 1] for ``imshow``."""
    if isinstance(image, Tensor):
        image = image.detach().cpu().float().permute(1, 2, 0).numpy()
    array = np.asarray(image, dtype=np.float64)
    if np.issubdtype(np.asarray(image).dtype, np.integer):
        array = array / 255.0
    if array.ndim == 2:
        array = array[..., None]
    return np.clip(np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array[..., :3], 0, 1)


def draw_matches(ax, image0, image1, kpts0, kpts1, correct: np.ndarray | None = None, *, max_lines: int = 400,
                 seed: int = 0, title: str | None = None):
    """Image 0 and image 1 side by side on ``ax`` with a line per match ``kpts0 (N, 2) -> kpts1 (N, 2)``
    (x, y pixels): green where ``correct``, red where not, lime when unknown; at most ``max_lines``
    (a fixed random subset) are drawn."""
    a, b = image_array(image0), image_array(image1)
    height = max(a.shape[0], b.shape[0])
    canvas = np.ones((height, a.shape[1] + b.shape[1], 3))
    canvas[: a.shape[0], : a.shape[1]] = a
    canvas[: b.shape[0], a.shape[1]:] = b
    ax.imshow(canvas)
    k0, k1 = np.asarray(kpts0, dtype=np.float64).reshape(-1, 2), np.asarray(kpts1, dtype=np.float64).reshape(-1, 2)
    keep = np.arange(len(k0))
    if len(keep) > max_lines:
        keep = np.sort(np.random.default_rng(seed).choice(len(k0), max_lines, replace=False))
    colours = (["lime"] * len(k0) if correct is None else
               ["limegreen" if c else "red" for c in np.asarray(correct, dtype=bool)])
    for i in keep:
        ax.plot([k0[i, 0], k1[i, 0] + a.shape[1]], [k0[i, 1], k1[i, 1]], color=colours[i], lw=0.5, alpha=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)
    return ax


def save_match_figure(path: str | Path, image0, image1, kpts0, kpts1, correct=None, title: str | None = None) -> Path:
    """One :func:`draw_matches` picture written to ``path`` (PNG)."""
    from matplotlib.figure import Figure

    a, b = image_array(image0), image_array(image1)
    width = (a.shape[1] + b.shape[1]) / 100
    fig = Figure(figsize=(max(6.0, width), max(3.0, max(a.shape[0], b.shape[0]) / 100 + 0.4)))
    draw_matches(fig.add_subplot(), a, b, kpts0, kpts1, correct, title=title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def save_flow_figure(path: str | Path, image0, image1, result: np.ndarray, stereo: bool = False) -> Path:
    """Image 0, image 1 and ``result`` (``(h, w, 2)`` flow, colour-coded by :func:`flow_to_rgb`, or
    ``(h, w)`` disparity, a colour map) side by side, written to ``path`` (PNG)."""
    from matplotlib.figure import Figure

    a = image_array(image0)
    fig = Figure(figsize=(12, 3.6 * a.shape[0] / a.shape[1] + 0.6))
    panels = [(a, "image 0"), (image_array(image1), "image 1")]
    for k, (image, title) in enumerate(panels):
        ax = fig.add_subplot(1, 3, k + 1)
        ax.imshow(image)
        ax.set_title(title, fontsize=9)
    ax = fig.add_subplot(1, 3, 3)
    if stereo:
        shown = ax.imshow(np.asarray(result, dtype=np.float64), cmap="magma")
        fig.colorbar(shown, ax=ax, fraction=0.04, label="disparity (px)")
        ax.set_title("disparity", fontsize=9)
    else:
        ax.imshow(flow_to_rgb(np.moveaxis(np.asarray(result, dtype=np.float64), -1, 0)))
        ax.set_title("flow (hue: direction, saturation: length)", fontsize=9)
    for ax in fig.axes[:3]:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
