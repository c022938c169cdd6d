"""Weight-only int8 and int4 quantization, applied from outside the model.

``quantize(model, "int8")`` or ``quantize(model, "int4", group_size=128)`` swaps the model's
``nn.Linear`` layers for :class:`Int8Linear` / :class:`Int4Linear` in place (a head tied to the
embedding: int8, read by a :class:`TiedEmbedding`). Activations stay in
floating point; the matmul runs PyTorch's CPU weight-only kernels where they are faster here
and a dequantize-then-matmul reference otherwise (see :mod:`attnlab.quantize.kernels`).
:func:`layout` describes a quantized model (saved with a run) and :func:`restore` builds the
same layers, empty, before a state dict is loaded into them.
"""

from attnlab.quantize.apply import MODES, layout, quantize, restore
from attnlab.quantize.linear import Int4Linear, Int8Linear
from attnlab.quantize.tied import TiedEmbedding

__all__ = ["MODES", "Int4Linear", "Int8Linear", "TiedEmbedding", "layout", "quantize", "restore"]
