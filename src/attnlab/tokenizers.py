"""Tokenizers from local files: text <-> token ids, built on the ``tokenizers`` library.

:func:`load` reads whatever a checkpoint ships:

* a directory with ``tokenizer.json`` (any Hugging Face fast tokenizer), with the special tokens
  named in ``tokenizer_config.json`` / ``special_tokens_map.json``;
* a directory with a BERT ``vocab.txt`` only (WordPiece; lower-cased unless
  ``tokenizer_config.json`` says ``do_lower_case: false``);
* a directory with GPT-2's ``vocab.json`` + ``merges.txt`` (byte-level BPE);
* a ``.gguf`` file, whose metadata carries the vocabulary (llama.cpp's ``tokenizer.ggml.*`` keys);
* a character vocabulary saved by :class:`attnlab.data.CharTokenizer` (``char_tokenizer.json``).

Every tokenizer attnlab hands out shares one interface, :class:`TextTokenizer`: ``encode``,
``encode_batch``, ``decode``, an :class:`IncrementalDecoder` for streaming (it never splits a
multi-byte character), the special ids (``bos_id``, ``eos_id``, ``pad_id``, ``unk_id``),
``vocab_size``, ``save(directory)``, which writes the one on-disk format of its kind, and
``apply_chat_template``, which renders a conversation with the ``chat_template`` the files carry
(``tokenizer_config.json``, a ``chat_template.jinja`` beside it, or the GGUF metadata; see
:mod:`attnlab.chat`).

:func:`gpt2_tiktoken` rebuilds GPT-2's tokenizer from the ``gpt2.tiktoken`` ranks file that the
``openai-whisper`` package ships. Nothing is ever downloaded.

The algorithms (BPE, WordPiece, the byte-level alphabet) all run inside ``tokenizers``; this module
only assembles its parts from the files. Shapes: B texts, T tokens of the longest text.
"""

from __future__ import annotations

import base64
import importlib.util
import itertools
import json
import os
from pathlib import Path
from typing import NamedTuple

import torch
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend
from torch import Tensor

from attnlab.files import atomic_write_text

__all__ = ["Batch", "IncrementalDecoder", "TextTokenizer", "Tokenizer", "gpt2_tiktoken", "load"]

EXPECTED = (
    "a directory with tokenizer.json, vocab.txt (BERT), vocab.json + merges.txt (GPT-2) or "
    "char_tokenizer.json, a tokenizer.json file or a .gguf file"
)
SPECIAL_NAMES = ("bos", "eos", "pad", "unk")


class Batch(NamedTuple):
    """Right- or left-padded token ids and the mask of real tokens, both (B, T) int64."""

    input_ids: Tensor
    attention_mask: Tensor


