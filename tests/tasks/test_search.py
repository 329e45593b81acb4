"""Semantic search over a corpus: the stdlib docstring corpus, the cached index, the CLI on the
shipped MiniLM."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from relformer.data.stdlib_docs import stdlib_docstrings
from relformer.tasks.search import SearchIndex


class BagOfLetters:
    """A transparent stand-in encoder: letter counts, L2-normalised (tests the index, not a model)."""

    def __init__(self, path="bag-of-letters"):
        self.path = path
        self.calls = 0

    def encode(self, texts, batch_size=64, normalize=True, show_progress=False):
        self.calls += 1
        out = torch.zeros(len(texts), 26)
        for i, t in enumerate(texts):
            for ch in t.lower():
                if "a" <= ch <= "z":
                    out[i, ord(ch) - 97] += 1
        return torch.nn.functional.normalize(out, dim=-1)


@pytest.mark.slow
def test_stdlib_corpus_is_real_and_clean(tmp_path):
    pkg = tmp_path / "lib" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""A package that parses dates and times."""\n')
    (pkg / "mod.py").write_text(
        '"""Module doc with enough words here.\n\nSecond paragraph dropped."""\n'
        'class Reader:\n    """Read records from a file one by one."""\n'
        '    def next(self):\n        """Return the next record or raise StopIteration."""\n'
        '    def _hidden(self):\n        """A private helper nobody should search."""\n'
        'def tiny():\n    """Too short."""\n'
        'def copy():\n    """Read records from a file one by one."""\n')
    (tmp_path / "lib" / "test").mkdir()
    (tmp_path / "lib" / "test" / "test_x.py").write_text('"""A test module that must be skipped."""\n')
    (tmp_path / "lib" / "broken.py").write_text("def (:\n")
    entries = stdlib_docstrings(root=tmp_path / "lib")
    assert [(e.name, e.text) for e in entries] == [
        ("pkg", "A package that parses dates and times."),
        ("pkg.mod", "Module doc with enough words here."),
        ("pkg.mod.Reader", "Read records from a file one by one."),
        ("pkg.mod.Reader.next", "Return the next record or raise StopIteration."),
    ]
    real = stdlib_docstrings()
    names = {e.name for e in real}
    assert len(real) > 2000 and "json.dumps" in names and "csv.Sniffer.sniff" in names
    assert not any(".test." in n or n.startswith("test.") for n in names)


def test_index_ranks_caches_and_rebuilds(tmp_path):
    texts = ["zzz zzz", "apple pie", "banana bread", "apple apple apple"]
    enc = BagOfLetters()
    index = SearchIndex.cached(tmp_path / "c.npz", enc, texts, names=list("abcd"))
    hits = index.search(enc, "apple", k=2)
    assert [h.name for h in hits] == ["d", "b"] and hits[0].score == pytest.approx(1.0)
    assert hits[0].score >= hits[1].score
    calls = enc.calls
    again = SearchIndex.cached(tmp_path / "c.npz", enc, texts, names=list("abcd"))
    assert enc.calls == calls, "a matching cache must be reused"
    torch.testing.assert_close(again.embeddings, index.embeddings)
    SearchIndex.cached(tmp_path / "c.npz", BagOfLetters("another-model"), texts)
    assert not list(tmp_path.glob("*.tmp*")), "no temporary file left behind"
    changed = SearchIndex.cached(tmp_path / "c.npz", enc, texts[:3])
    assert len(changed.texts) == 3, "other texts must rebuild the cache"
    assert len(index.search(enc, "apple", k=10)) == 4
    with pytest.raises(ValueError, match="non-empty"):
        index.search(enc, "   ")


def test_cli_embed_and_similar_with_minilm(tmp_path, capsys):
    from relformer.cli import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("A man is eating food.\nThe stock market fell sharply today.\n\n"
                      "A cheetah runs across the savanna.\n")
    out = tmp_path / "emb.npy"
    main(["embed", "--file", str(corpus), "--out", str(out)])
    emb = np.load(out)
    assert emb.shape == (3, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    main(["similar", "Someone is having a meal.", "--file", str(corpus), "-k", "2",
          "--cache", str(tmp_path / "c.npz")])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("1.")]
    assert "A man is eating food." in lines[0]


class Boom:
    """Unpickling this creates a file: the proof that a loader ran code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_cache_loader_never_unpickles(tmp_path):
    """Issue 19 item 1: a crafted .npz (object arrays) or a raw pickle is refused, runs nothing, and
    is not overwritten."""
    import pickle

    from relformer.tasks.search import SearchCacheError

    ran = tmp_path / "ran"
    crafted = tmp_path / "evil.npz"
    np.savez(crafted, texts=np.array([Boom(str(ran))], dtype=object), embeddings=np.zeros((1, 26), np.float32))
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(Boom(str(ran))))
    for path in (crafted, raw):
        before = path.read_bytes()
        with pytest.raises(SearchCacheError, match="not a relformer search cache"):
            SearchIndex.load(path)
        with pytest.raises(SearchCacheError, match="refusing to overwrite it"):
            SearchIndex.cached(path, BagOfLetters(), ["a b c"])
        assert path.read_bytes() == before and not ran.exists()
    with pytest.warns(UserWarning, match="rebuilding it"):
        SearchIndex.cached(raw, BagOfLetters(), ["a b c"], replace_foreign=True)  # in relformer's own cache folder
    assert SearchIndex.load(raw).texts == ["a b c"] and not ran.exists()


@pytest.mark.parametrize("damage", ["truncated", "zero bytes", "flipped header"])
def test_damaged_cache_is_rebuilt_with_a_warning(tmp_path, damage):
    path = tmp_path / "c.safetensors"
    texts = ["apple pie", "banana bread"]
    SearchIndex.cached(path, BagOfLetters(), texts)
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) - 20], "zero bytes": b"",
                      "flipped header": data[:8] + b"[" + data[9:]}[damage])
    if damage == "flipped header":  # no longer recognisably ours: refused, not overwritten
        with pytest.raises(ValueError, match="refusing to overwrite"):
            SearchIndex.cached(path, BagOfLetters(), texts)
        return
    enc = BagOfLetters()
    with pytest.warns(UserWarning, match="rebuilding it"):
        index = SearchIndex.cached(path, enc, texts)
    assert enc.calls == 1 and index.texts == texts
    again = BagOfLetters()
    SearchIndex.cached(path, again, texts)  # the next run reuses the rebuilt cache: no error forever
    assert again.calls == 0


def test_default_cache_is_keyed_by_content_not_file_name(tmp_path):
    from relformer.tasks.search import corpus_cache_name

    assert corpus_cache_name("similar", ["a", "b"]) == corpus_cache_name("similar", ["a", "b"])
    assert corpus_cache_name("similar", ["a", "b"]) != corpus_cache_name("similar", ["a", "c"])
    assert corpus_cache_name("similar", ["a b"]) != corpus_cache_name("similar", ["a", "b"])


def test_search_rejects_bad_k():
    index = SearchIndex.build(BagOfLetters(), ["abc", "def"], show_progress=False)
    for k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="k must be a positive int"):
            index.search(BagOfLetters(), "abc", k)
