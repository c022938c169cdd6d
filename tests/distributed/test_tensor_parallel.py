"""Tensor parallelism (attnlab.distributed.tp): a model split over 2 gloo ranks computes what the
model computes in one process: logits, gradients, AdamW steps with clipping, cached decoding.

Every multi-rank check runs in ONE spawn of two ranks (a spawn costs seconds); the rank function
returns measured differences, and the tests below assert on them. The refusals need no process
group: ``tp_plan`` checks the split for a given tensor-parallel size.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, SequenceParallel

sys.path.insert(0, str(Path(__file__).parent))
from ranks import run_ranks

from attnlab.attention.multihead import MultiHeadAttention
from attnlab.distributed.tp import LocalHeads, apply_tp, tp_plan
from attnlab.models import BERT, GPT, BertConfig, EncoderDecoder, GPTConfig, TransformerConfig
from attnlab.position import RotaryEmbedding

WORLD = 2
VOCAB = 48
STEPS = 3
TOL = 1e-5


def gpt2(**overrides) -> GPT:
    """GPT-2 flavour: biases, LayerNorm, learned positions, tanh-GELU MLP, tied embeddings."""
    return GPT(
        GPTConfig(
            vocab_size=VOCAB, max_len=16, n_layer=2, n_head=4, dim=32, dropout=0.0, **overrides
        )
    )


def llama(**overrides) -> GPT:
    """Llama flavour: RoPE, grouped-query attention (4 heads, 2 key/value heads), RMSNorm,
    SwiGLU, no biases, untied head; here with qk-norm too (Qwen3, OLMo 2), whose weights are
    replicated while the heads they normalise are split."""
    return GPT.from_preset(
        "llama-small",
        **{"vocab_size": VOCAB, "max_len": 16, "n_layer": 2, "n_head": 4, "n_kv_head": 2,
           "dim": 32, "hidden": 64, "qk_norm": True, **overrides},
    )  # fmt: skip


def bert(**overrides) -> BERT:
    return BERT(
        BertConfig(
            vocab_size=VOCAB, max_len=16, n_layer=1, n_head=4, dim=32, hidden=64, dropout=0.0,
            **overrides,
        )
    )  # fmt: skip


def encoder_decoder() -> EncoderDecoder:
    return EncoderDecoder(
        TransformerConfig(
            vocab_size=VOCAB, max_len=16, n_layer=1, n_decoder_layer=1, n_head=4, dim=32,
            hidden=64, dropout=0.0,
        )
    )  # fmt: skip


def _lm_batch(g: torch.Generator) -> dict:
    ids = torch.randint(0, VOCAB, (2, 12), generator=g)
    return {"input_ids": ids, "labels": ids}


def _bert_batch(g: torch.Generator) -> dict:
    ids = torch.randint(0, VOCAB, (2, 12), generator=g)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 9:] = 0  # a padded row
    labels = torch.where(torch.rand(2, 12, generator=g) < 0.5, ids, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _seq2seq_batch(g: torch.Generator) -> dict:
    return {
        "input_ids": torch.randint(3, VOCAB, (2, 12), generator=g),
        "labels": torch.randint(3, VOCAB, (2, 12), generator=g),
    }


# name -> (model builder, batch builder)
CASES = {
    "gpt2": (gpt2, _lm_batch),
    "llama": (llama, _lm_batch),
    "llama_linear_attention": (lambda: llama(attention="linear"), _lm_batch),
    "bert": (bert, _bert_batch),
    "encoder_decoder": (encoder_decoder, _seq2seq_batch),
}


# --- run on every rank -------------------------------------------------------------------------


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _build(builder, rank: int):
    """The reference (seed 0) and the model to split, built from this rank's own seed: the split
    must give every rank the first rank's weights."""
    models = []
    for seed in (0, rank):
        torch.manual_seed(seed)
        model = builder()
        with torch.no_grad():  # norms' weights away from 1 and biases away from 0
            for p in model.parameters():
                if p.dim() == 1:
                    p.add_(torch.randn_like(p) * 0.2)
        models.append(model)
    return models


def _max_diff(a, b) -> float:
    return (_full(a) - b).abs().max().item()


def _pairs(tp, ref):
    """(name, split model's parameter, reference's parameter) for every parameter."""
    for (name, p), (ref_name, q) in zip(tp.named_parameters(), ref.named_parameters(), strict=True):
        assert name == ref_name, (name, ref_name)
        yield name, p, q