class TextTokenizer:
    """The interface of every attnlab tokenizer: text <-> ids, batches, streaming decoding.

    Subclasses provide ``encode``, ``decode``, ``vocab_size``, the special ids and ``save``;
    batching and incremental decoding are shared here.
    """

    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None
    unk_id: int | None = None
    chat_template: str | None = None  # Jinja source that turns messages into a prompt

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: list[int] | Tensor, skip_special_tokens: bool = True) -> str:
        raise NotImplementedError

    def save(self, directory: str | os.PathLike) -> Path:
        raise NotImplementedError

    def _encode_many(self, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
        return [self.encode(t, add_special_tokens=add_special_tokens) for t in texts]

    def encode_batch(
        self,
        texts: list[str],
        add_special_tokens: bool = True,
        *,
        padding_side: str = "right",
    ) -> Batch:
        """Ids of several texts padded to the longest: ``Batch(input_ids, attention_mask)``, both
        (B, T). Padding uses ``pad_id`` (0 when the vocabulary has no pad token; the mask says
        which positions are real). Left padding suits batched generation."""
        if isinstance(texts, str) or not texts:
            raise ValueError(f"texts: expected a non-empty list of str, got {texts!r:.60}")
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side: expected 'right' or 'left', got {padding_side!r}")
        rows = self._encode_many(list(texts), add_special_tokens)
        t = max(len(r) for r in rows)
        pad = self.pad_id if self.pad_id is not None else 0
        ids = torch.full((len(rows), t), pad, dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(rows), t), dtype=torch.long)  # (B, T)
        for i, row in enumerate(rows):
            span = slice(0, len(row)) if padding_side == "right" else slice(t - len(row), t)
            ids[i, span] = torch.tensor(row, dtype=torch.long)
            mask[i, span] = 1
        return Batch(ids, mask)

    def decoder(self, skip_special_tokens: bool = True) -> IncrementalDecoder:
        """An :class:`IncrementalDecoder` over this tokenizer, for text streamed token by
        token."""
        return IncrementalDecoder(self, skip_special_tokens=skip_special_tokens)

    def special_tokens(self) -> dict[str, str]:
        """The special tokens by the names chat templates use (``{"bos_token": "<s>", ...}``);
        empty for a vocabulary without special tokens."""
        return {}

    def apply_chat_template(
        self, messages: list[dict], add_generation_prompt: bool = True, **kwargs
    ) -> str:
        """The prompt text of the conversation ``messages`` (dicts with ``role`` and
        ``content``), rendered by :attr:`chat_template` exactly as transformers'
        ``apply_chat_template(messages, tokenize=False)`` renders it (see :mod:`attnlab.chat`).

        ``add_generation_prompt`` appends the header that opens the assistant's reply (what a
        prompt for generation needs); ``kwargs`` are extra template variables such as ``tools``,
        ``documents`` or a template's own flags. Encode the result with
        ``add_special_tokens=False``: the template already writes the tokens it wants.
        """
        if self.chat_template is None:
            raise ValueError(
                f"chat_template: {self!r} has no chat template; load a tokenizer whose "
                "tokenizer_config.json, chat_template.jinja or GGUF metadata carries one, or set "
                "its chat_template to a Jinja template"
            )
        from attnlab import chat  # jinja2 is imported only by tokenizers that render chats

        return chat.render(
            self.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            special_tokens=self.special_tokens(),
            **kwargs,
        )


