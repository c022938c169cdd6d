"""Checkpoint readers against broken and hostile files: each file is crafted here (a few hundred
bytes) and must fail fast with a ValueError naming the file and the key or tensor. Files that
made the readers exhaust memory or block are read in a subprocess under an address-space limit
and a timeout, so that a regression fails the test instead of the machine."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from attnlab.convert import load_gguf, load_hf, save_hf
from attnlab.convert.gguf import check_gguf
from attnlab.models import GPT, GPTConfig, ViT, ViTConfig, from_preset

LIMIT = 2 * 2**30  # address space of each subprocess: torch needs ~0.8 GB of it
CASE_SECONDS = 60  # per file, enforced with SIGALRM; a fixed reader answers at once
TIMEOUT = 300  # per subprocess, the guard of last resort (a read blocked outside Python)

# A subprocess that reads files under the limit, printing one JSON line [name, outcome] per
# file as soon as it is read, so that what finished survives a kill.
_CHILD = """
import json, resource, signal, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from attnlab import convert

def alarm(signum, frame):
    raise TimeoutError
signal.signal(signal.SIGALRM, alarm)
for name, function, path, attribute in json.loads(sys.argv[1]):
    signal.alarm({seconds})
    try:
        value = getattr(convert, function)(path)
        outcome = "loaded: " + repr(eval("value." + attribute)) if attribute else "loaded"
    except TimeoutError:
        outcome = "still running after {seconds} s"
    except ValueError as exc:
        outcome = str(exc)
    except BaseException as exc:  # MemoryError, RuntimeError from the allocator, ...
        outcome = type(exc).__name__ + ": " + str(exc)[:300]
    signal.alarm(0)
    print(json.dumps([name, outcome]), flush=True)
"""


def _read_limited(groups: list[dict[str, tuple[str, Path, str]]]) -> dict[str, str]:
    """Read each file (name -> (reader in attnlab.convert, path, attribute of the result to
    report)) under LIMIT bytes of address space, one subprocess per group, the groups at once;
    returns name -> the ValueError's message, or what happened instead."""
    child = _CHILD.format(limit=LIMIT, seconds=CASE_SECONDS)
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                child,
                json.dumps([(n, f, str(p), a) for n, (f, p, a) in g.items()]),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for g in groups
    ]
    deadline = time.monotonic() + TIMEOUT
    results = {}
    for group, process in zip(groups, processes, strict=True):
        try:
            out, err = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        results.update(json.loads(line) for line in out.splitlines() if line.startswith("["))
        for name in group.keys() - results.keys():
            results[name] = f"unfinished (exit code {process.returncode}): {err[-300:]}"
    return results


# ---- GGUF: every count and size in the header is bounded by the file ---------------------------


def _s(text: str | bytes) -> bytes:
    """A GGUF string: uint64 length, then the bytes."""
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def _kv(key: str, kind: int, payload: bytes) -> bytes:
    return _s(key) + struct.pack("<I", kind) + payload


def _info(name: str, dims, qtype: int = 0, offset: int = 0) -> bytes:
    dims = list(dims)
    return (
        _s(name)
        + struct.pack(f"<I{len(dims)}Q", len(dims), *dims)
        + struct.pack("<IQ", qtype, offset)
    )


def _gguf(kvs=(), infos=(), *, version: int = 3, tail: bytes = b"") -> bytes:
    """A GGUF file: header, metadata, tensor infos, then ``tail``."""
    head = b"GGUF" + struct.pack("<IQQ", version, len(infos), len(kvs))
    return head + b"".join(kvs) + b"".join(infos) + tail


U8, U32, STRING, ARRAY = 0, 4, 8, 9


