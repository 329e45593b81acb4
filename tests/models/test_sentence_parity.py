"""SentenceEncoder parity with sentence-transformers: its ``encode`` keywords and shapes, a
differentiable ``forward`` (equal to ``encode`` without normalisation, from texts or padded
features) that fine-tunes, and ``save_pretrained`` folders that reload exactly and that HF
``AutoModel`` runs to the same embeddings within 1e-5."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers

from relformer.models.text import SentenceEncoder, TextConfig, TextEncoder
from relformer.models.text.checkpoint import minilm_l6_path
from tests.interop.test_transformers_text import _hf_embeddings  # HF AutoModel + mean pooling + L2 norm

ATOL = 1e-5
TEXTS = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.", "hi"]


@pytest.fixture(scope="module")
def minilm():
    return SentenceEncoder.from_pretrained(minilm_l6_path())


def _small(pooling: str = "mean", seed: int = 0) -> SentenceEncoder:
    """A random one-layer encoder on MiniLM's tokenizer (fast to fine-tune)."""
    torch.manual_seed(seed)
    config = TextConfig(vocab_size=30522, dim=32, depth=1, num_heads=2, mlp_hidden=64, max_position=64,
                        dropout=0.0, attn_dropout=0.0)
    reference = SentenceEncoder.from_pretrained(minilm_l6_path())
    return SentenceEncoder(TextEncoder(config), reference.tokenizer, pooling, max_length=64)


def test_encode_keywords_and_shapes(minilm):
    one = minilm.encode("A man is eating food.")
    many = minilm.encode(TEXTS, batch_size=2)
    assert one.shape == (384,) and many.shape == (4, 384) and isinstance(many, torch.Tensor)
    torch.testing.assert_close(one, many[0], rtol=0, atol=1e-6)
    raw = minilm.encode(TEXTS, normalize_embeddings=False, show_progress_bar=False)
    torch.testing.assert_close(raw, minilm.encode(TEXTS, normalize=False), rtol=0, atol=0)
    torch.testing.assert_close(F.normalize(raw, dim=-1), many, rtol=0, atol=1e-6)
    array = minilm.encode(TEXTS, convert_to_numpy=True)
    assert isinstance(array, np.ndarray) and array.shape == (4, 384)
    np.testing.assert_allclose(array, many.numpy(), rtol=0, atol=1e-6)  # other batches: other sum orders
    assert isinstance(minilm.encode(TEXTS, convert_to_numpy=True, convert_to_tensor=True), torch.Tensor)
    assert minilm.encode([]).shape == (0, 384)
    with pytest.raises(TypeError, match="unexpected keyword argument 'normalise'"):
        minilm.encode(TEXTS, normalise=True)


def test_forward_is_encode_with_gradients(minilm):
    minilm.eval()
    emb = minilm(TEXTS)
    assert emb.requires_grad and emb.shape == (4, 384)
    # un-normalised embeddings through other kernels (autograd on / inference): float32 sum orders
    # differ by a few 1e-7 per layer, more than 1e-6 after six on AVX-512 CPUs; ATOL as for HF
    torch.testing.assert_close(emb.detach(), minilm.encode(TEXTS, normalize=False), rtol=0, atol=ATOL)
    padded = minilm(minilm.tokenize(TEXTS))
    torch.testing.assert_close(padded, emb, rtol=0, atol=ATOL)
    torch.testing.assert_close(minilm(TEXTS, normalize=True).detach(), minilm.encode(TEXTS), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="features need 'input_ids'"):
        minilm({"ids": torch.zeros(1, 2, dtype=torch.long)})


def _contrastive(model: SentenceEncoder, queries, documents) -> torch.Tensor:
    """In-batch negatives (MultipleNegativesRankingLoss): query i must pick document i; scale 20."""
    scores = 20.0 * model(queries, normalize=True) @ model(documents, normalize=True).T
    return F.cross_entropy(scores, torch.arange(len(queries)))


def test_fine_tuning_through_forward_reduces_the_contrastive_loss():
    model = _small()
    queries = ["sort a list", "open a file", "join two paths", "parse json", "read a csv", "random number"]
    documents = ["Return a new sorted list from the items of an iterable.", "Open file and return a stream.",
                 "Join one or more path segments intelligently.", "Deserialize a JSON document to an object.",
                 "Read rows of comma separated values.", "Return a random float in [0, 1)."]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        start = _contrastive(model, queries, documents).item()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(15):
        optimizer.zero_grad()
        _contrastive(model, queries, documents).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        end = _contrastive(model, queries, documents).item()
    assert end < 0.5 * start, (start, end)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert "encoder.encoder.layers.0.attn.qkv.weight" in changed and "encoder.embeddings.word.weight" in changed


def test_save_pretrained_reloads_and_runs_in_hf(minilm, tmp_path):
    minilm.save_pretrained(tmp_path)
    modules = json.loads((tmp_path / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_Pooling", "2_Normalize"]
    assert json.loads((tmp_path / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"] is True
    assert json.loads((tmp_path / "sentence_bert_config.json").read_text())["max_seq_length"] == 256
    loaded = SentenceEncoder.from_pretrained(tmp_path)
    assert (loaded.pooling, loaded.max_length) == ("mean", 256)
    torch.testing.assert_close(loaded.encode(TEXTS), minilm.encode(TEXTS), rtol=0, atol=0)
    worst = (_hf_embeddings(tmp_path, TEXTS, 256)[0] - minilm.encode(TEXTS)).abs().max().item()
    assert worst <= ATOL


def test_save_pretrained_of_a_fine_tuned_cls_encoder(tmp_path):
    model = _small("cls").eval()
    model.save_pretrained(tmp_path)
    loaded = SentenceEncoder.from_pretrained(tmp_path)
    assert loaded.pooling == "cls" and loaded.encoder.config == model.encoder.config
    torch.testing.assert_close(loaded.encode(TEXTS), model.encode(TEXTS), rtol=0, atol=0)
    features = model.tokenize(TEXTS)
    hf = transformers.AutoModel.from_pretrained(tmp_path, local_files_only=True).eval()
    with torch.no_grad():
        expected = hf(**features).last_hidden_state[:, 0]
        got = model(features)
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)


def test_save_pretrained_refuses_what_bert_cannot_express(tmp_path):
    rope = TextConfig(vocab_size=30522, dim=32, depth=1, num_heads=2, position="rope", max_position=64)
    model = SentenceEncoder(TextEncoder(rope), _small().tokenizer)
    with pytest.raises(ValueError, match="TextConfig.position='absolute', got 'rope'"):
        model.save_pretrained(tmp_path / "x")
    assert not (tmp_path / "x").exists()