def _grad_diffs(tp, ref) -> dict[str, float]:
    out = {}
    for name, p, q in _pairs(tp, ref):
        if (p.grad is None) != (q.grad is None):
            out[name] = float("inf")
        elif p.grad is not None:
            out[name] = _max_diff(p.grad, q.grad)
    return out


def _train(builder, batch_of, mesh, rank: int) -> tuple[dict, object, object]:
    """Logits, gradients, clipped AdamW steps of a split model against one process."""
    ref, tp = _build(builder, rank)
    apply_tp(tp, mesh)
    result: dict = {
        "placements": {
            n: str(p.placements) if hasattr(p, "placements") else "a plain tensor"
            for n, p in tp.named_parameters()
        }
    }
    # eps well above rounding noise: a gradient that is zero up to rounding (a key bias's,
    # which softmax ignores) must not become a full Adam step of either sign.
    opts = [
        torch.optim.AdamW(m.parameters(), lr=1e-3, eps=1e-6, weight_decay=0.1) for m in (tp, ref)
    ]
    g = torch.Generator().manual_seed(1)
    norms = []
    for step in range(STEPS):
        batch = batch_of(g)
        outs = []
        for model, opt in zip((tp, ref), opts, strict=True):
            opt.zero_grad()
            out = model(**batch)
            out.loss.backward()
            outs.append(out)
        if step == 0:
            result["logits"] = _max_diff(outs[0].logits, outs[1].logits)
            result["grads"] = _grad_diffs(tp, ref)
        # A small max_norm so that clipping acts.
        n_tp, n_ref = (torch.nn.utils.clip_grad_norm_(m.parameters(), 0.5) for m in (tp, ref))
        norms.append((_full(n_tp).item(), n_ref.item()))
        if step == 0:
            result["clipped"] = _grad_diffs(tp, ref)
        for opt in opts:
            opt.step()
    result["norms"] = norms
    result["weights"] = {n: _max_diff(p.detach(), q.detach()) for n, p, q in _pairs(tp, ref)}
    return result, tp, ref


def _decode(tp, ref, kind: str) -> float:
    """Greedy decoding over a cache of ``kind``: the largest logit difference of any step."""
    prompt = torch.randint(0, VOCAB, (1, 5), generator=torch.Generator().manual_seed(2))
    caches = [m.make_caches(1, 12, kind=kind) for m in (tp, ref)]
    ids, worst = prompt, 0.0
    for _ in range(4):
        a, b = (m(ids, caches=c).logits for m, c in zip((tp, ref), caches, strict=True))
        worst = max(worst, _max_diff(a, b))
        ids = b[:, -1:].argmax(-1)  # both models continue with the reference's token
    return worst


def _unsplit_qk_norm_grad(mesh, rank: int) -> float:
    """A wrong plan: the qk-norms left as plain replicated modules. Each rank then sees the
    gradient of its own heads only; the largest difference of the norms' gradients."""
    from torch.distributed.tensor.parallel import parallelize_module

    ref, tp = _build(llama, 0)  # the same weights everywhere
    plan = {k: v for k, v in tp_plan(tp, WORLD).items() if not k.endswith("_norm")}
    parallelize_module(tp, mesh, plan)
    batch = _lm_batch(torch.Generator().manual_seed(1))
    for model in (tp, ref):
        model(**batch).loss.backward()
    diffs = _grad_diffs(tp, ref)
    return max(d for n, d in diffs.items() if ".q_norm." in n or ".k_norm." in n)


def _rank_checks(rank: int, world: int) -> dict:
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    results = {}
    for name, (builder, batch_of) in CASES.items():
        results[name], tp, ref = _train(builder, batch_of, mesh, rank)
        if name in ("llama", "llama_linear_attention"):
            kinds = ("dynamic", "static") if name == "llama" else ("dynamic",)
            results[name]["decode"] = {k: _decode(tp, ref, k) for k in kinds}
    results["unsplit_qk_norm"] = _unsplit_qk_norm_grad(mesh, rank)
    return results


# --- assertions in the test process ------------------------------------------------------------


@pytest.fixture(scope="module")
def ranks() -> list[dict]:
    return run_ranks(_rank_checks, WORLD)


