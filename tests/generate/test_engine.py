"""The decode engine: static-cache decoding equals the full forward, left-padded batches equal
each prompt alone, compiled equals eager, per-row stops, sampling options, and greedy output
equal to transformers' generate."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
from generate_helpers import left_padded, pair
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models
from transformers import MinPLogitsWarper, TopKLogitsWarper

from attnlab.attention import masks
from attnlab.generate import filter_logits, generate, stream
from attnlab.models import BERT, GPT, BertConfig, EncoderDecoder, GPTConfig, TransformerConfig
from attnlab.tokenizers import Tokenizer, bytes_to_unicode

FLAVOURS = {
    "learned": {},
    "rope": {"position": "rope", "n_kv_head": 2, "norm": "rmsnorm", "mlp": "swiglu"},
    "alibi": {"position": "alibi"},
}


def _gpt(flavour: str = "rope", vocab: int = 64, max_len: int = 48, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(
        vocab_size=vocab, max_len=max_len, n_layer=2, n_head=4, dim=32, **FLAVOURS[flavour]
    )
    model = GPT(config).eval()
    with torch.no_grad():  # larger weights: fewer near ties between the two likeliest tokens
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(4.0)
    return model


@torch.no_grad()
def _argmax_loop(model, ids, n):
    """Greedy decoding by the full forward over the whole sequence, every step."""
    for _ in range(n):
        ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    return ids


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("cache", ["static", "dynamic"])
def test_cached_greedy_equals_the_full_forward(flavour, cache):
    model = _gpt(flavour)
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(1))
    got = generate(model, ids, 20, temperature=0, cache=cache)
    assert torch.equal(got, _argmax_loop(model, ids, 20))


@pytest.mark.parametrize("flavour", ["learned", "rope"])
def test_left_padded_batch_equals_each_prompt_alone(flavour):
    model = _gpt(flavour)
    rows = [[5, 9, 13, 7, 22, 30, 3], [8, 3], [11, 40, 41, 2]]
    ids, mask = left_padded(rows)
    got = generate(model, ids, 12, attention_mask=mask, temperature=0)
    for i, row in enumerate(rows):
        alone = generate(model, torch.tensor([row]), 12, temperature=0)
        assert torch.equal(got[i, -12:], alone[0, -12:])


def test_rows_stop_at_their_own_eos_and_are_padded():
    model = _gpt("rope")
    rows = [[5, 9, 13], [8, 3, 17]]
    ids, mask = left_padded(rows)
    free = generate(model, ids, 10, attention_mask=mask, temperature=0)
    eos = int(free[0, ids.shape[1] + 2])  # row 0's third new token
    got = generate(model, ids, 10, attention_mask=mask, temperature=0, eos_id=eos, pad_id=63)
    new, want = got[:, ids.shape[1] :], free[:, ids.shape[1] :]
    for r in range(2):
        hits = (want[r] == eos).nonzero()
        end = int(hits[0]) + 1 if len(hits) else want.shape[1]
        assert torch.equal(new[r, :end], want[r, :end])  # identical up to its eos
        assert bool((new[r, end:] == 63).all())  # then padding
    assert got.shape[1] <= free.shape[1]


def test_generation_ends_when_every_row_has_stopped():
    model = _gpt("rope")
    ids = torch.tensor([[5, 9, 13]])
    free = generate(model, ids, 10, temperature=0)
    new = free[0, 3:].tolist()
    eos = new[4]
    end = 3 + new.index(eos) + 1  # up to the first time the model says it
    got = generate(model, ids, 10, temperature=0, eos_id=[eos, 999])
    assert torch.equal(got, free[:, :end])


def test_compiled_decode_gives_the_eager_tokens(monkeypatch):
    from attnlab.generate import packing

    monkeypatch.setattr(packing, "PACK_MIN_ROWS", 10**9)  # plain nn.Linear (test_packing: packed)
    model = _gpt("rope")
    ids, mask = left_padded([[5, 9, 13, 7], [8, 3]])
    eager = generate(model, ids, 16, attention_mask=mask, temperature=0)
    with _no_fallback():
        compiled = generate(model, ids, 16, attention_mask=mask, temperature=0, compile=True)
    assert torch.equal(compiled, eager)


@contextlib.contextmanager
def _no_fallback():
    """The compiled step must not fall back to eager decoding (it warns when it does)."""
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always", RuntimeWarning)
        yield
    fallbacks = [r for r in records if "torch.compile failed" in str(r.message)]
    assert not fallbacks, fallbacks[0].message


def test_ring_cache_equals_a_full_forward_under_the_window_mask():
    window = 5
    model = _gpt("rope")
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(2))
    got = generate(model, ids, 15, temperature=0, cache="ring", window=window)
    for block in model.blocks:  # the reference: every layer attends within the window
        forward = block.attn.forward

        def windowed(x, *a, mask=None, _forward=forward, **kw):
            return _forward(x, *a, mask=mask & masks.sliding_window(window), **kw)

        block.attn.forward = windowed
    try:
        want = _argmax_loop(model, ids, 15)
    finally:
        for block in model.blocks:
            del block.attn.forward
    assert torch.equal(got, want)


def test_generation_slides_past_the_context():
    model = _gpt("learned", max_len=16)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    got = generate(model, ids, 30, temperature=0)
    assert got.shape == (1, 35)
    # The first tokens that fit the context equal plain greedy decoding.
    assert torch.equal(got[:, :16], _argmax_loop(model, ids, 11))


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def hf_pair(request, tmp_path_factory):
    return pair(request.param, tmp_path_factory.mktemp("engine"))


def test_greedy_batch_equals_transformers(hf_pair):
    hf, ours = hf_pair
    ids, mask = left_padded([[5, 9, 13, 7, 22], [8, 3, 40], [11]])
    want = hf.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False, eos_token_id=1,
        pad_token_id=2,
    )  # fmt: skip
    got = generate(ours, ids, 10, attention_mask=mask, temperature=0, eos_id=1, pad_id=2)
    assert torch.equal(got, want)


def test_repetition_penalty_equals_transformers(hf_pair):
    hf, ours = hf_pair
    ids = torch.tensor([[5, 9, 13, 7, 22]])
    want = hf.generate(
        input_ids=ids, max_new_tokens=12, do_sample=False, repetition_penalty=1.8,
        pad_token_id=2, eos_token_id=None,
    )  # fmt: skip
    got = generate(ours, ids, 12, temperature=0, repetition_penalty=1.8)
    assert torch.equal(got, want)
    assert not torch.equal(got, generate(ours, ids, 12, temperature=0))  # it changed something


def test_filters_equal_transformers_warpers():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0)) * 3
    for ours, theirs in [
        (filter_logits(logits, top_k=7), TopKLogitsWarper(7)(None, logits.clone())),
        (filter_logits(logits, min_p=0.1), MinPLogitsWarper(0.1)(None, logits.clone())),
    ]:
        assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
        kept = ~torch.isinf(ours)
        assert torch.equal(ours[kept], logits[kept])


def test_a_seed_reproduces_a_sample_and_filters_hold():
    model = _gpt("rope")
    ids = torch.tensor([[5, 9, 13]])
    a = generate(model, ids, 20, temperature=1.5, top_k=3, seed=7)
    b = generate(model, ids, 20, temperature=1.5, top_k=3, seed=7)
    c = generate(model, ids, 20, temperature=1.5, top_k=3, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Every sampled token was among its step's three likeliest.
    with torch.no_grad():
        logits = model(a[:, :-1]).logits[0, 2:]
    top3 = logits.topk(3, -1).indices
    assert bool((top3 == a[0, 3:, None]).any(-1).all())


def test_vocab_size_limits_the_ids():
    model = _gpt("rope")
    out = generate(model, torch.zeros(3, 2, dtype=torch.long), 30, temperature=1.0, vocab_size=20)
    assert int(out.max()) < 20


def _byte_tokenizer() -> Tokenizer:
    spell = bytes_to_unicode()
    backend = Backend(models.BPE({spell[b]: b for b in range(256)}, []))
    backend.decoder = decoders.ByteLevel()
    return Tokenizer(backend)


def test_a_stop_string_ends_its_row_only():
    model = _gpt("rope", vocab=256)
    tok = _byte_tokenizer()
    ids, mask = left_padded([[72, 105], [65, 66, 67]])
    free = generate(model, ids, 12, attention_mask=mask, temperature=0)
    text0 = tok.decode(free[0, ids.shape[1] :].tolist())
    stop = text0[4:6]  # two characters in the middle of row 0's text
    got = generate(
        model, ids, 12, attention_mask=mask, temperature=0, stop=stop, tokenizer=tok, pad_id=0
    )
    new = got[0, ids.shape[1] :].tolist()
    end = len(tok.decode(free[0, ids.shape[1] :].tolist()).split(stop)[0]) + len(stop)
    cut = next(i for i in range(1, 13) if len(tok.decode(new[:i])) >= end)
    assert new[:cut] == free[0, ids.shape[1] : ids.shape[1] + cut].tolist()
    assert set(new[cut:]) <= {0}
    if stop not in tok.decode(free[1, ids.shape[1] :].tolist()):
        assert torch.equal(got[1, : free.shape[1]], free[1, : got.shape[1]])


def test_stream_yields_each_step():
    model = _gpt("rope")
    ids = torch.tensor([[5, 9, 13]])
    steps = list(stream(model, ids, 6, temperature=0))
    assert [s.shape for s in steps] == [(1, 1)] * 6
    assert torch.equal(torch.cat([ids, *steps], 1), generate(model, ids, 6, temperature=0))


def test_encoder_decoder_greedy_equals_its_own_loop():
    torch.manual_seed(0)
    c = TransformerConfig(
        vocab_size=40, dim=32, n_head=4, hidden=64, n_layer=2, n_decoder_layer=2, max_len=32
    )
    model = EncoderDecoder(c).eval()
    src = torch.randint(3, 40, (3, 7))
    mask = torch.ones_like(src)
    mask[1, :2] = 0
    got = generate(model, src, 10, attention_mask=mask, temperature=0, eos_id=c.eos_id)
    with torch.no_grad():
        want = model.generate(src, mask, max_new_tokens=10)
    assert got[:, 0].eq(c.bos_id).all()
    assert torch.equal(got[:, 1 : 1 + want.shape[1]], want)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"input_ids": torch.zeros(1, 60, dtype=torch.long)}, ValueError, "prompt: 60 tokens"),
        ({"temperature": -1.0}, ValueError, "temperature"),
        ({"top_p": 1.5}, ValueError, "top_p"),
        ({"min_p": -0.1}, ValueError, "min_p"),
        ({"repetition_penalty": 0.0}, ValueError, "repetition_penalty"),
        ({"eos_id": "x"}, ValueError, "eos_id"),
        ({"stop": "ab"}, ValueError, "tokenizer"),
        ({"cache": "paged"}, ValueError, "kind"),
        ({"cache": "dynamic", "compile": True}, ValueError, "compile"),
        ({"attention_mask": torch.tensor([[1, 1, 0]])}, ValueError, "left padding"),
        ({"max_new_tokens": -1}, ValueError, "max_new_tokens"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, error, match):
    model = _gpt("rope")
    call = {"input_ids": torch.tensor([[5, 9, 13]]), "max_new_tokens": 4, **kwargs}
    with pytest.raises(error, match=match):
        generate(model, **call)


def test_a_model_that_does_not_generate_is_refused():
    bert = BERT(BertConfig(vocab_size=30, n_layer=1, n_head=2, dim=16, hidden=32, max_len=8))
    with pytest.raises(TypeError, match="model: expected a generative model"):
        generate(bert, torch.tensor([[1]]), 2)


def test_int8_kv_cache_keeps_the_greedy_tokens():
    """An int8 cache (absmax per vector) changes logits by rounding only: on this model the
    first 24 greedy tokens are the fp32 cache's."""
    model = _gpt("rope")
    ids, mask = left_padded([[5, 9, 13, 7], [8, 3]])
    want = generate(model, ids, 24, attention_mask=mask, temperature=0)
    got = generate(model, ids, 24, attention_mask=mask, temperature=0, cache_dtype=torch.int8)
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="dtype: an int8 cache"):
        generate(model, ids, 4, cache="dynamic", cache_dtype=torch.int8)


