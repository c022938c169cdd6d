"""Attention analysis: rollout and flow, head detectors, head importance, attribution, and an
induction head found in a model trained here."""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from torch import nn

from attnlab.attention import masks
from attnlab.attention.weights import PatternSource
from attnlab.inspect import attention_weights, hooks
from attnlab.inspect.analysis import (
    DETECTORS,
    _attention_grads,
    attribution,
    detect_heads,
    detection_scores,
    flow,
    head_importance,
    rollout,
    rollout_of,
)
from attnlab.inspect.hooks import resolve_layers
from attnlab.models import GPT, GPTConfig
from attnlab.models.bert import BERT, BertConfig
from attnlab.models.encoder_decoder import EncoderDecoder, TransformerConfig
from attnlab.models.gpt import lm_loss


def tiny_gpt(**overrides) -> GPT:
    torch.manual_seed(0)
    config = {"vocab_size": 32, "max_len": 16, "n_layer": 2, "n_head": 2, "dim": 16}
    return GPT(GPTConfig(**{**config, **overrides})).eval()


def random_weights(layers: int, b: int, h: int, t: int, *, causal: bool, seed: int = 0):
    """Softmax rows of random scores, (B, H, T, T) per layer, causal or not."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(layers):
        scores = torch.randn(b, h, t, t, generator=g) * 2
        if causal:
            scores = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), -math.inf)
        out.append(torch.softmax(scores, -1))
    return out


def dense_layer(w: np.ndarray, fusion: str, residual: bool) -> np.ndarray:
    """One layer of rollout, written out per batch element with numpy: (B, T, T)."""
    fuse = {"mean": np.mean, "max": np.max, "min": np.min}[fusion]
    b, _, t, _ = w.shape
    out = np.zeros((b, t, t))
    for n in range(b):
        a = fuse(w[n], axis=0)
        if residual:
            a = 0.5 * a + 0.5 * np.eye(t)
        for i in range(t):
            s = a[i].sum()
            out[n, i] = a[i] / s if s > 0 else a[i]
    return out


# -- rollout -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("causal", [True, False])
def test_rollout_equals_the_product_of_layer_matrices(fusion, residual, causal):
    weights = random_weights(3, 2, 3, 5, causal=causal)
    layers = [dense_layer(w.double().numpy(), fusion, residual) for w in weights]
    expected = np.zeros((2, 5, 5))
    for n in range(2):
        r = layers[0][n]
        for a in layers[1:]:
            r = a[n] @ r  # first layer first: later layers multiply from the left
        expected[n] = r
    got = rollout(weights, head_fusion=fusion, residual=residual)
    assert got.shape == (2, 5, 5) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
    # A dict in forward order (what attention_weights returns) is the same input.
    as_dict = rollout(dict(enumerate(weights)), head_fusion=fusion, residual=residual)
    assert torch.equal(as_dict, got)
    # Every layer's rows are renormalised, so the product's rows sum to 1 too.
    np.testing.assert_allclose(got.sum(-1).numpy(), 1.0, rtol=1e-5)


def test_rollout_keeps_causality_and_row_sums():
    got = rollout(random_weights(4, 3, 2, 6, causal=True))
    assert torch.all(got.triu(1) == 0)  # no token reaches an earlier output in a causal model
    torch.testing.assert_close(got.sum(-1), torch.ones(3, 6))


def test_rollout_discard_ratio_drops_the_smallest_entries_before_renormalising():
    w = torch.tensor([[0.7, 0.2, 0.1], [0.05, 0.9, 0.05], [0.3, 0.3, 0.4]])[None, None]
    # int(9 * ratio) = 2 entries are dropped, the two 0.05s; row 1 is renormalised.
    got = rollout([w], residual=False, discard_ratio=2 / 9 + 1e-9)
    expected = torch.tensor([[0.7, 0.2, 0.1], [0.0, 1.0, 0.0], [0.3, 0.3, 0.4]])
    torch.testing.assert_close(got[0], expected)


def test_rollout_of_a_model_equals_rollout_of_its_attentions():
    model = tiny_gpt(n_layer=3)
    ids = torch.randint(0, 32, (2, 7))
    attentions = model(ids, output_attentions=True).attentions
    torch.testing.assert_close(rollout_of(model, ids), rollout(list(attentions)))
    torch.testing.assert_close(
        rollout_of(model, ids, layers=[0, 1], head_fusion="max"),
        rollout(list(attentions[:2]), head_fusion="max"),
    )


def tiny_encoder_decoder() -> EncoderDecoder:
    torch.manual_seed(0)
    config = {"vocab_size": 20, "n_layer": 2, "n_decoder_layer": 1, "n_head": 2, "dim": 16}
    return EncoderDecoder(TransformerConfig(**config, hidden=32, dropout=0.0)).eval()


def test_rollout_of_an_encoder_decoder_needs_its_layers_named():
    model = tiny_encoder_decoder()
    src, tgt = torch.randint(3, 20, (2, 6)), torch.randint(3, 20, (2, 6))
    with pytest.raises(ValueError, match="layers: this model's attention modules form more than"):
        rollout_of(model, src, decoder_input_ids=tgt)  # source and target are both 6 long
    encoder = ["encoder.blocks.0.attn", "encoder.blocks.1.attn"]
    out = model(src, decoder_input_ids=tgt, output_attentions=True)
    torch.testing.assert_close(
        rollout_of(model, src, layers=encoder, decoder_input_ids=tgt),
        rollout(list(out.encoder_attentions)),
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"weights": []}, ValueError, "weights: expected at least one layer"),
        ({"weights": torch.ones(1, 1, 2, 2)}, TypeError, "weights: expected a list"),
        ({"weights": [torch.ones(1, 2, 2)]}, ValueError, "expected self-attention weights"),
        ({"weights": [torch.ones(1, 1, 2, 3)]}, ValueError, "(B, H, T, T), got shape (1, 1, 2, 3)"),
        (
            {"weights": [torch.ones(1, 1, 2, 2), torch.ones(1, 1, 3, 3)]},
            ValueError,
            "layer 1 has (B, T) = (1, 3)",
        ),
        ({"head_fusion": "sum"}, ValueError, "head_fusion: expected one of mean, max, min"),
        ({"discard_ratio": 1.0}, ValueError, "discard_ratio: expected a float in [0, 1)"),
        ({"discard_ratio": "a"}, TypeError, "discard_ratio"),
    ],
)
@pytest.mark.parametrize("fn", [rollout, flow])
def test_rollout_and_flow_reject_bad_input(fn, kwargs, error, message):
    args = {"weights": random_weights(1, 1, 1, 2, causal=False), **kwargs}
    with pytest.raises(error) as info:
        fn(**args)
    assert message in str(info.value)


# -- flow ----------------------------------------------------------------------------------------


def networkx_flow(weights, fusion: str, residual: bool) -> np.ndarray:
    """Raw max-flow values from networkx on the layered graph built from the dense layers."""
    nx = pytest.importorskip("networkx")
    layers = [dense_layer(w.double().numpy(), fusion, residual) for w in weights]
    b, t = layers[0].shape[0], layers[0].shape[1]
    out = np.zeros((b, t, t))
    for n in range(b):
        g = nx.DiGraph()
        for layer, a in enumerate(layers, start=1):
            for i in range(t):
                for j in range(t):
                    if a[n, i, j] > 0:
                        g.add_edge((layer - 1, j), (layer, i), capacity=float(a[n, i, j]))
        for i in range(t):
            for j in range(t):
                src, dst = (0, j), (len(layers), i)
                if src in g and dst in g:
                    out[n, i, j] = nx.maximum_flow_value(g, src, dst)
    return out


@pytest.mark.parametrize(
    ("causal", "fusion", "residual"),
    [(True, "mean", True), (False, "mean", True), (False, "max", True), (True, "min", False)],
)
def test_flow_equals_networkx_maximum_flow(causal, fusion, residual):
    weights = random_weights(3, 2, 2, 5, causal=causal, seed=3)
    expected = networkx_flow(weights, fusion, residual)
    raw = flow(weights, head_fusion=fusion, residual=residual, normalize=False)
    np.testing.assert_allclose(raw.numpy(), expected, rtol=1e-5, atol=1e-6)
    normalized = flow(weights, head_fusion=fusion, residual=residual)
    totals = expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(
        normalized.numpy(), np.where(totals > 0, expected / totals, 0), rtol=1e-5, atol=1e-6
    )
    if residual:
        np.testing.assert_allclose(normalized.sum(-1).numpy(), 1.0, rtol=1e-5)


def test_flow_through_one_layer_is_the_layer_itself():
    # One layer: a single edge joins each input to each output, so flow = capacity = rollout.
    weights = random_weights(1, 2, 3, 4, causal=False, seed=1)
    torch.testing.assert_close(flow(weights, normalize=False), rollout(weights))


def test_flow_refuses_graphs_over_max_nodes():
    weights = random_weights(3, 1, 1, 8, causal=True)  # (3 + 1) * 8 = 32 nodes
    assert flow(weights, max_nodes=32).shape == (1, 8, 8)
    with pytest.raises(ValueError, match=r"32 nodes, over max_nodes=31; .* use rollout\(\)"):
        flow(weights, max_nodes=31)


# -- head detectors ------------------------------------------------------------------------------


def transformer_lens_patterns(tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Detection patterns (T, T) of one sequence, as TransformerLens's head_detector builds them
    (its duplicate pattern shifted one key to the right gives the induction pattern)."""
    t = tokens.numel()
    previous = torch.zeros(t, t)
    previous[1:, :-1] = torch.eye(t - 1)
    same = (tokens[None, :] == tokens[:, None]).float()
    same.fill_diagonal_(0)
    duplicate = same.tril()
    shifted = torch.roll(duplicate, shifts=1, dims=1)
    induction = torch.cat([torch.zeros(t, 1), shifted[:, 1:]], dim=1).tril()
    first = torch.zeros(t, t)
    first[:, 0] = 1
    return {
        "previous_token": previous.tril(),
        "first_token": first,
        "duplicate_token": duplicate,
        "induction": induction,
    }


