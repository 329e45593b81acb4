"""Random event streams and the real UCI stream, shared by the temporal tests."""
from functools import lru_cache

import torch

from relformer.data.temporal import EventStream, load_uci


def random_stream(num_events: int = 400, num_nodes: int = 30, time_values: int = 60, seed: int = 0,
                  float_times: bool = False) -> EventStream:
    """Integer times drawn from ``time_values`` values (many ties) or float64 ones, sorted."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(num_nodes, (num_events,), generator=g)
    dst = torch.randint(num_nodes, (num_events,), generator=g)
    if float_times:
        t = torch.rand(num_events, generator=g, dtype=torch.float64).sort().values * 100
    else:
        t = torch.randint(time_values, (num_events,), generator=g).sort().values
    return EventStream(src=src, dst=dst, t=t, num_nodes=num_nodes)


@lru_cache(maxsize=1)
def uci() -> EventStream:
    return load_uci()
