"""attnlab.load: one loader for runs, checkpoints, Hugging Face directories and GGUF files; the
shared tokenizer interface; atomic, locked conversion."""

from __future__ import annotations

import fcntl
import json
import os

import pytest
import torch

import attnlab
from attnlab import tokenizers
from attnlab.convert import save_hf
from attnlab.data.chars import CharTokenizer
from attnlab.files import atomic_directory
from attnlab.loader import convert, save_run, source_kind
from attnlab.models import GPT, GPTConfig
from attnlab.train import checkpoint


def tiny_gpt(vocab: int = 12, **overrides) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=vocab, max_len=16, n_layer=1, n_head=2, dim=16, **overrides)
    return GPT(config).eval()


@pytest.fixture
def run(tmp_path):
    """A run directory as ``attnlab convert`` writes it: config, tokenizer, one checkpoint."""
    chars = CharTokenizer.from_text("abcdefgh \n.é")
    return save_run(tiny_gpt(chars.vocab_size), chars, tmp_path / "run")


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_every_kind_loads_to_the_same_model_and_tokenizer(run, tmp_path):
    ids = torch.tensor([[0, 3, 5, 7, 11]])
    loaded = attnlab.load(run)
    assert loaded.kind == "run" and loaded.path == run / "checkpoints" / "step-0000000"
    assert loaded.run_dir == run and loaded.train is None
    assert loaded.config is loaded.model.config and not loaded.model.training
    model, tokenizer = loaded  # unpacks
    assert isinstance(tokenizer, CharTokenizer) and tokenizer.encode("bad") == [4, 3, 6]

    ckpt = attnlab.load(run / "checkpoints" / "step-0000000")
    assert ckpt.kind == "checkpoint" and ckpt.tokenizer == tokenizer  # the run's tokenizer
    assert torch.equal(logits(ckpt.model, ids), logits(model, ids))

    hf = tmp_path / "hf"
    save_hf(model, hf)
    tokenizer.to_tokenizer().save(hf)
    from_hf = attnlab.load(hf)
    assert from_hf.kind == "hf" and from_hf.tokenizer.encode("bad é") == tokenizer.encode("bad é")
    torch.testing.assert_close(logits(from_hf.model, ids), logits(model, ids), atol=1e-6, rtol=0)

    meta = attnlab.load(run, device="meta")
    assert meta.model.tok.weight.device.type == "meta"
    half = attnlab.load(run, dtype=torch.float64)
    assert half.model.head.weight.dtype == torch.float64


def test_a_run_from_another_working_directory_and_the_old_tokenizer_file(run, monkeypatch):
    # Runs written before the single format kept characters in tokenizer/chars.json.
    (run / "tokenizer" / "char_tokenizer.json").rename(run / "tokenizer" / "chars.json")
    monkeypatch.chdir("/")
    assert attnlab.load(run).tokenizer.vocab_size == 12


def test_which_picks_the_best_or_the_latest_checkpoint(run):
    model = attnlab.load(run).model
    later = tiny_gpt(12)
    torch.nn.init.zeros_(later.head.weight)
    checkpoint.save(run, 5, later, {}, {"tokenizer": "tokenizer"})
    checkpoint.save(run, 3, model, {}, {"tokenizer": "tokenizer"}, is_best=True)
    ids = torch.tensor([[1, 2]])
    assert attnlab.load(run).path.name == "step-0000003"
    assert attnlab.load(run, which="latest").path.name == "step-0000005"
    assert torch.equal(logits(attnlab.load(run, which="latest").model, ids), torch.zeros(1, 2, 12))
    with pytest.raises(ValueError, match=r"^which: expected 'best' or 'latest', got 'first'"):
        attnlab.load(run, which="first")


def test_a_folder_of_runs_points_to_them(run, tmp_path):
    with pytest.raises(ValueError, match=r"directory holds run \(did you mean .*/run\?\)"):
        attnlab.load(tmp_path)


