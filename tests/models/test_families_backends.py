"""Every model family on every attention backend that trains: the same outputs as the eager
reference (1e-5), and a few optimiser steps lower the loss, along the same trajectory."""

from __future__ import annotations

import copy

import pytest
import torch

from attnlab.models import (
    BERT,
    GPT,
    BertConfig,
    EncoderDecoder,
    GPTConfig,
    TransformerConfig,
    ViT,
    ViTConfig,
    set_backend,
)

V = 53


def _padded(b: int, t: int, left: bool = False) -> torch.Tensor:
    mask = torch.ones(b, t, dtype=torch.long)
    if left:
        mask[1, :3] = 0
    else:
        mask[1, t - 4 :] = 0
    return mask


def gpt2_case():
    model = GPT(GPTConfig(vocab_size=V, max_len=32, n_layer=2, n_head=4, dim=32))
    ids = torch.randint(0, V, (2, 12))
    return model, (ids,), {"attention_mask": _padded(2, 12, left=True), "labels": ids}


def llama_case():
    config = GPTConfig(
        vocab_size=V,
        max_len=32,
        n_layer=2,
        n_head=4,
        n_kv_head=2,
        dim=32,
        norm="rmsnorm",
        mlp="swiglu",
        position="rope",
        bias=False,
        tie_embeddings=False,
    )
    ids = torch.randint(0, V, (2, 12))
    return GPT(config), (ids,), {"labels": ids}


def alibi_case():
    model = GPT(GPTConfig(vocab_size=V, max_len=32, n_layer=2, n_head=4, dim=32, position="alibi"))
    ids = torch.randint(0, V, (2, 12))
    return model, (ids,), {"labels": ids}


def bert_case():
    config = BertConfig(vocab_size=V, max_len=32, n_layer=2, n_head=4, dim=32, hidden=64)
    config.dropout = 0.0
    ids = torch.randint(0, V, (2, 12))
    labels = torch.full_like(ids, -100)
    labels[:, ::3] = ids[:, ::3]
    return BERT(config), (ids,), {"attention_mask": _padded(2, 12), "labels": labels}


def encoder_decoder_case():
    config = TransformerConfig(
        vocab_size=V, max_len=32, n_layer=2, n_head=4, dim=32, hidden=64, dropout=0.0
    )
    src = torch.randint(3, V, (2, 10))
    return (
        EncoderDecoder(config),
        (src,),
        {
            "attention_mask": _padded(2, 10),
            "labels": torch.randint(3, V, (2, 7)),
        },
    )


def vit_case():
    config = ViTConfig(
        image_size=8, patch_size=2, channels=1, num_labels=5, n_layer=2, n_head=4, dim=32,
        hidden=64,
    )  # fmt: skip
    return ViT(config), (torch.randn(4, 1, 8, 8),), {"labels": torch.tensor([0, 1, 2, 4])}


CASES = {
    "gpt2": gpt2_case,
    "llama": llama_case,
    "alibi": alibi_case,
    "bert": bert_case,
    "encoder-decoder": encoder_decoder_case,
    "vit": vit_case,
}


def _backends(device: str) -> list[str]:
    # FlexAttention has no backward on CPU in this torch; it trains on CUDA.
    return ["sdpa", "chunked"] + (["flex"] if device == "cuda" else [])


def _train(model, args, kwargs, steps: int = 6) -> list[float]:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = model(*args, **kwargs).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _check(case: str, device: str) -> None:
    torch.manual_seed(0)
    base, args, kwargs = CASES[case]()
    base.to(device)
    args = tuple(a.to(device) for a in args)
    kwargs = {k: v.to(device) for k, v in kwargs.items()}
    reference = set_backend(copy.deepcopy(base), "reference").eval()
    with torch.no_grad():
        want = reference(*args, **kwargs).logits
    want_losses = _train(reference, args, kwargs)
    assert want_losses[-1] < 0.8 * want_losses[0]
    for name in _backends(device):
        model = set_backend(copy.deepcopy(base), name).eval()
        with torch.no_grad():
            got = model(*args, **kwargs).logits
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0, msg=f"{case} on {name}")
        losses = _train(model, args, kwargs)
        assert losses[-1] < 0.8 * losses[0], f"{case} on {name}: loss {losses}"
        torch.testing.assert_close(
            torch.tensor(losses), torch.tensor(want_losses), atol=1e-4, rtol=1e-4
        )


@pytest.mark.parametrize("case", list(CASES))
def test_family_on_every_training_backend(case):
    _check(case, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("case", list(CASES))
def test_family_on_every_training_backend_cuda(case):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    _check(case, "cuda")


def test_set_backend_checks_the_name():
    model = gpt2_case()[0]
    set_backend(model, "chunked")
    assert model.config.backend == "chunked"
    assert all(b.attn.backend == "chunked" for b in model.blocks)
    with pytest.raises(ValueError, match="backend: unknown backend 'fast'"):
        set_backend(model, "fast")
