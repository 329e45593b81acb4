"""Graph Transformers on packed graphs, all on :func:`relformer.attend`.

* :mod:`.gps` -- GraphGPS (Rampášek et al. 2022): a local message-passing layer (:class:`GINE`)
  and global attention over each graph, summed, then an MLP. :class:`GPSLayer` is called like
  PyG's ``GPSConv`` (``layer(x, edge_index, batch, edge_attr=...)``);
  :func:`relformer.interop.pyg.from_pyg` converts one.
* :mod:`.transformer` -- the Graph Transformer of Dwivedi & Bresson 2021: attention over graph
  neighbours only, edge features gating the scores; LapPE.
* :mod:`.graphormer` -- Graphormer (Ying et al. 2021): full attention inside each graph, biased by
  shortest-path distance and the edges along a shortest path; degree embeddings; a graph token.
* :mod:`.layers` -- the layers, usable alone; :mod:`.layout` -- whole graphs in attention rows.

Graphs arrive as a :class:`~relformer.data.graph.GraphBatch` (or a PyG ``Data`` / ``Batch``).
Everything but global attention runs on the packed nodes ``(N, C)`` (message passing with
``index_add_`` over the edge list); global attention runs on whole graphs placed into rows of
``row_len`` slots (:class:`GraphLayout`, built once per forward and shared by every layer), kept
apart by a 4-D block-diagonal mask -- never padded to the largest graph (PyG's ``GPSConv`` pads,
so its cost grows with the largest graph of a batch; ``bench/graph.py`` compares the two).
"""
from ...data.graph import GraphBatch
from .base import GraphOutput
from .gps import GPS, GPSConfig, gps_micro, gps_zinc
from .graphormer import Graphormer, GraphormerConfig, graphormer_micro, graphormer_zinc
from .layers import NORM_LAYERS, GINE, FeatureEncoder, GPSLayer, GraphTransformerLayer, edge_softmax, resolve_norm
from .layout import GraphLayout, clear_drop_in_layouts, drop_in_layout
from .transformer import GraphTransformer, GTConfig, gt_micro, gt_zinc

__all__ = ["GraphBatch", "GraphOutput", "GraphLayout", "GINE", "GPSLayer", "GraphTransformerLayer", "edge_softmax",
           "GPSConfig", "GTConfig", "GraphormerConfig", "GPS", "GraphTransformer", "Graphormer", "FeatureEncoder",
           "NORM_LAYERS", "resolve_norm", "drop_in_layout", "clear_drop_in_layouts"]
