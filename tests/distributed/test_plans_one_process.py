"""What the parallel settings do in one process: checks, data shards, activation checkpointing
and sharded checkpoints read back without a process group."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parents[1]))
from cli_helpers import one_line_error

from attnlab.models import from_preset
from attnlab.train.config import TrainConfig

TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(300))


def test_plan_names_and_tasks_are_checked():
    with pytest.raises(ValueError, match=r"parallel: expected one of .*did you mean 'fsdp'"):
        TrainConfig(parallel="fdsp")
    with pytest.raises(ValueError, match="'cp' splits the sequences of the lm task"):
        TrainConfig(task="classify", parallel="cp")
    with pytest.raises(ValueError, match="dist_timeout: expected seconds > 0"):
        TrainConfig(dist_timeout=0)


def test_a_plan_without_torchrun_is_one_line_naming_the_launch(monkeypatch, tmp_path):
    from attnlab.cli.main import cli

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "c.txt").write_text(TEXT)
    args = ["train", "--preset", "shakespeare-char", "parallel=ddp", f"corpus={tmp_path / 'c.txt'}"]
    args += [f"cache_dir={tmp_path / 'cache'}", "--out", str(tmp_path / "run")]
    line = one_line_error(CliRunner().invoke(cli, args), "parallel: 'ddp' needs several ranks")
    assert "torchrun --nproc-per-node N -m attnlab train" in line
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_each_rank_keeps_disjoint_rows_of_one_global_batch(tmp_path):
    from attnlab.train.tasks import make_task

    (tmp_path / "c.txt").write_text(TEXT)
    settings = dict(
        corpus=str(tmp_path / "c.txt"),
        cache_dir=str(tmp_path / "cache"),
        block_size=8,
        sample_length=0,
        model_overrides={"n_layer": 1, "n_head": 2, "dim": 16},
    )
    whole = make_task(TrainConfig(batch_size=6, **settings))
    parts = [make_task(TrainConfig(batch_size=2, **settings)) for _ in range(3)]
    for rank, task in enumerate(parts):
        task.shard_data(rank, 3)
        assert task.draw_size == 6
    for _ in range(3):  # the generators advance alike: every step stays aligned
        gens = [torch.Generator().manual_seed(5) for _ in range(4)]
        want = whole.next_batch(gens[0])
        got = [task.next_batch(g) for task, g in zip(parts, gens[1:], strict=True)]
        for key in ("x", "y"):
            assert all(b[key].shape[0] == 2 for b in got)
            assert torch.equal(torch.cat([b[key] for b in got]), want[key])
    with pytest.raises(ValueError, match=r"rank: expected 0 <= rank < 2, got 2"):
        parts[0].shard_data(2, 2)


def test_activation_checkpointing_keeps_names_outputs_and_gradients():
    from attnlab.distributed.parallelize import checkpoint_activations

    torch.manual_seed(0)
    plain = from_preset("gpt2", n_layer=2, n_head=2, dim=32, max_len=16, vocab_size=50)
    again = from_preset("gpt2", n_layer=2, n_head=2, dim=32, max_len=16, vocab_size=50)
    again.load_state_dict(plain.state_dict())
    checkpoint_activations(again)
    assert list(again.state_dict()) == list(plain.state_dict())
    x = torch.randint(0, 50, (2, 16))
    calls = {"plain": 0, "again": 0}
    for name, model in (("plain", plain), ("again", again)):
        model.blocks[0].attn.register_forward_hook(
            lambda *args, name=name: calls.__setitem__(name, calls[name] + 1)
        )
    plain(x).logits.square().mean().backward()
    again(x).logits.square().mean().backward()
    assert calls == {"plain": 1, "again": 2}  # the block ran again in the backward pass
    for (name, a), b in zip(plain.named_parameters(), again.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-6, rtol=1e-5, msg=name)
    with torch.no_grad():  # no recomputation without gradients
        torch.testing.assert_close(again(x).logits, plain(x).logits)


def test_sharded_weights_load_and_export_to_one_file(tmp_path):
    import attnlab
    from attnlab.distributed.checkpoint import is_sharded, save_states, to_single_file
    from attnlab.train.checkpoint import model_meta

    model = from_preset("gpt2", n_layer=1, n_head=2, dim=16, max_len=8, vocab_size=40).eval()
    ckpt = tmp_path / "step-0000001"
    ckpt.mkdir()
    save_states(ckpt, model, None)  # DCP without a process group: one shard
    (ckpt / "meta.json").write_text(json.dumps({"step": 1, **model_meta(model)}))
    assert is_sharded(ckpt) and not (ckpt / "model.safetensors").exists()
    loaded = attnlab.load(ckpt).model
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    out = to_single_file(ckpt, tmp_path / "single")
    assert out.name == "model.safetensors"
    single = attnlab.load(tmp_path / "single").model
    x = torch.randint(0, 40, (1, 8))
    torch.testing.assert_close(single(x).logits, model(x).logits, atol=0, rtol=0)
    with pytest.raises(ValueError, match="holds no sharded weights"):
        to_single_file(tmp_path / "single")
