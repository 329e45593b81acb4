"""Text models: registry-wide checks, packed == padded == one item at a time, the row layout,
relative-position variants across backends, input validation, SentenceEncoder's contract on a
tiny in-memory tokenizer, and the causal LM's KV cache. HF equivalence is in tests/interop."""
from __future__ import annotations

import warnings

import pytest
import torch

from relformer.data import Packed
from relformer.models import (CausalLM, KVCache, SentenceEncoder, TextConfig, TextEncoder, create_model, list_models,
                              model_config)
from tests.equivalence import assert_trains_and_round_trips

SMALL = {"bert_base": dict(depth=1), "minilm_l6": dict(depth=1), "text_micro": {}, "lm_micro": {}}


def _text_variants() -> set[str]:
    return {n for n in list_models() if isinstance(model_config(n), TextConfig)}


def _ids(lengths, vocab=1000, seed=0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g) for n in lengths]


def _micro(**options) -> TextEncoder:
    return create_model("text_micro", **options).eval()


LENGTHS = [5, 17, 1, 9, 30, 2, 12]


def test_registry_covers_the_text_variants():
    assert set(SMALL) == _text_variants(), "every registered text variant must be covered by the registry-wide test"
    assert isinstance(create_model("lm_micro"), CausalLM) and isinstance(create_model("text_micro"), TextEncoder)


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.slow
def test_every_text_variant_runs_trains_and_round_trips(name, tmp_path):
    config = model_config(name, **SMALL[name])
    if config.causal:
        ids = torch.randint(0, config.vocab_size, (2, 7))

        def run(model):
            logits = model(ids)[0]
            return logits.square().mean(), logits
    else:
        ids = Packed.from_list(_ids([6, 3, 9], config.vocab_size))

        def run(model):
            out = model(ids)
            hidden = out.last_hidden_state.values
            return hidden.square().mean() + out.pooler_output.square().mean(), hidden
    assert_trains_and_round_trips(config, run, tmp_path)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="num_heads"):
        TextConfig(dim=100, num_heads=3)
    with pytest.raises(ValueError, match="position"):
        TextConfig(position="sinusoid")
    with pytest.raises(ValueError, match="activation"):
        TextConfig(activation="swish")
    with pytest.raises(ValueError, match="'dimm'"):
        create_model("text_micro", dimm=3)
    with pytest.raises(ValueError, match="CausalLM"):
        TextEncoder(model_config("lm_micro"))
    with pytest.raises(ValueError, match="causal=True"):
        CausalLM(model_config("text_micro"))
    with pytest.raises(ValueError, match="rope"):
        CausalLM(model_config("lm_micro", position="alibi"))


# ---- packed == padded == one at a time ------------------------------------------------------
def _padded(items, left=False):
    L = max(len(t) for t in items)
    ids = torch.zeros(len(items), L, dtype=torch.long)
    mask = torch.zeros(len(items), L, dtype=torch.long)
    for i, t in enumerate(items):
        sl = slice(L - len(t), L) if left else slice(0, len(t))
        ids[i, sl], mask[i, sl] = t, 1
    return ids, mask


@pytest.mark.parametrize("position", ["absolute", "rope", "alibi", "t5"])
def test_packed_equals_padded_and_each_item_alone(position):
    model = _micro(position=position)
    items = _ids(LENGTHS)
    types = [torch.randint(0, 2, (len(t),)) for t in items]
    packed, packed_types = Packed.from_list(items), Packed.from_list(types)
    ids, mask = _padded(items)
    type_ids, _ = _padded(types)
    with torch.no_grad():
        a = model(packed, token_type_ids=packed_types, output_hidden_states=True)
        b = model(ids, attention_mask=mask, token_type_ids=type_ids, output_hidden_states=True)
        wide = model(packed, token_type_ids=packed_types, row_len=64)  # several items per row
        alone = [model(t[None], token_type_ids=tt[None]) for t, tt in zip(items, types)]
    m = mask.bool()
    assert b.last_hidden_state.shape == (*ids.shape, 64) and (b.last_hidden_state[~m] == 0).all()
    for got, expected in zip(b.hidden_states, a.hidden_states):
        torch.testing.assert_close(got[m], expected.values, rtol=0, atol=1e-6)
    torch.testing.assert_close(b.pooler_output, a.pooler_output, rtol=0, atol=1e-6)
    torch.testing.assert_close(wide.last_hidden_state.values, a.last_hidden_state.values, rtol=0, atol=1e-5)
    for i, out in enumerate(alone):
        torch.testing.assert_close(out.last_hidden_state[0], a.last_hidden_state.unpack()[i], rtol=0, atol=1e-5)
        torch.testing.assert_close(out.pooler_output[0], a.pooler_output[i], rtol=0, atol=1e-5)


