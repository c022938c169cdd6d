"""Hugging Face-format checkpoint directories: ``config.json`` plus safetensors weights.

Loading never runs pickled code: weights come from safetensors files (one, or shards listed in
``model.safetensors.index.json``), or from ``pytorch_model.bin`` with ``weights_only=True``.
Nothing is fetched over the network. Every tensor must be used and every parameter filled:
a missing, unexpected or wrongly shaped tensor is an error naming the file and the tensor.

A checkpoint directory may be broken or hostile, so loading reads only regular files that stay
inside the directory (see :mod:`attnlab.convert.paths`), and sizes nothing from ``config.json``
alone: layer counts and widths are compared with the tensor names and shapes in the safetensors
headers before a key map walks the layers or a model is allocated. Errors about the
configuration use the file's own keys (``num_attention_heads``, not attnlab's ``n_head``).

Saving writes what transformers' ``from_pretrained`` reads, with outputs equal to attnlab's: GPT
as GPT-2 (a bias-free GPT as GPT-2 with zero biases), Llama, Mistral, Qwen2, Qwen3 or Gemma 2,
the first that can hold its configuration; BERT as the transformers class of its head; ViT as
an image classifier; the encoder-decoder as Marian. Every file is written to a temporary name and
renamed into place, so a reader never sees half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from attnlab.convert.maps import bert, gpt2, marian, vit
from attnlab.convert.maps.common import KeyMap
from attnlab.convert.maps.gemma2 import GEMMA2
from attnlab.convert.maps.llama import LLAMA
from attnlab.convert.maps.mistral import MISTRAL
from attnlab.convert.maps.qwen2 import QWEN2
from attnlab.convert.maps.qwen3 import QWEN3
from attnlab.convert.paths import regular_file
from attnlab.convert.state import build_model, check_config_sizes, in_file_terms
from attnlab.files import atomic_write_text

# model_type -> key map (a module or a map object: see KeyMap); save_hf tries them in
# this order for a model of their MODEL class: the Llama-shaped families after Llama, for what
# Llama cannot hold (a sliding window, q/k/v-only biases, query/key norms), then Gemma 2.
FAMILIES: dict[str, KeyMap] = {
    "gpt2": gpt2,
    "llama": LLAMA,
    "mistral": MISTRAL,
    "qwen2": QWEN2,
    "qwen3": QWEN3,
    "gemma2": GEMMA2,
    "bert": bert,
    "vit": vit,
    "marian": marian,
}

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
# config.json and the shard index are small (kilobytes; a few megabytes with long label lists):
# a larger one is not a configuration, and is not read into memory.
MAX_JSON_BYTES = 64 * 2**20


def _family(hf: dict, config_path: Path) -> KeyMap:
    model_type = hf.get("model_type")
    if not isinstance(model_type, str) or model_type not in FAMILIES:
        archs = hf.get("architectures")
        archs = ", ".join(map(str, archs)) if isinstance(archs, list) and archs else "none given"
        raise ValueError(
            f"{config_path}: unsupported architecture (model_type={model_type!r}, "
            f"architectures: {archs}); supported model types: {', '.join(FAMILIES)}"
        )
    return FAMILIES[model_type]


def _read_json(path: Path, directory: Path):
    """The parsed contents of the small JSON file ``path`` inside ``directory``."""
    regular_file(path, directory)
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise ValueError(
            f"{path}: {size} bytes, expected a JSON file of at most {MAX_JSON_BYTES} bytes"
        )
    try:
        return json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: expected JSON, got a parse error ({exc})") from None
    except RecursionError:  # arrays nested thousands deep
        raise ValueError(f"{path}: expected JSON, got values nested too deeply") from None


def _read_config(config_path: Path, directory: Path) -> dict:
    if not os.path.lexists(config_path):
        raise FileNotFoundError(f"{config_path}: no such file (expected a checkpoint directory)")
    hf = _read_json(config_path, directory)
    if not isinstance(hf, dict):
        raise ValueError(f"{config_path}: expected a JSON object, got {type(hf).__name__}")
    return hf


def _header(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header; the data is not read. The header is
    checked against the file's size (a truncated file is refused here)."""
    try:
        with safe_open(path, framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except SafetensorError as exc:
        raise ValueError(f"{path}: cannot read safetensors weights ({exc})") from None


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(path)
    except SafetensorError as exc:
        raise ValueError(f"{path}: cannot read safetensors weights ({exc})") from None


@dataclass
class _Weights:
    """The tensors of a checkpoint: their shapes now, their data on ``load()``."""

    source: Path  # named in errors: the weights file, or the index of the shards
    shapes: dict[str, tuple[int, ...]]
    load: Callable[[], dict[str, Tensor]]


def _single(path: Path, directory: Path) -> _Weights:
    regular_file(path, directory)
    return _Weights(path, _header(path), lambda: _read_safetensors(path))


def _shard_path(index: Path, shard: str) -> Path:
    """The file of ``shard`` (a name from the index); ValueError for a name that leaves the
    checkpoint directory or does not exist."""
    normal = posixpath.normpath(shard)
    for form in (normal, posixpath.normpath(shard.replace("\\", "/"))):  # Windows separators
        if posixpath.isabs(form) or form == ".." or form.startswith("../"):
            raise ValueError(f"{index}: shard {shard!r} is outside the checkpoint directory")
    path = index.parent / normal
    if not os.path.lexists(path):
        raise ValueError(f"{index}: shard {shard!r} is listed but {path} does not exist")
    return regular_file(path, index.parent)


def _sharded(index: Path, directory: Path) -> _Weights:
    """The shards listed in a ``model.safetensors.index.json``: every listed tensor must be in
    its shard, and no tensor in two shards."""
    weight_map = _read_json(index, directory)
    weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
    if not isinstance(weight_map, dict):
        raise ValueError(f"{index}: expected JSON with a 'weight_map' object")
    if not all(isinstance(s, str) for s in weight_map.values()):
        raise ValueError(f"{index}: expected 'weight_map' to map tensor names to shard file names")
    paths = {shard: _shard_path(index, shard) for shard in sorted(set(weight_map.values()))}
    shapes: dict[str, tuple[int, ...]] = {}
    home: dict[str, str] = {}
    for shard, path in paths.items():
        part = _header(path)
        absent = sorted(k for k, s in weight_map.items() if s == shard and k not in part)
        if absent:
            raise ValueError(f"{index}: tensors {absent[:5]} are listed in {shard!r} but absent")
        twice = sorted(set(part) & set(shapes))
        if twice:
            raise ValueError(
                f"{index}: tensor {twice[0]!r} is stored in both {home[twice[0]]!r} and {shard!r}"
            )
        shapes.update(part)
        home.update(dict.fromkeys(part, shard))

    def load() -> dict[str, Tensor]:
        tensors: dict[str, Tensor] = {}
        for path in paths.values():
            tensors.update(_read_safetensors(path))
        return tensors

    return _Weights(index, shapes, load)


def _legacy(path: Path, directory: Path) -> _Weights:
    regular_file(path, directory)
    try:
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses arbitrary pickled objects
        raise ValueError(f"{path}: not a plain tensor checkpoint ({exc})") from None
    if not isinstance(tensors, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in tensors.items()
    ):
        raise ValueError(f"{path}: expected a dict of tensor name -> tensor")
    return _Weights(path, {k: tuple(v.shape) for k, v in tensors.items()}, lambda: tensors)


def _weights(directory: Path) -> _Weights:
    """The checkpoint's weights: one safetensors file, shards, or a ``pytorch_model.bin``."""
    for name, reader in ((SINGLE, _single), (INDEX, _sharded), ("pytorch_model.bin", _legacy)):
        path = directory / name
        if os.path.lexists(path):  # a broken link is reported, not skipped
            return reader(path, directory)
    raise FileNotFoundError(f"{directory}: no {SINGLE}, {INDEX} or pytorch_model.bin")


def _config(family: KeyMap, hf: dict, shapes: dict, config_path: Path):
    """``family.config_from_hf`` with its errors naming ``config_path`` and the file's keys."""
    try:
        return family.config_from_hf(hf, shapes)
    except KeyError as exc:
        raise ValueError(f"{config_path}: missing field {exc.args[0]!r}") from None
    except (ValueError, TypeError, AttributeError, IndexError) as exc:  # values of odd types
        raise ValueError(
            f"{config_path}: {in_file_terms(str(exc), family.CONFIG_KEYS, hf)}"
        ) from None


def load_hf(directory: str | os.PathLike, *, weights: bool = True) -> nn.Module:
    """The attnlab model for a Hugging Face checkpoint directory: GPT-2, Llama, Mistral, Qwen2,
    Qwen3 and Gemma 2 (as ``GPT``), BERT with its masked-LM, next-sentence, classification or
    no head (as ``BERT``), ViT image classifiers (as ``ViT``) and Marian translation models (as
    ``EncoderDecoder``).

    Raises FileNotFoundError when the directory holds no ``config.json`` or no weights, and
    ValueError naming the file (and the key or tensor) for anything else: a configuration that
    disagrees with the tensors, a missing or unexpected tensor, a file that is not a regular
    file or that a link places outside the directory. With ``weights=False`` the model is built
    on the meta device from the configuration and the tensor shapes alone (nothing is read)."""
    directory = Path(directory)
    config_path = directory / "config.json"
    hf = _read_config(config_path, directory)
    family = _family(hf, config_path)
    load_weights, weights = weights, _weights(directory)
    source = str(weights.source)
    shapes = {k: v for k, v in weights.shapes.items() if not k.endswith(family.IGNORED_SUFFIXES)}
    config = _config(family, hf, shapes, config_path)
    check_config_sizes(
        config,
        shapes,
        fields=family.CONFIG_KEYS,
        stated=hf,
        layers=family.LAYERS,
        sizes=family.SIZES,
        config_source=str(config_path),
        weights_source=source,
    )
    if not load_weights:
        with torch.device("meta"):
            return family.MODEL(config).eval()
    tensors = {k: v for k, v in weights.load().items() if k in shapes}
    try:
        state = family.to_attnlab(tensors, config)
    except KeyError as exc:
        raise ValueError(f"{source}: missing tensor {exc.args[0]!r}") from None
    except ValueError as exc:  # a tensor the attnlab model cannot hold
        raise ValueError(f"{source}: {exc}") from None
    return build_model(family.MODEL, config, state, source)


def _writer(model: nn.Module) -> KeyMap:
    """The first family that can hold ``model``; otherwise an error with every family's reasons."""
    families = [f for f in FAMILIES.values() if isinstance(model, f.MODEL)]
    if not families:
        kinds = ", ".join(sorted({f.MODEL.__name__ for f in FAMILIES.values()}))
        raise TypeError(f"model: expected one of {kinds}, got {type(model).__name__}")
    pruned = getattr(model.config, "layer_heads", None)
    if pruned:  # transformers builds every layer with the config's number of heads
        name, entry = next(iter(pruned.items()))
        raise ValueError(
            f"model: cannot be written as a Hugging Face checkpoint: its attention heads were "
            f"pruned ({len(pruned)} layers have fewer heads, {name} keeps {len(entry['heads'])} "
            f"of {model.config.n_head}) and the transformers classes give every layer the same "
            "heads; keep it as an attnlab run"
        )
    reasons = []
    for family in families:
        problems = family.supports(model.config)
        if not problems:
            return family
        reasons.append(f"as {family.NAME}: " + ", ".join(problems))
    raise ValueError("model: cannot be written as a Hugging Face checkpoint; " + "; ".join(reasons))


def _shards(tensors: dict[str, Tensor], max_bytes: int | None) -> list[dict[str, Tensor]]:
    """Consecutive groups of at most ``max_bytes`` (a larger tensor gets a shard of its own)."""
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        n = t.numel() * t.element_size()
        if max_bytes is not None and shards[-1] and size + n > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += n
    return shards


def _write_safetensors(tensors: dict[str, Tensor], path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": "pt"})
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _stale_shards(directory: Path, keep: set[str]) -> list[Path]:
    """The shards the existing index lists, except names in ``keep`` (files just written)."""
    index = directory / INDEX
    if not index.exists():
        return []
    try:
        listed = set(json.loads(index.read_text())["weight_map"].values())
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        return []
    names = {
        s for s in listed if isinstance(s, str) and Path(s).name == s and s.endswith(".safetensors")
    }
    return [directory / s for s in sorted(names - keep)]


def save_hf(
    model: nn.Module, directory: str | os.PathLike, *, max_shard_bytes: int | None = None
) -> Path:
    """Write ``model`` (``GPT``, ``BERT``, ``ViT`` or ``EncoderDecoder``) as a Hugging Face
    directory that transformers' ``from_pretrained`` and :func:`load_hf` read: ``config.json``
    plus ``model.safetensors``, or, when ``max_shard_bytes`` is given and the weights exceed it,
    shards ``model-0000i-of-0000n.safetensors`` listed in ``model.safetensors.index.json``.
    The transformers model computes the same outputs as ``model``.

    A GPT is written as GPT-2 (learned positions, LayerNorm, GELU; without biases as zero
    biases) or Llama (RoPE, RMSNorm, SwiGLU, no biases but optionally on all four attention
    projections), else as Mistral (a sliding window on every layer), Qwen2 (biases on the q/k/v
    projections only), Qwen3 (query/key RMSNorm) or Gemma 2 (its norms, GeGLU, soft-capping and
    alternating windows: see :mod:`attnlab.convert.maps.gemma2`); BERT as the class of its head; ViT
    (reading [CLS]) as ``ViTForImageClassification``; the post-norm encoder-decoder as
    ``MarianMTModel``. Any other configuration is a ValueError naming what cannot be written
    and why. Every file is written atomically; weights left by an earlier save in the other
    layout (single file or shards) are removed. Returns the directory.
    """
    if max_shard_bytes is not None and max_shard_bytes < 1:
        raise ValueError(f"max_shard_bytes: expected a positive int or None, got {max_shard_bytes}")
    directory = Path(directory)
    family = _writer(model)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tensors = family.from_attnlab(state, model.config)
    directory.mkdir(parents=True, exist_ok=True)
    shards = _shards(tensors, max_shard_bytes)
    if len(shards) == 1:
        _write_safetensors(tensors, directory / SINGLE)
        stale = [*_stale_shards(directory, keep={SINGLE}), directory / INDEX]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        for name, shard in zip(names, shards, strict=True):
            _write_safetensors(shard, directory / name)
        stale = [*_stale_shards(directory, keep=set(names)), directory / SINGLE]
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
            "weight_map": {
                k: name for name, shard in zip(names, shards, strict=True) for k in shard
            },
        }
        atomic_write_text(directory / INDEX, json.dumps(index, indent=2) + "\n")
    atomic_write_text(
        directory / "config.json", json.dumps(family.config_to_hf(model.config), indent=2) + "\n"
    )
    for path in stale:
        path.unlink(missing_ok=True)
    return directory
