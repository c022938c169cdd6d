"""Named hook points: their names and shapes, caching, replacing activations (ablation,
activation patching, a replaced pattern with gradients), helpful errors, and hooks that never
outlive their ``with`` block, a copy or a save."""

from __future__ import annotations

import copy
import io
import re

import pytest
import torch

from attnlab.attention import MultiHeadAttention
from attnlab.attention.points import HookPoint, PatternPoint
from attnlab.inspect import (
    ablate_heads,
    hook_points,
    hooks,
    point_names,
    run_with_cache,
)
from attnlab.models import GPT, EncoderDecoder, GPTConfig, TransformerConfig

B, T, VOCAB, C, H, HKV = 2, 6, 53, 32, 4, 2
DH = C // H
ATTN_POINTS = ("q", "k", "v", "pattern", "z", "out")
BLOCK_POINTS = ("resid_pre", "resid_mid", "mlp_out", "resid_post")


def llama(backend: str = "sdpa", n_layer: int = 2) -> GPT:
    """A tiny Llama-flavoured GPT: RoPE, grouped-query attention (H=4, Hkv=2)."""
    config = GPTConfig(
        vocab_size=VOCAB, max_len=32, n_layer=n_layer, n_head=H, n_kv_head=HKV, dim=C,
        hidden=64, position="rope", norm="rmsnorm", mlp="swiglu", bias=False,
        tie_embeddings=False, backend=backend,
    )  # fmt: skip
    return GPT(config).eval()


def encoder_decoder() -> EncoderDecoder:
    config = TransformerConfig(vocab_size=VOCAB, n_layer=1, n_head=H, dim=C, hidden=64, dropout=0.0)
    return EncoderDecoder(config).eval()


def ids(seed: int, t: int = T) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, t), generator=torch.Generator().manual_seed(seed))


def no_hooks_left(model) -> bool:
    return all(
        not p.fns and not (isinstance(p, PatternPoint) and p.sources)
        for p in hook_points(model).values()
    )


# -- names and shapes ------------------------------------------------------------------------------


def test_gpt_point_names():
    names = point_names(llama(n_layer=1))
    want = {f"blocks.0.{p}" for p in BLOCK_POINTS} | {f"blocks.0.attn.{p}" for p in ATTN_POINTS}
    assert set(names) == want and len(names) == len(want)
    assert "blocks.0.attn.q" in names and "blocks.0.resid_post" in names


def test_encoder_decoder_point_names():
    names = set(point_names(encoder_decoder()))
    assert {"encoder.blocks.0.attn.pattern", "decoder.blocks.0.cross.z"} <= names
    assert {"decoder.blocks.0.attn.q", "decoder.blocks.0.resid_cross"} <= names
    assert "encoder.blocks.0.resid_cross" not in names  # encoder blocks have no cross-attention
    assert not any(n.startswith(("encoder.0", "decoder.0")) for n in names)


def test_every_point_has_its_documented_shape():
    model = llama()
    out, cache = run_with_cache(model, ids(0))
    assert list(cache) == point_names(model)  # every point, in the model's order
    for i in range(2):
        a = f"blocks.{i}.attn"
        assert cache[f"{a}.q"].shape == (B, H, T, DH)
        assert cache[f"{a}.k"].shape == cache[f"{a}.v"].shape == (B, HKV, T, DH)
        assert cache[f"{a}.pattern"].shape == (B, H, T, T)
        assert cache[f"{a}.z"].shape == (B, H, T, DH)
        for name in (f"{a}.out", *(f"blocks.{i}.{p}" for p in BLOCK_POINTS)):
            assert cache[name].shape == (B, T, C)
    # what flows through the points is the model's own computation
    assert torch.equal(cache["blocks.0.resid_post"], cache["blocks.1.resid_pre"])
    block = model.blocks[1]
    torch.testing.assert_close(
        cache["blocks.1.resid_mid"], cache["blocks.1.resid_pre"] + cache["blocks.1.attn.out"]
    )
    torch.testing.assert_close(
        cache["blocks.1.resid_post"], cache["blocks.1.resid_mid"] + cache["blocks.1.mlp_out"]
    )
    z = cache["blocks.1.attn.z"].transpose(1, 2).reshape(B, T, C)
    torch.testing.assert_close(cache["blocks.1.attn.out"], block.attn.out_proj(z))
    torch.testing.assert_close(out.logits, model.head(model.norm(cache["blocks.1.resid_post"])))


