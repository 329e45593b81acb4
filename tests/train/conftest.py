import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread_and_default_determinism():
    """Tiny models run fastest on one thread, and 2 OpenMP threads crawl (100x) when another process
    holds a core; runs set torch's deterministic mode, which must not leak into other tests."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(False)
