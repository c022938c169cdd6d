"""llama.cpp GGUF checkpoints: one file holding the configuration (metadata), the tokenizer and
the weights, most of them quantized in blocks.

:func:`load_gguf` reads the file with the ``gguf`` package, dequantizes every tensor to fp32 with
``gguf.quants.dequantize`` and fills an attnlab model through the architecture's key map in
``convert/maps/`` (strictly: every tensor used, every parameter filled). The tokenizer in the same
file is read by :func:`attnlab.tokenizers.load`.

With ``quantize=`` the Linear layers stay quantized instead: tensors whose blocks have an exact
counterpart among attnlab's quantized layers (Q8_0 -> group-wise ``Int8Linear``, Q4_0/Q4_1 ->
``Int4Linear``, group size 32; see :mod:`attnlab.convert.gguf_blocks`) are copied block by
block, and the rest are dequantized one tensor at a time (then kept fp32, or quantized), so the
model is never whole in fp32. In the packaged SmolLM2-135M every Linear is Q4_1 (kept as int4);
its token embedding is Q8_0 and tied to the output head: int8 per channel with ``"int8"`` and
``"int4"`` (the embedding reads the head's rows), one fp32 matrix with ``"gguf"``; its norms
are F32.

The ``gguf`` package's reader trusts the counts in the file: an array that claims 2**40 items
makes it allocate until memory runs out, and a truncated file fails deep inside numpy. So every
file is first walked by :func:`check_gguf`, which bounds every count and size in the header by
the bytes the file actually has, before the reader sees it.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path
from types import ModuleType

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from torch import Tensor, nn

from attnlab.convert.maps import gguf_llama
from attnlab.convert.paths import regular_file
from attnlab.convert.state import build_model, check_config_sizes, check_state_shapes
from attnlab.memory import release_freed_memory
from attnlab.quantize.apply import MODES, check_quantize

ARCHITECTURES: dict[str, ModuleType] = {gguf_llama.ARCHITECTURE: gguf_llama}

# Tensor types dequantized here: floats, the classic block quants and the K-quants. Others (the
# IQ* codebook quants, ternary, integer) are refused by name rather than guessed at.
SUPPORTED = (
    Q.F32, Q.F16, Q.BF16,
    Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0,
    Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K,
)  # fmt: skip


# -- checking a file before the reader sees it --------------------------------------------------

VERSIONS = (2, 3)  # those gguf.GGUFReader reads (version 1 had 32-bit counts)
MAX_DIMS = 4  # GGML_MAX_DIMS: llama.cpp refuses tensors with more
DEFAULT_ALIGNMENT = gguf.GGUF_DEFAULT_ALIGNMENT  # unless general.alignment says otherwise
# gguf.GGUFReader keeps several numpy objects per metadata array item, tensor and key (about
# 700 bytes each, and ~35 us to build), so a file of a few hundred megabytes of one-byte items
# would take hours and tens of gigabytes. Real files stay far below this: the largest
# vocabularies (262k tokens with scores and types, plus merges) hold about 1.1 million items.
MAX_ENTRIES = 2**22
_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
# struct formats of the scalar types: (u)int8/16/32, float32, bool, (u)int64, float64
_SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q"}
_SCALAR_FORMATS |= {11: "q", 12: "d"}
_STRING, _ARRAY, _UINT32 = 8, 9, 4
_MIN_BYTES = {**_SCALAR_BYTES, _STRING: 8, _ARRAY: 12}  # the smallest encoding of each type
_MAX_NESTING = 8  # arrays of arrays: real files use none


class _Walk:
    """A cursor over the header of a GGUF file: every read is bounded by the file's size, and
    every error names the file."""

    def __init__(self, path: Path, data, order: str = "<") -> None:
        self.path, self.data, self.size, self.pos, self.order = path, data, len(data), 0, order
        self.entries = 0

    def fail(self, detail: str) -> ValueError:
        return ValueError(f"{self.path}: expected a GGUF file, but {detail}")

    def remaining(self) -> int:
        return self.size - self.pos

    def skip(self, n: int, what: str) -> int:
        """Advance by ``n`` bytes; returns the offset it started at."""
        if n > self.remaining():
            raise self.fail(
                f"it is truncated: {what} needs {n} bytes at offset {self.pos}, and the file "
                f"has {self.size} bytes"
            )
        start, self.pos = self.pos, self.pos + n
        return start

    def number(self, fmt: str, what: str) -> int:
        start = self.skip(struct.calcsize(fmt), what)
        return struct.unpack_from(self.order + fmt, self.data, start)[0]

    def string(self, what: str) -> bytes:
        n = self.number("Q", f"the length of {what}")
        if n > self.remaining():
            raise self.fail(
                f"{what} claims {n} bytes, and only {self.remaining()} remain in the file"
            )
        start = self.skip(n, what)
        return bytes(self.data[start : start + n])

    def text(self, what: str) -> str:
        raw = self.string(what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8 text ({raw[:40]!r})") from None

    def count(self, n: int, each: int, claim: str) -> None:
        """``n`` entries of at least ``each`` bytes must fit in what remains of the file, and
        within MAX_ENTRIES. ``claim`` says what the file claims ("metadata key 'x' claims an
        array of {n} items")."""
        claim = claim.format(n=n)
        if n * each > self.remaining():
            left = self.remaining()
            raise self.fail(f"{claim}, and only {left} bytes remain in the file")
        self.entries += n
        if self.entries > MAX_ENTRIES:
            raise self.fail(
                f"{claim}, more than the {MAX_ENTRIES} metadata items, keys and tensors this "
                "reader accepts in all"
            )

    def value(self, kind: int, key: str, depth: int = 0):
        """Step over one value of type ``kind``; returns it when it is a number, a boolean or a
        string, and ``range(n)`` for an array of n items (only its length is kept)."""
        if kind in _SCALAR_BYTES:
            start = self.skip(_SCALAR_BYTES[kind], f"the value of metadata key {key!r}")
            return struct.unpack_from(self.order + _SCALAR_FORMATS[kind], self.data, start)[0]
        if kind == _STRING:
            raw = self.string(f"the value of metadata key {key!r}")
            return raw.decode("utf-8", errors="replace") if depth == 0 else None
        if kind != _ARRAY:
            raise self.fail(f"metadata key {key!r} has unknown value type {kind}")
        if depth >= _MAX_NESTING:
            raise self.fail(f"metadata key {key!r} nests arrays more than {_MAX_NESTING} deep")
        item = self.number("I", f"the item type of metadata key {key!r}")
        n = self.number("Q", f"the length of metadata key {key!r}")
        if item not in _MIN_BYTES:
            raise self.fail(f"metadata key {key!r} is an array of unknown value type {item}")
        self.count(n, _MIN_BYTES[item], f"metadata key {key!r} claims an array of {{n}} items")
        if item in _SCALAR_BYTES:  # fixed size: step over all of them at once
            self.skip(n * _SCALAR_BYTES[item], f"the items of metadata key {key!r}")
        else:
            for _ in range(n):
                self.value(item, key, depth + 1)
        return range(n)


def check_gguf(path: str | os.PathLike) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """Check that ``path`` is a GGUF file whose header can be read safely, before
    ``gguf.GGUFReader`` reads it: a regular file; the magic and a supported version; every count
    (metadata keys, array items, tensors, dimensions) bounded by the bytes that remain in the
    file; known value and tensor types; every tensor's data (its offset plus the bytes its type
    and shape need) inside the file.

    Raises FileNotFoundError when nothing is at ``path`` and ValueError naming the file and the
    metadata key or tensor for anything else ("...: expected a GGUF file, but metadata key 'x'
    claims an array of 1099511627776 items, and only 40 bytes remain in the file"; "...: it is
    truncated: tensor 'output.weight' needs bytes ..."). Reads the header only, and returns
    what it read: the metadata (numbers, booleans and strings as values, arrays as ``range(n)``
    of their length) and every tensor's shape in torch dimension order.
    """
    path = Path(path)
    if not os.path.lexists(path):
        raise FileNotFoundError(f"{path}: no such file (expected a .gguf checkpoint)")
    regular_file(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 24:
            raise ValueError(
                f"{path}: expected a GGUF file, but it has {size} bytes (the header alone takes 24)"
            )
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _check_header(_Walk(path, data))


def _check_header(walk: _Walk) -> tuple[dict, dict[str, tuple[int, ...]]]:
    magic = bytes(walk.data[:4])
    if magic != b"GGUF":
        raise walk.fail(f"it starts with {magic!r}, not b'GGUF'")
    walk.pos = 4
    version = walk.number("I", "the version")
    if version & 0xFFFF == 0:  # written on a big-endian machine, as gguf.GGUFReader tells it
        walk.order = ">"
        version = struct.unpack(">I", struct.pack("<I", version))[0]
    if version not in VERSIONS:
        raise walk.fail(f"it has version {version} (supported: {', '.join(map(str, VERSIONS))})")
    n_tensors = walk.number("Q", "the tensor count")
    n_keys = walk.number("Q", "the metadata key count")
    walk.count(n_keys, 8 + 4 + 1, "it claims {n} metadata keys")  # key length, type, a byte
    alignment = DEFAULT_ALIGNMENT
    meta: dict = {}
    for i in range(n_keys):
        key = walk.text(f"metadata key #{i}")
        if key in meta:
            raise walk.fail(f"metadata key {key!r} appears twice")
        kind = walk.number("I", f"the type of metadata key {key!r}")
        value = meta[key] = walk.value(kind, key)
        if key == "general.alignment":
            if kind != _UINT32 or not value or value & (value - 1):
                raise walk.fail(
                    f"general.alignment must be a power of two stored as UINT32, got {value} "
                    f"(type {kind})"
                )
            alignment = value
    walk.count(n_tensors, 8 + 4 + 4 + 8, "it claims {n} tensors")  # name, dims, type, offset
    tensors = [_tensor_info(walk, i) for i in range(n_tensors)]
    shapes: dict[str, tuple[int, ...]] = {}
    for name, _, _, _, dims in tensors:
        if name in shapes:
            raise walk.fail(f"tensor {name!r} appears twice")
        shapes[name] = tuple(reversed(dims))  # ggml lists the fastest-varying dimension first
    start = -(-walk.pos // alignment) * alignment  # tensor data begins at the next aligned offset
    for name, qtype, n_bytes, offset, _ in tensors:
        if offset % alignment:
            raise walk.fail(f"tensor {name!r} has offset {offset}, not a multiple of {alignment}")
        begin, end = start + offset, start + offset + n_bytes
        if end > walk.size:
            raise walk.fail(
                f"it is truncated: tensor {name!r} ({qtype.name}) needs bytes {begin} to {end}, "
                f"and the file has {walk.size} bytes"
            )
    return meta, shapes


def _tensor_info(walk: _Walk, i: int) -> tuple[str, Q, int, int, list[int]]:
    """(name, type, bytes of data, offset from the start of the data, dimensions in ggml order)
    of tensor ``i``."""
    name = walk.text(f"the name of tensor #{i}")
    n_dims = walk.number("I", f"the dimension count of tensor {name!r}")
    if n_dims > MAX_DIMS:
        raise walk.fail(f"tensor {name!r} has {n_dims} dimensions (at most {MAX_DIMS})")
    dims = [walk.number("Q", f"the dimensions of tensor {name!r}") for _ in range(n_dims)]
    raw_type = walk.number("I", f"the type of tensor {name!r}")
    offset = walk.number("Q", f"the offset of tensor {name!r}")
    try:
        qtype = Q(raw_type)
        block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        raise walk.fail(f"tensor {name!r} has unknown type {raw_type}") from None
    if dims and dims[0] % block:
        raise walk.fail(
            f"tensor {name!r} has rows of {dims[0]} values, not a multiple of the "
            f"{qtype.name} block size {block}"
        )
    elements = 1
    for n in dims:
        elements *= n
    return name, qtype, elements // block * block_bytes, offset, dims


# -- reading ----------------------------------------------------------------------------------


def _open(path: Path) -> gguf.GGUFReader:
    if path.is_dir():
        raise ValueError(f"{path}: expected a .gguf file, got a directory")
    check_gguf(path)
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


QUANTIZE = ("gguf", *MODES)  # load_gguf's quantize choices: the file's own blocks, or a mode


def load_gguf(
    path: str | os.PathLike,
    *,
    weights: bool = True,
    quantize: str | None = None,
    group_size: int | None = None,
) -> nn.Module:
    """The attnlab model stored in a llama.cpp GGUF file, in eval mode.

    Supported architectures: ``llama`` (as ``GPT`` in its Llama flavour: RMSNorm, SwiGLU, RoPE,
    grouped-query attention). With ``quantize=None`` every weight (of the types in
    ``SUPPORTED``) is dequantized to fp32, so the model computes what the quantized file
    describes, up to fp32 rounding. With ``weights=False`` the model is built on the meta device
    from the header alone (metadata and tensor shapes): no tensor data is read.

    Args:
        quantize: keep the Linear layers weight-only quantized, filled tensor by tensor so the
            model is never whole in fp32:

            * ``"gguf"``: each layer as the file stores it, where attnlab has an exact layout
              for its blocks (Q8_0 -> :class:`~attnlab.quantize.Int8Linear`, Q4_0 and Q4_1 ->
              :class:`~attnlab.quantize.Int4Linear`, group size 32; see
              :mod:`attnlab.convert.gguf_blocks`); layers of other types (F32, F16, BF16,
              Q5_*, K-quants) stay fp32.
            * ``"int8"`` / ``"int4"``: every Linear in that mode; the file's blocks are taken
              as they are where they are of that mode (Q8_0 for int8, Q4_0/Q4_1 for int4) and
              ``group_size`` is None or 32; every other layer is dequantized to fp32 and
              quantized with ``group_size`` (default: per channel for int8, 128 for int4, or
              32, the file's block size, where 128 does not divide the width).

            The norms stay fp32. A head tied to the token embedding becomes int8 per channel
            for ``"int8"`` and ``"int4"`` and the embedding reads its rows from it (as
            :func:`attnlab.quantize.quantize` does); for ``"gguf"`` it keeps the file's blocks
            where they are Q4_0/Q4_1 and stays fp32 where they are Q8_0 (group-wise int8 has
            no matmul kernel, and the head is the largest matrix a decode step reads).
        group_size: with ``quantize="int8"`` or ``"int4"`` only (see above).

    Raises:
        ValueError: a bad ``quantize`` or ``group_size`` (naming them, before any tensor is
            read), or anything wrong with the file (naming it).
    """
    check_quantize(quantize, group_size, choices=QUANTIZE)
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: expected a .gguf file, got a directory")
    meta, shapes = check_gguf(path)
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"{path}: architecture {arch!r} is not supported yet; "
            f"supported: {', '.join(ARCHITECTURES)}"
        )
    family = ARCHITECTURES[arch]
    # The configuration is checked against the tensor shapes before any tensor is dequantized.
    skeletons = {name: torch.empty(shape, device="meta") for name, shape in shapes.items()}
    config = family.config_from_gguf(meta, skeletons, str(path))
    check_config_sizes(
        config,
        shapes,
        fields=family.FIELDS,
        stated=meta,
        layers=family.LAYERS,
        sizes=family.SIZES,
        config_source=f"{path} metadata",
        weights_source=str(path),
    )
    if not weights:
        with torch.device("meta"):
            return family.MODEL(config).eval()
    try:
        reader = gguf.GGUFReader(path)  # the header was checked above
    except Exception as exc:
        raise ValueError(f"{path}: expected a GGUF file, could not read it ({exc})") from None
    if quantize is not None:  # not through _read: its errors name their argument or the file
        return _load_quantized(reader, path, family, config, quantize, group_size)
    tensors = _read(reader, path, lambda r: _tensors(r, path))
    del reader  # releases the memory map; every tensor has been copied out
    try:
        state = family.to_attnlab(dict(tensors), config)
    except KeyError as exc:
        raise ValueError(f"{path}: missing tensor {exc.args[0]!r}") from None
    return build_model(family.MODEL, config, state, str(path))


# -- straight into quantized layers ---------------------------------------------------------------


def _placement(reader: gguf.GGUFReader, family: ModuleType, config, path: Path) -> dict:
    """attnlab key -> (GGUF tensor, row order): where the family's key map puts each tensor.

    The key map works on whole tensors (renaming them, and reordering the rows of the q/k
    projections). Run on probes, int64 tensors holding (tensor index << 32 | row), it shows the
    source and the row order of every key, so blocks can be moved by whole rows, which
    block quantization (blocks lie within a row) allows, without dequantizing them.
    """
    tensors = list(reader.tensors)
    probes = {}
    for i, t in enumerate(tensors):
        rows = int(t.shape[-1]) if len(t.shape) else 1  # ggml order: rows are the last dim
        ids = torch.arange(rows, dtype=torch.int64) | (i << 32)
        probes[t.name] = ids if len(t.shape) == 1 else ids[:, None]  # (rows,) or (rows, 1)
    try:
        placed = family.to_attnlab(probes, config)
    except KeyError as exc:
        raise ValueError(f"{path}: missing tensor {exc.args[0]!r}") from None
    out = {}
    for key, probe in placed.items():
        flat = probe.reshape(-1)
        source = tensors[int(flat[0]) >> 32]
        rows = flat & 0xFFFFFFFF
        if (
            probe.dim() > 2
            or (probe.dim() == 2 and probe.shape[1] != 1)
            or (flat >> 32).ne(flat[0] >> 32).any()
        ):
            raise ValueError(
                f"{path}: the {family.ARCHITECTURE} key map does more than reorder the rows of "
                f"{source.name!r}; load it with quantize=None"
            )
        out[key] = (source, rows)
    return out


def _load_quantized(
    reader: gguf.GGUFReader, path: Path, family, config, mode: str, group_size: int | None
) -> nn.Module:
    """The model with quantized Linear layers filled tensor by tensor (see :func:`load_gguf`)."""
    from attnlab.convert import gguf_blocks
    from attnlab.convert.skeleton import fill, skeleton
    from attnlab.quantize.apply import (
        DEFAULT_GROUP_SIZE,
        LAYERS,
        _holders,
        replace_tied,
        tied_embedding,
    )
    from attnlab.quantize.linear import check_group_size

    placed = _placement(reader, family, config, path)
    model = skeleton(family.MODEL, config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    shapes = {k: tuple(int(n) for n in reversed(src.shape)) for k, (src, _) in placed.items()}
    check_state_shapes(expected, shapes, str(path))

    def floats(key: str) -> Tensor:
        source, rows = placed[key]
        w = dequantize(source, str(path))
        return w if torch.equal(rows, torch.arange(len(rows))) else w[rows]

    # Decide every layer from the header before reading any data, so that a group size that
    # does not fit fails at once.
    holders = _holders(model)
    plans, embeddings = {}, {}
    for name, linear in model.named_modules():
        if type(linear) is not nn.Linear:
            continue
        if len(holders[id(linear.weight)]) > 1:  # a head tied to the embedding, or kept
            embedding = tied_embedding(holders, linear)
            if embedding is None:
                continue
            embeddings[id(linear)] = embedding
        source, _ = placed[f"{name}.weight"]
        exact = gguf_blocks.EXACT.get(source.tensor_type)
        if id(linear) in embeddings:  # see quantize(): int8 per channel, read every step
            if mode != "gguf":
                plans[name] = (linear, "int8", None)
                continue
            if exact == "int8":  # Q8_0 is group-wise int8, which has no matmul kernel
                del embeddings[id(linear)]
                continue
        if mode == "gguf" or (exact == mode and group_size in (None, gguf_blocks.BLOCK)):
            plans[name] = (linear, "blocks" if exact else None, None)
            continue
        size = DEFAULT_GROUP_SIZE[mode] if group_size is None else group_size
        if group_size is None and size and linear.in_features % size:
            size = gguf_blocks.BLOCK  # the default does not divide it: the file's block size
        try:
            check_group_size(size, linear.in_features, mode)
        except ValueError:
            raise ValueError(
                f"group_size: expected a divisor of in_features={linear.in_features} of "
                f"{name!r} for {mode}, got {size}"
            ) from None
        plans[name] = (linear, mode, size)
    made = {}
    for name, (linear, how, size) in plans.items():
        if how is None:
            continue  # stays fp32, filled below
        bias = None if linear.bias is None else floats(f"{name}.bias")
        if how == "blocks":
            source, rows = placed[f"{name}.weight"]
            raw = gguf_blocks.row_blocks(source.data, source.tensor_type, linear.in_features)
            made[id(linear)] = gguf_blocks.to_layer(raw[rows], source.tensor_type, bias)
        else:
            made[id(linear)] = LAYERS[how](floats(f"{name}.weight"), bias, group_size=size)
    replace_tied(model, made, {k: v for k, v in embeddings.items() if k in made})
    model = fill(model, lambda key, p: floats(key)).eval()
    release_freed_memory()
    return model
