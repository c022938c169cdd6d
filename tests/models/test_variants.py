"""Every attention kind and every position kind inside every model family: they train (the
loss falls), causal ones decode token by token equal to their full forward, kernel attention's
cache is a running state of fixed size, mistakes get errors naming the field, and runs written
before fields were renamed still load and resume."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import attnlab
from attnlab.models import (
    BERT,
    GPT,
    BertConfig,
    EncoderDecoder,
    GPTConfig,
    TransformerConfig,
    ViT,
    ViTConfig,
    upgrade_config,
)

V = 41
KIND_OPTIONS = {"local": {"window": 3}, "linformer": {"rank": 8}}
KINDS = ("softmax", "local", "linear", "performer", "linformer")
POSITIONS = ("none", "learned", "sinusoidal", "rope", "alibi", "t5")
FIXTURES = Path(__file__).parent.parent / "fixtures" / "runs_before_renaming"


def _gpt(**kw):
    return GPT(GPTConfig(vocab_size=V, max_len=32, n_layer=2, n_head=2, dim=16, **kw))


def _bert(**kw):
    config = BertConfig(
        vocab_size=V, max_len=32, n_layer=2, n_head=2, dim=16, hidden=32, dropout=0.0, **kw
    )
    return BERT(config)


def _ed(**kw):
    config = TransformerConfig(
        vocab_size=V, max_len=32, n_layer=1, n_decoder_layer=2, n_head=2, dim=16, hidden=32,
        dropout=0.0, **kw,
    )  # fmt: skip
    return EncoderDecoder(config)


def _vit(**kw):
    config = ViTConfig(
        image_size=8, patch_size=2, channels=1, num_labels=3, n_layer=2, n_head=2, dim=16,
        hidden=32, **kw,
    )  # fmt: skip
    return ViT(config)


def _batch(family: str):
    """A fixed batch (with padding where the family takes it) for family ``family``."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, V, (4, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    if family == "gpt":
        return {"input_ids": ids, "attention_mask": mask, "labels": ids}
    if family == "bert":  # masked LM on every fourth token
        labels = torch.full_like(ids, -100)
        labels[:, ::4] = ids[:, ::4]
        masked = ids.masked_fill(labels != -100, 2)
        return {"input_ids": masked, "attention_mask": mask, "labels": labels}
    if family == "ed":
        return {"input_ids": ids, "attention_mask": mask, "labels": ids[:, :9]}
    return {"images": torch.randn(4, 1, 8, 8, generator=g), "labels": torch.tensor([0, 1, 2, 1])}


BUILD = {"gpt": _gpt, "bert": _bert, "ed": _ed, "vit": _vit}
CAUSAL = {"gpt", "ed"}


def _valid(family: str, attention: str, position: str) -> bool:
    kernel = attention in ("linear", "performer", "linformer")
    if kernel and position in ("alibi", "t5"):
        return False
    return not (attention == "linformer" and family in CAUSAL)


def _cases():
    cases = [(f, k, "rope" if f != "vit" else "learned") for f in BUILD for k in KINDS]
    cases += [(f, "softmax", p) for f in BUILD for p in POSITIONS]
    cases += [(f, "linear", p) for f in BUILD for p in ("none", "learned", "sinusoidal")]
    return [c for c in dict.fromkeys(cases) if _valid(*c)]


def _build(family: str, attention: str, position: str, **kw):
    extra = {"head": "mlm"} if family == "bert" else {}
    return BUILD[family](
        attention=attention, position=position, **KIND_OPTIONS.get(attention, {}), **extra, **kw
    )


@pytest.mark.parametrize(("family", "attention", "position"), _cases())
def test_every_kind_and_position_trains(family, attention, position):
    torch.manual_seed(0)
    model = _build(family, attention, position)
    batch = _batch(family)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.05, losses


DECODE = [(k, "rope") for k in ("softmax", "local", "linear", "performer")]
DECODE += [("linear", "learned"), ("performer", "none"), ("local", "alibi")]


