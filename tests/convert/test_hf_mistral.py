"""Mistral checkpoints (Llama's layout with a sliding window on every layer and an explicit
head_dim): logits and greedy generation equal transformers' on a tiny model, round trips
through save_hf, the window's width, the config.json defaults."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from convert_helpers import assert_greedy_equals_transformers, assert_same_tensors, randomize
from transformers import MistralConfig, MistralForCausalLM

import attnlab
from attnlab.convert import load_hf, save_hf
from attnlab.models.gpt import GPT

WINDOW = 4  # shorter than the test sequences (13 tokens; 6 + 10 generated)


def _config(**fields) -> MistralConfig:
    return MistralConfig(
        **{
            "vocab_size": 97,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 12,  # not hidden_size / num_attention_heads = 8
            "max_position_embeddings": 64,
            "rope_theta": 500.0,
            "rms_norm_eps": 1e-5,
            "sliding_window": WINDOW,
            "bos_token_id": None,  # no end-of-sequence: both generate exactly 10 tokens
            "eos_token_id": None,
            **fields,
        }
    )


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    torch.manual_seed(0)
    hf = randomize(MistralForCausalLM(_config()))
    directory = tmp_path_factory.mktemp("mistral")
    hf.save_pretrained(directory, safe_serialization=True)
    return directory, hf


def _batch():
    ids = torch.randint(0, 97, (2, 13), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 13, dtype=torch.long)
    mask[1, 9:] = 0
    return ids, mask


def _logits(model, ids, mask, hf=False):
    with torch.no_grad():
        if hf:
            return model(input_ids=ids, attention_mask=mask).logits
        return model(ids, mask).logits


def test_mistral_logits_equal_transformers_with_padding(hf_dir):
    directory, hf = hf_dir
    ours = load_hf(directory)
    c = ours.config
    assert (c.attention, c.window, c.head_dim, c.n_kv_head) == ("local", WINDOW, 12, 2)
    assert (c.qkv_bias, c.out_bias, c.qk_norm, c.rope_base) == (False, False, False, 500.0)
    ids, mask = _batch()
    real = mask.bool()
    got, want = _logits(ours, ids, mask), _logits(hf, ids, mask, hf=True)
    torch.testing.assert_close(got[real], want[real], atol=1e-4, rtol=0)


def test_the_window_holds_sliding_window_keys_the_query_included(hf_dir):
    """transformers lets the query at p see keys k with p - k < sliding_window; so does
    attnlab's window of the same size. One key more or less, or no window, changes the logits
    of the positions past the window, so the parity above pins the width."""
    directory, hf = hf_dir
    ours = load_hf(directory)
    ids, mask = _batch()
    want = _logits(hf, ids, mask, hf=True)
    for change in ({"window": WINDOW - 1}, {"window": WINDOW + 1}, {"attention": "softmax"}):
        if change.get("attention") == "softmax":
            change["window"] = None
        other = GPT(dataclasses.replace(ours.config, **change)).eval()
        other.load_state_dict(ours.state_dict())
        got = _logits(other, ids, mask)
        # Within the window every variant agrees; past it they do not.
        torch.testing.assert_close(got[:, : WINDOW - 1], want[:, : WINDOW - 1], atol=1e-4, rtol=0)
        assert (got[0, WINDOW:] - want[0, WINDOW:]).abs().max() > 1e-2, change


def test_round_trip_through_save_hf_is_exact(hf_dir, tmp_path):
    directory, hf = hf_dir
    save_hf(load_hf(directory), tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["architectures"] == ["MistralForCausalLM"]
    assert (written["model_type"], written["sliding_window"], written["head_dim"]) == (
        "mistral",
        WINDOW,
        12,
    )
    again = MistralForCausalLM.from_pretrained(tmp_path).eval()
    ids, mask = _batch()
    torch.testing.assert_close(
        _logits(again, ids, mask, hf=True), _logits(hf, ids, mask, hf=True), atol=0, rtol=0
    )
    assert_same_tensors(tmp_path, directory)


def test_greedy_generation_equals_transformers(hf_dir):
    """Ten greedy tokens after a 6-token prompt, one row left-padded: decoding runs past the
    window, through attnlab's static cache and transformers' sliding-window cache."""
    directory, hf = hf_dir
    assert_greedy_equals_transformers(attnlab.load(directory).model, hf, vocab=97)


_DROP = object()  # a config.json key to remove


def _edited(src, dst, **fields):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    for key, value in fields.items():
        if value is _DROP:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_sliding_window_null_or_absent_reads_as_transformers_does(hf_dir, tmp_path):
    directory, _ = hf_dir
    # null: no window, every layer attends to all earlier keys.
    full = _edited(directory, tmp_path / "full", sliding_window=None)
    ours = load_hf(full)
    assert (ours.config.attention, ours.config.window) == ("softmax", None)
    theirs = MistralForCausalLM.from_pretrained(full).eval()
    ids, mask = _batch()
    real = mask.bool()
    torch.testing.assert_close(
        _logits(ours, ids, mask)[real], _logits(theirs, ids, mask, hf=True)[real], atol=1e-4, rtol=0
    )
    # Absent: MistralConfig's default window, 4096 tokens.
    absent = _edited(directory, tmp_path / "absent", sliding_window=_DROP)
    assert MistralForCausalLM.from_pretrained(absent).config.sliding_window == 4096
    assert load_hf(absent).config.window == 4096


def test_bad_sliding_window_names_the_key(hf_dir, tmp_path):
    directory, _ = hf_dir
    bad = _edited(directory, tmp_path / "bad", sliding_window=0)
    with pytest.raises(ValueError, match=r"bad/config.json: sliding_window=0: expected a positive"):
        load_hf(bad)
