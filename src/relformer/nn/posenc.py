"""Positional encodings: sinusoidal, learned, rotary (1-D and axial 2-D), and graph encodings
(Laplacian eigenvectors, random-walk return probabilities).

Sequence encodings take integer ``positions``: ``(L,)`` for one layout shared by the batch,
or ``(B, L)`` for packed batches where positions restart at every item. Graph encodings take
a PyG-style ``edge_index (2, E)`` (source row 0, target row 1) over ``num_nodes`` nodes and an
optional ``batch (N,)`` of graph ids; they are computed per graph, never on a padded batch.
"""
from __future__ import annotations

import math

from typing import Iterator

import torch
from torch import Tensor, nn

from ..relations.geometry import sine_embed
from ..relations.graph import check_edge_index

__all__ = ["sinusoidal_encoding", "sine_positions", "LearnedPositions", "RotaryEmbedding", "RotaryEmbedding2D", "grid_positions",
           "laplacian_eigenvectors", "random_sign_flip", "random_walk_encoding"]


def sinusoidal_encoding(positions: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    """Sinusoidal encoding (Vaswani et al. 2017, sec. 3.5), ``positions (...) -> (..., dim)`` fp32.

    ``PE[p, 2i] = sin(p / base^(2i/dim))``, ``PE[p, 2i+1] = cos(p / base^(2i/dim))``; an odd
    ``dim`` drops the last cosine.
    """
    half = (dim + 1) // 2
    inv_freq = base ** (-torch.arange(half, dtype=torch.float32, device=positions.device) * 2 / dim)  # (half,)
    angles = positions.to(torch.float32).unsqueeze(-1) * inv_freq  # (..., half)
    pe = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # (..., 2 * half) interleaved
    return pe[..., :dim]


class LearnedPositions(nn.Module):
    """Learned absolute position embeddings (BERT / GPT-2): ``positions (...) -> (..., dim)``."""

    def __init__(self, max_len: int, dim: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(max_len, dim) * init_std)  # (max_len, dim)

    @property
    def max_len(self) -> int:
        return self.weight.shape[0]

    def forward(self, positions: Tensor) -> Tensor:
        if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= self.max_len):
            raise ValueError(f"positions must lie in [0, {self.max_len}), got [{int(positions.min())}, "
                             f"{int(positions.max())}]")
        return self.weight[positions]

    @torch.no_grad()
    def resize(self, max_len: int) -> None:
        """Linearly interpolate the table to ``max_len`` rows (fine-tuning on longer inputs)."""
        table = self.weight.t().unsqueeze(0)  # (1, dim, old)
        new = nn.functional.interpolate(table, size=max_len, mode="linear", align_corners=True)
        self.weight = nn.Parameter(new.squeeze(0).t().contiguous())


