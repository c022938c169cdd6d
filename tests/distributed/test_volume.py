"""The per-rank communication volume and model-state memory of each plan
(:mod:`attnlab.distributed.volume`) on tiny models counted by hand, and one 2-rank DDP run whose
socket writes match the computed volume.

The hand-counted model (:func:`tiny`): vocabulary 10, 8 positions, one block, width 4, two
heads of 2, no biases, tied head. Parameters: token table 10 x 4 = 40, positions 8 x 4 = 32,
final norm 4 (root: 76); block: two norms 4 + 4, q/k/v/out 4 x 16, MLP up 4 x 16 = 64 and down
16 x 4 = 64 (block: 200); 276 in all, 1104 bytes in float32.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from attnlab.distributed.volume import (
    all_gather_bytes,
    all_reduce_bytes,
    model_of,
    reduce_scatter_bytes,
    state_memory,
    volume,
)
from attnlab.models import GPT, GPTConfig

sys.path.insert(0, str(Path(__file__).parent))


def tiny(**overrides) -> GPTConfig:
    fields = dict(vocab_size=10, max_len=8, n_layer=1, n_head=2, dim=4, bias=False, dropout=0.0)
    return GPTConfig(**{**fields, **overrides})


def test_the_hand_count_of_the_tiny_model():
    model = model_of(tiny())
    assert next(model.parameters()).device.type == "meta"  # built without memory
    assert sum(p.numel() for p in model.parameters()) == 276  # the tied head counted once


def test_collectives_follow_the_ring_algorithms():
    assert all_reduce_bytes(100, 1) == 0
    assert all_reduce_bytes(100, 2) == 100  # 2 (N-1) / N
    assert all_reduce_bytes(100, 4) == 150
    assert all_gather_bytes(100, 4) == 75  # (N-1) / N of the gathered tensor
    assert reduce_scatter_bytes(100, 4) == 75
    assert reduce_scatter_bytes(100, 4, "all-reduce") == 150  # gloo's way


def test_ddp_all_reduces_every_gradient_once():
    assert volume(tiny(), "ddp", world=2, batch=1, seq_len=8).parts == {
        "all-reduce gradients": 1104.0  # 2 (1/2) 1104
    }
    assert volume(tiny(), "ddp", world=4, batch=3, seq_len=8).total == 1656  # 2 (3/4) 1104
    assert volume(tiny(), "ddp", world=2, batch=1, seq_len=8, dtype_bytes=2).total == 552


def test_fsdp_gathers_blocks_twice_and_the_root_once():
    v = volume(tiny(), "fsdp", world=2, batch=1, seq_len=8)
    assert v.parts == {
        "all-gather forward": 552.0,  # (1/2) 276 x 4: every unit
        "all-gather backward": 400.0,  # (1/2) 200 x 4: the block; the root was not resharded
        "reduce-scatter gradients": 552.0,
    }
    gloo = volume(tiny(), "fsdp", world=2, batch=1, seq_len=8, reduce_scatter="all-reduce")
    assert gloo.parts["reduce-scatter gradients"] == 1104
    assert gloo.total == 552 + 400 + 1104


def test_fsdp_counts_each_parameter_padded_to_a_multiple_of_the_ranks():
    # N=3: every first dimension rounds up to a multiple of 3. Root: token table 12 x 4,
    # positions 9 x 4, norm 6 (90); block: norms 6 + 6, q/k/v/out 6 x 4 each, up 18 x 4,
    # down 6 x 16 (276); 366 in all.
    v = volume(tiny(), "fsdp", world=3, batch=1, seq_len=8)
    assert v.parts["all-gather forward"] == pytest.approx(2 / 3 * 366 * 4)
    assert v.parts["all-gather backward"] == pytest.approx(2 / 3 * 276 * 4)
    assert v.parts["reduce-scatter gradients"] == pytest.approx(2 / 3 * 366 * 4)


def test_tp_reduces_two_outputs_forward_and_every_column_input_backward():
    # One all-reduce of (B, T, C) = 2 x 8 x 4 floats = 256 bytes sends 256 bytes at N=2.
    v = volume(tiny(), "tp", world=2, batch=2, seq_len=8)
    assert v.parts == {
        "all-reduce activations forward": 2 * 256.0,  # out_proj, down
        "all-reduce input gradients": 4 * 256.0,  # q, k, v, up: one each, not Megatron's 2
    }
    gated = volume(tiny(mlp="swiglu", hidden=8), "tp", world=2, batch=2, seq_len=8)
    assert gated.parts["all-reduce input gradients"] == 5 * 256  # gate and up apart
    # qk-norm: a weight of head_dim 2 per norm, shared by the split heads: 2 x 4 bytes each.
    normed = volume(tiny(qk_norm=True), "tp", world=2, batch=2, seq_len=8)
    assert normed.parts["all-reduce qk-norm gradients"] == 2 * 8
    four = volume(tiny(n_head=4), "tp", world=4, batch=2, seq_len=8)
    assert four.total == 6 * 1.5 * 256  # 2 (N-1) / N = 1.5 at N=4


def test_cp_rings_keys_and_values_and_all_reduces_gradients():
    # N=2, T=8: 4 local tokens; K and V of 2 kv heads x 4 x 2 = 16 floats each, 128 bytes.
    v = volume(tiny(), "cp", world=2, batch=1, seq_len=8)
    assert v.parts == {
        "all-reduce gradients": 1104.0,
        "ring k/v forward": 128,  # N-1 steps
        "ring k/v backward": 128,
        "ring dk/dv backward": 256,  # N steps: the accumulators come home
        "all-gather positions and checks": 8 * (4 + 4),  # 4 positions + 4 checks, int64
    }
    half = volume(tiny(), "cp", world=2, batch=1, seq_len=8, dtype_bytes=2, grad_bytes=2)
    assert half.parts["ring k/v forward"] == 64
    assert half.parts["ring dk/dv backward"] == 256  # accumulated in float32
    grouped = volume(tiny(n_kv_head=1), "cp", world=2, batch=1, seq_len=8)
    assert grouped.parts["ring k/v forward"] == 64  # one kv head: half of it


def test_frozen_parameters_are_gathered_but_not_reduced():
    torch.manual_seed(0)
    model = GPT(tiny())
    model.pos.weight.requires_grad_(False)  # 32 of the 276 parameters
    assert volume(model, "ddp", world=2, batch=1, seq_len=8).total == 244 * 4
    fsdp = volume(model, "fsdp", world=2, batch=1, seq_len=8)
    assert fsdp.parts["all-gather forward"] == 276 * 2  # every parameter, (1/2) x 4 bytes
    assert fsdp.parts["reduce-scatter gradients"] == 244 * 2
    states = state_memory(model, "ddp", world=2)
    assert states.parts["parameters"] == 276 * 4
    assert states.parts["gradients"] == states.parts["gradient buckets"] == 244 * 4
    assert states.parts["optimizer states"] == 244 * 8


def test_one_rank_and_no_plan_send_nothing():
    assert volume(tiny(), "ddp", world=1, batch=1, seq_len=8).total == 0
    assert volume(tiny(), "none", world=4, batch=1, seq_len=8).parts == {}


def test_a_model_and_its_config_give_the_same_figures():
    torch.manual_seed(0)
    model = GPT(tiny())
    for plan in ("ddp", "fsdp", "tp", "cp"):
        assert volume(model, plan, world=2, batch=1, seq_len=8) == volume(
            tiny(), plan, world=2, batch=1, seq_len=8
        )


def test_model_states_per_rank():
    # float32 parameters and gradients, AdamW's two float32 moments: 16 bytes per parameter.
    assert state_memory(tiny(), "none", world=1).total == 276 * 16
    ddp = state_memory(tiny(), "ddp", world=2)
    assert ddp.parts["gradient buckets"] == 276 * 4
    assert ddp.total == 276 * 20
    fsdp = state_memory(tiny(), "fsdp", world=2)
    assert fsdp.parts["parameters"] == 138 * 4
    assert fsdp.parts["optimizer states"] == 138 * 8
    # The root whole (parameters and gradients), two blocks' parameters and one's gradients.
    assert fsdp.parts["gathered units"] == 76 * 8 + 200 * 12
    # tp: q, k, v, out, up and down weights (192) are halved; the rest (84) replicated.
    tp = state_memory(tiny(), "tp", world=2)
    assert tp.parts["parameters"] == (96 + 84) * 4


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="plan"):
        volume(tiny(), "zero", world=2, batch=1, seq_len=8)
    with pytest.raises(ValueError, match=r"seq_len.*multiple of 4"):
        volume(tiny(), "cp", world=2, batch=1, seq_len=6)
    with pytest.raises(ValueError, match="reduce_scatter"):
        volume(tiny(), "fsdp", world=2, batch=1, seq_len=8, reduce_scatter="tree")
    with pytest.raises(ValueError, match="world"):
        volume(tiny(), "ddp", world=0, batch=1, seq_len=8)
    with pytest.raises(ValueError, match="n_heads"):
        volume(tiny(), "tp", world=4, batch=1, seq_len=8)  # 2 heads over 4 ranks
    with pytest.raises(TypeError, match="model"):
        volume({"dim": 4}, "ddp", world=2, batch=1, seq_len=8)


def _ddp_bytes(rank: int, world: int) -> dict:
    import torch.nn.functional as F

    from attnlab.distributed.parallelize import parallelize
    from attnlab.distributed.world import join

    def wchar() -> int:
        with open("/proc/self/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("wchar:"))

    torch.manual_seed(0)
    config = tiny(vocab_size=256, max_len=32, n_layer=2, dim=32, n_head=4)
    parallel = parallelize(GPT(config), "ddp", join("cpu"))
    optimizer = torch.optim.AdamW(parallel.model.parameters(), lr=1e-3)
    tokens = torch.randint(0, 256, (2, 33), generator=torch.Generator().manual_seed(rank))

    def step() -> None:
        logits = parallel.module(tokens[:, :-1]).logits
        F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
        optimizer.step()
        optimizer.zero_grad()

    step()  # warm-up: DDP rebuilds its buckets after the first backward
    before = wchar()
    for _ in range(2):
        step()
    return {
        "sent": (wchar() - before) / 2,
        "params": sum(p.numel() for p in GPT(config).parameters()),
    }


def test_ddp_on_two_gloo_ranks_writes_what_volume_computes():
    from ranks import run_ranks

    results = run_ranks(_ddp_bytes, 2, timeout=60)
    config = tiny(vocab_size=256, max_len=32, n_layer=2, dim=32, n_head=4)
    computed = volume(config, "ddp", world=2, batch=2, seq_len=32).total
    assert computed == results[0]["params"] * 4  # 2 (N-1) / N = 1 at N = 2
    for r in results:
        assert r["sent"] == pytest.approx(computed, rel=0.1)