def test_unknown_sources_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing: no such file or directory"):
        attnlab.load(tmp_path / "nothing")
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("hi")
    with pytest.raises(
        ValueError, match=r"expected an attnlab run .* the directory holds notes.txt"
    ):
        source_kind(tmp_path / "stuff")
    (tmp_path / "x.bin").write_bytes(b"\0" * 8)
    with pytest.raises(ValueError, match=r"x.bin: expected .* got a file of another kind"):
        attnlab.load(tmp_path / "x.bin")
    with pytest.raises(TypeError, match=r"^dtype: expected a floating-point torch.dtype"):
        attnlab.load(tmp_path / "x.bin", dtype=torch.int8)


def test_a_hand_edited_run_config_is_named(run):
    meta_file = run / "checkpoints" / "step-0000000" / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["config"]["n_layers"] = meta["config"].pop("n_layer")
    meta_file.write_text(json.dumps(meta))
    unknown = r"meta.json: config field 'n_layers' is not a field of GPTConfig \(did you mean"
    with pytest.raises(ValueError, match=unknown):
        attnlab.load(run)
    meta["config"]["n_layer"] = "two"
    del meta["config"]["n_layers"]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"meta.json: invalid model config \(n_layer: expected"):
        attnlab.load(run)
    meta["family"] = "Mamba"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"meta.json: family: expected one of GPT, BERT"):
        attnlab.load(run)


def test_a_config_claiming_other_sizes_is_refused_before_building(run, monkeypatch):
    meta_file = run / "checkpoints" / "step-0000000" / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["config"]["n_layer"] = 10**9  # would build a billion blocks
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"meta.json: config n_layer=1000000000, but the weig"):
        attnlab.load(run)
    meta["config"]["n_layer"], meta["config"]["dim"] = 1, 2**20  # a 12 x 2**20 embedding
    meta_file.write_text(json.dumps(meta))
    monkeypatch.setattr(GPT, "__init__", _no_real_build(GPT.__init__))
    with pytest.raises(ValueError, match=r"tensor '[a-z_.0-9]+' has shape .* describes"):
        attnlab.load(run)


def _no_real_build(init):
    """GPT.__init__ that fails unless it builds on the meta device (allocates nothing)."""

    def checked(self, config):
        assert torch.empty(0).device.type == "meta", "a model was allocated before the check"
        init(self, config)

    return checked


def test_a_tokenizer_larger_than_the_embedding_is_refused(tmp_path):
    chars = CharTokenizer.from_text("abcdefgh")
    save_run(tiny_gpt(5), chars, tmp_path / "run")
    with pytest.raises(ValueError, match=r"tokenizer has 8 ids but the model's embedding has 5"):
        attnlab.load(tmp_path / "run")
    save_run(tiny_gpt(20), chars, tmp_path / "padded")  # a padded embedding is fine
    assert attnlab.load(tmp_path / "padded").tokenizer.vocab_size == 8


# -- the tokenizer interface ----------------------------------------------------------------------


def test_incremental_decoding_never_splits_a_character_and_reads_a_short_window():
    gpt2 = tokenizers.gpt2_tiktoken()
    text = "Grüße 🦜🦜 from Zürich, 東京 too"
    ids = gpt2.encode(text)
    assert any("\ufffd" in gpt2.decode([i]) for i in ids)  # some ids hold parts of a character
    calls = []
    decode = gpt2.decode
    gpt2.decode = lambda ids, **kw: calls.append(len(ids)) or decode(ids, **kw)
    decoder = gpt2.decoder()
    pieces = [decoder.push(i) for i in ids]
    pieces.append(decoder.flush())
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)
    assert len(ids) > 20 and max(calls) <= 6  # a window of a few ids, never the whole text

    chars = CharTokenizer.from_text(text)
    decoder = chars.decoder()
    assert "".join(decoder.push(torch.tensor([i])) for i in chars.encode(text)) == text


