"""Training a byte-level BPE vocabulary on a corpus (GPT-2's scheme, Radford et al. 2019), with the
``tokenizers`` library doing the work.

Byte-level means the base alphabet is the 256 byte values (spelled as printable characters by
``ByteLevel``), so every string -- any script, emoji, control characters -- encodes without an
unknown token and decodes back exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as Backend

from attnlab.data.corpus import line_chunks
from attnlab.tokenizers import Tokenizer

__all__ = ["EOS", "train_bpe"]

EOS = "<|endoftext|>"
ALPHABET = 256  # byte values, always in the vocabulary


def train_bpe(
    text: str,
    vocab_size: int,
    *,
    special_tokens: Sequence[str] = (EOS,),
    min_frequency: int = 2,
) -> Tokenizer:
    """A byte-level BPE tokenizer of ``vocab_size`` ids trained on ``text``.

    Ids: the special tokens first (``<|endoftext|>`` = 0 by default), then the 256 bytes, then
    the merges in the order learned, until ``vocab_size`` ids or no pair occurs
    ``min_frequency`` times (so a small text may give fewer ids). The first special token is the
    tokenizer's EOS. The same text and arguments give the same vocabulary, merges and ids.

    Raises ValueError when ``vocab_size`` cannot hold the bytes and special tokens, or the text is
    empty.
    """
    if not isinstance(text, str) or not text:
        raise ValueError(f"text: expected a non-empty str, got {text!r:.60}")
    if isinstance(special_tokens, str):
        raise TypeError(
            f"special_tokens: expected a sequence of str, got the str {special_tokens!r}"
        )
    special_tokens = list(dict.fromkeys(special_tokens))
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TypeError(f"vocab_size: expected an int, got {type(vocab_size).__name__}")
    if vocab_size < ALPHABET + len(special_tokens):
        raise ValueError(
            f"vocab_size: expected at least {ALPHABET + len(special_tokens)} (256 bytes + "
            f"{len(special_tokens)} special tokens), got {vocab_size}"
        )
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in special_tokens],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # The trainer counts pre-tokenized words per piece, in parallel; cutting at line ends keeps the
    # words whole.
    backend.train_from_iterator(line_chunks(text, 1 << 14), trainer=trainer)
    eos = special_tokens[0] if special_tokens else None
    return Tokenizer(backend, eos=eos)