def transformer_lens_score(pattern, detection, exclude_bos, exclude_current_token) -> float:
    """compute_head_attention_similarity_score, error_measure="mul"."""
    pattern = pattern.clone()
    if exclude_bos:
        pattern[:, 0] = 0
    if exclude_current_token:
        pattern.fill_diagonal_(0)
    return float((pattern * detection).sum() / pattern.sum())


def dense_scores(weights, tokens, exclude_bos=False, exclude_current_token=False):
    """name -> (B, H) scores from dense weights (B, H, T, T), head by head."""
    b, h = weights.shape[:2]
    out = {name: torch.zeros(b, h) for name in DETECTORS}
    for n in range(b):
        for name, det in transformer_lens_patterns(tokens[n]).items():
            for head in range(h):
                out[name][n, head] = transformer_lens_score(
                    weights[n, head].double(), det.double(), exclude_bos, exclude_current_token
                )
    return out


def crafted_source(b=2, h=3, t=9, hkv=None, seed=0) -> tuple[PatternSource, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, t, 4, generator=g) * 2
    k = torch.randn(b, hkv or h, t, 4, generator=g) * 2
    source = PatternSource(q, k, mask=masks.causal(), bias=None, scale=1.0)
    tokens = torch.randint(0, 3, (b, t), generator=g)  # few ids: many duplicates
    return source, tokens


