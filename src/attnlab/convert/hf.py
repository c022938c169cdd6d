"""Hugging Face-format checkpoint directories: ``config.json`` plus safetensors weights.

Loading never runs pickled code: weights come from safetensors files (one, or shards listed in
``model.safetensors.index.json``), or from ``pytorch_model.bin`` with ``weights_only=True``.
Nothing is fetched over the network. Every tensor must be used and every parameter filled:
a missing, unexpected or wrongly shaped tensor is an error naming the file and the tensor.

Saving writes what transformers' ``from_pretrained`` reads: GPT as GPT-2 or Llama (whichever can
hold its configuration), BERT as the transformers class of its head, ViT as an image classifier.
Every file is written to a temporary name and renamed into place, so a reader never sees half of
one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from types import ModuleType

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from attnlab.convert.maps import bert, gpt2, llama, vit
from attnlab.convert.state import build_model
from attnlab.files import atomic_write_text

# model_type -> key map; save_hf tries them in this order for a model of their MODEL class.
FAMILIES: dict[str, ModuleType] = {"gpt2": gpt2, "llama": llama, "bert": bert, "vit": vit}

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


def _family(hf: dict, config_path: Path) -> ModuleType:
    model_type = hf.get("model_type")
    if model_type not in FAMILIES:
        archs = ", ".join(hf.get("architectures") or []) or "none given"
        raise ValueError(
            f"{config_path}: unsupported architecture (model_type={model_type!r}, "
            f"architectures: {archs}); supported model types: {', '.join(FAMILIES)}"
        )
    return FAMILIES[model_type]


def _read_config(config_path: Path) -> dict:
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: no such file (expected a checkpoint directory)")
    try:
        hf = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{config_path}: expected JSON, got a parse error ({exc})") from None
    if not isinstance(hf, dict):
        raise ValueError(f"{config_path}: expected a JSON object, got {type(hf).__name__}")
    return hf


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(path)
    except SafetensorError as exc:
        raise ValueError(f"{path}: cannot read safetensors weights ({exc})") from None


def _read_index(index: Path) -> dict[str, Tensor]:
    """The tensors of every shard listed in a ``model.safetensors.index.json``."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{index}: expected JSON with a 'weight_map' object, got {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(weight_map, dict) or not all(isinstance(s, str) for s in weight_map.values()):
        raise ValueError(f"{index}: expected 'weight_map' to map tensor names to shard file names")
    tensors: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        path = index.parent / shard
        if Path(shard).name != shard or not path.is_file():
            raise ValueError(f"{index}: shard {shard!r} is listed but {path} does not exist")
        part = _read_safetensors(path)
        absent = sorted(k for k, s in weight_map.items() if s == shard and k not in part)
        if absent:
            raise ValueError(f"{index}: tensors {absent[:5]} are listed in {shard!r} but absent")
        tensors.update(part)
    return tensors


def _read_weights(directory: Path) -> tuple[dict[str, Tensor], str]:
    """All tensors of the checkpoint and a description of where they came from."""
    single, index = directory / SINGLE, directory / INDEX
    if single.exists():
        return _read_safetensors(single), str(single)
    if index.exists():
        return _read_index(index), str(index)
    legacy = directory / "pytorch_model.bin"
    if legacy.exists():
        try:
            return torch.load(legacy, map_location="cpu", weights_only=True), str(legacy)
        except Exception as exc:  # weights_only refuses arbitrary pickled objects
            raise ValueError(f"{legacy}: not a plain tensor checkpoint ({exc})") from None
    raise FileNotFoundError(f"{directory}: no {SINGLE}, {INDEX} or pytorch_model.bin")


def load_hf(directory: str | os.PathLike) -> nn.Module:
    """The attnlab model for a Hugging Face checkpoint directory: GPT-2 and Llama (as ``GPT``),
    BERT with its masked-LM, next-sentence, classification or no head (as ``BERT``), and ViT
    image classifiers (as ``ViT``)."""
    directory = Path(directory)
    config_path = directory / "config.json"
    hf = _read_config(config_path)
    family = _family(hf, config_path)
    tensors, source = _read_weights(directory)
    tensors = {k: v for k, v in tensors.items() if not k.endswith(family.IGNORED_SUFFIXES)}
    try:
        config = family.config_from_hf(hf, tensors)
    except KeyError as exc:
        raise ValueError(f"{config_path}: missing field {exc.args[0]!r}") from None
    except ValueError as exc:  # the maps say "config.json: ..."; name the actual file
        raise ValueError(f"{config_path}: {str(exc).removeprefix('config.json: ')}") from None
    try:
        state = family.to_attnlab(dict(tensors), config)
    except KeyError as exc:
        raise ValueError(f"{source}: missing tensor {exc.args[0]!r}") from None
    return build_model(family.MODEL, config, state, source)


def _writer(model: nn.Module) -> ModuleType:
    """The first family that can hold ``model``; otherwise an error with every family's reasons."""
    families = [f for f in FAMILIES.values() if isinstance(model, f.MODEL)]
    if not families:
        kinds = ", ".join(sorted({f.MODEL.__name__ for f in FAMILIES.values()}))
        raise TypeError(f"model: expected one of {kinds}, got {type(model).__name__}")
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
    """Write ``model`` (``GPT`` or ``BERT``) as a Hugging Face directory that transformers'
    ``from_pretrained`` and :func:`load_hf` read: ``config.json`` plus ``model.safetensors``,
    or, when ``max_shard_bytes`` is given and the weights exceed it, shards
    ``model-0000i-of-0000n.safetensors`` listed in ``model.safetensors.index.json``.

    A GPT is written as GPT-2 (learned positions, LayerNorm, GELU) or Llama (RoPE, RMSNorm,
    SwiGLU, no biases); any other configuration is a ValueError naming what cannot be written.
    Every file is written atomically; weights left by an earlier save in the other layout
    (single file or shards) are removed. Returns the directory.
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
