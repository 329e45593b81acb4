"""Fashion-MNIST from the Debian package: the real files load completely; a missing install
fails with instructions, never a download. `run.sh test` (what CI runs) installs the package, so
nothing here is skipped."""
from __future__ import annotations

import gzip

import pytest
import torch

from relformer.data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist


@pytest.mark.parametrize("split, n", [("train", 60000), ("test", 10000)])
def test_real_files_load_completely(split, n):
    images, labels = load_fashion_mnist(split)
    assert images.shape == (n, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (n,) and labels.dtype == torch.int64
    assert torch.equal(labels.bincount(), torch.full((10,), n // 10))  # balanced classes
    assert 70 < images.float().mean() < 76  # mean pixel 0.286 * 255 = 72.9
    assert len(FASHION_MNIST_CLASSES) == 10


def test_missing_files_say_how_to_install(tmp_path, monkeypatch):
    monkeypatch.delenv("RELFORMER_FASHION_MNIST", raising=False)
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist("train", root=tmp_path)


def test_bad_split_and_truncated_file(tmp_path):
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation")
    images, labels = load_fashion_mnist("test")
    header = lambda magic, *dims: b"".join(int(v).to_bytes(4, "big") for v in (magic, *dims))
    for prefix in ("train", "t10k"):
        with gzip.open(tmp_path / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(header(0x803, 10000, 28, 28) + images[:100].numpy().tobytes())  # truncated
        with gzip.open(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(header(0x801, 10000) + labels.to(torch.uint8).numpy().tobytes())
    with pytest.raises(ValueError, match="truncated"):
        load_fashion_mnist("test", root=tmp_path)