@pytest.mark.parametrize(("attention", "position"), DECODE)
@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_causal_kinds_decode_equal_to_the_full_forward(attention, position, kind):
    torch.manual_seed(1)
    model = _build("gpt", attention, position).eval()
    ids = torch.randint(0, V, (2, 14))
    full = model(ids).logits
    caches = model.make_caches(2, 32, kind=kind)
    steps = [model(ids[:, :5], caches=caches).logits]
    steps += [model(ids[:, i : i + 1], caches=caches).logits for i in range(5, 14)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=2e-6, rtol=0)


@pytest.mark.parametrize("attention", ["softmax", "local", "linear", "performer"])
def test_encoder_decoder_decodes_each_kind_like_its_full_forward(attention):
    torch.manual_seed(2)
    model = _build("ed", attention, "rope").eval()
    src, tgt = torch.randint(3, V, (2, 7)), torch.randint(3, V, (2, 9))
    full = model(src, decoder_input_ids=tgt).logits
    caches = model.make_caches(2, src.shape[1], 16, kind="static")
    steps = [
        model(src, decoder_input_ids=tgt[:, i : i + 1], caches=caches).logits for i in range(9)
    ]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=2e-6, rtol=0)


def test_a_window_changes_the_output_and_local_decoding_sees_only_the_window():
    torch.manual_seed(3)
    softmax = _gpt(position="rope").eval()
    local = _gpt(position="rope", attention="local", window=3).eval()
    local.load_state_dict(softmax.state_dict())
    ids = torch.randint(0, V, (1, 10))
    short, long = softmax(ids).logits, local(ids).logits
    torch.testing.assert_close(long[:, :3], short[:, :3])  # the first 3 see the same keys
    assert (long[:, 3:] - short[:, 3:]).abs().max() > 1e-4


@pytest.mark.parametrize("attention", ["linear", "performer"])
def test_kernel_caches_are_a_fixed_size_state(attention):
    """O(1) memory per token: the running state does not depend on how long the cache may
    grow, while a key/value cache grows with it."""
    kernel = _build("gpt", attention, "rope")
    softmax = _build("gpt", "softmax", "rope")

    def nbytes(model, n):
        caches = model.make_caches(1, n, kind="static")
        return sum(b.numel() * b.element_size() for c in caches for b in c.buffers())

    assert nbytes(kernel, 32) == nbytes(kernel, 32_000)
    assert nbytes(softmax, 32_000) > 500 * nbytes(softmax, 32)
    ids = torch.randint(0, V, (1, 20))
    caches = kernel.make_caches(1, 64)
    assert caches.kind == "state"
    before = [c.S.clone() for c in caches]
    kernel.eval()(ids, caches=caches)
    assert caches.lengths.tolist() == [20]
    assert all(not torch.equal(b, c.S) for b, c in zip(before, caches, strict=True))
    with pytest.raises(TypeError, match="truncate: a running state cannot forget"):
        caches.truncate(5)