def test_packed_positions_restart_per_item():
    packed = Packed.from_list(_ids([3, 1, 4]))
    assert packed.positions().tolist() == [0, 1, 2, 0, 0, 1, 2, 3]
    model = _micro(position="rope")
    layout = model.layout(packed, packed.positions(), row_len=8)
    rows = layout.rows
    assert layout.positions.shape == rows.index.shape
    assert (layout.positions[rows.valid] == rows.positions[rows.valid]).all()
    # with absolute positions, an item gets the same states wherever it sits in the batch
    model = _micro()
    with torch.no_grad():
        first = model(Packed.from_list(_ids([4, 6], seed=1))).last_hidden_state.unpack()[1]
        second = model(Packed.from_list(_ids([6], seed=1)[:0] + [_ids([4, 6], seed=1)[1]])).last_hidden_state.values
    torch.testing.assert_close(first, second, rtol=0, atol=1e-5)


def test_padded_positions_are_columns_as_hf():
    """Left padding: absolute positions are the column indices (HF BERT's ``arange(L)``)."""
    model = _micro()
    items = _ids([3, 6])
    ids, mask = _padded(items, left=True)
    with torch.no_grad():
        out = model(ids, attention_mask=mask).last_hidden_state
        shifted = model(torch.cat((torch.zeros(1, 3, dtype=torch.long), items[0][None]), 1),
                        attention_mask=torch.tensor([[0, 0, 0, 1, 1, 1]])).last_hidden_state
    torch.testing.assert_close(out[0], shifted[0], rtol=0, atol=1e-6)


# ---- backends -----------------------------------------------------------------------------------
@pytest.mark.parametrize("position", ["absolute", "rope", "alibi", "t5"])
def test_position_variants_train_and_agree_across_backends(position):
    items = Packed.from_list(_ids([7, 3, 12, 1, 5]))
    results = {}
    for backend in ("eager", "sdpa"):
        torch.manual_seed(0)
        model = create_model("text_micro", position=position, backend=backend)
        out = model(items, row_len=16)
        loss = (out.last_hidden_state.values * torch.linspace(-1, 1, 64)).sum() + out.pooler_output.sum()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results[backend] = (out.last_hidden_state.values.detach(), grads)
    (ref, ref_grads), (got, got_grads) = results["eager"], results["sdpa"]
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    for name, g in ref_grads.items():
        tol = max(1e-5, 1e-5 * g.abs().max().item())
        torch.testing.assert_close(got_grads[name], g, rtol=1e-4, atol=tol, msg=lambda m: f"{name}: {m}")


