"""Data-parallel training (DDP, FSDP2) on 2 gloo ranks against one process with the whole batch,
and sharded checkpoints resumed on another number of ranks."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from ranks import run_ranks

TEXT = "".join(
    f"{w} the quick brown fox jumps over the lazy dog {i}.\n"
    for i, w in enumerate(["Alpha", "Beta", "Gamma", "Delta"] * 40)
)
STEPS = 4


def _config(tmp: Path, out: str, *, batch: int, parallel: str = "none", **extra):
    from attnlab.train.config import TrainConfig

    corpus = tmp / "corpus.txt"
    if not corpus.exists():
        corpus.write_text(TEXT)
    return TrainConfig(
        model="gpt2",
        # No biases: a key bias has a gradient of zero up to rounding, which Adam would
        # scale up into steps that differ between any two ways of summing.
        model_overrides={
            "n_layer": 2,
            "n_head": 2,
            "dim": 32,
            "max_len": 16,
            "dropout": 0.0,
            "bias": False,
        },
        corpus=str(corpus),
        cache_dir=str(tmp / "cache"),
        block_size=16,
        batch_size=batch,
        max_steps=STEPS,
        eval_every=2,
        eval_batches=2,
        warmup_steps=1,
        lr=1e-2,
        sample_length=0,
        device=extra.pop("device", "cpu"),
        precision=extra.pop("precision", "fp32"),
        parallel=parallel,
        out_dir=str(tmp / out),
        **extra,
    )


def _train(config, resume: bool = False) -> dict[str, torch.Tensor]:  # on the CPU
    """Train; the final weights, whole (gathered from the shards), on every rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from attnlab.train.tasks import make_task
    from attnlab.train.trainer import Trainer

    trainer = Trainer(config, make_task(config), progress=False, echo=lambda s: None)
    trainer.fit(resume=resume)
    if trainer.parallel.sharded:
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
        weights = get_model_state_dict(trainer.model, options=options)
        weights = {
            k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in weights.items()
        }
        return {k: v.cpu() for k, v in weights.items()}
    return {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}


def _train_losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r.get("split") == "train"]


def _plans(rank: int, world: int, tmp: str) -> dict[str, dict[str, torch.Tensor]]:
    tmp = Path(tmp)
    out = {}
    for plan in ("ddp", "fsdp"):
        out[plan] = _train(_config(tmp, plan, batch=2, parallel=plan, log_every=1))
    # Tensor parallel: every rank sees the whole batch and holds half of every layer.
    out["tp"] = _train(_config(tmp, "tp", batch=4, parallel="tp", log_every=1))
    # Context parallel: every rank sees the whole batch, half of each sequence; its blocks
    # re-run in the backward pass (ring attention inside activation checkpointing), and the
    # run ends with a sample from the model on whole sequences.
    cp = _config(tmp, "cp", batch=4, parallel="cp", log_every=1, activation_checkpointing=True)
    out["cp"] = _train(dataclasses.replace(cp, sample_length=8))
    return out


# Runs resumed on 2 ranks: (copied run, plan, batch per rank).
ON_TWO = [
    ("single-on-two-fsdp", "fsdp", 2),  # one process -> 2 FSDP ranks
    ("single-on-two-ddp", "ddp", 2),  # one process -> 2 DDP ranks
    ("fsdp-on-two-tp", "tp", 4),  # 2 FSDP ranks -> 2 TP ranks (shards laid out anew)
]


def _resume_on_two(rank: int, world: int, tmp: str):
    return {
        run: _train(_config(Path(tmp), run, batch=b, parallel=plan, log_every=1), resume=True)
        for run, plan, b in ON_TWO
    }


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5, msg=k)


def _cut_after(run: Path, step: int) -> None:
    """The run as if it had stopped after checkpoint ``step``."""
    for ckpt in (run / "checkpoints").glob("step-*"):
        if int(ckpt.name.removeprefix("step-")) > step:
            shutil.rmtree(ckpt)


@pytest.mark.slow
def test_every_plan_equals_one_process_and_checkpoints_change_world_size(tmp_path):
    torch.set_num_threads(1)
    # One process, batch 4.
    single = _train(_config(tmp_path, "single", batch=4, log_every=1))
    # Two ranks, batch 2 each: the same examples, the same weights.
    results = run_ranks(_plans, 2, str(tmp_path))
    for plan in ("ddp", "fsdp", "tp", "cp"):
        for rank in range(2):
            _close(results[rank][plan], single)
        assert _train_losses(tmp_path / plan) == pytest.approx(
            _train_losses(tmp_path / "single"), abs=1e-5
        )
    assert len((tmp_path / "cp" / "sample.txt").read_text()) > 0
    cp_meta = json.loads((tmp_path / "cp" / "config.json").read_text())
    assert cp_meta["config"]["backend"] == "auto"  # the run's own, not the ring's
    # The 2-rank FSDP checkpoint holds DCP shards, no single-file weights.
    step2 = tmp_path / "fsdp" / "checkpoints" / "step-0000002"
    assert (step2 / "dcp" / ".metadata").is_file()
    assert not (step2 / "model.safetensors").exists()

    # 2 ranks -> 1: resume the FSDP run from step 2 in one process with batch 4.
    resumed = tmp_path / "fsdp-on-one"
    shutil.copytree(tmp_path / "fsdp", resumed)
    _cut_after(resumed, 2)
    weights = _train(_config(tmp_path, "fsdp-on-one", batch=4, log_every=1), resume=True)
    _close(weights, single)
    assert _train_losses(resumed)[-2:] == pytest.approx(
        _train_losses(tmp_path / "single")[-2:], abs=1e-5
    )

    # 1 rank -> 2 (FSDP, DDP) and one plan -> another: resume from step 2 on 2 ranks.
    for run, _, _ in ON_TWO:
        shutil.copytree(tmp_path / run.split("-on-")[0], tmp_path / run)
        _cut_after(tmp_path / run, 2)
    results = run_ranks(_resume_on_two, 2, str(tmp_path))
    for run, _, _ in ON_TWO:
        for rank in range(2):
            _close(results[rank][run], single)
        assert _train_losses(tmp_path / run)[-2:] == pytest.approx(
            _train_losses(tmp_path / "single")[-2:], abs=1e-5
        )


def _plans_on_gpus(rank: int, world: int, tmp: str) -> dict[str, dict[str, torch.Tensor]]:
    tmp = Path(tmp)
    return {
        plan: _train(_config(tmp, f"{plan}-nccl", batch=2, parallel=plan, device="cuda"))
        for plan in ("ddp", "fsdp")
    }


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_ddp_and_fsdp_on_nccl_equal_one_gpu(tmp_path):
    # TF32 off: the comparison is of the same fp32 arithmetic split over ranks.
    torch.backends.cuda.matmul.allow_tf32 = False
    single = _train(_config(tmp_path, "single-gpu", batch=4, device="cuda"))
    results = run_ranks(_plans_on_gpus, 2, str(tmp_path), backend="nccl")
    for plan in ("ddp", "fsdp"):
        for rank in range(2):
            _close(results[rank][plan], single)