def _rotate_half(x: Tensor, interleaved: bool) -> Tensor:
    if interleaved:  # pairs (x0, x1), (x2, x3), ...
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((-x2, x1), dim=-1).flatten(-2)
    x1, x2 = x.chunk(2, dim=-1)  # pairs (x_i, x_{i + D/2})
    return torch.cat((-x2, x1), dim=-1)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding, RoPE (Su et al. 2021, "RoFormer", sec. 3.2).

    Rotates pair ``i`` of every head vector by angle ``p * base^(-2i/D)`` so that
    ``<rope(q, p_q), rope(k, p_k)>`` depends on positions only through ``p_q - p_k``.

    ``forward(x, positions=None)``: ``x (B, H, L, D)``; ``positions (L,)`` or ``(B, L)``
    (default ``arange(L)``; packed batches restart per item). Pairs are ``(x_i, x_{i+D/2})``
    (GPT-NeoX / HF LLaMA); ``interleaved=True`` pairs ``(x_{2i}, x_{2i+1})`` (RoFormer, Meta LLaMA).
    The rotation is computed in (at least) fp32 and cast back to ``x.dtype``.
    """

    def __init__(self, head_dim: int, base: float = 10000.0, interleaved: bool = False) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RotaryEmbedding needs an even head_dim, got {head_dim}")
        self.head_dim, self.base, self.interleaved = int(head_dim), float(base), bool(interleaved)
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (D/2,)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def cos_sin(self, positions: Tensor, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """``positions (L,) | (B, L)`` -> cos, sin of shape ``(1|B, 1, L, D)`` in ``dtype``."""
        if positions.dim() not in (1, 2):
            raise ValueError(f"positions must be (L,) or (B, L), got shape {tuple(positions.shape)}")
        angles = positions.to(dtype).unsqueeze(-1) * self.inv_freq.to(dtype)  # (..., L, D/2)
        angles = angles.repeat_interleave(2, -1) if self.interleaved else torch.cat((angles, angles), -1)
        angles = angles.view(-1, 1, *angles.shape[-2:])  # (1|B, 1, L, D)
        return angles.cos(), angles.sin()

    def forward(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        if x.dim() != 4 or x.shape[-1] != self.head_dim:
            raise ValueError(f"expected (B, H, L, {self.head_dim}), got {tuple(x.shape)}")
        B, _, L, _ = x.shape
        if positions is None:
            positions = torch.arange(L, device=x.device)
        if positions.shape[-1] != L or (positions.dim() == 2 and positions.shape[0] != B):
            raise ValueError(f"positions {tuple(positions.shape)} do not fit x {tuple(x.shape)}: need (L,) or (B, L)")
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        cos, sin = self.cos_sin(positions, xf.dtype)
        return (xf * cos + _rotate_half(xf, self.interleaved) * sin).to(x.dtype)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}, interleaved={self.interleaved}"


class RotaryEmbedding2D(nn.Module):
    """Axial 2-D RoPE (Heo et al. 2024, "Rotary Position Embedding for Vision Transformer", RoPE-Axial):
    the first half of each head vector rotates with the row, the second half with the column.

    ``forward(x, positions=None)``: ``x (B, H, L, D)``, ``positions (L, 2)`` or ``(B, L, 2)`` of
    ``(row, col)`` (see :func:`grid_positions`); ``D`` must be a multiple of 4.
    """

    def __init__(self, head_dim: int, base: float = 10000.0, interleaved: bool = False) -> None:
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"RotaryEmbedding2D needs head_dim divisible by 4, got {head_dim}")
        self.head_dim = int(head_dim)
        self.rows = RotaryEmbedding(head_dim // 2, base, interleaved)
        self.cols = RotaryEmbedding(head_dim // 2, base, interleaved)

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        if positions.shape[-1] != 2:
            raise ValueError(f"positions must end with (row, col), got shape {tuple(positions.shape)}")
        x_row, x_col = x.chunk(2, dim=-1)  # (B, H, L, D/2) each
        return torch.cat((self.rows(x_row, positions[..., 0]), self.cols(x_col, positions[..., 1])), dim=-1)


def grid_positions(height: int, width: int, device=None) -> Tensor:
    """Row-major ``(height * width, 2)`` integer ``(row, col)`` positions of a patch grid."""
    rows, cols = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    return torch.stack((rows.flatten(), cols.flatten()), dim=-1)


# ---- graph encodings ---------------------------------------------------------------------

def _graphs(edge_index: Tensor, num_nodes: int, batch: Tensor | None) -> Iterator[tuple[Tensor, Tensor]]:
    """Per graph: ``(node ids (n,), local edge_index (2, e))``. Edges must not cross graphs."""
    check_edge_index(edge_index, num_nodes)
    device = edge_index.device
    if batch is None:
        yield torch.arange(num_nodes, device=device), edge_index
        return
    if batch.shape != (num_nodes,):
        raise ValueError(f"batch must have shape (num_nodes,) = ({num_nodes},), got {tuple(batch.shape)}")
    edge_graph = batch[edge_index[0]]  # (E,)
    if not torch.equal(edge_graph, batch[edge_index[1]]):
        raise ValueError("edge_index has edges between different graphs of the batch")
    local = torch.empty(num_nodes, dtype=torch.long, device=device)
    edge_order = edge_graph.argsort(stable=True)
    edge_counts = torch.bincount(edge_graph, minlength=int(batch.max()) + 1 if num_nodes else 0).tolist()
    edge_chunks = edge_index[:, edge_order].split(edge_counts, dim=1)
    for g, edges in enumerate(edge_chunks):
        nodes = (batch == g).nonzero().flatten()
        if nodes.numel() == 0:
            continue
        local[nodes] = torch.arange(nodes.numel(), device=device)
        yield nodes, local[edges]


def _dense_adjacency(edges: Tensor, n: int) -> Tensor:
    """``(n, n)`` float64 adjacency with ``A[i, j]`` = number of edges ``i -> j``."""
    adj = torch.zeros(n, n, dtype=torch.float64, device=edges.device)
    adj.index_put_((edges[0], edges[1]), torch.ones(edges.shape[1], dtype=torch.float64, device=edges.device),
                   accumulate=True)
    return adj


def laplacian_eigenvectors(edge_index: Tensor, num_nodes: int, k: int, batch: Tensor | None = None,
                           return_eigenvalues: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Laplacian positional encoding (Dwivedi et al. 2020, "Benchmarking GNNs"; GraphGPS's LapPE).

    Per graph, the eigenvectors of the symmetric normalized Laplacian
    ``L = I - D^(-1/2) A D^(-1/2)`` for the ``k`` smallest eigenvalues after the first (the
    trivial ``lambda = 0`` one), as PyG's ``AddLaplacianEigenvectorPE``. ``A`` is the binary
    undirected adjacency (``edge_index`` symmetrised, self-loops dropped); an isolated node has
    ``L[i, i] = 1``. Columns a graph cannot fill (fewer than ``k + 1`` nodes) are zero.
    Eigenvectors have an arbitrary sign: use :func:`random_sign_flip` while training.

    Returns ``pe (N, k)`` (dtype float32), and with ``return_eigenvalues`` also ``(N, k)``
    eigenvalues (each node carries its graph's; padding 0). Dense ``eigh`` per graph: O(n^3).
    """
    pe = torch.zeros(num_nodes, k, dtype=torch.float32, device=edge_index.device)
    eigvals = torch.zeros_like(pe)
    for nodes, edges in _graphs(edge_index, num_nodes, batch):
        n = nodes.numel()
        adj = _dense_adjacency(edges, n)
        adj = ((adj + adj.t()) > 0).to(torch.float64)
        adj.fill_diagonal_(0)
        deg = adj.sum(1)
        d_inv_sqrt = torch.where(deg > 0, deg.clamp_min(1e-300).rsqrt(), torch.zeros_like(deg))
        lap = torch.eye(n, dtype=torch.float64, device=adj.device) - d_inv_sqrt[:, None] * adj * d_inv_sqrt[None, :]
        vals, vecs = torch.linalg.eigh(lap)  # ascending eigenvalues, (n,), (n, n)
        m = min(k, n - 1)
        pe[nodes, :m] = vecs[:, 1:m + 1].float()
        eigvals[nodes, :m] = vals[1:m + 1].float()
    return (pe, eigvals) if return_eigenvalues else pe


