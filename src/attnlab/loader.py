"""One loader for every source of a model: ``attnlab.load(source)``.

A source is any of

* an attnlab **run directory** (what ``attnlab train`` and ``attnlab convert`` write: a
  ``config.json`` naming the model family, ``checkpoints/step-NNNNNNN`` and ``tokenizer/``),
  whose best checkpoint is read (or the latest, with ``which="latest"``);
* one **checkpoint directory** of a run (``meta.json`` + ``model.safetensors``), with the
  tokenizer of the run it belongs to;
* a **Hugging Face directory** (``config.json`` with a ``model_type`` + safetensors weights, and
  a tokenizer when one is there);
* a llama.cpp **GGUF file** (weights, configuration and tokenizer in one file).

Each kind is an entry of :data:`SOURCES`: a test that recognises it and a reader. The result is
a :class:`Loaded` with the model (eval mode), its tokenizer (or None) and, for runs, the
training settings. The model and the tokenizer are checked against each other: a tokenizer
with more ids than the model's embedding has rows is refused, since its ids would index past
the table.

``device="meta"`` builds the model without reading any weights or the tokenizer, for questions
the configuration answers (parameters, FLOPs, cache sizes: ``attnlab info``).

``quantize="int8" | "int4"`` gives the model weight-only quantized Linear layers
(:mod:`attnlab.quantize`). A GGUF file's blocks go straight into quantized layers where they map
exactly (:func:`attnlab.convert.load_gguf`), so the model is never whole in fp32; every other
source is loaded, then quantized. A quantized model saved as a run (:func:`save_run`) records
its layout in ``meta.json`` (``"quantization"``: layer name -> mode and group size), and loading
the run builds those layers again before the weights (safetensors) fill them. A quantized model
is not written as a Hugging Face checkpoint: that format holds floating-point weights.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnlab.tokenizers import TextTokenizer

__all__ = ["SOURCES", "Loaded", "Source", "load", "source_kind"]

EXPECTED = (
    "an attnlab run directory or checkpoint, a Hugging Face checkpoint directory or a .gguf file"
)


@dataclass
class Loaded:
    """What :func:`load` returns; unpacks as ``model, tokenizer = attnlab.load(...)``.

    Attributes:
        model: the model, in eval mode, on the requested device and dtype.
        tokenizer: its tokenizer, or None where the source has none (a ViT, weights alone).
        kind: "run", "checkpoint", "hf" or "gguf".
        path: what was read: the checkpoint directory, Hugging Face directory or GGUF file.
        train: the training settings of a run (``attnlab.train.config.TrainConfig`` fields as a
            dict), None for other sources.
    """

    model: nn.Module
    tokenizer: TextTokenizer | None
    kind: str
    path: Path
    train: dict[str, Any] | None = None

    @property
    def config(self):
        """The model's configuration dataclass (``GPTConfig``, ``BertConfig``, ...)."""
        return self.model.config

    @property
    def run_dir(self) -> Path | None:
        """The run directory a run or checkpoint came from (None for other sources)."""
        if self.kind not in ("run", "checkpoint"):
            return None
        from attnlab.train.checkpoint import run_dir_of

        return run_dir_of(self.path)

    def __iter__(self) -> Iterator[Any]:
        yield self.model
        yield self.tokenizer


@dataclass(frozen=True)
class Source:
    """One kind of source: ``detect(path)`` says whether ``path`` is one, ``read(path, which,
    weights)`` returns ``(model, tokenizer, checkpoint path, training settings)``. A source that
    ``quantizes`` itself takes ``quantize=`` and ``group_size=`` keywords in ``read`` too (a
    GGUF file, whose blocks become quantized layers as they are read); the model of any other
    is quantized once read."""

    kind: str
    detect: Callable[[Path], bool]
    read: Callable[..., tuple[nn.Module, TextTokenizer | None, Path, dict | None]]
    quantizes: bool = False


# -- attnlab runs and checkpoints -----------------------------------------------------------------


def _read_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{file}: expected JSON, got a parse error ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(data).__name__}")
    return data