def _tiny_gguf(path: Path, meta: dict | None = None, cut: int = 0) -> None:
    """A one-layer Llama of width 8 in fp32, written by the gguf package; ``meta`` overrides
    ``llama.*`` values; ``cut`` bytes are removed from the end."""
    rng = np.random.default_rng(0)
    dims = {"block_count": 1, "embedding_length": 8, "feed_forward_length": 16}
    dims.update(meta or {})
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(dims["block_count"])
    writer.add_embedding_length(dims["embedding_length"])
    writer.add_feed_forward_length(dims["feed_forward_length"])
    writer.add_head_count(2)
    writer.add_context_length(dims.get("context_length", 32))
    writer.add_vocab_size(10)
    shapes = {"token_embd.weight": (10, 8), "output_norm.weight": (8,)}
    for name, shape in {
        "attn_norm.weight": (8,),
        "attn_q.weight": (8, 8),
        "attn_k.weight": (8, 8),
        "attn_v.weight": (8, 8),
        "attn_output.weight": (8, 8),
        "ffn_norm.weight": (8,),
        "ffn_gate.weight": (16, 8),
        "ffn_up.weight": (16, 8),
        "ffn_down.weight": (8, 16),
    }.items():
        shapes[f"blk.0.{name}"] = shape
    for name, shape in shapes.items():
        writer.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if cut:
        data = path.read_bytes()
        path.write_bytes(data[:-cut])


def test_tiny_gguf_loads(tmp_path):
    _tiny_gguf(tmp_path / "tiny.gguf")
    check_gguf(tmp_path / "tiny.gguf")
    assert load_gguf(tmp_path / "tiny.gguf").config.dim == 8


def test_truncated_gguf_names_the_tensor(tmp_path):
    """Cut inside the tensor data: the reader said "cannot reshape array of size 48 into shape
    (16, 8)"; now the file is called truncated and the tensor is named."""
    path = tmp_path / "cut.gguf"
    _tiny_gguf(path, cut=100)
    size = path.stat().st_size
    with pytest.raises(ValueError) as info:
        load_gguf(path)
    message = str(info.value)
    assert message.startswith(f"{path}: expected a GGUF file, but it is truncated: tensor '")
    assert message.endswith(f"and the file has {size} bytes")
    # The last tensor written is the one the cut shortened.
    assert "tensor 'blk.0.ffn_down.weight' (F32) needs bytes " in message


def _header_cases() -> dict[str, tuple[bytes, str]]:
    """name -> (file contents, the end of the expected error)."""
    q4 = int(gguf.GGMLQuantizationType.Q4_0)
    return {
        "short": (b"GGUF\3\0\0\0", "it has 8 bytes (the header alone takes 24)"),
        "magic": (b"GGML" + b"\0" * 28, "it starts with b'GGML', not b'GGUF'"),
        "version": (_gguf(version=1), "it has version 1 (supported: 2, 3)"),
        "keys": (
            b"GGUF" + struct.pack("<IQQ", 3, 0, 2**40),
            "it claims 1099511627776 metadata keys, and only 0 bytes remain in the file",
        ),
        "tensors": (
            b"GGUF" + struct.pack("<IQQ", 3, 2**40, 0) + b"\0" * 30,
            "it claims 1099511627776 tensors, and only 30 bytes remain in the file",
        ),
        "key length": (
            _gguf([struct.pack("<Q", 2**50) + b"\0" * 23]),
            "metadata key #0 claims 1125899906842624 bytes, and only 23 remain in the file",
        ),
        "value type": (
            _gguf([_kv("x", 13, b"\0" * 8)]),
            "metadata key 'x' has unknown value type 13",
        ),
        "strings": (
            _gguf([_kv("names", ARRAY, struct.pack("<IQ", STRING, 2**40) + b"\0" * 8)]),
            "metadata key 'names' claims an array of 1099511627776 items, and only 8 bytes "
            "remain in the file",
        ),
        "nesting": (
            _gguf([_kv("deep", ARRAY, struct.pack("<IQ", ARRAY, 1) * 12 + b"\0" * 8)]),
            "metadata key 'deep' nests arrays more than 8 deep",
        ),
        "duplicate key": (
            _gguf([_kv("a", U8, b"\1"), _kv("a", U8, b"\2")]),
            "metadata key 'a' appears twice",
        ),
        "alignment": (
            _gguf([_kv("general.alignment", U32, struct.pack("<I", 3))]),
            "general.alignment must be a power of two stored as UINT32, got 3 (type 4)",
        ),
        "dims": (
            _gguf(infos=[_s("w") + struct.pack("<I", 2**32 - 1) + b"\0" * 40]),
            "tensor 'w' has 4294967295 dimensions (at most 4)",
        ),
        "tensor type": (
            _gguf(infos=[_info("w", [4], qtype=1000)]),
            "tensor 'w' has unknown type 1000",
        ),
        "block": (
            _gguf(infos=[_info("w", [33, 2], qtype=q4)]),
            "tensor 'w' has rows of 33 values, not a multiple of the Q4_0 block size 32",
        ),
        "elements": (
            _gguf(infos=[_info("w", [2**32, 2**32])]),
            "it is truncated: tensor 'w' (F32) needs bytes 96 to 73786976294838206560, and the "
            "file has 65 bytes",
        ),
        "offset": (
            _gguf(infos=[_info("w", [4], offset=4)], tail=b"\0" * 64),
            "tensor 'w' has offset 4, not a multiple of 32",
        ),
        "data": (
            _gguf(infos=[_info("w", [64])], tail=b"\0" * 64),
            "it is truncated: tensor 'w' (F32) needs bytes 64 to 320, and the file has 121 bytes",
        ),
        "duplicate tensor": (
            _gguf(infos=[_info("w", [4]), _info("w", [4], offset=32)], tail=b"\0" * 128),
            "tensor 'w' appears twice",
        ),
    }