def random_sign_flip(pe: Tensor, batch: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Flip the sign of every eigenvector column at random, independently per graph (for training)."""
    num_graphs = 1 if batch is None or batch.numel() == 0 else int(batch.max()) + 1
    signs = torch.randint(0, 2, (num_graphs, pe.shape[-1]), generator=generator).to(pe.device, pe.dtype) * 2 - 1
    return pe * (signs[0] if batch is None else signs[batch])


def random_walk_encoding(edge_index: Tensor, num_nodes: int, k: int, batch: Tensor | None = None) -> Tensor:
    """Random-walk structural encoding, RWSE (Dwivedi et al. 2022, "Graph Neural Networks with
    Learnable Structural and Positional Representations"; GraphGPS).

    ``pe[i, t - 1] = ((D^-1 A)^t)[i, i]`` for ``t = 1..k``: the probability that a random walk
    from ``i`` is back at ``i`` after ``t`` steps. ``A[i, j]`` counts the edges ``i -> j`` as
    given (pass both directions for undirected graphs); a node without out-edges has a zero row.
    Returns ``(N, k)`` float32, computed per graph of ``batch``.
    """
    pe = torch.zeros(num_nodes, k, dtype=torch.float32, device=edge_index.device)
    for nodes, edges in _graphs(edge_index, num_nodes, batch):
        adj = _dense_adjacency(edges, nodes.numel())
        deg = adj.sum(1, keepdim=True)
        walk = torch.where(deg > 0, adj / deg.clamp_min(1), torch.zeros_like(adj))  # D^-1 A, (n, n)
        power = walk
        for t in range(k):
            pe[nodes, t] = power.diagonal().float()
            power = power @ walk
    return pe


def sine_positions(mask: Tensor, num_feats: int, temperature: float = 10000.0, scale: float = 2 * math.pi) -> Tensor:
    """DETR's normalised 2-D sine positions of a feature map: ``mask (B, H, W)`` bool (True = real) ->
    ``(B, H * W, 2 * num_feats)``, the ``y`` features first. Each coordinate is the cumulative count of
    real positions along its axis, divided by the axis total and times ``scale``."""
    m = mask.float()
    y, x = m.cumsum(1), m.cumsum(2)
    y = y / (y[:, -1:, :] + 1e-6) * scale
    x = x / (x[:, :, -1:] + 1e-6) * scale
    k = torch.arange(num_feats, device=mask.device, dtype=torch.float32)
    dim_t = temperature ** (2 * torch.div(k, 2, rounding_mode="floor") / num_feats)
    return sine_embed(torch.stack([y, x], -1), dim_t, 1.0).flatten(1, 2)  # (B, HW, 2 * num_feats)
