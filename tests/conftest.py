import os
import shutil
import tempfile

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_addoption(parser):
    parser.addoption("--fuzz", action="store_true",
                     help="release-check depth for every fuzz suite (25x the examples; same as RELFORMER_FUZZ=deep)")


def pytest_configure(config):
    # relformer's caches (datasets, and the kernel choices measured on this CPU) go to a folder of the
    # session's own: measurements taken on a machine busy with tests never reach the user's cache
    if not os.environ.get("RELFORMER_CACHE"):
        config._relformer_cache = os.environ["RELFORMER_CACHE"] = tempfile.mkdtemp(prefix="relformer-test-cache-")
    if config.getoption("--fuzz"):
        os.environ["RELFORMER_FUZZ"] = "deep"  # read by tests/fuzz.py when the suites are collected


def pytest_unconfigure(config):
    if getattr(config, "_relformer_cache", None):
        shutil.rmtree(config._relformer_cache, ignore_errors=True)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