def test_batches_pad_every_kind_the_same_way():
    chars = CharTokenizer.from_text("abc")
    batch = chars.encode_batch(["ab", "abca"], padding_side="left")
    assert batch.input_ids.tolist() == [[0, 0, 0, 1], [0, 1, 2, 0]]
    assert batch.attention_mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]


def test_every_kind_saves_one_format_that_load_reads(tmp_path):
    chars = CharTokenizer.from_text("xyz")
    chars.save(tmp_path / "chars")
    assert sorted(p.name for p in (tmp_path / "chars").iterdir()) == ["char_tokenizer.json"]
    assert tokenizers.load(tmp_path / "chars") == chars
    assert tokenizers.load(tmp_path / "chars" / "char_tokenizer.json") == chars
    gpt2 = tokenizers.gpt2_tiktoken()
    gpt2.save(tmp_path / "gpt2")
    assert tokenizers.load(tmp_path / "gpt2").encode("hello there") == gpt2.encode("hello there")


# -- conversion -----------------------------------------------------------------------------------


def test_convert_writes_each_format_whole_and_reads_back(run, tmp_path):
    ids = torch.tensor([[0, 3, 5, 7]])
    ours = attnlab.load(run).model
    hf, written = convert(run, tmp_path / "hf")
    assert written == "hf" and (hf / "tokenizer.json").is_file()
    back, written = convert(hf, tmp_path / "back")
    assert written == "run" and attnlab.load(back).kind == "run"
    torch.testing.assert_close(logits(attnlab.load(back).model, ids), logits(ours, ids))
    assert json.loads((back / "config.json").read_text())["source"] == str(hf.resolve())
    assert not list(tmp_path.glob(".*"))  # no temporaries or locks left


def test_a_failed_conversion_leaves_nothing_and_the_next_cleans_up(tmp_path):
    dst = tmp_path / "out"
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_directory(dst) as tmp:
        (tmp / "config.json").write_text("{}")  # looks complete, but the writer dies
        raise RuntimeError("disk on fire")
    assert not dst.exists() and not list(tmp_path.glob(".out.tmp-*"))
    stale = tmp_path / ".out.tmp-killed"  # what a SIGKILLed writer leaves
    stale.mkdir()
    with atomic_directory(dst) as tmp:
        (tmp / "a").write_text("1")
    assert not stale.exists() and (dst / "a").read_text() == "1"
    refused = pytest.raises(ValueError, match=r"^destination: expected a new or empty directory")
    with refused, atomic_directory(dst):
        pass


def test_a_second_writer_of_the_same_destination_is_refused(tmp_path):
    dst = tmp_path / "out"
    holder = open(tmp_path / ".out.lock", "w")  # noqa: SIM115 - held across the call
    holder.write(json.dumps({"pid": 4242, "host": "h", "purpose": "convert"}) + "\n")
    holder.flush()
    fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
    try:
        refused = pytest.raises(ValueError, match=r"out is in use by attnlab convert \(pid 4242")
        with refused, atomic_directory(dst):
            pass
    finally:
        holder.close()
    assert not dst.exists()


def test_converted_files_follow_the_umask(run, tmp_path):
    old = os.umask(0o022)
    try:
        hf, _ = convert(run, tmp_path / "hf")
    finally:
        os.umask(old)
    assert {oct(p.stat().st_mode & 0o777) for p in [hf, *hf.iterdir()]} <= {"0o755", "0o644"}


def test_convert_on_a_full_disk_is_one_line_and_leaves_nothing(run, tmp_path, monkeypatch):
    import errno

    from cli_helpers import one_line_error
    from click.testing import CliRunner

    from attnlab.cli.main import cli

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "hf" / "x"))

    monkeypatch.setattr("attnlab.convert.save_hf", full)
    result = CliRunner().invoke(cli, ["convert", str(run), str(tmp_path / "hf")])
    one_line_error(result, "No space left on device")
    assert not (tmp_path / "hf").exists() and not list(tmp_path.glob(".hf*"))
