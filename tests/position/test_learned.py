import pytest
import torch
from torch import nn

from attnlab.position import LearnedPositionalEmbedding


def test_weight_is_a_parameter_with_gpt2_init():
    torch.manual_seed(0)
    emb = LearnedPositionalEmbedding(512, 64)
    assert isinstance(emb.weight, nn.Parameter)
    assert emb.weight.shape == (512, 64)
    assert abs(emb.weight.std().item() - 0.02) < 0.001
    assert abs(emb.weight.mean().item()) < 0.001
    assert list(emb.state_dict()) == ["weight"]


def test_lookup_and_gradient():
    emb = LearnedPositionalEmbedding(10, 4)
    positions = torch.tensor([[0, 3, 3], [9, 1, 2]])
    out = emb(positions)
    assert out.shape == (2, 3, 4)
    torch.testing.assert_close(out, emb.weight[positions])
    assert emb(torch.tensor([4, 5])).shape == (2, 4)
    out.sum().backward()
    assert emb.weight.grad[3].eq(2).all()  # position 3 used twice
    assert emb.weight.grad[4].eq(0).all()  # unused


def test_loads_an_nn_embedding_checkpoint():
    ref = nn.Embedding(6, 3)
    emb = LearnedPositionalEmbedding(6, 3)
    emb.load_state_dict(ref.state_dict())
    torch.testing.assert_close(emb(torch.arange(6)), ref.weight)


@pytest.mark.parametrize("bad", [8, 100, -1])
def test_out_of_range_positions_raise(bad):
    emb = LearnedPositionalEmbedding(8, 4)
    with pytest.raises(ValueError, match=rf"positions must lie in \[0, max_len=8\); got {bad}$"):
        emb(torch.tensor([0, bad, 2]))


def test_rejects_float_positions_and_bad_rank():
    emb = LearnedPositionalEmbedding(8, 4)
    with pytest.raises(TypeError, match=r"positions must be an integer tensor.*float32"):
        emb(torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"positions must have shape \(T,\) or \(B, T\)"):
        emb(torch.tensor(3))