# ---- input validation ---------------------------------------------------------------------------
def test_bad_inputs_fail_clearly():
    model = _micro()
    ok = Packed.from_list(_ids([3, 4]))
    with pytest.raises(ValueError, match="integer"):
        model(torch.rand(2, 3))
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        model(torch.tensor([[1, 1000]]))
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        model(Packed(torch.tensor([-1, 2]), torch.tensor([0, 2])))
    with pytest.raises(ValueError, match=r"items \[1\] have no tokens"):
        model(Packed(torch.tensor([5, 6, 7]), torch.tensor([0, 3, 3])))
    with pytest.raises(ValueError, match=r"items \[0\] have no tokens"):
        model(torch.tensor([[5, 6]]), attention_mask=torch.tensor([[0, 0]]))
    with pytest.raises(ValueError, match="empty batch"):
        model(Packed(torch.zeros(0, dtype=torch.long), torch.tensor([0])))
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.tensor([[5, 6]]), attention_mask=torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="attention_mask"):
        model(ok, attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="token_type_ids"):
        model(ok, token_type_ids=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token_type_ids must lie in \[0, 2\)"):
        model(torch.tensor([[5, 6]]), token_type_ids=torch.tensor([[0, 2]]))
    with pytest.raises(ValueError, match="max_position=128"):
        model(torch.zeros(1, 129, dtype=torch.long))
    with pytest.raises(ValueError, match="2-D"):
        model(torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="list"):
        model([[1, 2]])


# ---- SentenceEncoder on a tiny in-memory tokenizer ---------------------------------------------
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + "the a cat dog sat on mat ran far away big small red".split()


def _sentence_encoder(max_length=8, pooling="mean") -> SentenceEncoder:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.enable_padding(length=32)  # the encoder must switch this off (on its own copy)
    enc = SentenceEncoder(create_model("text_micro", vocab_size=len(WORDS)), tok, pooling, max_length)
    assert tok.padding is not None
    return enc


TEXTS = ["the cat sat on the mat", "a dog", "", "   ", "big red dog ran far away", "cat", "the the the"]


def _reference(enc: SentenceEncoder, text: str, normalize=True) -> torch.Tensor:
    """One text alone, padded-tensor path, pooled by hand."""
    ids = torch.tensor(enc.tokenizer.encode(text).ids)[None]
    with torch.no_grad():
        h = enc.encoder.eval()(ids).last_hidden_state[0]
    v = {"mean": h.mean(0), "cls": h[0], "max": h.max(0).values}[enc.pooling]
    return torch.nn.functional.normalize(v, dim=0) if normalize else v


@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
def test_sentence_encoder_matches_one_text_at_a_time(pooling):
    enc = _sentence_encoder(pooling=pooling)
    enc.train()
    out = enc.encode(TEXTS, batch_size=3)
    assert enc.training and out.shape == (len(TEXTS), 64) and out.dtype == torch.float32
    assert not out.requires_grad and not out.is_inference()
    for i, text in enumerate(TEXTS):
        torch.testing.assert_close(out[i], _reference(enc, text), rtol=0, atol=1e-5)
    raw = enc.encode(TEXTS, batch_size=64, normalize=False)
    torch.testing.assert_close(raw[1], _reference(enc, TEXTS[1], normalize=False), rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.nn.functional.normalize(raw, dim=-1), out, rtol=0, atol=1e-5)


def test_sentence_encoder_contract():
    enc = _sentence_encoder()
    torch.testing.assert_close(enc.encode(["", "   "])[0], enc.encode(""))  # both [CLS] [SEP]
    assert enc.encode("a dog").shape == (64,)  # one str -> (dim,), as sentence-transformers
    assert enc.encode([]).shape == (0, 64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = enc.encode(["cat " * 10, "dog", "red " * 7, "the " * 6], show_progress=False)
    assert [str(w.message) for w in caught] == ["2 of 4 texts are longer than max_length=8 tokens and were truncated"]
    torch.testing.assert_close(out[0], _reference(enc, "cat " * 6), rtol=0, atol=1e-5)
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str, got int"):
        enc.encode(["a", 3])
    with pytest.raises(TypeError, match="list or tuple"):
        enc.encode(iter(["a"]))
    with pytest.raises(ValueError, match="batch_size"):
        enc.encode(["a"], batch_size=0)


# ---- causal LM with a KV cache ------------------------------------------------------------------
@pytest.mark.parametrize("options", [{}, dict(position="absolute", tie_embeddings=False, pre_norm=False)])
def test_kv_cache_gives_the_logits_of_the_full_sequence(options):
    model = create_model("lm_micro", **options).eval()
    ids = torch.randint(0, 1000, (2, 12))
    with torch.no_grad():
        full, _ = model(ids)
        logits, cache = model(ids[:, :5])  # prompt
        steps = [logits]
        for t in range(5, 12):  # one token at a time
            before = len(cache)
            logits, new = model(ids[:, t:t + 1], cache)
            assert len(cache) == before and len(new) == t + 1  # the old cache is left unchanged
            cache = new
            steps.append(logits)
        chunked, _ = model(ids[:, 8:], model(ids[:, :8])[1])  # several new tokens: Causal(offset=8)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=0, atol=1e-5)
    torch.testing.assert_close(chunked, full[:, 8:], rtol=0, atol=1e-5)


def test_greedy_generation_with_and_without_cache():
    model = create_model("lm_micro")
    prompt = torch.randint(0, 1000, (3, 4))
    with_cache = model.generate(prompt, 10)
    without = model.generate(prompt, 10, use_cache=False)
    assert model.training and with_cache.shape == (3, 14)
    assert torch.equal(with_cache, without) and torch.equal(with_cache[:, :4], prompt)
    assert torch.equal(model.generate(prompt, 0), prompt)


def test_causal_lm_errors():
    model = create_model("lm_micro", position="absolute", max_position=8)
    _, cache = model(torch.zeros(2, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="batch of 2"):
        model(torch.zeros(1, 1, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="max_position=8"):
        model(torch.zeros(2, 3, dtype=torch.long), cache)
    with pytest.raises(TypeError, match="KVCache"):
        model(torch.zeros(2, 1, dtype=torch.long), [])
    with pytest.raises(ValueError, match="layers"):
        KVCache(3, cache)


# ---- bad options and texts: the reproductions of issue 19 (item 11) ----------------------------
def test_lone_surrogate_text_names_its_index():
    enc = _sentence_encoder()
    with pytest.raises(ValueError, match=r"texts\[1\] is not valid Unicode: surrogates not allowed at character 2"):
        enc.encode(["a dog", "ab\ud800c"])
    with pytest.raises(ValueError, match=r"texts\[0\]"):
        enc.encode("\udfff")
    assert enc.encode(["caf\u00e9 \U0001F355"]).shape == (1, 64)  # valid non-ASCII text passes


@pytest.mark.parametrize("option, value", [("norm_eps", -1.0), ("dropout", -0.1), ("attn_dropout", 1.0),
                                           ("depth", 0), ("vocab_size", -3)])
def test_bad_text_options_fail_when_the_config_is_made(option, value):
    with pytest.raises(ValueError, match=rf"TextConfig\.{option} .*{value}"):
        create_model("text_micro", **{option: value})