@pytest.mark.parametrize("case", list(_header_cases()))
def test_damaged_gguf_headers_are_named(case, tmp_path):
    data, detail = _header_cases()[case]
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(ValueError) as info:
        check_gguf(path)
    assert str(info.value).startswith(f"{path}: ")
    assert detail in str(info.value)
    with pytest.raises(ValueError, match=re.escape(detail)):
        load_gguf(path)


def test_gguf_that_is_not_a_regular_file_is_named(tmp_path):
    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=re.escape(f"{fifo}: expected a regular file, got a FIFO")):
        check_gguf(fifo)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.gguf"):
        check_gguf(tmp_path / "nowhere.gguf")


def test_gguf_metadata_is_checked_against_the_tensors(tmp_path):
    """block_count far beyond the tensors: the key map walked the layers the metadata claims
    before comparing anything (the width is checked under a memory limit below)."""
    layers = tmp_path / "layers.gguf"
    _tiny_gguf(layers, {"block_count": 10**9})
    message = f"{layers} metadata: llama.block_count=1000000000, but {layers} holds 1 layer"
    with pytest.raises(ValueError, match=re.escape(message)):
        load_gguf(layers)


# ---- Hugging Face directories: config.json is checked against the tensors ---------------------


def _gpt2(directory: Path) -> Path:
    """A tiny GPT-2 checkpoint: 2 layers, width 32, 97 tokens, 64 positions."""
    return save_hf(
        GPT(GPTConfig(vocab_size=97, max_len=64, n_layer=2, n_head=4, dim=32)), directory
    )


@pytest.fixture
def gpt2_dir(tmp_path):
    return _gpt2(tmp_path / "gpt2")


def _edit_config(directory: Path, drop=(), **fields) -> Path:
    config = json.loads((directory / "config.json").read_text())
    config.update(fields)
    for key in drop:
        del config[key]
    (directory / "config.json").write_text(json.dumps(config))
    return directory / "config.json"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"n_head": 5}, "n_embd=32: expected a multiple of n_head=5, got 32"),
        ({"n_positions": 32}, "n_positions=32, but {weights} holds transformer.wpe.weight with "),
        ({"vocab_size": 1000}, "vocab_size=1000, but {weights} holds transformer.wte.weight"),
        ({"n_inner": 4096}, "n_inner=4096, but {weights} holds transformer.h.0.mlp.c_fc.weight"),
        ({"n_embd": "32"}, "n_embd='32': expected a positive int, got '32'"),
        ({"n_positions": 2**31}, "n_positions=2147483648: expected at most 2147483647"),
        ({"n_positions": 0}, "n_positions=0: expected a positive int, got 0"),
        ({"layer_norm_epsilon": -1}, "layer_norm_epsilon=-1: expected a finite number >= 0"),
        ({"tie_word_embeddings": "no"}, "tie_word_embeddings='no': expected true or false"),
        ({"model_type": ["gpt2"]}, "unsupported architecture (model_type=['gpt2']"),
    ],
    ids=lambda v: "-".join(v) if isinstance(v, dict) else None,
)
def test_gpt2_config_errors_use_the_files_keys(gpt2_dir, fields, message):
    config = _edit_config(gpt2_dir, **fields)
    message = message.format(weights=gpt2_dir / "model.safetensors")
    with pytest.raises(ValueError, match=re.escape(f"{config}: {message}")):
        load_hf(gpt2_dir)