def test_encoder_decoder_shapes():
    model = encoder_decoder()
    src, tgt = ids(0, 7), ids(1, 5)
    _, cache = run_with_cache(model, src, decoder_input_ids=tgt, names="*.blocks.0.*")
    assert cache["encoder.blocks.0.attn.pattern"].shape == (B, H, 7, 7)
    assert cache["decoder.blocks.0.attn.pattern"].shape == (B, H, 5, 5)
    assert cache["decoder.blocks.0.cross.q"].shape == (B, H, 5, DH)
    assert cache["decoder.blocks.0.cross.k"].shape == (B, H, 7, DH)  # the source's keys
    assert cache["decoder.blocks.0.cross.pattern"].shape == (B, H, 5, 7)
    assert cache["decoder.blocks.0.cross.z"].shape == (B, H, 5, DH)
    assert cache["decoder.blocks.0.resid_cross"].shape == (B, 5, C)


@pytest.mark.parametrize(
    ("names", "want"),
    [
        (["blocks.1.resid_post", "blocks.0.attn.q"], ["blocks.1.resid_post", "blocks.0.attn.q"]),
        ("blocks.*.attn.z", ["blocks.0.attn.z", "blocks.1.attn.z"]),
        (["blocks.1.attn.[qk]"], ["blocks.1.attn.q", "blocks.1.attn.k"]),
        (lambda n: n.endswith("resid_mid"), ["blocks.0.resid_mid", "blocks.1.resid_mid"]),
        ([], []),
    ],
    ids=["list", "glob", "glob-set", "predicate", "none"],
)
def test_run_with_cache_selects_names(names, want):
    model = llama()
    out, cache = run_with_cache(model, ids(0), names=names)
    assert list(cache) == want
    assert torch.equal(out.logits, model(ids(0)).logits)
    assert not any(t.requires_grad for t in cache.values())  # detached by default
    assert no_hooks_left(model)


def test_run_with_cache_can_keep_the_graph():
    model = llama()
    _, cache = run_with_cache(model, ids(0), names=["blocks.0.attn.pattern"], detach=False)
    pattern = cache["blocks.0.attn.pattern"]
    assert pattern.requires_grad
    (grad,) = torch.autograd.grad(pattern[:, :, -1, 0].sum(), model.blocks[0].attn.q_proj.weight)
    assert grad.abs().sum() > 0


# -- replacing activations -------------------------------------------------------------------------


def test_a_hook_returning_a_tensor_replaces_the_activation():
    model = llama()
    plain = model(ids(0)).logits
    seen = []

    def zero(x, name):
        seen.append(name)
        return torch.zeros_like(x)

    with hooks(model, {"blocks.0.attn.out": zero}):
        _, cache = run_with_cache(model, ids(0), names="blocks.0.resid_*")
        changed = model(ids(0)).logits
    assert seen == ["blocks.0.attn.out", "blocks.0.attn.out"]
    assert torch.equal(cache["blocks.0.resid_mid"], cache["blocks.0.resid_pre"])
    assert not torch.allclose(changed, plain)
    assert torch.equal(model(ids(0)).logits, plain)  # the hook is gone
    with hooks(model, {"blocks.0.attn.out": lambda x, name: None}):  # None keeps it
        assert torch.equal(model(ids(0)).logits, plain)


def test_a_replacement_of_the_wrong_shape_is_refused():
    model = llama()
    with (
        hooks(model, {"blocks.0.attn.q": lambda x, name: x[:, :1]}),
        pytest.raises(ValueError, match=re.escape("hook on 'blocks.0.attn.q': expected None")),
    ):
        model(ids(0))
    assert no_hooks_left(model)