@pytest.mark.parametrize("mode,group_size", [("int8", None), ("int4", 32)])
def test_quantized_models_compile_and_give_the_eager_tokens(mode, group_size):
    """The packed int8/int4 matmuls are opaque operators to the compiler (it fuses what is
    around them), so a quantized step compiles without falling back."""
    from attnlab.quantize import quantize

    model = quantize(_gpt("learned"), mode, group_size=group_size)
    ids, mask = left_padded([[5, 9, 13, 7], [8, 3]])
    eager = generate(model, ids, 12, attention_mask=mask)
    with _no_fallback():
        assert torch.equal(generate(model, ids, 12, attention_mask=mask, compile=True), eager)


def test_a_model_that_fails_to_compile_decodes_eagerly_alone(monkeypatch):
    """A step that does not compile (here: a compiler that fails for one model) falls back for
    that model only, with one warning; another still runs compiled."""
    from attnlab.generate import drivers

    failing, plain = _gpt("rope", seed=1), _gpt("rope", seed=2)
    compiled_calls = []

    def fake_compile(fn, **kwargs):
        def run(model, *args):
            if model is failing:
                raise RuntimeError("lowering failed")
            compiled_calls.append(model)
            return fn(model, *args)

        return run

    monkeypatch.setattr(drivers, "_COMPILED", {})
    monkeypatch.setattr(drivers, "_FAILED", {})
    monkeypatch.setattr(torch, "compile", fake_compile)
    ids = torch.tensor([[5, 9, 13]])
    with pytest.warns(RuntimeWarning, match="torch.compile failed .*lowering failed"):
        got = generate(failing, ids, 4, compile=True)
    assert torch.equal(got, generate(failing, ids, 4))
    assert [failing in models for models in drivers._FAILED.values()] == [True]
    with _no_fallback():
        generate(failing, ids, 4, compile=True)  # eager from then on, without a new warning
        assert torch.equal(generate(plain, ids, 4, compile=True), generate(plain, ids, 4))
    assert compiled_calls and all(m is plain for m in compiled_calls)