class IncrementalDecoder:
    """Text of a growing sequence of ids, returned piece by piece as ids arrive.

    Each :meth:`push` decodes only a short window of recent ids (the ids since the last piece
    that was returned, plus the ids before them that it joins onto), so streaming n tokens costs
    O(n), not the O(n^2) of decoding everything again at each step. A piece is held back while
    it ends in an incomplete multi-byte character (U+FFFD) and released once the character is
    whole; :meth:`flush` returns whatever is left at the end.
    """

    def __init__(self, tokenizer: TextTokenizer, *, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self._prefix = 0  # ids[_prefix:_read] were already returned as text
        self._read = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def push(self, ids: int | list[int] | Tensor) -> str:
        """Add ``ids`` (one id, a list or a tensor) and return the new text that is complete."""
        if isinstance(ids, Tensor):
            ids = ids.reshape(-1).tolist()
        elif isinstance(ids, int):
            ids = [ids]
        self.ids.extend(int(i) for i in ids)
        before = self._decode(self.ids[self._prefix : self._read])
        text = self._decode(self.ids[self._prefix :])
        if len(text) <= len(before) or text.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return text[len(before) :]

    def flush(self) -> str:
        """The text not yet returned (an incomplete character at the very end stays U+FFFD)."""
        before = self._decode(self.ids[self._prefix : self._read])
        text = self._decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return text[len(before) :]


class Tokenizer(TextTokenizer):
    """A ``tokenizers.Tokenizer`` plus the names of its special tokens.

    Args:
        backend: the ``tokenizers.Tokenizer`` that does the work (its own truncation and padding
            are switched off: :meth:`encode_batch` pads, nothing truncates).
        bos, eos, pad, unk: the special tokens as strings, or None where the vocabulary has none.
        chat_template: the Jinja chat template shipped with the vocabulary, or None.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        bos: str | None = None,
        eos: str | None = None,
        pad: str | None = None,
        unk: str | None = None,
        chat_template: str | None = None,
    ) -> None:
        if chat_template is not None and not isinstance(chat_template, str):
            raise TypeError(
                f"chat_template: expected a str or None, got {type(chat_template).__name__}"
            )
        backend.no_truncation()
        backend.no_padding()
        self.backend = backend
        self.special = {"bos": bos, "eos": eos, "pad": pad, "unk": unk}
        for name, token in self.special.items():
            if token is not None and backend.token_to_id(token) is None:
                raise ValueError(f"{name}: expected a token of the vocabulary, got {token!r}")
        self.chat_template = chat_template

    def __repr__(self) -> str:
        specials = ", ".join(f"{k}={v!r}" for k, v in self.special.items() if v is not None)
        return f"Tokenizer(vocab_size={self.vocab_size}, {specials})"

    @property
    def vocab_size(self) -> int:
        """Number of ids, added and special tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def special_tokens(self) -> dict[str, str]:
        return {f"{name}_token": token for name, token in self.special.items() if token}

    def _special_id(self, name: str) -> int | None:
        token = self.special[name]
        return None if token is None else self.backend.token_to_id(token)

    @property
    def bos_id(self) -> int | None:
        return self._special_id("bos")

    @property
    def eos_id(self) -> int | None:
        return self._special_id("eos")

    @property
    def pad_id(self) -> int | None:
        return self._special_id("pad")

    @property
    def unk_id(self) -> int | None:
        return self._special_id("unk")

    def token_to_id(self, token: str) -> int | None:
        """The id of ``token`` (as the vocabulary spells it), or None if it has none."""
        return self.backend.token_to_id(token)

    def id_to_token(self, index: int) -> str | None:
        return self.backend.id_to_token(index)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; ``add_special_tokens`` adds what the tokenizer's template says
        (``[CLS] ... [SEP]`` for BERT, a BOS for Llama-style vocabularies, nothing for GPT-2)."""
        if not isinstance(text, str):
            raise TypeError(f"text: expected a str, got {type(text).__name__}")
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def _encode_many(self, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
        encoded = self.backend.encode_batch(texts, add_special_tokens=add_special_tokens)
        return [e.ids for e in encoded]

    def decode(self, ids: list[int] | Tensor, skip_special_tokens: bool = True) -> str:
        """Text of ``ids`` (a list or a 1-D tensor)."""
        if isinstance(ids, Tensor):
            if ids.dim() != 1:
                raise ValueError(f"ids: expected a 1-D tensor, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` (the special tokens and the
        chat template) into ``directory``, each atomically; :func:`load` and transformers'
        ``AutoTokenizer`` read them back. Returns the directory."""
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise ValueError(f"{directory}: expected a directory, got an existing file")
        atomic_write_text(directory / "tokenizer.json", self.backend.to_str(pretty=True))
        config: dict = self.special_tokens()
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        atomic_write_text(directory / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
        # A chat_template.jinja from an earlier tokenizer saved here would win over the config.
        (directory / CHAT_TEMPLATE_FILE).unlink(missing_ok=True)
        return directory


# The chat template file transformers writes beside tokenizer_config.json; it wins over the config.
CHAT_TEMPLATE_FILE = "chat_template.jinja"

# Character vocabularies: the file CharTokenizer.save writes, and the name runs used before it.
CHAR_FILES = ("char_tokenizer.json", "chars.json")


def load(path: str | os.PathLike) -> TextTokenizer:
    """The tokenizer stored at ``path``: a checkpoint or run tokenizer directory, a
    ``tokenizer.json``, a character vocabulary or a ``.gguf`` file (see the module docstring).
    Raises FileNotFoundError when nothing is there and ValueError naming the path when it holds
    no tokenizer this module reads."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory (expected {EXPECTED})")
    if path.is_file():
        if path.suffix == ".gguf" or _is_gguf(path):
            return _from_gguf(path)
        if path.suffix == ".json":
            if path.name in CHAR_FILES or _is_char_vocabulary(path):
                return _from_chars(path)
            return _from_tokenizer_json(path, _hf_config(path.parent))
        raise ValueError(f"{path}: expected {EXPECTED}, got a file of another kind")
    if not path.is_dir():
        raise ValueError(f"{path}: expected {EXPECTED}, got neither a file nor a directory")
    for name in CHAR_FILES:
        if (path / name).is_file():
            return _from_chars(path / name)
    config = _hf_config(path)
    if (path / "tokenizer.json").is_file():
        return _from_tokenizer_json(path / "tokenizer.json", config)
    if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        return _from_gpt2_files(path, config)
    if (path / "vocab.txt").is_file():
        return _from_bert_vocab(path / "vocab.txt", config)
    found = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "nothing"
    raise ValueError(f"{path}: expected {EXPECTED}; the directory holds {found}")


def has_tokenizer(directory: str | os.PathLike) -> bool:
    """True when ``directory`` holds files :func:`load` reads as a tokenizer."""
    directory = Path(directory)
    names = (*CHAR_FILES, "tokenizer.json", "vocab.txt", "vocab.json")
    return directory.is_dir() and any((directory / name).is_file() for name in names)


def _from_chars(file: Path) -> TextTokenizer:
    from attnlab.data.chars import CharTokenizer  # data imports this module: import late

    return CharTokenizer.load(file)


def _is_char_vocabulary(file: Path) -> bool:
    """A JSON file whose head names the CharTokenizer format (read without parsing it all)."""
    from attnlab.data.chars import FORMAT

    with open(file, "rb") as f:
        head = f.read(256)
    return f'"format": "{FORMAT}"'.encode() in head


# ---- Hugging Face files -------------------------------------------------------------------------


def _is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def _hf_config(directory: Path) -> dict:
    """``special_tokens_map.json`` overlaid by ``tokenizer_config.json`` (either may be absent),
    with special tokens given as ``{"content": ...}`` flattened to their strings, and
    ``chat_template`` the one template to use (a string or None): the text of
    ``chat_template.jinja`` when that file is there, else the config's (the ``"default"`` of a
    list of named templates)."""
    config: dict = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        file = directory / name
        if file.is_file():
            try:
                config.update(json.loads(file.read_text(encoding="utf-8")))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{file}: expected JSON ({exc})") from None
    for key, value in list(config.items()):
        if key.endswith("_token") and isinstance(value, dict):
            config[key] = value.get("content")
    jinja = directory / CHAT_TEMPLATE_FILE
    if jinja.is_file():
        try:
            config["chat_template"] = jinja.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{jinja}: expected UTF-8 text ({exc})") from None
    else:
        source = str(directory / "tokenizer_config.json")
        config["chat_template"] = _chat_template(config.get("chat_template"), source)
    return config


def _chat_template(value, source: str) -> str | None:
    """The chat template of a ``tokenizer_config.json`` ``chat_template`` value: a string, or a
    list of ``{"name": ..., "template": ...}`` entries, of which the one named ``"default"`` is
    used (the others are variants for tools or retrieval). ``source`` names the file in errors."""
    if value is None or isinstance(value, str):
        return value
    expected = "a string or a list of {'name': ..., 'template': ...} with one named 'default'"
    if not isinstance(value, list) or not all(
        isinstance(t, dict)
        and isinstance(t.get("name"), str)
        and isinstance(t.get("template"), str)
        for t in value
    ):
        raise ValueError(f"{source}: chat_template: expected {expected}, got {value!r:.80}")
    named = {t["name"]: t["template"] for t in value}
    if "default" not in named:
        raise ValueError(
            f"{source}: chat_template: expected {expected}, got the names {sorted(named)}"
        )
    return named["default"]


def _specials(config: dict, backend: Backend, defaults: dict[str, str] | None = None) -> dict:
    """bos/eos/pad/unk token strings from the config (then ``defaults``), dropping any that the
    vocabulary does not hold."""
    defaults = defaults or {}
    out = {}
    for name in SPECIAL_NAMES:
        token = config.get(f"{name}_token", defaults.get(name))
        out[name] = (
            token if isinstance(token, str) and backend.token_to_id(token) is not None else None
        )
    return out


def _template(bos: str | None, eos: str | None, backend: Backend) -> processors.TemplateProcessing:
    """``<bos> $A <eos>`` (either end optional), the post-processor of Llama-style vocabularies;
    a pair repeats it for the second text, as transformers' Llama tokenizer does."""
    ends = [t for t in (bos, eos) if t is not None]
    head, tail = ([f"{bos}:0"] if bos else []), ([f"{eos}:0"] if eos else [])
    head1, tail1 = ([f"{bos}:1"] if bos else []), ([f"{eos}:1"] if eos else [])
    return processors.TemplateProcessing(
        single=[*head, "$A:0", *tail],
        pair=[*head, "$A:0", *tail, *head1, "$B:1", *tail1],
        special_tokens=[(t, backend.token_to_id(t)) for t in dict.fromkeys(ends)],
    )


def _from_tokenizer_json(file: Path, config: dict) -> Tokenizer:
    try:
        backend = Backend.from_file(str(file))
    except Exception as exc:  # the Rust side raises a bare Exception on malformed JSON
        raise ValueError(f"{file}: expected a tokenizers tokenizer.json ({exc})") from None
    specials = _specials(config, backend)
    # Llama-style configs say whether BOS/EOS are added; they override the file's template.
    if "add_bos_token" in config or "add_eos_token" in config:
        bos = specials["bos"] if config.get("add_bos_token") else None
        eos = specials["eos"] if config.get("add_eos_token") else None
        backend.post_processor = _template(bos, eos, backend)
    return Tokenizer(backend, **specials, chat_template=config.get("chat_template"))


def _from_bert_vocab(vocab: Path, config: dict) -> Tokenizer:
    """WordPiece from a BERT ``vocab.txt``: the pieces ``BertWordPieceTokenizer`` assembles."""
    backend = Backend(
        models.WordPiece.from_file(str(vocab), unk_token=config.get("unk_token", "[UNK]"))
    )
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=config.get("tokenize_chinese_chars", True),
        strip_accents=config.get("strip_accents"),
        lowercase=config.get("do_lower_case", True),
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    names = {
        k: config.get(f"{k}_token", f"[{k.upper()}]") for k in ("cls", "sep", "pad", "unk", "mask")
    }
    present = [t for t in names.values() if backend.token_to_id(t) is not None]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in present])
    cls, sep = names["cls"], names["sep"]
    if backend.token_to_id(cls) is None or backend.token_to_id(sep) is None:
        raise ValueError(f"{vocab}: expected {cls} and {sep} in the vocabulary")
    backend.post_processor = processors.BertProcessing(
        (sep, backend.token_to_id(sep)), (cls, backend.token_to_id(cls))
    )
    specials = _specials(config, backend, {"pad": "[PAD]", "unk": "[UNK]"})
    return Tokenizer(backend, **specials, chat_template=config.get("chat_template"))


