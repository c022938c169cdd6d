"""BERT pretraining data: sentence pairs for next-sentence prediction and masked tokens for the
masked language model (Devlin et al. 2019, section 3.1 and appendix A.1).

Shapes: B batch, T the longest pair of the batch (at most ``max_len``). A batch is a dict of int64
tensors, the keyword arguments of Hugging Face ``BertForPreTraining``:

* ``input_ids`` (B, T): ``[CLS] A [SEP] B [SEP]`` then ``[PAD]``, with some tokens masked;
* ``attention_mask`` (B, T): 1 on real tokens, 0 on padding;
* ``token_type_ids`` (B, T): 0 for ``[CLS] A [SEP]``, 1 for ``B [SEP]`` (and padding 0);
* ``labels`` (B, T): the original id where a token was selected for prediction, -100 elsewhere;
* ``next_sentence_label`` (B,): 0 when B follows A in the document, 1 when B is a random sentence
  of another document (only with ``nsp=True``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["IGNORE_INDEX", "MLMData", "mask_tokens"]

IGNORE_INDEX = -100  # label of tokens not selected: cross-entropy's default ignore_index


def mask_tokens(
    input_ids: Tensor,
    special_mask: Tensor,
    generator: torch.Generator,
    *,
    mask_id: int,
    vocab_size: int,
    mask_prob: float = 0.15,
) -> tuple[Tensor, Tensor]:
    """BERT's masking of a batch ``input_ids`` (B, T), as Hugging Face's
    ``DataCollatorForLanguageModeling`` does it.

    Each token whose ``special_mask`` (B, T) is False is selected with probability ``mask_prob``;
    special tokens and padding (True in ``special_mask``) never are. A selected token becomes
    ``mask_id`` 80 % of the time, a uniformly random id of the vocabulary 10 %, and stays as it is
    10 %. Returns new ``(input_ids, labels)``, both (B, T) int64: ``labels`` holds the original id
    at selected positions and -100 elsewhere. ``input_ids`` itself is not modified.
    """
    if input_ids.shape != special_mask.shape:
        raise ValueError(
            f"special_mask: expected shape {tuple(input_ids.shape)} like input_ids, "
            f"got {tuple(special_mask.shape)}"
        )
    if not 0.0 < mask_prob < 1.0:
        raise ValueError(f"mask_prob: expected a number in (0, 1), got {mask_prob!r}")
    ids = input_ids.clone().long()
    labels = ids.clone()
    prob = torch.full(ids.shape, float(mask_prob)).masked_fill_(special_mask.bool(), 0.0)
    selected = torch.bernoulli(prob, generator=generator).bool()
    labels[~selected] = IGNORE_INDEX
    to_mask = torch.bernoulli(torch.full(ids.shape, 0.8), generator=generator).bool() & selected
    ids[to_mask] = mask_id
    # Half of the remaining 20 % -> 10 % of all selected tokens get a random id.
    half = torch.bernoulli(torch.full(ids.shape, 0.5), generator=generator).bool()
    to_random = half & selected & ~to_mask
    random_ids = torch.randint(vocab_size, ids.shape, generator=generator)
    ids[to_random] = random_ids[to_random]
    return ids, labels


class MLMData:
    """Sentence pairs and masked tokens from a corpus, for BERT pretraining.

    Args:
        texts_or_documents: the corpus, in one of three forms:
            a ``str`` -- documents separated by blank lines, one sentence per line (the format of
            BERT's ``create_pretraining_data.py``);
            a list of ``str`` -- one document each, one sentence per non-empty line;
            a list of lists of ``str`` -- documents as lists of sentences.
        tokenizer: an :class:`attnlab.tokenizers.Tokenizer` whose vocabulary has ``[CLS]``,
            ``[SEP]``, ``[MASK]`` and ``[PAD]`` (any BERT WordPiece vocabulary, e.g. the packaged
            MiniLM's); other spellings via ``cls_token=`` etc.
        max_len: the longest sequence, special tokens included.
        nsp: build pairs for next-sentence prediction (else one segment ``[CLS] A [SEP]`` of
            consecutive sentences, RoBERTa-style, and no ``next_sentence_label``).
        mask_prob: the fraction of tokens selected for prediction (BERT: 0.15).

    A pair takes consecutive sentences from a random position for A (about half of the room),
    then, with probability 1/2, the sentences that follow it for B (label 0), else consecutive
    sentences from a random position of another document (label 1); the longer segment loses
    tokens from its end until the pair fits (BERT's ``truncate_seq_pair``).
    """

    def __init__(
        self,
        texts_or_documents: str | Sequence[str] | Sequence[Sequence[str]],
        tokenizer,
        max_len: int,
        nsp: bool = True,
        *,
        mask_prob: float = 0.15,
        cls_token: str = "[CLS]",
        sep_token: str = "[SEP]",
        mask_token: str = "[MASK]",
        pad_token: str = "[PAD]",
    ) -> None:
        specials = {"cls": cls_token, "sep": sep_token, "mask": mask_token, "pad": pad_token}
        ids = {name: tokenizer.token_to_id(token) for name, token in specials.items()}
        missing = [specials[name] for name, i in ids.items() if i is None]
        if missing:
            raise ValueError(
                f"tokenizer: expected a vocabulary with {', '.join(specials.values())}, "
                f"got one without {', '.join(missing)}"
            )
        self.cls_id, self.sep_id = ids["cls"], ids["sep"]
        self.mask_id, self.pad_id = ids["mask"], ids["pad"]
        self.special_ids = sorted(set(ids.values()))
        self.vocab_size = int(tokenizer.vocab_size)
        min_len = 5 if nsp else 3  # [CLS] a [SEP] b [SEP]
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < min_len:
            raise ValueError(f"max_len: expected an int >= {min_len}, got {max_len!r}")
        if not 0.0 < mask_prob < 1.0:
            raise ValueError(f"mask_prob: expected a number in (0, 1), got {mask_prob!r}")
        self.max_len, self.nsp, self.mask_prob = max_len, bool(nsp), float(mask_prob)
        self.documents = _tokenize(_documents(texts_or_documents), tokenizer)
        if not self.documents:
            raise ValueError(
                "texts_or_documents: expected text with at least one sentence, got none"
            )
        # Start positions (document, sentence) for segment A; with NSP, A needs a next sentence.
        starts = [
            (d, s)
            for d, doc in enumerate(self.documents)
            for s in range(len(doc) - (1 if self.nsp else 0))
        ]
        if self.nsp and (len(self.documents) < 2 or not starts):
            raise ValueError(
                "texts_or_documents: expected at least 2 documents, one of them with 2 sentences "
                f"(for next-sentence pairs), got {len(self.documents)} document(s) and "
                f"{sum(map(len, self.documents))} sentence(s); pass nsp=False for single segments"
            )
        self._starts = np.array(starts, dtype=np.int64).reshape(-1, 2)  # (N, 2)

    def __repr__(self) -> str:
        return (
            f"MLMData(documents={len(self.documents)}, sentences={self.num_sentences}, "
            f"max_len={self.max_len}, nsp={self.nsp})"
        )

    @property
    def num_sentences(self) -> int:
        return sum(len(doc) for doc in self.documents)

    def mask_tokens(
        self,
        input_ids: Tensor,
        special_mask: Tensor,
        generator: torch.Generator,
        mask_prob: float | None = None,
    ) -> tuple[Tensor, Tensor]:
        """:func:`mask_tokens` with this vocabulary's ``[MASK]`` id and size; ``mask_prob``
        defaults to the one given at construction."""
        return mask_tokens(
            input_ids,
            special_mask,
            generator,
            mask_id=self.mask_id,
            vocab_size=self.vocab_size,
            mask_prob=self.mask_prob if mask_prob is None else mask_prob,
        )

    def _pair(self, u: Sequence[float]) -> tuple[list[int], list[int], int]:
        """Segments ``(A, B, label)`` chosen by four uniform numbers in [0, 1) (``B`` is empty and
        ``label`` -1 without NSP). :meth:`batch` draws them from its generator."""
        budget = self.max_len - (3 if self.nsp else 2)
        d, s = self._starts[int(u[0] * len(self._starts))]
        doc = self.documents[d]
        if not self.nsp:
            return _take(doc, s, len(doc), budget)[:budget], [], -1
        # A: from s, about half the room, leaving at least one sentence after it in the document.
        a, end = _take_until(doc, s, len(doc) - 1, budget // 2)
        if u[1] < 0.5:
            b, label = _take(doc, end, len(doc), budget - len(a)), 0
        else:
            other = int(u[2] * (len(self.documents) - 1))
            other += other >= d  # any document but this one
            odoc = self.documents[other]
            b, label = _take(odoc, int(u[3] * len(odoc)), len(odoc), budget - len(a)), 1
        while len(a) + len(b) > budget:  # BERT's truncate_seq_pair, from the end of the longer
            (a if len(a) > len(b) else b).pop()
        return a, b, label

    def batch(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        """``batch_size`` masked pairs (see the module docstring for the keys and shapes), padded
        to the longest of the batch. Every random choice comes from ``generator``: the same
        generator state gives the same batch."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        u = torch.rand((batch_size, 4), generator=generator, dtype=torch.float64).tolist()
        rows, types, nsp_labels = [], [], []
        for draws in u:
            a, b, label = self._pair(draws)
            if self.nsp:
                rows.append([self.cls_id, *a, self.sep_id, *b, self.sep_id])
                types.append([0] * (len(a) + 2) + [1] * (len(b) + 1))
            else:
                rows.append([self.cls_id, *a, self.sep_id])
                types.append([0] * (len(a) + 2))
            nsp_labels.append(label)
        t = max(len(r) for r in rows)
        input_ids = torch.full((batch_size, t), self.pad_id, dtype=torch.long)  # (B, T)
        token_type_ids = torch.zeros((batch_size, t), dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((batch_size, t), dtype=torch.long)  # (B, T)
        for i, (row, tt) in enumerate(zip(rows, types, strict=True)):
            input_ids[i, : len(row)] = torch.tensor(row)
            token_type_ids[i, : len(row)] = torch.tensor(tt)
            attention_mask[i, : len(row)] = 1
        # (B, T): positions never selected for masking, the special tokens and the padding
        special = torch.isin(input_ids, torch.tensor(self.special_ids)) | (attention_mask == 0)
        masked, labels = self.mask_tokens(input_ids, special, generator)
        out = {
            "input_ids": masked,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
            "labels": labels,
        }
        if self.nsp:
            out["next_sentence_label"] = torch.tensor(nsp_labels, dtype=torch.long)  # (B,)
        return out


def _documents(corpus) -> list[list[str]]:
    """Documents as lists of non-empty, stripped sentences (see :class:`MLMData`)."""
    if isinstance(corpus, str):
        docs = [block.splitlines() for block in re.split(r"\n[ \t\r\f\v]*\n", corpus)]
    elif isinstance(corpus, Sequence):
        docs = [d.splitlines() if isinstance(d, str) else list(d) for d in corpus]
    else:
        raise TypeError(
            "texts_or_documents: expected a str, a list of str or a list of lists of str, "
            f"got {type(corpus).__name__}"
        )
    out = []
    for doc in docs:
        bad = next((s for s in doc if not isinstance(s, str)), None)
        if bad is not None:
            raise TypeError(f"texts_or_documents: expected sentences as str, got {bad!r:.60}")
        sentences = [s.strip() for s in doc if s.strip()]
        if sentences:
            out.append(sentences)
    return out


def _tokenize(documents: list[list[str]], tokenizer) -> list[list[list[int]]]:
    """Token ids of every sentence (no special tokens), one parallel batch call when the
    tokenizer has a ``tokenizers`` backend; sentences that encode to nothing are dropped."""
    flat = [s for doc in documents for s in doc]
    if not flat:
        return []
    backend = getattr(tokenizer, "backend", None)
    if backend is not None:
        ids = [e.ids for e in backend.encode_batch(flat, add_special_tokens=False)]
    else:
        ids = [tokenizer.encode(s, add_special_tokens=False) for s in flat]
    out, i = [], 0
    for doc in documents:
        sentences = [row for row in ids[i : i + len(doc)] if row]
        i += len(doc)
        if sentences:
            out.append(sentences)
    return out


def _take(doc: list[list[int]], start: int, stop: int, room: int) -> list[int]:
    """Tokens of sentences ``start, start + 1, ...`` (before ``stop``) while they fit in
    ``room``; always at least the first sentence (truncation trims it later)."""
    return _take_until(doc, start, stop, room)[0]


def _take_until(doc: list[list[int]], start: int, stop: int, room: int) -> tuple[list[int], int]:
    """:func:`_take` plus the index of the first sentence not taken."""
    tokens, end = list(doc[start]), start + 1
    while end < stop and len(tokens) + len(doc[end]) <= room:
        tokens += doc[end]
        end += 1
    return tokens, end
