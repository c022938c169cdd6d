"""Hugging Face-format checkpoint directories: ``config.json`` plus safetensors weights.

Loading never runs pickled code: weights come from safetensors files (one, or shards listed in
``model.safetensors.index.json``), or from ``pytorch_model.bin`` with ``weights_only=True``.
Nothing is fetched over the network. Every tensor must be used and every parameter filled:
a missing, unexpected or wrongly shaped tensor is an error naming the file and the tensor.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import ModuleType

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from attnlab.convert.maps import bert, gpt2, llama
from attnlab.convert.state import build_model
from attnlab.files import atomic_write_text
from attnlab.models.gpt import GPT

FAMILIES: dict[str, ModuleType] = {"gpt2": gpt2, "llama": llama, "bert": bert}


def _family(hf: dict, config_path: Path) -> ModuleType:
    model_type = hf.get("model_type")
    if model_type not in FAMILIES:
        archs = ", ".join(hf.get("architectures") or []) or "none given"
        raise ValueError(
            f"{config_path}: unsupported architecture (model_type={model_type!r}, "
            f"architectures: {archs}); supported model types: {', '.join(FAMILIES)}"
        )
    return FAMILIES[model_type]


def _read_weights(directory: Path) -> tuple[dict[str, Tensor], str]:
    """All tensors of the checkpoint and a description of where they came from."""
    single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
    try:
        if single.exists():
            return load_file(single), str(single)
        if index.exists():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            tensors: dict[str, Tensor] = {}
            for shard in shards:
                tensors.update(load_file(directory / shard))
            return tensors, str(index)
    except SafetensorError as exc:
        raise ValueError(f"{directory}: cannot read safetensors weights ({exc})") from None
    legacy = directory / "pytorch_model.bin"
    if legacy.exists():
        try:
            return torch.load(legacy, map_location="cpu", weights_only=True), str(legacy)
        except Exception as exc:  # weights_only refuses arbitrary pickled objects
            raise ValueError(f"{legacy}: not a plain tensor checkpoint ({exc})") from None
    raise FileNotFoundError(
        f"{directory}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin"
    )


def load_hf(directory: str | os.PathLike) -> nn.Module:
    """The attnlab model for a Hugging Face checkpoint directory: GPT-2 and Llama (as ``GPT``),
    BERT with its masked-LM, next-sentence, classification or no head (as ``BERT``)."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: no such file (expected a checkpoint directory)")
    hf = json.loads(config_path.read_text())
    family = _family(hf, config_path)
    tensors, source = _read_weights(directory)
    tensors = {k: v for k, v in tensors.items() if not k.endswith(family.IGNORED_SUFFIXES)}
    config = family.config_from_hf(hf, tensors)
    try:
        state = family.to_attnlab(dict(tensors), config)
    except KeyError as exc:
        raise ValueError(f"{source}: missing tensor {exc.args[0]!r}") from None
    return build_model(family.MODEL, config, state, source)


def save_hf(model: GPT, directory: str | os.PathLike) -> Path:
    """Write ``model`` as a Hugging Face directory (config.json + model.safetensors) that
    transformers' ``from_pretrained`` loads. Files are written atomically."""
    directory = Path(directory)
    family = FAMILIES["gpt2"]
    problems = family.supports(model.config)
    if problems:
        raise ValueError("model: cannot be written as GPT-2: " + "; ".join(problems))
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tensors = family.from_attnlab(state, model.config)
    tmp = directory / ".model.safetensors.tmp"
    save_file(tensors, tmp, metadata={"format": "pt"})
    os.replace(tmp, directory / "model.safetensors")
    atomic_write_text(
        directory / "config.json", json.dumps(family.config_to_hf(model.config), indent=2) + "\n"
    )
    return directory