def _byte_level(backend: Backend, add_prefix_space: bool = False) -> Backend:
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    backend.decoder = decoders.ByteLevel()
    return backend


def _add_specials(backend: Backend, tokens) -> None:
    """Keep each of ``tokens`` whole in the input (never split by the pre-tokenizer)."""
    tokens = [t for t in dict.fromkeys(tokens) if t is not None]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens])


def _from_gpt2_files(directory: Path, config: dict) -> Tokenizer:
    """Byte-level BPE from GPT-2's ``vocab.json`` + ``merges.txt``."""
    try:
        bpe = models.BPE.from_file(str(directory / "vocab.json"), str(directory / "merges.txt"))
    except Exception as exc:
        raise ValueError(f"{directory}: expected GPT-2 vocab.json + merges.txt ({exc})") from None
    backend = _byte_level(Backend(bpe), config.get("add_prefix_space", False))
    end = "<|endoftext|>"  # GPT-2's one special token, its BOS, EOS and UNK at once
    specials = _specials(config, backend, {"bos": end, "eos": end, "unk": end})
    _add_specials(backend, specials.values())
    return Tokenizer(backend, **specials, chat_template=config.get("chat_template"))


# ---- GPT-2 from tiktoken ranks ------------------------------------------------------------------


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters: printable
    Latin-1 bytes map to themselves, the rest to code points from 256 up (Radford et al. 2019,
    ``encoder.py``). Byte-level vocabularies spell their tokens in this alphabet."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in keep}
    extra = (b for b in range(256) if b not in table)
    table.update({b: chr(256 + n) for n, b in enumerate(extra)})
    return dict(sorted(table.items()))