def _llama_dir(path: Path, drop=(), **fields) -> Path:
    model = GPT.from_preset(
        "llama-small", vocab_size=50, max_len=64, n_layer=2, n_head=4, n_kv_head=2, dim=32,
        hidden=48,
    )  # fmt: skip
    save_hf(model, path)
    _edit_config(path, drop, **fields)
    return path


def test_llama_config_errors_use_the_files_keys(tmp_path):
    heads = _llama_dir(
        tmp_path / "heads", ["head_dim"], num_attention_heads=5, num_key_value_heads=5
    )
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"{heads / 'config.json'}: hidden_size=32: expected a multiple of "
            "num_attention_heads=5, got 32"
        ),
    ):
        load_hf(heads)
    kv = _llama_dir(tmp_path / "kv", num_key_value_heads=3)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "num_key_value_heads=3: expected a divisor of num_attention_heads=4, got 3"
        ),
    ):
        load_hf(kv)
    layers = _llama_dir(tmp_path / "layers", num_hidden_layers=3)
    with pytest.raises(
        ValueError, match=r"config.json: num_hidden_layers=3, but .*model.safetensors holds 2"
    ):
        load_hf(layers)
    zero = _llama_dir(tmp_path / "zero", num_attention_heads=0)
    with pytest.raises(
        ValueError, match=re.escape("config.json: num_attention_heads: expected a positive int")
    ):
        load_hf(zero)


def test_long_contexts_load_and_absurd_ones_are_refused(tmp_path):
    """A context of 2e9 tokens is a real (if unusual) setting: it loads, and the KV cache is
    sized when decoding. More than 2**31 - 1 positions is no real model."""
    long = _llama_dir(tmp_path / "long", max_position_embeddings=2_000_000_000)
    assert load_hf(long).config.max_len == 2_000_000_000
    absurd = _llama_dir(tmp_path / "absurd", max_position_embeddings=10**12)
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"{absurd / 'config.json'}: max_position_embeddings=1000000000000: expected at most "
            "2147483647 (2**31 - 1), got 1000000000000"
        ),
    ):
        load_hf(absurd)
    fractional = _llama_dir(tmp_path / "fractional", max_position_embeddings=2048.5)
    with pytest.raises(
        ValueError, match=re.escape("max_position_embeddings=2048.5: expected a positive int")
    ):
        load_hf(fractional)


# ---- Hugging Face directories: only regular files inside the directory are read ---------------


def test_directory_named_model_safetensors_is_named(gpt2_dir):
    weights = gpt2_dir / "model.safetensors"
    weights.unlink()
    weights.mkdir()
    with pytest.raises(
        ValueError, match=re.escape(f"{weights}: expected a regular file, got a directory")
    ):
        load_hf(gpt2_dir)
    config = gpt2_dir / "config.json"
    config.unlink()
    config.mkdir()
    with pytest.raises(
        ValueError, match=re.escape(f"{config}: expected a regular file, got a directory")
    ):
        load_hf(gpt2_dir)


