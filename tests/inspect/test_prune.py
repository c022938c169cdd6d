"""Structural head pruning: equal to zero-ablating the heads, for every family and for grouped
queries; smaller models that save, load and refuse Hugging Face export; head scores and curves."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import attnlab
from attnlab.attention.bias import RelativePositionBias
from attnlab.attention.multihead import MultiHeadAttention
from attnlab.convert import save_hf
from attnlab.inspect import ablate_heads
from attnlab.inspect.prune import (
    curve_fractions,
    prune_heads,
    pruning_curve,
    score_heads,
    select_heads,
)
from attnlab.loader import convert, save_run
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
from attnlab.models.info import model_info

ATOL = 1e-6


def gpt2(**overrides) -> GPT:
    config = dict(vocab_size=23, max_len=16, n_layer=2, n_head=4, dim=32, backend="sdpa")
    return GPT(GPTConfig(**{**config, **overrides})).eval()


def llama(**overrides) -> GPT:
    config = dict(
        vocab_size=23,
        max_len=16,
        n_layer=2,
        n_head=8,
        n_kv_head=2,
        dim=64,
        norm="rmsnorm",
        mlp="swiglu",
        position="rope",
        bias=False,
        tie_embeddings=False,
        backend="sdpa",
    )
    return GPT(GPTConfig(**{**config, **overrides})).eval()


def bert(head: str = "classify") -> BERT:
    config = BertConfig(
        vocab_size=30, max_len=16, n_layer=2, n_head=4, dim=32, hidden=64, dropout=0.0,
        head=head, num_labels=3, backend="sdpa",
    )  # fmt: skip
    return BERT(config).eval()


def vit() -> ViT:
    config = ViTConfig(
        image_size=8, patch_size=4, channels=1, num_labels=5, n_layer=2, n_head=4, dim=32,
        hidden=64, backend="sdpa",
    )  # fmt: skip
    return ViT(config).eval()


def seq2seq() -> EncoderDecoder:
    config = TransformerConfig(
        vocab_size=25, max_len=16, n_layer=2, n_head=4, dim=32, hidden=64, dropout=0.0,
        backend="sdpa",
    )  # fmt: skip
    return EncoderDecoder(config).eval()


def ids(b: int = 2, t: int = 9, vocab: int = 23) -> torch.Tensor:
    return torch.randint(3, vocab, (b, t), generator=torch.Generator().manual_seed(1))


def assert_pruning_is_ablation(model, heads, *inputs, **kwargs):
    """Pruning ``heads`` from a copy gives the logits of ``model`` with them zero-ablated."""
    with torch.no_grad(), ablate_heads(model, heads, mode="zero"):
        ablated = model(*inputs, **kwargs).logits
    pruned = prune_heads(copy.deepcopy(model), heads)
    with torch.no_grad():
        got = pruned(*inputs, **kwargs).logits
    torch.testing.assert_close(got, ablated, atol=ATOL, rtol=0)
    with torch.no_grad():  # and pruning changed something: the heads mattered
        full = model(*inputs, **kwargs).logits
    assert (full - got).norm() > 1e-3 * full.norm()
    return pruned


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# -- equal to zero-ablation, every family --------------------------------------------------------


def test_gpt2_pruning_equals_ablation_and_removes_the_heads_parameters():
    model = gpt2()
    pruned = assert_pruning_is_ablation(model, {0: [1], 1: [0, 3]}, ids())
    attn = pruned.blocks[1].attn
    assert (attn.n_heads, attn.n_kv_heads) == (2, 2)
    assert attn.q_proj.weight.shape == (16, 32) and attn.out_proj.weight.shape == (32, 16)
    # Each head: q, k, v rows (Dh x C + Dh bias each) and out_proj columns (C x Dh).
    dh, c = 8, 32
    assert n_params(model) - n_params(pruned) == 3 * (3 * (dh * c + dh) + c * dh)
    assert pruned.config.layer_heads == {
        "blocks.0.attn": {"heads": [0, 2, 3], "kv_heads": 3},
        "blocks.1.attn": {"heads": [1, 2], "kv_heads": 2},
    }
    assert model.config.layer_heads is None  # the copy was pruned, not the original


def test_llama_gqa_whole_groups_drop_their_key_value_heads():
    model = llama(qk_norm=True)  # 8 query heads in 2 groups of 4; q/k norms shared by heads
    pruned = assert_pruning_is_ablation(model, {0: [4, 5, 6, 7], 1: [0, 1, 4, 5]}, ids())
    a0, a1 = pruned.blocks[0].attn, pruned.blocks[1].attn
    assert (a0.n_heads, a0.n_kv_heads) == (4, 1) and a0.k_proj.weight.shape == (8, 64)
    assert (a1.n_heads, a1.n_kv_heads) == (4, 2)  # groups of 2 now
    assert n_params(pruned) < n_params(model)


@pytest.mark.parametrize(
    ("drop", "kv_heads"),
    [
        ([0], 7),  # groups of 3 and 4: gcd 1, every key/value head copied per query head
        ([0, 1], 3),  # groups of 2 and 4: gcd 2, the second key/value head twice
        ([1, 5, 6], 5),  # groups of 3 and 2: gcd 1, one copy per query head
    ],
)
def test_llama_uneven_groups_replicate_key_value_heads_exactly(drop, kv_heads):
    model = llama()
    pruned = assert_pruning_is_ablation(model, {1: drop}, ids())
    attn = pruned.blocks[1].attn
    assert (attn.n_heads, attn.n_kv_heads) == (8 - len(drop), kv_heads)
    assert pruned.config.layer_heads["blocks.1.attn"]["kv_heads"] == kv_heads
    # Decoding token by token through the (resized) KV cache equals the full forward.
    x = ids(1, 6)
    caches = pruned.make_caches(1, 16)
    with torch.no_grad():
        steps = torch.cat([pruned(x[:, i : i + 1], caches=caches).logits for i in range(6)], 1)
        torch.testing.assert_close(steps, pruned(x).logits, atol=1e-5, rtol=0)


def test_alibi_keeps_the_slopes_of_the_kept_heads_also_after_loading(tmp_path):
    model = gpt2(position="alibi")
    pruned = assert_pruning_is_ablation(model, {0: [0, 2]}, ids())
    loaded = attnlab.load(save_run(pruned, None, tmp_path / "run")).model
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids()).logits, pruned(ids()).logits, atol=0, rtol=0)


def test_bert_with_padding_pruning_equals_ablation():
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    # head="none": the outputs compared are the final hidden states, of order 1.
    model = bert("none")
    assert_pruning_is_ablation(model, {0: [3], 1: [0, 1, 2]}, ids(vocab=30), attention_mask=mask)


def test_vit_pruning_equals_ablation():
    images = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    assert_pruning_is_ablation(vit(), {0: [0, 1], 1: [2]}, images)


def test_encoder_decoder_self_and_cross_attention_pruning_equals_ablation():
    heads = {
        "encoder.blocks.0.attn": [1],
        "decoder.blocks.0.attn": [0, 3],
        "decoder.blocks.1.cross": [2],
    }
    pruned = assert_pruning_is_ablation(
        seq2seq(), heads, ids(vocab=25), decoder_input_ids=ids(2, 5, 25)
    )
    assert list(pruned.config.layer_heads) == list(heads)  # recorded by module name
    assert pruned.decoder[1].cross.k_proj.weight.shape == (24, 32)


def test_general_score_and_t5_bias_are_sliced_per_head():
    torch.manual_seed(0)
    attn = MultiHeadAttention(
        32, 4, 2, position=RelativePositionBias(4), score="general", backend="sdpa"
    ).eval()
    with torch.no_grad():  # a score matrix that is not the identity, per key/value head
        attn.score.weight.add_(0.3 * torch.randn_like(attn.score.weight))
    x = torch.randn(2, 7, 32)
    with torch.no_grad(), ablate_heads(attn, {0: [0, 1, 3]}):
        ablated = attn(x)
    pruned = prune_heads(copy.deepcopy(attn), {0: [0, 1, 3]})
    assert pruned.score.weight.shape == (1, 8, 8) and pruned.position.weight.shape == (32, 1)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), ablated, atol=ATOL, rtol=0)


def test_pruning_twice_records_the_original_head_indices():
    model = gpt2()
    once = prune_heads(copy.deepcopy(model), {0: [0]})  # heads 1, 2, 3 left, now 0, 1, 2
    twice = prune_heads(once, {0: [1]})  # the original head 2
    assert twice.config.layer_heads == {"blocks.0.attn": {"heads": [1, 3], "kv_heads": 2}}
    with torch.no_grad(), ablate_heads(model, {0: [0, 2]}):
        torch.testing.assert_close(twice(ids()).logits, model(ids()).logits, atol=ATOL, rtol=0)


# -- saving, loading, cost, export ---------------------------------------------------------------


def test_a_pruned_run_loads_with_identical_outputs_and_costs_less(tmp_path):
    model = llama()
    pruned = prune_heads(copy.deepcopy(model), {0: [4, 5, 6, 7], 1: [2]})
    run = save_run(pruned, None, tmp_path / "run")
    saved = json.loads((run / "config.json").read_text())["config"]["layer_heads"]
    assert saved == pruned.config.layer_heads
    loaded = attnlab.load(run)
    assert loaded.config.layer_heads == pruned.config.layer_heads
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids()).logits, pruned(ids()).logits, atol=0, rtol=0)
    # attnlab info reads the configuration alone (meta device): fewer parameters and FLOPs.
    full, small = model_info(model), model_info(attnlab.load(run, device="meta").model)
    assert small.total == n_params(pruned) < full.total
    assert small.flops_linear < full.flops_linear and small.flops_attention < full.flops_attention
    assert "11 of 16 attention heads left by pruning" in small.format()


def test_hugging_face_export_of_a_pruned_model_is_refused(tmp_path):
    pruned = prune_heads(gpt2(), {1: [0]})
    with pytest.raises(ValueError, match=r"^model: cannot be written as a Hugging Face .* pruned"):
        save_hf(pruned, tmp_path / "hf")
    run = save_run(pruned, None, tmp_path / "run")
    with pytest.raises(ValueError, match=r"blocks.1.attn keeps 3 of 4\)"):
        convert(run, tmp_path / "out", to="hf")
    assert not (tmp_path / "out").exists()


def test_a_config_with_bad_layer_heads_is_refused_and_named(tmp_path):
    base = dict(vocab_size=23, max_len=16, n_layer=2, n_head=4, dim=32)
    bad = {
        "blocks.2.attn": {"heads": [0], "kv_heads": 1},
        "blocks.0.attn": {"heads": [0, 4], "kv_heads": 2},
        "blocks.1.attn": {"heads": [2, 1], "kv_heads": 2},
    }
    messages = {
        "blocks.2.attn": r"unknown attention module 'blocks.2.attn' \(did you mean",
        "blocks.0.attn": r"\['blocks.0.attn'\].heads: expected distinct head indices in \[0, n_h",
        "blocks.1.attn": r"in increasing order, got \[2, 1\]",
    }
    for name, entry in bad.items():
        with pytest.raises(ValueError, match=messages[name]):
            GPTConfig(**base, layer_heads={name: entry})
    with pytest.raises(ValueError, match=r"kv_heads: expected a divisor of its 3 heads, got 2"):
        GPTConfig(**base, layer_heads={"blocks.0.attn": {"heads": [0, 1, 2], "kv_heads": 2}})
    with pytest.raises(ValueError, match=r"expected \{'heads': \[...\], 'kv_heads': n\}"):
        BertConfig(layer_heads={"blocks.0.attn": [2, 2]})
    # A checkpoint whose config was edited is named by its file.
    run = save_run(prune_heads(gpt2(), {0: [1]}), None, tmp_path / "run")
    meta_file = run / "checkpoints" / "step-0000000" / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["config"]["layer_heads"]["blocks.0.attn"]["heads"] = [0, 1, 9]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"meta.json: invalid model config \(layer_heads"):
        attnlab.load(run)


# -- bad requests ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("heads", "message"),
    [
        ({1: [0, 0]}, r"^heads: head 0 is listed twice for layer 1$"),
        ({1: [3, -1]}, r"^heads: head 3 is listed twice for layer 1$"),
        ({1: [4]}, r"^heads: .*4 is out of range.*layer 1 has 4 heads"),
        ({1: [0, 1, 2, 3]}, r"^heads: removing all 4 heads of layer 1 would leave it no attention"),
        ({0: [1], "blocks.0.attn": [2]}, r"layers 0 and 'blocks.0.attn' name the same attention"),
        ({5: [0]}, r"^layers: layer 5 is out of range"),
        ({"blocks.0.atn": [0]}, r"unknown attention module 'blocks.0.atn'; did you mean"),
    ],
)
def test_bad_requests_name_the_layer_and_change_nothing(heads, message):
    model = gpt2()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=message):
        prune_heads(model, {0: [0], **heads})
    assert model.config.layer_heads is None and model.blocks[0].attn.n_heads == 4
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(TypeError, match=r"^heads: expected a dict layer -> head indices, got list"):
        prune_heads(model, [0, 1])


# -- scores, selection, curves --------------------------------------------------------------------


def lm_batches(n: int = 2):
    return [{"input_ids": ids(2, 9), "labels": ids(2, 9)} for _ in range(n)]


def test_importance_scores_a_silenced_head_zero_and_it_goes_first():
    model = gpt2()
    with torch.no_grad():  # head 2 of block 1 writes nothing: removing it changes no loss
        model.blocks[1].attn.out_proj.weight[:, 16:24] = 0
    model.train()
    scores = score_heads(model, "importance", lm_batches())
    assert model.training  # scored in eval mode, then put back
    assert list(scores) == ["blocks.0.attn", "blocks.1.attn"]
    assert scores["blocks.1.attn"][2] == 0 and (scores["blocks.0.attn"] > 0).all()
    assert select_heads(scores, 0.1) == {"blocks.1.attn": [2]}  # round(0.1 * 8) = 1


def test_entropy_scores_minus_the_mean_entropy_and_random_is_seeded():
    model = bert()
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, 5:] = 0
    batch = {"input_ids": ids(vocab=30), "attention_mask": mask, "labels": torch.tensor([0, 2])}
    scores = score_heads(model, "entropy", [batch])
    stats = attnlab.inspect.head_stats(model, batch["input_ids"], attention_mask=mask)
    expected = -(stats[0].entropy * stats[0].rows[:, None]).sum(0).float() / stats[0].rows.sum()
    torch.testing.assert_close(scores["blocks.0.attn"], expected, atol=1e-6, rtol=0)
    assert (scores["blocks.0.attn"] < 0).all()
    first, again = (
        score_heads(model, "random", [], seed=3),
        score_heads(model, "random", [], seed=3),
    )
    assert all(torch.equal(first[k], again[k]) for k in first)
    with pytest.raises(ValueError, match=r"^by: expected one of importance, entropy, random"):
        score_heads(model, "magnitude", [batch])
    with pytest.raises(ValueError, match=r"^batches: expected at least one batch"):
        score_heads(model, "importance", [])


def test_selection_ranks_across_layers_and_keeps_a_head_in_every_layer():
    scores = {"a": torch.tensor([0.1, 0.2, 0.9]), "b": torch.tensor([0.05, 0.06, 0.07])}
    assert select_heads(scores, 0.5) == {"a": [0], "b": [0, 1]}  # b's best head stays
    assert select_heads(scores, 2 / 3) == {"a": [0, 1], "b": [0, 1]}
    assert select_heads(scores, 0) == {}
    with pytest.raises(ValueError, match=r"of 6 heads is 5, but each of the 2 attention layers"):
        select_heads(scores, 0.8)
    with pytest.raises(ValueError, match=r"^fraction: expected a number in \[0, 1\), got 1.5"):
        select_heads(scores, 1.5)
    assert curve_fractions(0.25) == [0.0, 0.1, 0.2, 0.25]
    assert curve_fractions(0.3) == [0.0, 0.1, 0.2, 0.3]


def test_the_curve_prunes_copies_and_reports_each_point():
    model = gpt2()
    scores = score_heads(model, "random", [])
    seen = []

    def evaluate(pruned):
        seen.append(sum(m.n_heads for m in attnlab.inspect.attention_modules(pruned).values()))
        return {"val_loss": float(len(seen))}

    rows = pruning_curve(model, scores, [0.0, 0.1, 0.12, 0.5], evaluate)
    assert [r["heads_pruned"] for r in rows] == [0, 1, 4]  # 0.12 rounds to 1 again: skipped
    assert seen == [8, 7, 4] and [r["fraction"] for r in rows] == [0.0, 0.125, 0.5]
    assert rows[0]["params"] > rows[1]["params"] > rows[2]["params"]
    assert model.config.layer_heads is None


def test_layer_heads_of_a_config_claiming_huge_depth_are_checked_without_listing_layers():
    # A hostile or mistaken config may claim 2**31 - 1 layers: names are parsed, not enumerated.
    entry = {"heads": [0, 1], "kv_heads": 2}
    config = GPTConfig(
        n_layer=2**31 - 1, n_head=4, dim=32, layer_heads={"blocks.2147483646.attn": entry}
    )
    assert config.layer_heads == {"blocks.2147483646.attn": entry}
    with pytest.raises(
        ValueError,
        match=r"unknown attention module 'blocks\.2147483647\.attn'.*blocks\.\{0\.\.2147483646\}",
    ):
        GPTConfig(
            n_layer=2**31 - 1, n_head=4, dim=32, layer_heads={"blocks.2147483647.attn": entry}
        )
    with pytest.raises(ValueError, match=r"unknown attention module 'blocks\.01\.attn'"):
        GPTConfig(n_layer=2, n_head=4, dim=32, layer_heads={"blocks.01.attn": entry})