def _merges_from_ranks(ranks: dict[bytes, int], source: Path) -> list[tuple[bytes, bytes]]:
    """The BPE merge list that reproduces a tiktoken ranks table.

    tiktoken merges, at each step, the adjacent pair whose concatenation has the lowest rank, so
    a token of rank r is built by running that process on its own bytes with only ranks below r
    until two parts remain: those two are its merge, and merges are ordered by r.
    """
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) < 2:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            pairs = [
                (ranks.get(a + b, rank), i) for i, (a, b) in enumerate(itertools.pairwise(parts))
            ]
            best, i = min(pairs)
            if best >= rank:
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) != 2:
            raise ValueError(f"{source}: token of rank {rank} cannot be built by earlier merges")
        merges.append((parts[0], parts[1]))
    return merges


def gpt2_tiktoken(path: str | os.PathLike | None = None) -> Tokenizer:
    """GPT-2's tokenizer (50,257 ids, ``<|endoftext|>`` = 50256) rebuilt from a tiktoken ranks
    file: one ``base64(token bytes) rank`` per line. ``path`` defaults to ``assets/gpt2.tiktoken``
    of the installed ``openai-whisper`` package (located, never imported)."""
    if path is None:
        spec = importlib.util.find_spec("whisper")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                "path: no ranks file given and the openai-whisper package (which ships "
                "assets/gpt2.tiktoken) is not installed"
            )
        path = Path(spec.submodule_search_locations[0]) / "assets" / "gpt2.tiktoken"
    path = Path(path)
    ranks: dict[bytes, int] = {}
    try:
        for line in path.read_text(encoding="ascii").splitlines():
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: expected 'base64 rank' lines ({exc})") from None
    if sorted(ranks.values()) != list(range(len(ranks))) or len(ranks) < 256:
        raise ValueError(f"{path}: expected ranks 0..N-1 covering all 256 bytes")
    spell = bytes_to_unicode()

    def spelled(token: bytes) -> str:
        return "".join(spell[b] for b in token)

    vocab = {spelled(token): rank for token, rank in ranks.items()}
    merges = [(spelled(a), spelled(b)) for a, b in _merges_from_ranks(ranks, path)]
    backend = _byte_level(Backend(models.BPE(vocab, merges)))
    end = "<|endoftext|>"
    _add_specials(backend, [end])  # gets the next id: 50256 for GPT-2
    return Tokenizer(backend, bos=end, eos=end, unk=end)