def test_patching_the_residual_stream_reproduces_the_source_run():
    model = llama()
    a, b = ids(1), ids(2)
    out_a, cache_a = run_with_cache(model, a, names="blocks.*.resid_post")
    out_b = model(b)
    for i in range(2):
        name = f"blocks.{i}.resid_post"
        with hooks(model, {name: lambda x, n: cache_a[n]}):
            patched = model(b).logits
        torch.testing.assert_close(patched, out_a.logits, atol=0, rtol=0)

    # one position of block 0's output: under the causal mask only it and later positions see it
    p = 3

    def patch_one(x, name):
        x = x.clone()
        x[:, p] = cache_a[name][:, p]
        return x

    with hooks(model, {"blocks.0.resid_post": patch_one}):
        patched = model(b).logits
    assert torch.equal(patched[:, :p], out_b.logits[:, :p])
    for t in range(p, T):
        assert not torch.allclose(patched[:, t], out_b.logits[:, t]), t


def test_patching_one_head_changes_only_that_head():
    model = llama()
    a, b = ids(1), ids(2)
    _, cache_a = run_with_cache(model, a, names=["blocks.0.attn.z"])
    _, cache_b = run_with_cache(model, b, names=["blocks.0.attn.z"])
    head = 2

    def patch(z, name):
        z = z.clone()
        z[:, head] = cache_a[name][:, head]
        return z

    with hooks(model, {"blocks.0.attn.z": patch}):
        _, cache = run_with_cache(model, b, names=["blocks.0.attn.z", "blocks.0.attn.out"])
    want_z = cache_b["blocks.0.attn.z"].clone()
    want_z[:, head] = cache_a["blocks.0.attn.z"][:, head]
    assert torch.equal(cache["blocks.0.attn.z"], want_z)  # later hooks see the replacement
    out_proj = model.blocks[0].attn.out_proj
    with torch.no_grad():
        want_out = out_proj(want_z.transpose(1, 2).reshape(B, T, C))
    torch.testing.assert_close(cache["blocks.0.attn.out"], want_out)


@pytest.mark.parametrize("backend", ["sdpa", "chunked"])
def test_an_unchanged_pattern_replacement_gives_the_fused_output_and_gradients(backend):
    """Returning the dense pattern from a hook switches the module to pattern @ v: the output
    and every parameter's gradient equal the fused kernel's, and gradients reach the pattern."""
    torch.manual_seed(0)
    fused, eager = llama(backend), llama(backend)
    eager.load_state_dict(fused.state_dict())
    x = ids(0)
    fused(x).logits.square().mean().backward()
    patterns = {}

    def keep(p, name):
        p.retain_grad()
        patterns[name] = p
        return p

    with hooks(eager, {"blocks.*.attn.pattern": keep}):
        out = eager(x).logits
    torch.testing.assert_close(out, fused(x).logits, atol=1e-5, rtol=0)
    out.square().mean().backward()
    assert set(patterns) == {"blocks.0.attn.pattern", "blocks.1.attn.pattern"}
    for name, p in patterns.items():
        assert p.shape == (B, H, T, T) and p.grad is not None and p.grad.abs().sum() > 0, name
    for (name, g_fused), g_eager in zip(
        ((n, p.grad) for n, p in fused.named_parameters()),
        (p.grad for p in eager.parameters()),
        strict=True,
    ):
        torch.testing.assert_close(g_eager, g_fused, atol=1e-5, rtol=1e-4, msg=name)


