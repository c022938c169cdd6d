"""The original Transformer: parity with torch.nn.Transformer layers, caches, greedy decoding."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from attnlab.models import EncoderDecoder, TransformerConfig, from_preset

TINY = {
    "vocab_size": 41,
    "max_len": 32,
    "n_layer": 2,
    "n_decoder_layer": 3,
    "n_head": 4,
    "dim": 32,
    "hidden": 48,
    "dropout": 0.0,
}


def tiny(**overrides) -> EncoderDecoder:
    torch.manual_seed(0)
    return EncoderDecoder(TransformerConfig(**{**TINY, **overrides})).eval()


def _copy_attention(ours, theirs: nn.MultiheadAttention) -> None:
    with torch.no_grad():
        theirs.in_proj_weight.copy_(
            torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight])
        )
        theirs.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        theirs.out_proj.weight.copy_(ours.out_proj.weight)
        theirs.out_proj.bias.copy_(ours.out_proj.bias)


def _copy_block(ours, theirs) -> None:
    _copy_attention(ours.attn, theirs.self_attn)
    if ours.cross is not None:
        _copy_attention(ours.cross, theirs.multihead_attn)
        theirs.norm2.load_state_dict(ours.cross_norm.state_dict())
        theirs.norm3.load_state_dict(ours.mlp_norm.state_dict())
    else:
        theirs.norm2.load_state_dict(ours.mlp_norm.state_dict())
    theirs.norm1.load_state_dict(ours.attn_norm.state_dict())
    theirs.linear1.load_state_dict(ours.mlp.up.state_dict())
    theirs.linear2.load_state_dict(ours.mlp.down.state_dict())


@pytest.mark.parametrize("prenorm", [False, True])
def test_equals_torch_transformer_layers(prenorm):
    """Encoder and decoder stacks equal torch.nn.TransformerEncoder/Decoder with the same
    weights (post-norm as in the paper, or pre-norm), with source and target padding."""
    model = tiny(prenorm=prenorm)
    c = model.config
    kw = {"dim_feedforward": c.hidden, "dropout": 0.0, "batch_first": True, "norm_first": prenorm}
    enc = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(c.dim, c.n_head, **kw),
        c.n_layer,
        norm=nn.LayerNorm(c.dim) if prenorm else None,
        enable_nested_tensor=False,
    ).eval()
    dec = nn.TransformerDecoder(
        nn.TransformerDecoderLayer(c.dim, c.n_head, **kw),
        c.n_decoder_layer,
        norm=nn.LayerNorm(c.dim) if prenorm else None,
    ).eval()
    for ours, theirs in zip(model.encoder, enc.layers, strict=True):
        _copy_block(ours, theirs)
    for ours, theirs in zip(model.decoder, dec.layers, strict=True):
        _copy_block(ours, theirs)
    if prenorm:
        enc.norm.load_state_dict(model.enc_norm.state_dict())
        dec.norm.load_state_dict(model.dec_norm.state_dict())

    src = torch.randint(3, 41, (2, 9))
    tgt = torch.randint(3, 41, (2, 7))
    src_mask = torch.ones(2, 9, dtype=torch.long)
    src_mask[1, 6:] = 0
    with torch.no_grad():
        got = model(src, src_mask, decoder_input_ids=tgt)
        positions = model.src_pos(torch.arange(9))
        src_x = model.src_tok(src) * math.sqrt(c.dim) + positions
        tgt_x = model.tgt_tok(tgt) * math.sqrt(c.dim) + positions[:7]
        memory = enc(src_x, src_key_padding_mask=src_mask == 0)
        causal = nn.Transformer.generate_square_subsequent_mask(7)
        out = dec(tgt_x, memory, tgt_mask=causal, memory_key_padding_mask=src_mask == 0)
        want = model.head(out)
        mine = model.encode(src, src_mask)
    torch.testing.assert_close(mine[src_mask.bool()], memory[src_mask.bool()], atol=1e-5, rtol=0)
    torch.testing.assert_close(got.logits, want, atol=1e-5, rtol=0)


def test_paper_choices():
    model = from_preset("transformer-base")
    c = model.config
    assert (c.n_layer, c.n_decoder_layer, c.dim, c.hidden, c.n_head) == (6, 6, 512, 2048, 8)
    # One matrix for source, target and output projection (shared vocabulary, §3.4).
    assert model.src_tok.weight is model.tgt_tok.weight is model.head.weight
    n = sum(p.numel() for p in model.parameters())
    assert 60e6 < n < 66e6  # Table 3 lists 65M for the base model
    assert model.encoder[0].mlp.activation == "relu"
    assert not model.encoder[0].prenorm and model.enc_norm is None


def test_separate_vocabularies():
    model = tiny(share_embeddings=False, tgt_vocab_size=23)
    assert model.src_tok is not model.tgt_tok and model.head.weight is model.tgt_tok.weight
    out = model(torch.randint(0, 41, (2, 5)), decoder_input_ids=torch.randint(0, 23, (2, 4)))
    assert out.logits.shape == (2, 4, 23)
    with pytest.raises(ValueError, match="tgt_vocab_size: share_embeddings needs one vocabulary"):
        TransformerConfig(**TINY, tgt_vocab_size=23)


def test_cached_decoding_equals_full_forward_and_computes_source_keys_once():
    model = tiny()
    src = torch.randint(3, 41, (2, 9))
    src_mask = torch.ones(2, 9, dtype=torch.long)
    src_mask[0, 5:] = 0
    tgt = torch.randint(3, 41, (2, 8))
    calls = []
    for block in model.decoder:
        block.cross.k_proj.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        full = model(src, src_mask, decoder_input_ids=tgt).logits
        calls.clear()
        memory = model.encode(src, src_mask)
        caches = model.make_caches(2, src_len=9, max_len=8)
        steps = []
        for chunk in (tgt[:, :3], tgt[:, 3:4], tgt[:, 4:]):
            out = model(
                src, src_mask, decoder_input_ids=chunk, encoder_hidden=memory, caches=caches
            )
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)
    assert len(calls) == model.config.n_decoder_layer  # source keys projected once per block
    assert caches.length == 8


def test_loss_shifts_labels_and_ignores_padding():
    model = tiny()
    src = torch.randint(3, 41, (2, 6))
    labels = torch.randint(3, 41, (2, 5))
    labels[1, 3:] = -100
    out = model(src, labels=labels)
    inputs = model.shift_right(labels)
    assert inputs[:, 0].eq(model.config.bos_id).all() and inputs[1, 4] == model.config.pad_id
    manual = nn.functional.cross_entropy(
        out.logits.reshape(-1, 41), labels.reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(out.loss, manual)


def test_learns_to_copy_and_generate_greedily():
    """A few hundred steps on a copy task, then greedy decoding with both caches reproduces
    the source, and equals decoding without caches."""
    torch.manual_seed(0)
    model = EncoderDecoder(
        TransformerConfig(**{**TINY, "n_decoder_layer": 2, "dim": 64, "hidden": 128})
    )
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        src = torch.randint(3, 41, (32, 6))
        labels = torch.cat([src, torch.full((32, 1), 2)], 1)  # copy, then eos
        loss = model(src, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    src = torch.randint(3, 41, (4, 6))
    out = model.generate(src, max_new_tokens=10)
    assert torch.equal(out[:, :6], src)
    assert out[:, 6].eq(2).all() and out.shape[1] == 7  # stops once every row has ended
    # Without caches: re-run the decoder on the whole prefix each step.
    ids = torch.full((4, 1), model.config.bos_id)
    with torch.no_grad():
        for _ in range(7):
            nxt = model(src, decoder_input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
    assert torch.equal(ids[:, 1:], out)


def test_attentions_and_errors():
    model = tiny()
    src, tgt = torch.randint(3, 41, (2, 9)), torch.randint(3, 41, (2, 5))
    out = model(src, decoder_input_ids=tgt, output_attentions=True, output_hidden_states=True)
    assert len(out.encoder_attentions) == 2 and out.encoder_attentions[0].shape == (2, 4, 9, 9)
    assert len(out.attentions) == 3 and out.attentions[0].shape == (2, 4, 5, 5)
    assert out.cross_attentions[0].shape == (2, 4, 5, 9)
    assert torch.all(out.attentions[0].triu(1) == 0)  # causal
    torch.testing.assert_close(out.cross_attentions[2].sum(-1), torch.ones(2, 4, 5))
    assert len(out.hidden_states) == 4
    with pytest.raises(ValueError, match="decoder_input_ids: expected target ids"):
        model(src)
    with pytest.raises(ValueError, match="max_new_tokens: expected a positive int, got 0"):
        model.generate(src, max_new_tokens=0)
    with pytest.raises(ValueError, match="bos_id: expected a token id in"):
        TransformerConfig(**TINY, bos_id=41)
