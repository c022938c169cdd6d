"""An embedding that reads its rows from the quantized output head it is tied to.

GPT-2 and SmolLM2 share one matrix between the token embedding and the output head. The head
is the largest single matrix of a small model (GPT-2: 38.6M of 124M parameters) and a decode
step reads all of it, so it is quantized like any Linear; the embedding then looks its rows up
in the head's codes (:meth:`Int8Linear.rows`, :meth:`Int4Linear.rows`), so the matrix stays
stored once and the two stay tied. The head holds the state: the embedding has no parameters
or buffers of its own, and the state dict no key under its name.
"""

from __future__ import annotations

from torch import Tensor, nn

from attnlab.quantize.linear import _QuantizedLinear


class TiedEmbedding(nn.Module):
    """``nn.Embedding``'s lookup over the rows of a quantized ``head`` (V, C)."""

    def __init__(self, head: _QuantizedLinear) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = head.out_features, head.in_features
        # A plain list: the head is the model's module, not this one's (its state is saved and
        # moved once, with the head).
        self._head = [head]

    @property
    def head(self) -> _QuantizedLinear:
        return self._head[0]

    @property
    def weight(self) -> Tensor:
        """The dequantized matrix (V, C) in fp32."""
        return self.head.dequantize()

    def forward(self, input_ids: Tensor) -> Tensor:
        if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex:
            raise TypeError(f"input_ids: expected integer token ids, got {input_ids.dtype}")
        return self.head.rows(input_ids)  # (..., C)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, rows of the quantized head"