def _is_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / "meta.json").is_file()


def _is_run(path: Path) -> bool:
    if not path.is_dir():
        return False
    if (path / "checkpoints").is_dir():
        return True
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return "family" in _read_json(config)
    except ValueError:
        return False


def _build(meta: dict, where: Path, weights: bool) -> nn.Module:
    """The model a checkpoint's ``meta.json`` (or a run's ``config.json``) describes."""
    from attnlab.models import family

    name = meta.get("family")
    try:
        model_cls, config_cls = family(name)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    config = meta.get("config")
    if not isinstance(config, dict):
        raise ValueError(f"{where}: expected a 'config' object describing the {name} model")
    config = _config_from_dict(config_cls, config, where)
    with torch.device("meta"):  # sized first, allocated only once the weights agree
        return model_cls(config).eval()


# Stacks of blocks in attnlab's own tensor names, and the config field that counts each.
STACKS = {"blocks": "n_layer", "encoder": "n_layer", "decoder": "n_decoder_layer"}


def _check_layers(config: dict, stored: dict[str, tuple[int, ...]], where: Path) -> None:
    """The number of blocks the config claims is the number the weights hold, checked before
    any module is built (a config edited to claim 10**9 layers would otherwise build them)."""
    for stack, field in STACKS.items():
        indices = {int(k.split(".")[1]) for k in stored if re.match(rf"{stack}\.\d+\.", k)}
        claimed = config.get(field) if config.get(field) is not None else config.get("n_layer")
        if indices and isinstance(claimed, int) and claimed != len(indices):
            raise ValueError(
                f"{where}: config {field}={claimed!r}, but the weights hold {len(indices)} "
                f"blocks ({stack}.N)"
            )


def _check_shapes(model: nn.Module, stored: dict[str, tuple[int, ...]], weights: Path) -> None:
    """The tensors in the ``weights`` file (read from its header only) have the shapes
    ``model`` (on the meta device) gives them: a config edited or damaged to claim other sizes
    is refused before anything of that size is allocated."""
    for name, tensor in model.state_dict().items():
        if name in stored and stored[name] != tuple(tensor.shape):
            raise ValueError(
                f"{weights}: tensor {name!r} has shape {stored[name]}, but the checkpoint's "
                f"config describes {tuple(tensor.shape)}"
            )