@pytest.mark.parametrize("exclude_bos", [False, True])
@pytest.mark.parametrize("exclude_current_token", [False, True])
@pytest.mark.parametrize("hkv", [None, 1])
def test_detection_scores_equal_transformer_lens_scores(exclude_bos, exclude_current_token, hkv):
    source, tokens = crafted_source(hkv=hkv)
    b, h, t, _ = source.shape
    expected = dense_scores(source.weights(), tokens, exclude_bos, exclude_current_token)
    # Two rows per tile: the scores are sums over many tiles.
    got = detection_scores(
        source,
        tokens,
        exclude_bos=exclude_bos,
        exclude_current_token=exclude_current_token,
        max_elements=2 * b * h * t,
    )
    assert list(got) == list(DETECTORS)
    for name in DETECTORS:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6)
    some = detection_scores(
        source,
        tokens,
        ("induction",),
        heads=[2, 0],
        exclude_bos=exclude_bos,
        exclude_current_token=exclude_current_token,
    )
    torch.testing.assert_close(some["induction"], expected["induction"][:, [2, 0]])


def test_detection_scores_of_hand_built_patterns():
    # One-hot queries and keys pick one key per row: head 0 the previous token, head 1 the
    # first token, head 2 the query itself. The scores follow from counting rows.
    t, big = 6, 60.0
    pos = torch.eye(t)
    q = torch.stack([pos.roll(1, dims=0), pos[0].expand(t, t), pos]) * big  # (H, T, D)
    k = torch.stack([pos, pos, pos]) * big
    source = PatternSource(q[None], k[None], mask=masks.causal(), bias=None, scale=1.0)
    tokens = torch.tensor([[5, 1, 2, 5, 1, 2]])
    got = detection_scores(source, tokens)
    # Row 0 can only see key 0; every other row of head 0 is on its previous token (row 1 on
    # key 0, the first token).
    torch.testing.assert_close(got["previous_token"][0], torch.tensor([(t - 1) / t, 1 / t, 0.0]))
    torch.testing.assert_close(got["first_token"][0], torch.tensor([2 / t, 1.0, 1 / t]))
    torch.testing.assert_close(got["duplicate_token"][0], torch.tensor([0.0, 1 / t, 0.0]))
    expected = dense_scores(source.weights(), tokens)
    for name in DETECTORS:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6)
    # Without the current token, the self-attending head has no weight left: it scores 0.
    excluded = detection_scores(source, tokens, exclude_current_token=True)
    assert excluded["first_token"][0, 2] == 0.0