def test_prepare_stores_wide_fp32_weights_column_major_and_keeps_their_values(tmp_path):
    """Before decoding, fp32 Linear weights with more outputs than inputs (the fused QKV, the
    MLP's up projection, the tied head) become column-major; values, shapes and tying stay, and
    the model still saves and loads."""
    import attnlab
    from attnlab.generate.drivers import prepare
    from attnlab.loader import save_run

    model = _gpt("learned")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.tensor([[5, 9, 13]])
    expected = model(ids).logits
    prepare(model)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert any(m.out_features > m.in_features for m in linears)
    for m in linears:
        assert m.weight.stride(0) == (1 if m.out_features > m.in_features else m.in_features)
    assert model.head.weight is model.tok.weight
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    torch.testing.assert_close(model(ids).logits, expected, rtol=1e-5, atol=1e-5)
    back = attnlab.load(save_run(model, None, tmp_path / "run")).model
    assert all(torch.equal(v, before[k]) for k, v in back.state_dict().items())


def test_the_prompts_temporaries_go_back_before_decoding(monkeypatch):
    """After the prefill, freed memory goes back to the system once (the prompt's activations
    would otherwise stay resident for the whole decode)."""
    from attnlab.generate import engine

    events = []
    monkeypatch.setattr(engine, "release_freed_memory", lambda: events.append("release"))
    generate(_gpt("rope"), torch.tensor([[5, 9, 13]]), 3, on_token=lambda _: events.append("t"))
    assert events == ["release", "t", "t", "t"]