def test_a_replaced_pattern_drives_the_output():
    model = llama()
    _, cache = run_with_cache(model, ids(0), names=["blocks.0.attn.v", "blocks.0.attn.z"])
    uniform = torch.ones(T, T).tril()
    uniform = (uniform / uniform.sum(-1, keepdim=True)).expand(B, H, T, T)
    with hooks(model, {"blocks.0.attn.pattern": lambda p, name: uniform}):
        _, patched = run_with_cache(model, ids(0), names=["blocks.0.attn.z"])
    v = cache["blocks.0.attn.v"].repeat_interleave(H // HKV, dim=1)
    torch.testing.assert_close(patched["blocks.0.attn.z"], uniform @ v)  # a running mean of v
    assert not torch.allclose(patched["blocks.0.attn.z"], cache["blocks.0.attn.z"])


# -- errors ----------------------------------------------------------------------------------------


def test_unknown_point_names_get_a_suggestion():
    model = llama()
    for call in (
        lambda: hooks(model, {"blocks.0.attn.patern": lambda x, n: None}).__enter__(),
        lambda: run_with_cache(model, ids(0), names=["blocks.0.attn.patern"]),
    ):
        with pytest.raises(ValueError, match="did you mean") as info:
            call()
        assert "'blocks.0.attn.pattern'" in str(info.value)
        assert "'blocks.0.attn.patern'" in str(info.value)
    with pytest.raises(ValueError, match=re.escape("'blocks.*.atn.z' matches no hook point")):
        run_with_cache(model, ids(0), names="blocks.*.atn.z")
    with pytest.raises(TypeError, match="not callable"):
        hooks(model, {"blocks.0.attn.q": "zero"}).__enter__()
    assert no_hooks_left(model)


def test_a_missing_cache_key_gets_a_suggestion():
    _, cache = run_with_cache(llama(), ids(0), names="blocks.0.attn.*")
    with pytest.raises(KeyError, match=re.escape("did you mean 'blocks.0.attn.pattern'")):
        cache["blocks.0.attn.patern"]
    with pytest.raises(KeyError, match="is not in the cache"):
        cache["blocks.1.attn.q"]  # a real point that was not cached


# -- ablation --------------------------------------------------------------------------------------


def pruned(model: GPT, layer: int, heads: list[int], mean_z: torch.Tensor | None = None) -> GPT:
    """A copy of ``model`` whose output projection ignores ``heads`` of ``layer``; with
    ``mean_z`` (H, Dh) their constant mean outputs are added to its bias instead."""
    copy_ = copy.deepcopy(model)
    out_proj = copy_.blocks[layer].attn.out_proj
    with torch.no_grad():
        if out_proj.bias is None:
            out_proj.bias = torch.nn.Parameter(torch.zeros(C))
        for h in heads:
            cols = slice(h * DH, (h + 1) * DH)
            if mean_z is not None:
                out_proj.bias += out_proj.weight[:, cols] @ mean_z[h]
            out_proj.weight[:, cols] = 0
    return copy_


def test_ablate_heads_zero_equals_pruning_them():
    model = llama()
    x = ids(0)
    with ablate_heads(model, {0: [1, 3], 1: 0}):
        got = model(x).logits
    want = pruned(pruned(model, 0, [1, 3]), 1, [0])(x).logits
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert not torch.allclose(got, model(x).logits)
    assert no_hooks_left(model)


def test_ablate_heads_mean_replaces_the_head_by_its_mean_output():
    model = llama()
    x = ids(0)
    _, cache = run_with_cache(model, x, names=["blocks.0.attn.z"])
    mean_z = cache["blocks.0.attn.z"].mean(dim=(0, 2))  # (H, Dh) over batch and positions
    with ablate_heads(model, {0: [2]}, mode="mean"):
        got = model(x).logits
    want = pruned(model, 0, [2], mean_z)(x).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_ablate_heads_errors():
    model = llama()
    with pytest.raises(ValueError, match="mode: expected 'zero' or 'mean'"):
        ablate_heads(model, {0: 1}, mode="half").__enter__()
    with pytest.raises(ValueError, match=r"^heads: .*\b4\b.*out of range.*layer 0"):
        ablate_heads(model, {0: [4]}).__enter__()
    with pytest.raises(ValueError, match="layers: layer 2 is out of range"):
        ablate_heads(model, {2: [0]}).__enter__()
    assert no_hooks_left(model)


def test_ablate_heads_by_name_on_the_encoder_decoder():
    model = encoder_decoder()
    src, tgt = ids(0, 7), ids(1, 5)
    with ablate_heads(model, {"decoder.blocks.0.cross": [0, 1, 2, 3]}):
        _, cache = run_with_cache(model, src, decoder_input_ids=tgt, names="decoder.*.cross.*")
    assert (cache["decoder.blocks.0.cross.z"] == 0).all()
    bias = model.decoder[0].cross.out_proj.bias
    assert torch.equal(cache["decoder.blocks.0.cross.out"], bias.expand(B, 5, C))


# -- hooks never outlive their block ---------------------------------------------------------------


def test_hooks_are_removed_when_the_block_raises():
    model = llama()
    with pytest.raises(RuntimeError, match="inside"), hooks(model, {"blocks.*.attn.*": print}):
        assert not no_hooks_left(model)
        raise RuntimeError("inside")
    assert no_hooks_left(model)

    def fail(x, name):
        raise RuntimeError("hook failed")

    for run in (
        lambda: run_with_cache(model, ids(0), names="blocks.*.attn.pattern"),
        lambda: run_with_cache(model, ids(0), names="blocks.*.attn.pattern", max_pattern_bytes=1),
    ):
        with pytest.raises((RuntimeError, ValueError)), hooks(model, {"blocks.1.attn.q": fail}):
            run()
        assert no_hooks_left(model)
    with pytest.raises(RuntimeError, match="inside"), ablate_heads(model, {0: 0}):
        raise RuntimeError("inside")
    assert no_hooks_left(model)


def test_a_deep_copy_has_no_hooks():
    model = llama()
    plain = model(ids(0)).logits
    with hooks(model, {"blocks.0.attn.z": lambda z, n: z * 0, "blocks.1.attn.pattern": print}):
        twin = copy.deepcopy(model)
        assert not torch.allclose(model(ids(0)).logits, plain)
        assert no_hooks_left(twin)
        assert torch.equal(twin(ids(0)).logits, plain)
    assert isinstance(twin.blocks[0].attn.hook_pattern, PatternPoint)
    assert isinstance(twin.blocks[0].hook_resid_pre, HookPoint)


def test_save_and_load_with_hooks_registered():
    model = llama()
    plain = model(ids(0)).logits
    with hooks(model, {"blocks.0.attn.out": lambda x, n: x * 0}):  # a lambda: not picklable
        assert not any("hook" in key for key in model.state_dict())
        buffer = io.BytesIO()
        torch.save(model, buffer)
        state = io.BytesIO()
        torch.save(model.state_dict(), state)
    buffer.seek(0)
    state.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert no_hooks_left(loaded)
    assert torch.equal(loaded(ids(0)).logits, plain)
    fresh = llama()
    fresh.load_state_dict(torch.load(state))
    assert torch.equal(fresh(ids(0)).logits, plain)


# -- decoding with a KV cache ----------------------------------------------------------------------


def test_q_k_v_points_see_only_the_new_tokens_when_decoding():
    model = llama()
    x = ids(0, 8)
    names = [f"blocks.0.attn.{p}" for p in ("q", "k", "v", "pattern")]
    _, full = run_with_cache(model, x, names=names)
    caches = model.make_caches(B, 16)
    model(x[:, :5], caches=caches)
    for t in range(5, 8):
        _, step = run_with_cache(model, x[:, t : t + 1], caches=caches, names=names)
        assert step["blocks.0.attn.q"].shape == (B, H, 1, DH)
        assert step["blocks.0.attn.k"].shape == step["blocks.0.attn.v"].shape == (B, HKV, 1, DH)
        assert step["blocks.0.attn.pattern"].shape == (B, H, 1, t + 1)  # every cached key
        for p in ("q", "k", "v"):  # this step's token, at its position (RoPE)
            want = full[f"blocks.0.attn.{p}"][:, :, t : t + 1]
            torch.testing.assert_close(step[f"blocks.0.attn.{p}"], want, atol=1e-5, rtol=0)
        want = full["blocks.0.attn.pattern"][:, :, t : t + 1, : t + 1]
        torch.testing.assert_close(step["blocks.0.attn.pattern"], want, atol=1e-6, rtol=0)
    assert caches[0].length == 8


def test_a_bare_attention_module_has_short_point_names():
    mha = MultiHeadAttention(C, H, HKV)
    assert point_names(mha) == list(ATTN_POINTS)
    x = torch.randn(B, T, C)
    out, cache = run_with_cache(mha, x, names=["z", "out"])
    assert torch.equal(cache["out"], out)
