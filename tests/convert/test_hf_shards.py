"""Sharded checkpoints (model.safetensors.index.json + shards): transformers' shards load with
outputs equal to transformers, broken indexes name the index and the shard, and save_hf writes
shards that transformers reads."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from convert_helpers import randomize as _randomize
from transformers import (
    BertConfig,
    BertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from attnlab.convert import load_hf, save_hf
from attnlab.models import GPT

INDEX = "model.safetensors.index.json"


def _tiny(kind):
    if kind == "gpt2":
        return GPT2LMHeadModel(
            GPT2Config(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=4)
        )
    if kind == "llama":
        config = LlamaConfig(
            vocab_size=97,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
        return LlamaForCausalLM(config)
    config = BertConfig(
        vocab_size=97,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    return BertForMaskedLM(config)


@pytest.fixture(scope="module", params=["gpt2", "llama", "bert"])
def sharded(request, tmp_path_factory):
    torch.manual_seed(0)
    hf = _randomize(_tiny(request.param))
    directory = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(directory, safe_serialization=True, max_shard_size="20KB")
    return directory, hf


def _batch():
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 5:] = 0
    return ids, mask


def test_transformers_shards_load_with_equal_outputs(sharded):
    directory, hf = sharded
    shards = sorted(p.name for p in directory.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 3 and (directory / INDEX).is_file()
    assert not (directory / "model.safetensors").exists()
    ours = load_hf(directory)
    ids, mask = _batch()
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, mask).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=1e-4, rtol=0)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_broken_indexes_name_the_index_and_the_shard(sharded, tmp_path):
    directory, _ = sharded
    weight_map = json.loads((directory / INDEX).read_text())["weight_map"]
    shard = sorted(set(weight_map.values()))[1]

    missing = _copy(directory, tmp_path / "missing")
    (missing / shard).unlink()
    with pytest.raises(ValueError, match=rf"missing/{INDEX}: shard '{shard}' is listed but .*"):
        load_hf(missing)

    truncated = _copy(directory, tmp_path / "truncated")
    data = (truncated / shard).read_bytes()
    (truncated / shard).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"truncated/{shard}: cannot read safetensors weights"):
        load_hf(truncated)

    moved = _copy(directory, tmp_path / "moved")
    name = next(k for k, s in weight_map.items() if s == shard)
    other = sorted(set(weight_map.values()))[0]
    index = json.loads((moved / INDEX).read_text())
    index["weight_map"][name] = other  # the index now points at the wrong shard
    (moved / INDEX).write_text(json.dumps(index))
    with pytest.raises(
        ValueError, match=rf"moved/{INDEX}: tensors \['{name}'\] are listed in '{other}'"
    ):
        load_hf(moved)

    outside = _copy(directory, tmp_path / "outside")
    index["weight_map"][name] = "../elsewhere.safetensors"
    (outside / INDEX).write_text(json.dumps(index))
    with pytest.raises(
        ValueError, match=r"shard '../elsewhere.safetensors' is outside the checkpoint directory"
    ):
        load_hf(outside)

    garbled = _copy(directory, tmp_path / "garbled")
    (garbled / INDEX).write_text('{"metadata": {}}')
    with pytest.raises(ValueError, match=rf"garbled/{INDEX}: expected JSON with a 'weight_map'"):
        load_hf(garbled)


def test_save_hf_writes_shards_transformers_reads(tmp_path):
    ours = GPT.from_preset(
        "llama-small", vocab_size=97, max_len=32, n_layer=2, n_head=4, dim=32, hidden=64
    ).eval()
    save_hf(ours, tmp_path, max_shard_bytes=20_000)
    index = json.loads((tmp_path / INDEX).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    on_disk = sorted(p.name for p in tmp_path.iterdir())
    assert on_disk == sorted([*shards, "config.json", INDEX])  # no temporary files left
    total = sum(t.numel() * t.element_size() for t in ours.state_dict().values())
    assert index["metadata"]["total_size"] == total  # untied: every tensor stored once
    theirs = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    ids, mask = _batch()
    with torch.no_grad():
        got = ours(ids, mask).logits
        want = theirs(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=0)
    again = load_hf(tmp_path)
    assert all(torch.equal(again.state_dict()[k], v) for k, v in ours.state_dict().items())

    # Saving in the other layout replaces the earlier files instead of leaving two checkpoints.
    save_hf(ours, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    save_hf(ours, tmp_path, max_shard_bytes=30_000)
    index = json.loads((tmp_path / INDEX).read_text())
    assert "model.safetensors" not in {p.name for p in tmp_path.iterdir()}
    assert sorted(p.name for p in tmp_path.glob("model-*")) == sorted(
        set(index["weight_map"].values())
    )
    torch.testing.assert_close(load_hf(tmp_path)(ids, mask).logits, got, atol=0, rtol=0)
