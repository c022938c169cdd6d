"""GPT: presets, cached decoding, padding, backends agreeing, and learning."""

from __future__ import annotations

import pytest
import torch

from attnlab.models import GPT, GPTConfig, lm_loss

TINY = {"vocab_size": 97, "max_len": 64, "n_layer": 2, "n_head": 4, "dim": 32}
FLAVOURS = {
    "gpt2": {**TINY},
    "llama": {
        **TINY,
        "n_kv_head": 2,
        "norm": "rmsnorm",
        "mlp": "swiglu",
        "position": "rope",
        "bias": False,
        "tie_embeddings": False,
        "hidden_multiple_of": 16,
    },
    "alibi": {**TINY, "position": "alibi"},
}


def _model(flavour: str, **overrides) -> GPT:
    torch.manual_seed(0)
    base = "llama-small" if flavour == "llama" else "gpt2"
    return GPT.from_preset(base, **{**FLAVOURS[flavour], **overrides}).eval()


def test_preset_parameter_counts_match_the_published_models():
    with torch.device("meta"):
        assert sum(p.numel() for p in GPT.from_preset("gpt2").parameters()) == 124_439_808
        assert sum(p.numel() for p in GPT.from_preset("gpt2-medium").parameters()) == 354_823_168
        llama = GPT.from_preset("llama-small")
    assert llama.config.hidden == 2048 and llama.config.n_kv_head == 4


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_cached_decoding_equals_full_forward(flavour):
    model = _model(flavour)
    ids = torch.randint(0, 97, (2, 12))
    full = model(ids).logits
    caches = model.make_caches(2, 12)
    steps = [model(ids[:, :5], caches=caches).logits]
    steps += [model(ids[:, i : i + 1], caches=caches).logits for i in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


# ALiBi scores distances between cache indices, not positions, so left padding shifts it.
@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_left_padding_does_not_change_real_tokens(flavour):
    model = _model(flavour)
    ids = torch.randint(1, 97, (1, 7))
    alone = model(ids).logits
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1)
    batch = torch.cat([padded, torch.randint(1, 97, (1, 10))])
    attention_mask = torch.ones(2, 10, dtype=torch.long)
    attention_mask[0, :3] = 0
    out = model(batch, attention_mask).logits
    torch.testing.assert_close(out[0, 3:], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_backends_agree_on_logits_and_gradients(flavour):
    ids = torch.randint(0, 97, (2, 16))
    results = {}
    for backend in ("reference", "sdpa", "chunked"):
        model = _model(flavour, backend=backend).train()
        loss = model(ids, labels=ids).loss
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        results[backend] = (model(ids).logits.detach(), grads)
    for backend in ("sdpa", "chunked"):
        torch.testing.assert_close(results[backend][0], results["reference"][0], atol=1e-5, rtol=0)
        torch.testing.assert_close(results[backend][1], results["reference"][1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_a_few_steps_of_training_lower_the_loss(flavour):
    model = _model(flavour).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = torch.randint(0, 97, (4, 24))
    losses = []
    for _ in range(40):
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_lm_loss_ignores_padding():
    logits = torch.randn(1, 4, 5)
    labels = torch.tensor([[1, 2, 3, 4]])
    full = lm_loss(logits, labels)
    masked = lm_loss(logits, labels, torch.tensor([[1, 1, 1, 0]]))
    want = torch.nn.functional.cross_entropy(logits[0, :2], labels[0, 1:3])
    torch.testing.assert_close(masked, want)
    assert not torch.isclose(full, masked)


def test_hidden_states_and_tied_head():
    model = _model("gpt2")
    out = model(torch.randint(0, 97, (1, 5)), output_hidden_states=True)
    assert len(out.hidden_states) == 3 and out.hidden_states[0].shape == (1, 5, 32)
    assert model.head.weight is model.tok.weight
    assert _model("llama").head.weight is not _model("llama").tok.weight


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: GPTConfig.from_preset("gpt3"), r"preset: unknown preset 'gpt3' \(did you mean"),
        (
            lambda: GPTConfig.from_preset("gpt2", n_layers=2),
            r"n_layers: not a field of GPTConfig "
            r"\(did you mean 'n_layer'\?\)",
        ),
        (lambda: GPTConfig(n_head=12, n_kv_head=5), "n_kv_head: expected a divisor of n_head=12"),
        (
            lambda: GPTConfig(position="sinusoid"),
            r"position: unknown position 'sinusoid' \(did you mean 'sinusoidal'\?\)",
        ),
        (lambda: GPTConfig(dim=100), "dim: expected a multiple of n_head=12, got 100"),
        (lambda: _model("gpt2")(torch.randn(1, 3)), r"input_ids: expected integer ids \(B, T\)"),
        (lambda: _model("gpt2")(torch.zeros(1, 65, dtype=torch.long)), "exceed max_len=64"),
    ],
)
def test_bad_configs_and_inputs_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()