def test_detect_heads_equals_transformer_lens_scores_of_the_models_weights():
    model = tiny_gpt(n_layer=3, n_head=4)
    ids = torch.randint(0, 5, (3, 10))
    weights = attention_weights(model, ids)
    got = detect_heads(model, ids, detectors=("induction", "previous_token"), exclude_bos=True)
    assert list(got) == ["induction", "previous_token"]
    for name in got:
        assert got[name].shape == (3, 4)
        for layer in range(3):
            expected = dense_scores(weights[layer], ids, exclude_bos=True)[name].mean(0)
            torch.testing.assert_close(got[name][layer], expected, rtol=1e-5, atol=1e-6)
    picked = detect_heads(model, ids, detectors="first_token", layers=[2, 0], heads=[3, 1])
    full = detect_heads(model, ids, detectors="first_token")["first_token"]
    torch.testing.assert_close(picked["first_token"], full[[2, 0]][:, [3, 1]])


def test_detect_heads_leaves_padding_queries_out():
    model = tiny_gpt()
    ids = torch.randint(0, 5, (1, 7))
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 7), torch.zeros(1, 3)], 1).long()
    plain = detect_heads(model, ids)
    masked = detect_heads(model, padded, attention_mask=mask)
    for name in DETECTORS:
        torch.testing.assert_close(masked[name], plain[name], rtol=1e-5, atol=1e-6)
    unmasked = detect_heads(model, padded)  # the padding rows count otherwise
    assert not torch.allclose(unmasked["previous_token"], plain["previous_token"])


def test_detect_heads_on_an_encoder_decoder_scores_self_attention_by_name():
    model = tiny_encoder_decoder()
    src, tgt = torch.randint(3, 20, (2, 6)), torch.randint(3, 20, (2, 4))
    got = detect_heads(model, src, decoder_input_ids=tgt)
    assert got["induction"].shape == (3, 2)  # encoder.blocks.0/1.attn, decoder.blocks.0.attn
    weights = attention_weights(model, src, decoder_input_ids=tgt, layers="decoder.blocks.0.attn")
    expected = dense_scores(weights["decoder.blocks.0.attn"], tgt)["duplicate_token"].mean(0)
    torch.testing.assert_close(got["duplicate_token"][2], expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"'decoder\.blocks\.0\.cross' is a cross-attention"):
        detect_heads(model, src, layers="decoder.blocks.0.cross", decoder_input_ids=tgt)
    with pytest.raises(ValueError, match=r"decoder_input_ids: layer 'decoder\.blocks\.0\.attn'"):
        detect_heads(model, src, layers="decoder.blocks.0.attn", labels=tgt)


def test_detect_heads_rejects_bad_input():
    model = tiny_gpt()
    ids = torch.randint(0, 32, (1, 5))
    with pytest.raises(ValueError) as info:
        detect_heads(model, ids, detectors=("induction", "copying"))
    assert "unknown detector 'copying'" in str(info.value)
    assert "previous_token, first_token, duplicate_token, induction" in str(info.value)
    with pytest.raises(ValueError, match="detectors: expected at least one"):
        detect_heads(model, ids, detectors=())
    with pytest.raises(ValueError, match=r"heads: .*2 is out of range.*layer 0 has 2 heads"):
        detect_heads(model, ids, heads=[2])
    with pytest.raises(ValueError, match="layers: layer 5 is out of range"):
        detect_heads(model, ids, layers=5)
    source, tokens = crafted_source()
    with pytest.raises(ValueError, match=r"tokens: expected token ids of shape \(B, Tk\) = "):
        detection_scores(source, tokens[:, :4])
    with pytest.raises(ValueError, match="tokens: detectors induction need the token ids"):
        detection_scores(source, None, "induction")
    assert detection_scores(source, None, "previous_token")["previous_token"].shape == (2, 3)