def test_a_padded_batch_through_linear_attention_equals_each_sequence_alone():
    torch.manual_seed(4)
    model = _build("bert", "linear", "learned").eval()
    ids = torch.randint(3, V, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    batch = model(ids, attention_mask=mask).logits
    alone = model(ids[1:, :6]).logits
    torch.testing.assert_close(batch[1:, :6], alone, atol=1e-6, rtol=0)


YARN = {"kind": "yarn", "factor": 2.0, "original_max_len": 16}
MISTAKES = [
    (_gpt, {"attention": "liner"}, r"attention: unknown attention kind 'liner' \(did you mean"),
    (_gpt, {"position": "alibl"}, r"position: unknown position 'alibl' \(did you mean 'alibi'"),
    (_gpt, {"score": "cosin"}, r"score: unknown score 'cosin' \(did you mean 'cosine'\?\)"),
    (_gpt, {"attention": "local"}, r"window: attention='local' needs it"),
    (_gpt, {"window": 4}, r"window: only attention='local' reads it"),
    (_gpt, {"attention": "linear", "n_features": 8}, r"n_features: only attention='performer'"),
    (_gpt, {"attention": "linformer"}, r"'linformer' cannot run in a decoder-only model: Lin"),
    (_ed, {"attention": "linformer"}, r"attention: 'linformer' cannot run in an encoder-decoder"),
    (_bert, {"attention": "performer", "position": "t5"}, r"position: 't5' adds a bias to"),
    (_vit, {"attention": "linear", "score": "cosine"}, r"score: 'cosine' scores queries"),
    (_gpt, {"attention": "local", "window": 0}, r"window: expected a positive int or None, got 0"),
    (_gpt, {"rope_scaling": YARN}, r"rope_scaling: scales rotary positions"),
    (_gpt, {"position": "rope", "rope_scaling": {"kind": "yarnn"}}, r"rope_scaling.kind: unknown"),
]


@pytest.mark.parametrize(("build", "fields", "match"), MISTAKES)
def test_mistakes_name_the_field(build, fields, match):
    with pytest.raises(ValueError, match=match):
        build(**fields)


def test_rope_scaling_reaches_every_layer():
    model = _gpt(
        position="rope", rope_scaling={"kind": "yarn", "factor": 4.0, "original_max_len": 8}
    )
    rope = model.blocks[0].attn.position
    assert rope is model.blocks[1].attn.position and rope.attention_factor > 1.0
    plain = _gpt(position="rope").blocks[0].attn.position
    assert not torch.equal(rope.inv_freq, plain.inv_freq)


def test_cli_refuses_an_unknown_kind_in_one_line(tmp_path):
    cli = [sys.executable, "-m", "attnlab.cli.main"]
    result = subprocess.run(
        [*cli, "train", "--preset", "shakespeare-char", "model.attention=liner", "max_steps=1",
         "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "did you mean 'linear'" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_renamed_fields_are_read_under_their_new_names():
    assert upgrade_config({"tie_output": False, "dim": 8}) == {"tie_embeddings": False, "dim": 8}
    assert upgrade_config({"num_classes": 3}) == {"num_labels": 3}
    with pytest.raises(ValueError, match="num_classes: renamed to 'num_labels'; expected one of"):
        upgrade_config({"num_classes": 3, "num_labels": 3})


@pytest.mark.parametrize(
    ("run", "field", "value"),
    [("vit-run", "num_labels", 10), ("ed-run", "tie_embeddings", False)],
)
def test_runs_written_before_the_renaming_still_load(run, field, value):
    """The fixtures were written by `attnlab train` before ``num_classes`` and ``tie_output``
    were renamed (their config.json and meta.json hold the old names)."""
    loaded = attnlab.load(FIXTURES / run)
    assert getattr(loaded.model.config, field) == value
    if run == "ed-run":
        assert loaded.model.head.weight is not loaded.model.tgt_tok.weight  # untied, as saved


def test_a_run_written_before_the_renaming_resumes(tmp_path):
    run = tmp_path / "vit-run"
    shutil.copytree(FIXTURES / "vit-run", run)
    cli = [sys.executable, "-m", "attnlab.cli.main"]
    result = subprocess.run(
        [*cli, "train", "--preset", "vit-digits", "max_steps=4", "eval_every=4",
         "model.n_layer=1", "model.dim=16", "model.hidden=16", "model.n_head=2",
         "model.num_labels=10", "--out", str(run), "--resume"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stdout
    assert (run / "checkpoints" / "step-0000004").is_dir()


def test_soft_capped_scores_and_sinks_in_a_gpt_train_and_decode():
    torch.manual_seed(7)
    model = _gpt(position="rope", softcap=5.0, sinks=True)
    assert model.blocks[0].attn.sinks.shape == (2,)
    batch = _batch("gpt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        assert model.blocks[0].attn.sinks.grad.abs().sum() > 0  # the sinks learn
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses
    model.eval()
    ids = torch.randint(0, V, (2, 10))
    caches = model.make_caches(2, 32, kind="static")
    steps = [model(ids[:, :4], caches=caches).logits]
    steps += [model(ids[:, i : i + 1], caches=caches).logits for i in range(4, 10)]
    torch.testing.assert_close(torch.cat(steps, dim=1), model(ids).logits, atol=2e-6, rtol=0)
    with pytest.raises(ValueError, match="sinks: acts on softmax scores, which attention='linear'"):
        _gpt(attention="linear", sinks=True)
