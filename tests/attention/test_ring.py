"""Ring attention: on 2 and 4 gloo ranks, output and gradients equal one process's reference.

Each multi-process test spawns its ranks once (a torch import each) and runs every check in
them: masks (causal, windows, document, padding, prefix-LM, tensors), biases (ALiBi, learnable
T5 and tensor biases), grouped-query heads, sinks and soft-capping, balanced (zigzag) and
contiguous layouts, the ``"ring"`` backend through ``attend``, a group of one rank, and the
errors every rank must raise together. The single-process tests cover the backend's refusals,
"auto" never picking it, and the context.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from attnlab.attention import attend, explain, get_backend, masks
from attnlab.attention import bias as bias_lib
from attnlab.attention.backends.ring import current_ring_context, ring_attention, ring_context
from attnlab.attention.call import make_call
from attnlab.attention.dispatch import priority, select_backend
from attnlab.distributed.cp import Layout

sys.path.insert(0, str(Path(__file__).parents[1] / "distributed"))
from ranks import run_ranks

TOL = 1e-5
T = 16  # whole-sequence length: 2W chunks for W = 2 and W = 4


# -- single process ---------------------------------------------------------------------------
def _qkv(requires_grad=False):
    q = torch.randn(1, 2, 4, 8, requires_grad=requires_grad)
    return q, torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8)


def test_ring_needs_an_active_context_and_says_so():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="'ring' cannot run this call: no context-parallel group"):
        attend(q, k, v, mask=masks.causal(), backend="ring")
    reasons = explain(q, k, v)["ring"]
    assert reasons == ["no context-parallel group is active (run inside ring_context(...))"]


def test_ring_refusals_are_readable():
    q, k, v = _qkv()
    with ring_context(None, torch.arange(4), total_len=8):
        call = make_call(
            q, k, v, mask=None, bias=None, scale=None, dropout_p=0.1, return_weights=True
        )
        reasons = get_backend("ring").not_supported_reasons(call)
    text = "; ".join(reasons)
    assert "dropout not supported (dropout_p=0.1)" in text
    assert "cannot return attention weights" in text
    assert "torch.distributed is not initialised" in text
    with ring_context(None, torch.arange(3), total_len=8):
        text = "; ".join(explain(q, k, v)["ring"])
    assert "q holds 4 local positions, but the ring context has 3" in text


def test_auto_never_picks_ring_even_inside_a_context():
    q, k, v = _qkv()
    with ring_context(None, torch.arange(4), total_len=4):
        call = make_call(
            q, k, v, mask=masks.causal(), bias=None, scale=None, dropout_p=0.0, return_weights=False
        )
        assert "ring" not in priority(call)
        assert select_backend(call).name != "ring"
        out = attend(q, k, v, mask=masks.causal())  # auto: a one-process backend
    torch.testing.assert_close(out, attend(q, k, v, mask=masks.causal(), backend="reference"))
    assert "ring" in explain(q, k, v)  # still explained, after the ones auto tries


def test_ring_context_checks_its_arguments_and_nests():
    for args, message in (
        ((torch.arange(2),), "total_len: expected a positive int, got 0"),
        ((torch.arange(5),), r"q_positions: expected positions in \[0, 4\)"),
        ((torch.arange(2), torch.zeros(2)), "k_positions: expected a 1-D integer tensor"),
    ):
        total = 0 if message.startswith("total_len") else 4
        with pytest.raises(ValueError, match=message), ring_context(None, *args, total_len=total):
            pass
    assert current_ring_context() is None
    with ring_context(None, torch.arange(2), total_len=4) as outer:
        assert torch.equal(outer.k_positions, outer.q_positions)  # keys default to the queries
        with ring_context(None, torch.arange(2, 4), total_len=4) as inner:
            assert current_ring_context() is inner
        assert current_ring_context() is outer
    assert current_ring_context() is None


def test_ring_attention_without_torch_distributed_is_a_clear_error():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"group: ring attention needs torch\.distributed"):
        ring_attention(q, k, v, q_positions=torch.arange(4), total_len=8)


# -- on several ranks ---------------------------------------------------------------------------
def _cases(b: int, h: int, t: int):
    """(name, mask, bias, learnable tensors) over the whole (t, t) matrix."""
    gen = torch.Generator().manual_seed(1)
    doc = torch.tensor([[0] * 5 + [1] * 6 + [2] * (t - 11), [0] * 9 + [1] * (t - 9)])[:b]
    t5 = bias_lib.RelativePositionBias(h, num_buckets=8, max_distance=16, bidirectional=True)
    with torch.no_grad():
        t5.weight.normal_(generator=gen)
    table = torch.randn(b, 1, t, t, generator=gen).requires_grad_()
    allowed = torch.rand(b, h, t, t, generator=gen) < 0.6
    return [
        ("causal", masks.causal(), None, []),
        ("window", masks.sliding_window(5), None, []),
        ("window_symmetric", masks.sliding_window(3, causal=False), None, []),
        ("document", masks.document(doc, causal=True), None, []),
        ("padding_causal", masks.padding([t - 3, 0][:b]) & masks.causal(), None, []),
        ("prefix_lm", masks.prefix_lm([6, 1][:b]), None, []),
        ("alibi", masks.causal(), bias_lib.alibi(h), []),
        ("t5_learned", None, t5(), [t5.weight]),
        ("tensor_bias_and_mask", masks.from_tensor(allowed), bias_lib.from_tensor(table), [table]),
        ("none", None, None, []),
    ]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item() if a.numel() else 0.0


def _compare(rank, world, group, layout, case, q, k, v, w, *, softcap=None, sinks=None):
    """Max differences of this rank's ring output and gradients from the reference's."""
    import torch.distributed as dist

    name, mask, bias, learned = case
    pos = layout.positions(rank, T)
    extra = [sinks] if sinks is not None else []
    ql, kl, vl = (layout.shard(x, rank, 2).detach().requires_grad_() for x in (q, k, v))
    out = ring_attention(
        ql, kl, vl, q_positions=pos, total_len=T, group=group, mask=mask, bias=bias,
        softcap=softcap, sinks=sinks,
    )  # fmt: skip
    grads = torch.autograd.grad(
        (out * layout.shard(w, rank, 2)).sum(), [ql, kl, vl, *learned, *extra]
    )
    local_grads, shared = grads[:3], grads[3:]
    # Replicated tensors (a learnable bias, the sinks): each rank holds its queries' share.
    for g in shared:
        dist.all_reduce(g, group=group)
    qf, kf, vf = (x.detach().requires_grad_() for x in (q, k, v))
    ref = attend(
        qf, kf, vf, mask=mask, bias=bias, backend="reference", softcap=softcap, sinks=sinks
    )
    want = torch.autograd.grad((ref * w).sum(), [qf, kf, vf, *learned, *extra])
    diffs = {"out": _max_diff(out, layout.shard(ref, rank, 2))}
    for what, got, full in zip(("dq", "dk", "dv"), local_grads, want[:3], strict=True):
        diffs[what] = _max_diff(got, layout.shard(full, rank, 2))
    for i, (got, full) in enumerate(zip(shared, want[3:], strict=True)):
        diffs[f"shared{i}"] = _max_diff(got, full)
    assert not out.isnan().any(), f"{name}: NaN in the output"
    return diffs


def _ring_checks(rank: int, world: int, names: tuple[str, ...] | None) -> dict[str, float]:
    """Every check on one rank: {case: largest difference from the reference}, for the cases
    ``names`` (None: all); errors that every rank must raise together come back as their
    messages."""
    import torch.distributed as dist

    torch.manual_seed(0)
    b, h, hkv, d = 2, 4, 2, 8  # grouped-query: 2 query heads per key/value head
    q, k, v = torch.randn(b, h, T, d), torch.randn(b, hkv, T, d), torch.randn(b, hkv, T, d)
    w = torch.randn(b, h, T, d)
    results: dict[str, float] = {}
    group = dist.new_group(list(range(world)))  # a group of its own, like a CP plan makes
    for balanced in (True, False):
        layout = Layout(world, balanced)
        for case in _cases(b, h, T):
            if names is not None and case[0] not in names:
                continue
            diffs = _compare(rank, world, group, layout, case, q, k, v, w)
            for what, diff in diffs.items():
                results[f"{case[0]}/{'balanced' if balanced else 'contiguous'}/{what}"] = diff
    sinks = torch.randn(h, requires_grad=True)
    layout = Layout(world)
    diffs = _compare(
        rank, world, None, layout, _cases(b, h, T)[0], q, k, v, w, softcap=2.0, sinks=sinks
    )
    results.update({f"softcap_sinks/{what}": diff for what, diff in diffs.items()})

    # The backend: a model's attend(..., backend="ring") inside ring_context.
    pos = layout.positions(rank, T)
    ql, kl, vl = (layout.shard(x, rank, 2) for x in (q, k, v))
    alibi = bias_lib.alibi(h)
    with ring_context(group, pos, total_len=T):
        via_attend = attend(ql, kl, vl, mask=masks.causal(), bias=alibi, backend="ring")
    direct = ring_attention(
        ql, kl, vl, q_positions=pos, total_len=T, group=group, mask=masks.causal(), bias=alibi
    )
    ref = attend(q, k, v, mask=masks.causal(), bias=alibi, backend="reference")
    results["backend/out"] = _max_diff(via_attend, layout.shard(ref, rank, 2))
    results["backend_equals_direct"] = _max_diff(via_attend, direct)

    # A group of one rank: the ring is this rank alone, its shard the whole sequence.
    solo = [dist.new_group([r]) for r in range(world)][rank]
    out = ring_attention(
        q, k, v, q_positions=torch.arange(T), total_len=T, group=solo, mask=masks.causal()
    )
    results["solo/out"] = _max_diff(out, attend(q, k, v, mask=masks.causal(), backend="reference"))

    # Errors every rank raises together (no rank is left waiting in the ring).
    bad = ql.clone()
    if rank == world - 1:
        bad[0, 0, 0, 0] = float("nan")
    try:
        ring_attention(bad, kl, vl, q_positions=pos, total_len=T, group=group)
        results["error/nonfinite"] = "no error"
    except ValueError as e:
        results["error/nonfinite"] = str(e)
    local = T // world
    n = local if rank else local - 2  # rank 0 holds fewer tokens than the others
    short = torch.arange(rank * local, rank * local + n)
    try:
        ring_attention(
            ql[:, :, :n], kl[:, :, :n], vl[:, :, :n], q_positions=short, total_len=T, group=group
        )
        results["error/shapes"] = "no error"
    except ValueError as e:
        results["error/shapes"] = str(e)
    return results


def _check_results(per_rank: list[dict], world: int, n_cases: int) -> None:
    for rank, results in enumerate(per_rank):
        assert results["error/nonfinite"] == (
            f"q, k, v: ring attention expects finite values; ranks [{world - 1}] of the group "
            "hold NaN or inf"
        ), rank
        assert results["error/shapes"].startswith(
            "q: ring attention expects the same (local queries, local keys, total_len) on every"
        ), (rank, results["error/shapes"])
        numbers = {k: v for k, v in results.items() if not k.startswith("error/")}
        # 2 layouts x cases x (out, dq, dk, dv), learnable tensors, the other checks.
        assert len(numbers) >= 2 * n_cases * 4 + 8
        failed = {k: v for k, v in numbers.items() if not v <= TOL}
        assert not failed, f"rank {rank}: differences above {TOL}: {failed}"


def test_ring_attention_on_two_ranks_equals_the_reference():
    _check_results(run_ranks(_ring_checks, 2, None), 2, len(_cases(2, 4, T)))


# Four ranks share two cores here: the cases where the layout matters most (a mask cutting
# blocks across ranks, ids and tensors indexed by global position, a learnable bias).
FOUR_RANK_CASES = ("causal", "window", "document", "padding_causal", "tensor_bias_and_mask")


def test_ring_attention_on_four_ranks_equals_the_reference():
    per_rank = run_ranks(_ring_checks, 4, FOUR_RANK_CASES)
    _check_results(per_rank, 4, len(FOUR_RANK_CASES))