# -- head importance -----------------------------------------------------------------------------


def finite_difference_importance(model, batches, eps=1e-5) -> torch.Tensor:
    """sum over batches |(loss(mask_h = 1 + eps) - loss(mask_h = 1 - eps)) / 2 eps|, head by
    head, scaling one head's z through a hook."""
    cfg = model.config
    out = torch.zeros(cfg.n_layer, cfg.n_head, dtype=torch.float64)
    for layer in range(cfg.n_layer):
        for head in range(cfg.n_head):
            for batch in batches:
                losses = []
                for scale in (1 + eps, 1 - eps):

                    def fn(z, name, scale=scale, head=head):
                        z = z.clone()
                        z[:, head] = z[:, head] * scale
                        return z

                    with torch.no_grad(), hooks(model, {f"blocks.{layer}.attn.z": fn}):
                        losses.append(float(model(**batch).loss))
                out[layer, head] += abs(losses[0] - losses[1]) / (2 * eps)
    return out


def lm_batches(n: int, b: int = 2, t: int = 6, vocab: int = 32, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (b, t), generator=g)
        out.append({"input_ids": ids, "labels": ids})
    return out


def test_head_importance_equals_finite_differences():
    model = tiny_gpt(n_layer=2, n_head=3, dim=12).double()
    batches = lm_batches(2)
    raw = head_importance(model, batches, normalize=False)
    expected = finite_difference_importance(model, batches)
    assert raw.shape == (2, 3)
    torch.testing.assert_close(raw.double(), expected, rtol=1e-4, atol=1e-7)
    normalized = head_importance(model, batches)
    torch.testing.assert_close(normalized.norm(dim=1), torch.ones(2, dtype=normalized.dtype))
    torch.testing.assert_close(normalized, raw / raw.norm(dim=1, keepdim=True))
    assert all(p.grad is None for p in model.parameters())  # only the masks got gradients


def test_head_importance_with_loss_fn_and_tuple_batches():
    model = tiny_gpt(n_head=4, n_kv_head=2)  # grouped-query: one score per query head
    batches = lm_batches(2)
    expected = head_importance(model, batches)
    assert expected.shape == (2, 4)
    # GPT takes labels by keyword only: tuple batches hold the ids, loss_fn reads the labels.
    tuples = ((b["input_ids"],) for b in batches)  # a generator: batches are consumed once
    got = head_importance(model, tuples, loss_fn=lambda out, batch: lm_loss(out.logits, batch[0]))
    torch.testing.assert_close(got, expected)


def test_head_importance_of_an_encoder_decoder_has_a_row_per_attention_module():
    model = tiny_encoder_decoder()
    src, tgt = torch.randint(3, 20, (2, 6)), torch.randint(3, 20, (2, 5))
    got = head_importance(model, [{"input_ids": src, "labels": tgt}], normalize=False)
    # encoder.blocks.0.attn, encoder.blocks.1.attn, decoder.blocks.0.attn, decoder.blocks.0.cross
    assert list(resolve_layers(model, None))[3] == "decoder.blocks.0.cross"
    assert got.shape == (4, 2) and (got > 0).all()
    cross = head_importance(
        model, [{"input_ids": src, "labels": tgt}], normalize=False, layers="decoder.blocks.0.cross"
    )
    torch.testing.assert_close(cross[0], got[3])


def test_head_importance_pads_layers_with_fewer_heads_with_nan():
    config = {"vocab_size": 30, "max_len": 8, "n_layer": 2, "n_head": 2, "dim": 16, "hidden": 32}
    pruned = {"blocks.1.attn": {"heads": [1], "kv_heads": 1}}
    torch.manual_seed(0)
    model = BERT(BertConfig(**config, dropout=0.0, layer_heads=pruned)).eval()
    ids = torch.randint(0, 30, (2, 5))
    got = head_importance(model, [{"input_ids": ids}], loss_fn=lambda out, _: out.logits.sum())
    assert got.shape == (2, 2)
    assert torch.isfinite(got[0]).all() and torch.isfinite(got[1, 0]) and got[1, 1].isnan()