@pytest.mark.parametrize("case", CASES)
def test_split_logits_equal_one_process(ranks, case):
    for r in ranks:
        assert r[case]["logits"] < TOL


@pytest.mark.parametrize("case", CASES)
def test_split_gradients_equal_one_process(ranks, case):
    """Every parameter's gradient, split ones gathered, replicated ones as they are on each
    rank (a missing or extra gradient counts as infinitely wrong)."""
    for r in ranks:
        grads = r[case]["grads"]
        assert grads, "no gradients compared"
        worst = max(grads, key=grads.get)
        assert grads[worst] < TOL, (worst, grads[worst])


@pytest.mark.parametrize("case", CASES)
def test_split_adamw_steps_with_clipping_equal_one_process(ranks, case):
    """clip_grad_norm_ over the split model's parameters measures the whole model's norm and
    scales every gradient alike; then AdamW steps give the same weights."""
    for r in ranks:
        for n_tp, n_ref in r[case]["norms"]:
            assert n_ref > 0.5  # clipping acted
            assert n_tp == pytest.approx(n_ref, rel=1e-5)
        clipped = r[case]["clipped"]
        worst = max(clipped, key=clipped.get)
        assert clipped[worst] < TOL, (worst, clipped[worst])
        weights = r[case]["weights"]
        worst = max(weights, key=weights.get)
        assert weights[worst] < TOL, (worst, weights[worst])


@pytest.mark.parametrize("case", CASES)
def test_plan_splits_heads_and_hidden_units(ranks, case):
    """Column splits shard output features (dim 0), row splits input features (dim 1);
    embeddings, norms and the output head are replicated; every parameter is a DTensor (what
    clip_grad_norm_ needs)."""
    placements = ranks[0][case]["placements"]
    suffix = {
        ("q_proj", "k_proj", "v_proj", "up", "gate"): "(Shard(dim=0),)",
        ("out_proj", "down"): "(Shard(dim=1),)",
    }
    split = 0
    for name, placement in placements.items():
        module, kind = ["", *name.split(".")][-2:]
        expected = next((v for k, v in suffix.items() if module in k), None)
        if expected is None:
            assert placement == "(Replicate(),)", (name, placement)
        elif kind == "bias" and expected.endswith("1),)"):
            assert placement == "(Replicate(),)", (name, placement)  # added once, after the sum
        else:
            assert placement == expected, (name, placement)
            split += 1
    assert split >= 6  # a layer's q/k/v/out and MLP weights at least


@pytest.mark.parametrize("kind", ["dynamic", "static"])
def test_split_decoding_over_caches_equals_one_process(ranks, kind):
    """Each rank's caches hold its own key/value heads."""
    for r in ranks:
        assert r["llama"]["decode"][kind] < TOL


def test_split_kernel_attention_decoding_equals_one_process(ranks):
    """Linear attention decodes from a running state of the rank's heads."""
    for r in ranks:
        assert r["llama_linear_attention"]["decode"]["dynamic"] < TOL


def test_comparison_catches_a_plan_that_leaves_qk_norms_unsplit(ranks):
    """The gradient comparison has teeth: replicated qk-norms run as plain modules get each
    rank's heads' share of the gradient only."""
    for r in ranks:
        assert r["unsplit_qk_norm"] > 1e-3


# --- single process: the plan as data and its refusals ------------------------------------------


def _shard(linear: nn.Linear, rank: int, dim: int) -> nn.Linear:
    """Rank ``rank``'s half of ``linear``, cut along weight dim ``dim`` as a column (0) or row
    (1) split does; a row split keeps no bias (it is added once, after the sum)."""
    w = linear.weight.detach().chunk(WORLD, dim)[rank]
    out = nn.Linear(w.shape[1], w.shape[0], bias=linear.bias is not None and dim == 0)
    with torch.no_grad():
        out.weight.copy_(w)
        if out.bias is not None:
            out.bias.copy_(linear.bias.detach().chunk(WORLD)[rank])
    return out