# ---- GGUF ---------------------------------------------------------------------------------------

# Pre-tokenizer regexes for llama.cpp's ``tokenizer.ggml.pre`` names whose splitting differs from
# GPT-2's (the default, which ``ByteLevel`` applies itself).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_SPLITS = {"llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT}

# llama.cpp token types (``tokenizer.ggml.token_type``)
CONTROL, USER_DEFINED = 3, 4


def _gguf_fields(path: Path) -> dict:
    """The ``tokenizer.*`` and ``general.architecture`` metadata of a GGUF file as Python values."""
    from gguf import GGUFReader  # imported here: only GGUF files need it

    from attnlab.convert.gguf import check_gguf

    check_gguf(path)  # every count and size in the header bounded by the file, before reading
    try:
        reader = GGUFReader(path)
    except Exception as exc:  # the reader raises ValueError, struct.error, IndexError, ...
        raise ValueError(f"{path}: expected a GGUF file, could not read it ({exc})") from None
    wanted = ("tokenizer.", "general.architecture")
    return {k: f.contents() for k, f in reader.fields.items() if k.startswith(wanted)}


def _from_gguf(path: Path) -> Tokenizer:
    """Byte-level BPE from ``tokenizer.ggml.tokens`` + ``merges``, as llama.cpp builds it for
    ``tokenizer.ggml.model == "gpt2"``; BOS/EOS/pad ids and ``add_bos_token`` from the metadata;
    tokens of type CONTROL are special, USER_DEFINED ones are kept whole."""
    meta = _gguf_fields(path)
    kind = meta.get("tokenizer.ggml.model")
    if kind is None or "tokenizer.ggml.tokens" not in meta:
        raise ValueError(f"{path}: expected a vocabulary in the GGUF metadata, found none")
    if kind != "gpt2":
        raise ValueError(
            f"{path}: tokenizer.ggml.model {kind!r} is not supported yet "
            "(supported: 'gpt2', byte-level BPE)"
        )
    if "tokenizer.ggml.merges" not in meta:
        raise ValueError(f"{path}: expected tokenizer.ggml.merges for a 'gpt2' vocabulary")
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    spell = bytes_to_unicode()
    alphabet = set(spell.values())

    def spelled(token: str) -> str:  # a token outside the byte alphabet is stored as its text
        return token if set(token) <= alphabet else "".join(spell[b] for b in token.encode())

    vocab = {spelled(t): i for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    backend = Backend(models.BPE(vocab, merges))
    _byte_level(backend, bool(meta.get("tokenizer.ggml.add_space_prefix", False)))
    pre = meta.get("tokenizer.ggml.pre")
    if pre in PRE_SPLITS:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(PRE_SPLITS[pre]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    if len(types) != len(tokens):
        raise ValueError(
            f"{path}: expected one tokenizer.ggml.token_type per token ({len(tokens)}), "
            f"got {len(types)}"
        )
    # A control token spelled outside the byte alphabet is a mislabel in some files; adding it
    # would create an id the model does not have, so it is left out (transformers does the same).
    control = [t for t, k in zip(tokens, types, strict=True) if k == CONTROL and set(t) <= alphabet]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    user = [t for t, k in zip(tokens, types, strict=True) if k == USER_DEFINED and t in vocab]
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])

    def token(key: str) -> str | None:  # as the backend spells it
        index = meta.get(f"tokenizer.ggml.{key}")
        if index is None or not 0 <= index < len(tokens):
            return None
        text = tokens[index]
        return text if backend.token_to_id(text) == index else spelled(text)

    bos, eos = token("bos_token_id"), token("eos_token_id")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    if (add_bos and bos) or (add_eos and eos):
        backend.post_processor = _template(
            bos if add_bos else None, eos if add_eos else None, backend
        )
    pad, unk = token("padding_token_id"), token("unknown_token_id")
    specials = {"bos": bos, "eos": eos, "pad": pad, "unk": unk}
    specials = {
        k: v if v and backend.token_to_id(v) is not None else None for k, v in specials.items()
    }
    chat_template = meta.get("tokenizer.chat_template")
    if chat_template is not None and not isinstance(chat_template, str):
        raise ValueError(
            f"{path}: tokenizer.chat_template: expected a string, "
            f"got {type(chat_template).__name__}"
        )
    return Tokenizer(backend, **specials, chat_template=chat_template)