def test_head_importance_rejects_bad_input():
    model = tiny_gpt()
    ids = torch.randint(0, 32, (1, 5))
    with pytest.raises(ValueError, match="batches: the model returned no loss; include labels"):
        head_importance(model, [{"input_ids": ids}])
    with pytest.raises(ValueError, match="batches: got no batches"):
        head_importance(model, [])
    with pytest.raises(TypeError, match="batches: expected an iterable of batches"):
        head_importance(model, {"input_ids": ids, "labels": ids})
    with pytest.raises(TypeError, match=r"batches: expected each batch as a dict .* got Tensor"):
        head_importance(model, [ids])
    with pytest.raises(ValueError, match=r"loss_fn: expected a scalar tensor, got \(1, 5, 32\)"):
        head_importance(model, [(ids,)], loss_fn=lambda out, _: out.logits)


# -- attribution ---------------------------------------------------------------------------------


def test_replacing_the_pattern_by_itself_keeps_the_logits():
    model = tiny_gpt(n_layer=3)
    ids = torch.randint(0, 32, (2, 9))
    plain = model(ids).logits
    chosen = resolve_layers(model, None)
    logits, patterns, grads = _attention_grads(model, ids, None, -1, chosen, {})
    torch.testing.assert_close(logits, plain, rtol=0, atol=1e-5)
    assert len(patterns) == len(grads) == 3 and patterns[0].shape == (2, 2, 9, 9)
    with hooks(model, {"blocks.*.attn.pattern": lambda p, name: p}):
        torch.testing.assert_close(model(ids).logits, plain, rtol=0, atol=1e-5)


def test_attribution_is_zero_after_the_position_in_a_causal_model():
    model = tiny_gpt(n_layer=3)
    ids = torch.randint(0, 32, (2, 9))
    got = attribution(model, ids, position=4)
    assert got.shape == (2, 9)
    assert torch.all(got[:, 5:] == 0)
    assert torch.all(got[:, 4] >= 1) and torch.all(got[:, :4] >= 0)
    assert got[:, :4].sum() > 0
    assert all(p.grad is None for p in model.parameters())
    # The default target is the argmax at the position.
    best = model(ids).logits[:, 4].argmax(-1)
    torch.testing.assert_close(attribution(model, ids, target=best, position=4), got)


def finite_difference_pattern_grads(model, ids, target, position, eps=1e-6):
    """d logit / d A for every allowed entry of every layer's pattern, by central differences:
    a hook adds +-eps at one entry (of every sequence at once: sequences are independent) while
    later layers recompute their patterns as usual. Masked entries (A = 0) are left at 0."""
    with torch.no_grad():
        weights = model(ids, output_attentions=True).attentions
    rows = torch.arange(ids.shape[0])
    grads = []
    for layer, w in enumerate(weights):
        grad = torch.zeros_like(w)
        _, h, t, _ = w.shape
        for head, i, j in np.ndindex(h, t, t):
            if j > i:
                continue
            values = []
            for sign in (1, -1):

                def bump(p, name, index=(head, i, j), sign=sign):
                    p = p.clone()
                    p[:, index[0], index[1], index[2]] += sign * eps
                    return p

                with torch.no_grad(), hooks(model, {f"blocks.{layer}.attn.pattern": bump}):
                    values.append(model(ids).logits[rows, position, target])
            grad[:, head, i, j] = (values[0] - values[1]) / (2 * eps)
        grads.append(grad)
    return weights, grads


def test_attribution_equals_gradient_times_attention_rolled_out_by_hand():
    model = tiny_gpt(n_layer=2, n_head=2, dim=8).double()
    ids = torch.randint(0, 32, (2, 3))
    target, position = torch.tensor([3, 7]), 1
    weights, grads = finite_difference_pattern_grads(model, ids, target, position)
    relevance = torch.eye(3, dtype=torch.float64).expand(2, 3, 3)
    for a, g in zip(weights, grads, strict=True):
        layer = (g * a).clamp(min=0).mean(1)
        relevance = relevance + layer @ relevance
    got = attribution(model, ids, target=target, position=position)
    torch.testing.assert_close(got.double(), relevance[:, position], rtol=1e-5, atol=1e-7)