def _config_from_dict(config_cls, values: dict, where: Path):
    """``config_cls(**values)`` with unknown fields named (with the closest valid one)."""
    import dataclasses

    from attnlab.models import upgrade_config
    from attnlab.models.presets import closest

    try:
        values = upgrade_config(values)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    names = [f.name for f in dataclasses.fields(config_cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        raise ValueError(
            f"{where}: config field {unknown[0]!r} is not a field of "
            f"{config_cls.__name__}{closest(unknown[0], names)}"
        )
    try:
        return config_cls(**values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: invalid model config ({exc})") from None


def _run_tokenizer(run_dir: Path) -> TextTokenizer | None:
    from attnlab import tokenizers

    directory = run_dir / "tokenizer"
    return tokenizers.load(directory) if tokenizers.has_tokenizer(directory) else None


def _read_attnlab(path: Path, which: str, weights: bool):
    from attnlab.convert.hf import _header
    from attnlab.convert.skeleton import materialize, skeleton
    from attnlab.distributed.checkpoint import is_sharded
    from attnlab.quantize import restore
    from attnlab.train import checkpoint

    ckpt = checkpoint.resolve(path, which)
    meta = checkpoint.read_meta(ckpt)
    # A distributed run's checkpoint holds DCP shards, which load_weights reads (shapes are
    # checked by DCP against the model built from the config).
    sharded = is_sharded(ckpt) and not (ckpt / "model.safetensors").is_file()
    stored = _header(ckpt / "model.safetensors") if weights and not sharded else {}
    if isinstance(meta.get("config"), dict):
        _check_layers(meta["config"], stored, ckpt / "meta.json")
    model = _build(meta, ckpt / "meta.json", weights)
    layers = meta.get("quantization")  # written by save_run for a quantized model
    where = f"{ckpt / 'meta.json'}: quantization"
    if layers is not None:
        restore(model, layers, where)
    if weights:
        if not sharded:
            _check_shapes(model, stored, ckpt / "model.safetensors")
        # now allocated: the sizes agree with the weights
        if layers is None:
            model = type(model)(model.config)
        else:  # the quantized layers built empty, never the fp32 weights they replace
            model = materialize(restore(skeleton(type(model), model.config), layers, where, "cpu"))
        checkpoint.load_weights(model, ckpt)
    run_dir = checkpoint.run_dir_of(ckpt)
    train = meta.get("train")
    tokenizer = _run_tokenizer(run_dir) if weights else None
    return model.eval(), tokenizer, ckpt, train if isinstance(train, dict) else None


# -- Hugging Face directories and GGUF files ------------------------------------------------------


def _is_hf(path: Path) -> bool:
    if not (path.is_dir() and (path / "config.json").is_file()):
        return False
    try:
        return "model_type" in _read_json(path / "config.json")
    except ValueError:
        return False


def _read_hf(path: Path, which: str, weights: bool):
    from attnlab import tokenizers
    from attnlab.convert import load_hf

    model = load_hf(path, weights=weights)
    tokenizer = tokenizers.load(path) if weights and tokenizers.has_tokenizer(path) else None
    return model, tokenizer, path, None


def _is_gguf(path: Path) -> bool:
    if not path.is_file():
        return False
    if path.suffix == ".gguf":
        return True
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def _read_gguf(
    path: Path, which: str, weights: bool, *, quantize: str | None = None, group_size=None
):
    from attnlab import tokenizers
    from attnlab.convert.gguf import load_gguf, release_freed_memory

    if not weights:
        return load_gguf(path, weights=False), None, path, None
    model = load_gguf(path, quantize=quantize, group_size=group_size)
    tokenizer = tokenizers.load(path)
    if quantize is not None:
        release_freed_memory()  # the tokenizer's reader too: see the function
    return model, tokenizer, path, None


# Tried in this order: a checkpoint directory before a run (a run holds checkpoints), attnlab's
# own config.json before a Hugging Face one.
SOURCES: list[Source] = [
    Source("gguf", _is_gguf, _read_gguf, quantizes=True),
    Source("checkpoint", _is_checkpoint, _read_attnlab),
    Source("run", _is_run, _read_attnlab),
    Source("hf", _is_hf, _read_hf),
]


def source_kind(source: str | os.PathLike) -> str:
    """Which kind of :data:`SOURCES` ``source`` is; ValueError (FileNotFoundError for a path that
    does not exist) naming the source and what it holds otherwise."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory (expected {EXPECTED})")
    for entry in SOURCES:
        if entry.detect(path):
            return entry.kind
    if path.is_dir():
        found = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "nothing"
        inside = sorted(str(p) for p in path.iterdir() if any(e.detect(p) for e in SOURCES))
        hint = f" (did you mean {', '.join(inside[:3])}?)" if inside else ""
        raise ValueError(f"{path}: expected {EXPECTED}; the directory holds {found}{hint}")
    raise ValueError(f"{path}: expected {EXPECTED}, got a file of another kind")


def load(
    source: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    which: str = "best",
    quantize: str | None = None,
    group_size: int | None = None,
) -> Loaded:
    """The model and tokenizer stored at ``source`` (see the module docstring for the kinds).

    Args:
        source: a run directory, a checkpoint directory, a Hugging Face directory or a GGUF file.
        device: where to put the model ("cpu", "cuda", ...); ``"meta"`` reads the configuration
            only and builds the model without weights (and without the tokenizer).
        dtype: floating-point dtype of the weights (default: as stored, fp32 for quantized GGUF).
        which: for a run directory, its "best" checkpoint (the default; the latest when the run
            records no best) or its "latest".
        quantize: ``"int8"`` or ``"int4"``: weight-only quantized Linear layers (see
            :func:`attnlab.quantize.quantize`; a tied head becomes int8 per channel, read by the
            embedding too). A GGUF file's
            blocks are used as they are where they map exactly (Q8_0 for int8, Q4_0/Q4_1 for
            int4, group size 32) and ``group_size`` is None or 32; ``"gguf"`` (GGUF files only)
            keeps each layer as the file stores it, fp32 where no exact layout exists (see
            :func:`attnlab.convert.load_gguf`). Not applied with ``device="meta"``. A run
            saved quantized is rebuilt quantized without this argument.
        group_size: columns sharing a scale, with ``quantize`` only: int4 default 128 (an even
            divisor of every layer's input width), int8 default None (one scale per output
            channel).

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: it is not a source of any kind, or it is damaged; the message names the file
            and what was expected. A bad ``quantize`` or ``group_size``, naming them.
    """
    from attnlab.convert.gguf import QUANTIZE
    from attnlab.quantize.apply import check_quantize

    if which not in ("best", "latest"):
        raise ValueError(f"which: expected 'best' or 'latest', got {which!r}")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype: expected a floating-point torch.dtype, got {dtype!r}")
    check_quantize(quantize, group_size, choices=QUANTIZE)
    path = Path(source)
    kind = source_kind(path)
    entry = next(entry for entry in SOURCES if entry.kind == kind)
    if quantize == "gguf" and not entry.quantizes:
        raise ValueError(
            f"quantize: 'gguf' keeps the blocks of a .gguf file, but {path} is a {kind} source; "
            "expected 'int8' or 'int4'"
        )
    weights = device is None or torch.device(device).type != "meta"
    if entry.quantizes:
        options = {"quantize": quantize, "group_size": group_size}
        model, tokenizer, where, train = entry.read(path, which, weights, **options)
    else:
        model, tokenizer, where, train = entry.read(path, which, weights)
        if quantize is not None and weights:
            _quantize_loaded(model, quantize, group_size, path)
    check_pair(model, tokenizer, path)
    if weights and (device is not None or dtype is not None):
        model = model.to(device=device, dtype=dtype)
    return Loaded(model.eval(), tokenizer, kind, where, train)


def _quantize_loaded(model: nn.Module, mode: str, group_size: int | None, path: Path) -> None:
    from attnlab.quantize import layout, quantize

    done = layout(model)
    if done:
        modes = sorted({entry["mode"] for entry in done.values()})
        raise ValueError(
            f"quantize: {path} is already quantized ({len(done)} {'/'.join(modes)} layers), "
            f"got quantize={mode!r}; load it without quantize"
        )
    quantize(model, mode, group_size=group_size)


def check_pair(model: nn.Module, tokenizer: TextTokenizer | None, source: Path) -> None:
    """Refuse a tokenizer whose ids the model cannot embed (more ids than embedding rows).

    A tokenizer with fewer ids than the model is fine (tables are often padded to a multiple of
    64); generation then never samples the ids the tokenizer cannot decode.
    """
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if tokenizer is None or vocab is None:
        return
    if tokenizer.vocab_size > vocab:
        raise ValueError(
            f"{source}: the tokenizer has {tokenizer.vocab_size:,} ids but the model's "
            f"embedding has {vocab:,} rows (vocab_size); ids from {vocab:,} up cannot be "
            "embedded, so the tokenizer does not belong to this model"
        )


# -- writing --------------------------------------------------------------------------------------

FORMATS = ("run", "hf")


def save_run(
    model: nn.Module,
    tokenizer: TextTokenizer | None,
    directory: str | os.PathLike,
    *,
    source: str | None = None,
) -> Path:
    """Write ``model`` and ``tokenizer`` into ``directory`` (new or empty) as an attnlab run that
    every command and :func:`load` read: ``config.json`` (the model family and config),
    ``tokenizer/`` and one checkpoint, ``checkpoints/step-0000000``. Returns the directory."""
    from attnlab.files import atomic_write_text
    from attnlab.quantize import layout
    from attnlab.train import checkpoint

    directory = Path(directory)
    meta = {"source": source, "tokenizer": None}
    layers = layout(checkpoint.unwrap(model))
    if layers:  # read back by load() to build the quantized layers before the weights
        meta["quantization"] = layers
    if tokenizer is not None:
        tokenizer.save(directory / "tokenizer")
        meta["tokenizer"] = "tokenizer"
    checkpoint.save(directory, 0, model, {}, meta)
    config = {"train": None, **checkpoint.model_meta(model), "source": source}
    if layers:
        config["quantization"] = layers
    atomic_write_text(directory / "config.json", json.dumps(config, indent=2) + "\n")
    return directory


def save_hf_with_tokenizer(
    model: nn.Module, tokenizer: TextTokenizer | None, directory: str | os.PathLike
) -> Path:
    """Write ``model`` as a Hugging Face directory (:func:`attnlab.convert.save_hf`) with its
    tokenizer as ``tokenizer.json`` (a character vocabulary becomes an equivalent
    ``tokenizers`` word-level model), which transformers' ``AutoTokenizer`` reads.

    A quantized model is refused (ValueError): a Hugging Face checkpoint holds floating-point
    weights, and writing the dequantized ones would silently give a file several times larger
    that only looks like the original model.
    """
    from attnlab.convert import save_hf
    from attnlab.quantize import layout

    layers = layout(model)
    if layers:
        modes = "/".join(sorted({entry["mode"] for entry in layers.values()}))
        raise ValueError(
            f"to: expected a floating-point model for a Hugging Face checkpoint, got one with "
            f"{len(layers)} {modes} quantized layers; write an attnlab run instead (to='run')"
        )
    directory = Path(directory)
    save_hf(model, directory)
    if tokenizer is not None:
        to_tokenizer = getattr(tokenizer, "to_tokenizer", None)
        (to_tokenizer() if to_tokenizer else tokenizer).save(directory)
    return directory


def convert(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    *,
    to: str | None = None,
    quantize: str | None = None,
    group_size: int | None = None,
) -> tuple[Path, str]:
    """Read ``source`` (any kind :func:`load` reads) and write it to ``destination`` as an attnlab
    run (``to="run"``) or a Hugging Face directory (``to="hf"``); by default attnlab runs and
    checkpoints become Hugging Face directories and everything else becomes a run. Returns the
    destination and the format written.

    ``quantize`` and ``group_size`` are :func:`load`'s: the model is written as a quantized run
    (the default format then), which :func:`load` reads back quantized. A Hugging Face directory
    cannot hold a quantized model, so ``to="hf"`` with ``quantize``, or a quantized run to
    ``"hf"``, is a ValueError.

    The destination must not exist or be an empty directory. The output is written whole into a
    hidden temporary sibling and renamed into place once complete, under a lock beside it, so a
    killed or concurrent conversion never leaves a directory that looks complete; temporaries
    left by a killed conversion are removed by the next one.
    """
    from attnlab.convert.gguf import QUANTIZE
    from attnlab.files import atomic_directory
    from attnlab.quantize.apply import check_quantize

    if to is not None and to not in FORMATS:
        raise ValueError(f"to: expected one of {', '.join(FORMATS)}, got {to!r}")
    check_quantize(quantize, group_size, choices=QUANTIZE)
    if to == "hf" and quantize is not None:
        raise ValueError(
            f"quantize: a Hugging Face checkpoint holds floating-point weights, got "
            f"quantize={quantize!r} with to='hf'; write an attnlab run instead (to='run')"
        )
    kind = source_kind(source)
    to = to or ("hf" if kind in ("run", "checkpoint") and quantize is None else "run")
    with atomic_directory(destination, purpose="convert") as tmp:
        model, tokenizer = load(source, quantize=quantize, group_size=group_size)
        if to == "hf":
            save_hf_with_tokenizer(model, tokenizer, tmp)
        else:
            save_run(model, tokenizer, tmp, source=str(Path(source).resolve()))
    return Path(destination), to
