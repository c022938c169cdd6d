"""A tiny corpus and settings that make any run finish in seconds."""

from __future__ import annotations

import pytest

TINY_LM = [
    "model.n_layer=1",
    "model.n_head=2",
    "model.dim=32",
    "block_size=32",
    "batch_size=4",
    "warmup_steps=5",
    "eval_batches=2",
    "log_every=5",
    "sample_length=20",
]


@pytest.fixture
def corpus(tmp_path):
    lines = [f"line {i}: the quick brown fox jumps over the lazy dog {i % 7}." for i in range(400)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines))
    return path


@pytest.fixture
def tiny_lm(corpus, tmp_path):
    """Overrides for a character-level run on ``corpus`` writing into tmp_path/run."""
    return [*TINY_LM, f"corpus={corpus}", f"cache_dir={tmp_path / 'cache'}"]
