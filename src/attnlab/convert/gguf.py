"""llama.cpp GGUF checkpoints: one file holding the configuration (metadata), the tokenizer and
the weights, most of them quantized in blocks.

:func:`load_gguf` reads the file with the ``gguf`` package, dequantizes every tensor to fp32 with
``gguf.quants.dequantize`` and fills an attnlab model through the architecture's key map in
``convert/maps/`` (strictly: every tensor used, every parameter filled). The tokenizer in the same
file is read by :func:`attnlab.tokenizers.load`.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from torch import Tensor, nn

from attnlab.convert.maps import gguf_llama
from attnlab.convert.state import build_model

ARCHITECTURES: dict[str, ModuleType] = {gguf_llama.ARCHITECTURE: gguf_llama}

# Tensor types dequantized here: floats, the classic block quants and the K-quants. Others (the
# IQ* codebook quants, ternary, integer) are refused by name rather than guessed at.
SUPPORTED = (
    Q.F32, Q.F16, Q.BF16,
    Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0,
    Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K,
)  # fmt: skip


def _open(path: Path) -> gguf.GGUFReader:
    if path.is_dir():
        raise ValueError(f"{path}: expected a .gguf file, got a directory")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected a .gguf checkpoint)")
    try:
        return gguf.GGUFReader(path)
    except Exception as exc:  # bad magic, truncation: ValueError, struct.error, IndexError, ...
        raise ValueError(f"{path}: expected a GGUF file, could not read it ({exc})") from None


def dequantize(tensor: gguf.ReaderTensor, source: str) -> Tensor:
    """One GGUF tensor as fp32, in numpy/torch dimension order.

    GGUF lists dimensions fastest-varying first (ggml's ``ne``), so a (rows, columns) weight is
    stored with shape ``[columns, rows]``; the reversed shape is the torch one.
    """
    qtype = tensor.tensor_type
    if qtype not in SUPPORTED:
        raise ValueError(
            f"{source}: tensor {tensor.name!r} has type {qtype.name}, expected one of "
            f"{', '.join(t.name for t in SUPPORTED)}"
        )
    shape = tuple(int(n) for n in reversed(tensor.shape))  # torch order
    values = gguf.quants.dequantize(tensor.data, qtype)
    if qtype == Q.F32:  # a view of the memory-mapped file: copy it out
        values = values.copy()
    return torch.from_numpy(np.asarray(values, dtype=np.float32).reshape(shape))


def _read(reader: gguf.GGUFReader, path: Path, what):
    """``what(reader)``, with the reader's own errors on a damaged file turned into ValueError
    naming the file (ours already name it)."""
    try:
        return what(reader)
    except ValueError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise ValueError(f"{path}: expected a GGUF file, could not read it ({exc})") from None
    except Exception as exc:
        raise ValueError(f"{path}: expected a GGUF file, could not read it ({exc})") from None


def _metadata(reader: gguf.GGUFReader) -> dict:
    return {key: field.contents() for key, field in reader.fields.items()}


def read_gguf(path: str | os.PathLike) -> tuple[dict, dict[str, Tensor]]:
    """The metadata of a GGUF file (key -> Python value) and its tensors, dequantized to fp32
    (name -> tensor in torch dimension order). Raises ValueError naming the file for a file that
    is not GGUF or is truncated, and naming the tensor for a type that cannot be dequantized."""
    path = Path(path)
    reader = _open(path)
    meta = _read(reader, path, _metadata)
    return meta, _read(reader, path, lambda r: _tensors(r, path))


def _tensors(reader: gguf.GGUFReader, path: Path) -> dict[str, Tensor]:
    return {t.name: dequantize(t, str(path)) for t in reader.tensors}


def load_gguf(path: str | os.PathLike) -> nn.Module:
    """The attnlab model stored in a llama.cpp GGUF file, in eval mode with fp32 weights.

    Supported architectures: ``llama`` (as ``GPT`` in its Llama flavour: RMSNorm, SwiGLU, RoPE,
    grouped-query attention). Weights of the types in ``SUPPORTED`` are dequantized to fp32, so
    the model computes what the quantized file describes, up to fp32 rounding.
    """
    path = Path(path)
    reader = _open(path)
    meta = _read(reader, path, _metadata)
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"{path}: architecture {arch!r} is not supported yet; "
            f"supported: {', '.join(ARCHITECTURES)}"
        )
    family = ARCHITECTURES[arch]
    tensors = _read(reader, path, lambda r: _tensors(r, path))
    del reader  # releases the memory map; every tensor has been copied out
    config = family.config_from_gguf(meta, tensors, str(path))
    try:
        state = family.to_attnlab(dict(tensors), config)
    except KeyError as exc:
        raise ValueError(f"{path}: missing tensor {exc.args[0]!r}") from None
    return build_model(family.MODEL, config, state, str(path))