def test_links_out_of_the_checkpoint_are_refused(gpt2_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere.safetensors"
    weights = gpt2_dir / "model.safetensors"
    weights.rename(elsewhere)
    weights.symlink_to(elsewhere)
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"{weights}: a symbolic link to {elsewhere}, outside the checkpoint directory "
            f"{gpt2_dir}; refusing to follow it"
        ),
    ):
        load_hf(gpt2_dir)
    # Inside the directory, a link is fine.
    weights.unlink()
    (gpt2_dir / "blob").write_bytes(elsewhere.read_bytes())
    weights.symlink_to("blob")
    assert load_hf(gpt2_dir).config.n_layer == 2
    # A link that leads nowhere is named as such.
    weights.unlink()
    weights.symlink_to("missing")
    with pytest.raises(ValueError, match=re.escape(f"{weights}: a symbolic link to ")):
        load_hf(gpt2_dir)


def test_hugging_face_cache_snapshots_load(gpt2_dir, tmp_path):
    """The hub cache keeps files in ``blobs/`` and links them from ``snapshots/<revision>/``."""
    repo = tmp_path / "hub" / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    for i, name in enumerate(("config.json", "model.safetensors")):
        (repo / "blobs" / f"hash{i}").write_bytes((gpt2_dir / name).read_bytes())
        (snapshot / name).symlink_to(f"../../blobs/hash{i}")
    assert load_hf(snapshot).config.dim == 32


def _sharded(directory: Path) -> dict:
    """Split ``directory``'s weights into two shards with an index; returns the index."""
    tensors = load_file(directory / "model.safetensors")
    (directory / "model.safetensors").unlink()
    names = sorted(tensors)
    index = {"metadata": {}, "weight_map": {}}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :])):
        shard = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: tensors[k] for k in part}, directory / shard)
        index["weight_map"].update(dict.fromkeys(part, shard))
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return index


@pytest.mark.parametrize("shard", ["../x.safetensors", "/etc/passwd", "a/../../x.safetensors"])
def test_shards_outside_the_directory_are_named_as_such(gpt2_dir, shard):
    index = _sharded(gpt2_dir)
    name = next(iter(index["weight_map"]))
    index["weight_map"][name] = shard
    path = gpt2_dir / "model.safetensors.index.json"
    path.write_text(json.dumps(index))
    with pytest.raises(
        ValueError,
        match=re.escape(f"{path}: shard {shard!r} is outside the checkpoint directory"),
    ):
        load_hf(gpt2_dir)


def test_linked_shard_outside_the_directory_is_refused(gpt2_dir, tmp_path):
    index = _sharded(gpt2_dir)
    shard = gpt2_dir / sorted(set(index["weight_map"].values()))[1]
    moved = tmp_path / "moved.safetensors"
    shard.rename(moved)
    shard.symlink_to(moved)
    with pytest.raises(
        ValueError, match=re.escape(f"{shard}: a symbolic link to {moved}, outside the checkpoint")
    ):
        load_hf(gpt2_dir)