def test_attribution_of_a_sequence_classifier():
    config = {"vocab_size": 30, "max_len": 8, "n_layer": 2, "n_head": 2, "dim": 16, "hidden": 32}
    torch.manual_seed(0)
    model = BERT(BertConfig(**config, dropout=0.0, head="classify", num_labels=3)).eval()
    ids = torch.randint(0, 30, (2, 6))
    got = attribution(model, ids, target=1, position=0)  # the [CLS] row
    assert got.shape == (2, 6) and torch.isfinite(got).all() and (got[:, 1:] > 0).any()


def test_attribution_rejects_bad_input():
    model = tiny_gpt()
    ids = torch.randint(0, 32, (2, 5))
    with pytest.raises(ValueError, match="position: expected -5 <= position < 5, got 5"):
        attribution(model, ids, position=5)
    with pytest.raises(TypeError, match="position: expected an int"):
        attribution(model, ids, position=1.0)
    with pytest.raises(ValueError, match=r"target: expected ids in \[0, 32\), got \[32, 32\]"):
        attribution(model, ids, target=32)
    with pytest.raises(ValueError, match="target: expected an int or integer ids of shape"):
        attribution(model, ids, target=torch.tensor([0.5, 1.0]))


# -- an induction head, trained here -------------------------------------------------------------


class Zeros(nn.Module):
    """Stands in for a block's MLP: an attention-only Transformer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


@contextmanager
def one_thread():
    """Tiny matmuls run fastest, and reproducibly, on one thread; restore the caller's count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def copy_task(g: torch.Generator, b: int, t: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random tokens after a BOS (id 0) in which a random segment of 4 to 8 tokens is repeated
    after a random gap; labels (-100 = ignored) are the repeat's tokens after its first one.

    The random length and gap leave no fixed offset between the copies, so looking back a
    fixed number of positions cannot predict the repeat: the model needs an induction head."""
    ids = torch.randint(1, vocab, (b, t), generator=g)
    ids[:, 0] = 0
    labels = torch.full((b, t), -100)
    lengths = torch.randint(4, 9, (b,), generator=g).tolist()
    u, v = torch.rand(b, generator=g).tolist(), torch.rand(b, generator=g).tolist()
    for row, n in enumerate(lengths):
        room = t - 1 - 2 * n
        gap = int(u[row] * (room + 1))
        start = 1 + int(v[row] * (room - gap + 1))
        copy = start + n + gap
        ids[row, copy : copy + n] = ids[row, start : start + n]
        labels[row, copy + 1 : copy + n] = ids[row, copy + 1 : copy + n]
    return ids, labels


def test_induction_and_previous_token_heads_of_a_trained_attention_only_model():
    t, vocab = 25, 32
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=vocab, max_len=t, n_layer=2, n_head=2, dim=32))
    for block in model.blocks:
        block.mlp = Zeros()
    # Fresh sequences repeated back to back: [BOS, s_1..s_10, s_1..s_10].
    g = torch.Generator().manual_seed(123)
    s = torch.randint(1, vocab, (16, 10), generator=g)
    repeated = torch.cat([torch.zeros(16, 1, dtype=torch.long), s, s], 1)

    untrained = detect_heads(model, repeated, detectors=("induction", "previous_token"))
    assert untrained["induction"].max() < 0.1  # near-uniform rows: ~1/21 of the mass on targets

    g.manual_seed(1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    recent: list[float] = []
    with one_thread():
        for _ in range(3000):
            ids, labels = copy_task(g, 32, t, vocab)
            loss = model(ids, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            recent = [*recent[-49:], loss.item()]
            if len(recent) == 50 and sum(recent) / 50 < 0.5:  # log(31) = 3.4 before learning
                break
    assert sum(recent) / len(recent) < 0.5
    model.eval()
    with torch.no_grad():
        held_out = model(repeated, labels=repeated.masked_fill(torch.arange(21) < 12, -100))
    assert held_out.loss < 1.0  # the second copy of fresh sequences is predicted

    scores = detect_heads(model, repeated, detectors=("induction", "previous_token"))
    # An induction head puts its mass on the token after the earlier copy; only the 10 rows
    # of the second copy have such a token, so a perfect head scores 10/21 = 0.48.
    assert scores["induction"][1].max() > 0.3
    assert scores["induction"][0].max() < 0.15
    # Its keys come from a previous-token head in layer 0 (K-composition).
    assert scores["previous_token"][0].max() > 0.4
