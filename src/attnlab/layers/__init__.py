"""Building blocks shared by the model families: norms, MLPs and the residual block."""

from attnlab.layers.block import Block
from attnlab.layers.mlp import MLP, SwiGLU, make_mlp
from attnlab.layers.norms import make_norm

__all__ = ["MLP", "Block", "SwiGLU", "make_mlp", "make_norm"]