def test_attention_runs_on_the_heads_its_projections_give():
    """Grouped-query attention with RoPE and qk-norm, its projections cut as the plan cuts them
    and its head counts left global: each half computes its own heads (a contiguous run of
    query heads with their key/value heads), and the halves' outputs sum to the whole."""
    mha = MultiHeadAttention(32, 4, 2, qk_norm=True, position=RotaryEmbedding(8))
    x = torch.randn(2, 6, 32)
    parts = []
    for rank in range(WORLD):
        half = copy.deepcopy(mha)
        for name in ("q_proj", "k_proj", "v_proj"):
            setattr(half, name, _shard(getattr(mha, name), rank, 0))
        half.out_proj = _shard(mha.out_proj, rank, 1)
        parts.append(half(x))
    torch.testing.assert_close(sum(parts) + mha.out_proj.bias, mha(x), atol=1e-6, rtol=1e-5)


def test_llama_plan_is_data_by_module_name():
    plan = tp_plan(llama(), 2)
    kinds = {name: type(style) for name, style in plan.items()}
    assert kinds["blocks.0.attn"] is LocalHeads
    for name in ("attn.q_proj", "attn.k_proj", "attn.v_proj", "mlp.gate", "mlp.up"):
        assert kinds[f"blocks.1.{name}"] is ColwiseParallel
    for name in ("attn.out_proj", "mlp.down"):
        assert kinds[f"blocks.1.{name}"] is RowwiseParallel
    assert kinds["blocks.0.attn.q_norm"] is SequenceParallel
    assert not any(n.startswith(("tok", "head", "norm")) or "attn_norm" in n for n in plan)
    assert len(plan) == 2 * (5 + 2 + 3)


def test_encoder_decoder_plan_splits_cross_attention():
    plan = tp_plan(encoder_decoder(), 4)
    assert isinstance(plan["decoder.0.cross.k_proj"], ColwiseParallel)
    assert isinstance(plan["decoder.0.cross.out_proj"], RowwiseParallel)
    assert isinstance(plan["encoder.0.mlp.up"], ColwiseParallel)


def test_refuses_key_value_heads_not_divisible():
    with pytest.raises(ValueError) as err:
        tp_plan(llama(), 4)  # 4 query heads but 2 key/value heads
    message = str(err.value)
    assert message.startswith("n_kv_heads: blocks.0.attn has 2 key/value heads")
    assert "over 4 tensor-parallel ranks; expected a multiple of 4" in message


def test_refuses_query_heads_not_divisible():
    with pytest.raises(ValueError, match=r"^n_heads: blocks.0.attn has 4 query heads.*of 3$"):
        tp_plan(gpt2(), 3)


def test_refuses_hidden_units_not_divisible():
    with pytest.raises(ValueError, match=r"^hidden: blocks.0.mlp has 66 hidden units.*of 4$"):
        tp_plan(gpt2(hidden=66), 4)


@pytest.mark.parametrize(
    ("model", "named"),
    [
        (lambda: gpt2(sinks=True), "blocks.0.attn.sinks"),
        (lambda: gpt2(position="alibi"), "blocks.0.attn.position (a fixed score bias"),
        (lambda: gpt2(position="t5"), "blocks.0.attn.position.weight"),
        (lambda: gpt2(score="general"), "blocks.0.attn.score.weight"),
        (lambda: gpt2(score="cosine"), "blocks.0.attn.score.log_temperature"),
        (lambda: gpt2(score="additive"), "blocks.0.attn.score.w_q.weight"),
        (lambda: bert(attention="linformer", rank=4), "blocks.0.attn.kernel.E"),
    ],
)
def test_refuses_state_shared_by_all_heads(model, named):
    with pytest.raises(ValueError, match=r"^model: tensor parallelism splits attention") as err:
        tp_plan(model(), 2)
    assert named in str(err.value)
    assert "not supported: attention sinks, ALiBi and T5 biases" in str(err.value)


def test_refuses_performer_features_redrawn_per_rank():
    model = llama(attention="performer")
    assert tp_plan(model, 2)  # fixed features are broadcast: fine
    for block in model.blocks:
        block.attn.kernel.redraw = True
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.kernel \(random features redrawn"):
        tp_plan(model, 2)


@pytest.mark.parametrize("size", [0, -2, 1.5, True, "2"])
def test_refuses_bad_tp_size(size):
    with pytest.raises(ValueError, match=r"^tp_size: expected a positive int, got"):
        tp_plan(gpt2(), size)


def test_apply_tp_refuses_what_is_not_a_1d_mesh():
    with pytest.raises(ValueError, match=r"^mesh: expected a 1-D DeviceMesh, got 'cpu'"):
        apply_tp(gpt2(), "cpu")
