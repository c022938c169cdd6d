"""Context parallelism: layouts, and a GPT under ContextParallel equal to one process.

The single-process tests cover :class:`Layout` (which positions each rank holds, shard and
unshard, the errors). One 2-rank gloo run checks tiny GPTs (RoPE with grouped-query heads,
learned positions, ALiBi) under :class:`ContextParallel`: the same logits, loss
and averaged parameter gradients as one process on whole sequences, and the same loss
trajectory over AdamW steps.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from ranks import run_ranks

from attnlab.distributed.cp import ContextParallel, Layout
from attnlab.models import GPT, GPTConfig

TOL = 1e-5


# -- layouts ------------------------------------------------------------------------------------
def test_balanced_layout_gives_each_rank_an_early_and_a_late_chunk():
    two = Layout(2)
    assert two.positions(0, 8).tolist() == [0, 1, 6, 7]
    assert two.positions(1, 8).tolist() == [2, 3, 4, 5]
    assert Layout(4).positions(1, 16).tolist() == [2, 3, 12, 13]
    assert Layout(2, balanced=False).positions(1, 8).tolist() == [4, 5, 6, 7]


def test_balanced_layout_evens_out_causal_work():
    # Under a causal mask the query at position p attends to p + 1 keys.
    def work(layout, t):
        return [int((layout.positions(r, t) + 1).sum()) for r in range(layout.world)]

    assert len(set(work(Layout(4), 64))) == 1  # every rank the same
    contiguous = work(Layout(4, balanced=False), 64)
    assert max(contiguous) > 6 * min(contiguous)


@given(
    world=st.integers(1, 5),
    balanced=st.booleans(),
    per_chunk=st.integers(1, 3),
    dim=st.sampled_from([0, 1, 2]),
)
def test_shards_cover_every_position_once_and_unshard_inverts_shard(
    world, balanced, per_chunk, dim
):
    layout = Layout(world, balanced)
    t = layout.chunks * per_chunk
    held = torch.cat([layout.positions(r, t) for r in range(world)])
    assert sorted(held.tolist()) == list(range(t))
    shape = [2, 3, 4]
    shape[dim] = t
    x = torch.randn(shape)
    shards = [layout.shard(x, r, dim) for r in range(world)]
    for r, part in enumerate(shards):
        assert torch.equal(part, x.index_select(dim, layout.positions(r, t)))
    assert torch.equal(layout.unshard(shards, dim), x)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: Layout(0), "world: expected a positive int, got 0"),
        (lambda: Layout(2, balanced=1), "balanced: expected a bool, got int"),
        (
            lambda: Layout(2).positions(0, 6),
            "total_len: a balanced layout over 2 ranks cuts sequences into 4 equal chunks; "
            "expected a multiple of 4, got 6",
        ),
        (
            lambda: Layout(3, balanced=False).shard(torch.zeros(1, 4), 0),
            r"x.shape\[1\]: a contiguous layout over 3 ranks .* expected a multiple of 3, got 4",
        ),
        (lambda: Layout(2).positions(2, 8), r"rank: expected an int in \[0, 2\), got 2"),
        (lambda: Layout(2).unshard([torch.zeros(1, 4)]), "shards: expected 2 .*, got 1"),
        (
            lambda: Layout(2).unshard([torch.zeros(1, 4), torch.zeros(1, 2)]),
            "shards: expected length 4 along dim 1 like rank 0's, got 2 from rank 1",
        ),
    ],
)
def test_layout_errors_name_the_argument(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_context_parallel_needs_torch_distributed():
    with pytest.raises(ValueError, match=r"group: context parallelism needs torch\.distributed"):
        ContextParallel(GPT(_config("rope")))


# -- a GPT on two ranks -------------------------------------------------------------------------
B, T, V = 2, 16, 50


def _config(position: str) -> GPTConfig:
    return GPTConfig(
        vocab_size=V,
        max_len=64,
        n_layer=2,
        n_head=4,
        n_kv_head=2 if position == "rope" else None,  # grouped-query with RoPE (Llama)
        dim=32,
        position=position,
        backend="reference",
    )


def _loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), y.flatten())


def _average_grads(model, group, world) -> None:
    import torch.distributed as dist

    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, group=group)
            p.grad /= world


def _max_grad_diff(model, ref) -> float:
    worst = 0.0
    for (name, p), (_, r) in zip(model.named_parameters(), ref.named_parameters(), strict=True):
        assert (p.grad is None) == (r.grad is None), name
        if p.grad is not None:
            worst = max(worst, (p.grad - r.grad).abs().max().item())
    return worst


def _cp_checks(rank: int, world: int) -> dict:
    import torch.distributed as dist

    torch.manual_seed(0)
    x, y = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))  # the same on every rank
    group = dist.new_group(list(range(world)))
    results: dict = {}
    for position, balanced in (("rope", True), ("rope", False), ("learned", True), ("alibi", True)):
        name = f"{position}/{'balanced' if balanced else 'contiguous'}"
        torch.manual_seed(1)
        ref = GPT(_config(position))
        cp = ContextParallel(copy.deepcopy(ref), group, balanced=balanced)
        logits = cp(cp.shard(x)).logits  # (B, T / W, V)
        loss = _loss(logits, cp.shard(y))
        loss.backward()
        _average_grads(cp.model, group, world)
        ref_logits = ref(x).logits
        ref_loss = _loss(ref_logits, y)
        ref_loss.backward()
        whole_loss = loss.detach().clone()
        dist.all_reduce(whole_loss, group=group)
        results[f"{name}/logits"] = (cp.gather(logits.detach()) - ref_logits).abs().max().item()
        results[f"{name}/loss"] = abs(whole_loss.item() / world - ref_loss.item())
        results[f"{name}/grads"] = _max_grad_diff(cp.model, ref)
        # The modules run the ring; the config keeps its backend, which release() restores.
        running = _module_backends(cp.model)
        results[f"{name}/backend"] = (
            running,
            cp.model.config.backend,
            _module_backends(cp.release()),
        )

    # A few AdamW steps on one batch (the loss must fall): the losses follow one process's.
    torch.manual_seed(2)
    ref = GPT(_config("rope"))
    cp = ContextParallel(copy.deepcopy(ref), group)
    opt_ref = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    opt = torch.optim.AdamW(cp.parameters(), lr=1e-2)
    trajectory = []
    xb, yb = x, y
    for _ in range(4):
        ref_loss = _loss(ref(xb).logits, yb)
        opt_ref.zero_grad()
        ref_loss.backward()
        opt_ref.step()
        loss = _loss(cp(cp.shard(xb)).logits, cp.shard(yb))
        opt.zero_grad()
        loss.backward()
        _average_grads(cp, group, world)
        opt.step()
        whole = loss.detach().clone()
        dist.all_reduce(whole, group=group)
        trajectory.append((whole.item() / world, ref_loss.item()))
    results["adamw/trajectory"] = trajectory

    errors = {}
    for what, call in (
        ("labels", lambda: cp(cp.shard(x), labels=cp.shard(x))),
        ("odd", lambda: cp(x[:, :3])),
    ):
        try:
            call()
            errors[what] = "no error"
        except ValueError as e:
            errors[what] = str(e)
    results["errors"] = errors
    return results


def _module_backends(model) -> set[str]:
    from attnlab.attention.multihead import MultiHeadAttention

    return {m.backend for m in model.modules() if isinstance(m, MultiHeadAttention)}


def test_gpt_under_context_parallel_equals_one_process():
    for rank, results in enumerate(run_ranks(_cp_checks, 2)):
        errors = results.pop("errors")
        assert errors["labels"].startswith("labels: not supported under context parallelism")
        assert errors["odd"].startswith("input_ids: the whole sequence (W * Tl = 2 * 3)")
        trajectory = results.pop("adamw/trajectory")
        losses = [ref for _, ref in trajectory]
        assert losses[-1] < losses[0]  # it trains
        for step, (got, want) in enumerate(trajectory):
            assert abs(got - want) <= TOL, (rank, step, trajectory)
        backends = {k: results.pop(k) for k in list(results) if k.endswith("/backend")}
        assert all(v == ({"ring"}, "reference", {"reference"}) for v in backends.values()), backends
        assert len(results) == 12
        failed = {k: v for k, v in results.items() if not v <= TOL}
        assert not failed, f"rank {rank}: differences above {TOL}: {failed}"