@pytest.mark.parametrize("damage", ["truncated", "huge header", "bad header"])
def test_damaged_safetensors_fail_fast(gpt2_dir, damage):
    weights = gpt2_dir / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(
        {
            "truncated": data[: len(data) // 2],
            "huge header": struct.pack("<Q", 2**60) + data[8:],
            "bad header": struct.pack("<Q", 10) + b"{not json}" + data[18:],
        }[damage]
    )
    with pytest.raises(ValueError, match=re.escape(f"{weights}: cannot read safetensors")):
        load_hf(gpt2_dir)


# ---- files that exhausted memory or blocked, read under a limit -------------------------------


def _array_bomb(directory: Path):
    """65 bytes whose one metadata array claims 2**40 one-byte items: gguf.GGUFReader allocated
    until memory ran out."""
    path = directory / "bomb.gguf"
    path.write_bytes(_gguf([_kv("x", ARRAY, struct.pack("<IQ", U8, 2**40))], tail=b"\0" * 16))
    assert path.stat().st_size == 65
    return (
        "load_gguf",
        path,
        (
            f"{path}: expected a GGUF file, but metadata key 'x' claims an array of 1099511627776 "
            "items, and only 16 bytes remain in the file"
        ),
    )


def _gguf_width(directory: Path):
    """embedding_length=2**24 in the metadata: the model was allocated at that width before
    any tensor was compared."""
    path = directory / "wide.gguf"
    _tiny_gguf(path, {"embedding_length": 2**24})
    return (
        "load_gguf",
        path,
        (
            f"{path} metadata: llama.embedding_length=16777216, but {path} holds token_embd.weight "
            "with shape (10, 8)"
        ),
    )


def _billion_layers(directory: Path):
    """n_layer=10**9 in a config.json of a few hundred bytes: 10**10 key names were built
    before any check."""
    config = _edit_config(_gpt2(directory), n_layer=10**9)
    assert config.stat().st_size < 1000
    weights = directory / "model.safetensors"
    return "load_hf", directory, f"{config}: n_layer=1000000000, but {weights} holds 2 layers"


def _huge_width(directory: Path):
    """n_embd=2**20: a model of ~10**13 parameters was allocated before comparing tensors."""
    config = _edit_config(_gpt2(directory), n_embd=2**20, n_inner=None)
    tensor = "transformer.wte.weight with shape (97, 32)"
    weights = directory / "model.safetensors"
    return "load_hf", directory, f"{config}: n_embd=1048576, but {weights} holds {tensor}"


def _huge_image(directory: Path):
    """A ViT of 2**20-pixel images (2**36 patches): the position table was allocated before it
    was compared with the stored one; now shapes are compared on the meta device."""
    model = ViT(ViTConfig(image_size=8, patch_size=4, channels=1, num_labels=3, n_layer=1,
                          n_head=2, dim=16, hidden=32))  # fmt: skip
    _edit_config(save_hf(model, directory), image_size=2**20)
    return (
        "load_hf",
        directory,
        (
            f"{directory / 'model.safetensors'}: tensor for 'pos.weight' has shape (5, 16), "
            "expected (68719476737, 16)"
        ),
    )


def _fifo(directory: Path):
    """A FIFO named model.safetensors: opening it blocked forever."""
    weights = _gpt2(directory) / "model.safetensors"
    weights.unlink()
    os.mkfifo(weights)
    return "load_hf", directory, f"{weights}: expected a regular file, got a FIFO (named pipe)"


def _long_translation_context(directory: Path):
    """A translation model with 2e9 positions loads: its sinusoid table is computed on demand,
    not for every position up front."""
    model = from_preset("transformer-base", vocab_size=40, n_layer=1, n_head=2, dim=8, hidden=16)
    _edit_config(save_hf(model, directory), max_position_embeddings=2_000_000_000)
    return "load_hf", directory, "loaded: 2000000000", "config.max_len"


LIMITED = {
    "gguf-array-of-2**40-items": _array_bomb,
    "gguf-embedding-length-2**24": _gguf_width,
    "config-n_layer-10**9": _billion_layers,
    "config-n_embd-2**20": _huge_width,
    "vit-image-size-2**20": _huge_image,
    "fifo-weights": _fifo,
    "marian-2e9-positions": _long_translation_context,
}
MAY_BLOCK = {"fifo-weights"}


@pytest.fixture(scope="module")
def limited(tmp_path_factory) -> dict[str, tuple[str, str]]:
    """name -> (what reading the file gave under the limit, what it must give). A read that
    blocks outside Python (the FIFO) cannot be interrupted, so it gets a subprocess of its
    own; the others share one (importing torch once)."""
    groups: dict[bool, dict] = {True: {}, False: {}}
    expected = {}
    for name, build in LIMITED.items():
        reader, path, want, *attribute = build(tmp_path_factory.mktemp("limited"))
        groups[name in MAY_BLOCK][name] = (reader, path, attribute[0] if attribute else "")
        expected[name] = want
    results = _read_limited([g for g in groups.values() if g])
    return {name: (results[name], expected[name]) for name in LIMITED}


@pytest.mark.parametrize("case", list(LIMITED))
def test_files_that_exhausted_memory_or_blocked_fail_fast(limited, case):
    got, want = limited[case]
    assert got == want
