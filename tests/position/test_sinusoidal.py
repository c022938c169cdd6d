import math

import pytest
import torch

from attnlab.position import SinusoidalPositionalEmbedding, sinusoidal_table


def loop_table(length: int, dim: int, base: float) -> torch.Tensor:
    """The formula of Vaswani et al. 2017 §3.5, one entry at a time."""
    rows = []
    for pos in range(length):
        row = []
        for i in range(dim // 2):
            angle = pos / base ** (2 * i / dim)
            row += [math.sin(angle), math.cos(angle)]
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize(("length", "dim", "base"), [(7, 6, 10000.0), (50, 16, 100.0)])
def test_table_matches_loop_formula(length, dim, base):
    table = sinusoidal_table(length, dim, base=base, dtype=torch.float64)
    assert table.shape == (length, dim)
    torch.testing.assert_close(table, loop_table(length, dim, base), rtol=0, atol=1e-12)


def test_table_dtype_and_default_float32():
    assert sinusoidal_table(3, 4).dtype == torch.float32
    assert sinusoidal_table(3, 4, dtype=torch.bfloat16).dtype == torch.bfloat16


@pytest.mark.parametrize("dim", [5, 0, -2])
def test_table_rejects_bad_dim(dim):
    with pytest.raises(ValueError, match=rf"dim must be a positive even number.*got {dim}"):
        sinusoidal_table(4, dim)


def test_module_shapes_and_values():
    emb = SinusoidalPositionalEmbedding(8, max_len=16)
    table = sinusoidal_table(16, 8)
    positions = torch.tensor([3, 0, 15])
    torch.testing.assert_close(emb(positions), table[positions])
    batched = torch.tensor([[0, 1, 2], [5, 6, 7]])
    out = emb(batched)
    assert out.shape == (2, 3, 8)
    torch.testing.assert_close(out[1], table[5:8])


def test_table_is_not_in_state_dict():
    assert SinusoidalPositionalEmbedding(4, max_len=8).state_dict() == {}


def test_grows_past_max_len():
    emb = SinusoidalPositionalEmbedding(8, max_len=4)
    out = emb(torch.tensor([[2, 9]]))
    assert emb.max_len >= 10
    torch.testing.assert_close(out[0], sinusoidal_table(10, 8)[[2, 9]])
    # Growth follows the module's dtype.
    emb = SinusoidalPositionalEmbedding(8, max_len=2).to(torch.float64)
    assert emb(torch.tensor([5])).dtype == torch.float64


def test_rejects_negative_positions():
    emb = SinusoidalPositionalEmbedding(4, max_len=8)
    with pytest.raises(ValueError, match=r"positions must be >= 0; got -3"):
        emb(torch.tensor([1, -3]))


def test_rejects_float_positions_and_bad_rank():
    emb = SinusoidalPositionalEmbedding(4, max_len=8)
    with pytest.raises(TypeError, match=r"positions must be an integer tensor.*float32"):
        emb(torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"positions must have shape \(T,\) or \(B, T\).*"):
        emb(torch.zeros(1, 2, 3, dtype=torch.long))
