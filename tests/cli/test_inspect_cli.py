"""``attnlab inspect``: the explorer page of a run of every family, and one-line errors."""

from __future__ import annotations

import base64
import gzip
import json
import re

import pytest
import torch
from click.testing import CliRunner

from attnlab.cli.main import cli
from attnlab.data.chars import CharTokenizer
from attnlab.inspect import attention_weights
from attnlab.loader import save_run
from attnlab.models import GPT, EncoderDecoder, GPTConfig, TransformerConfig, ViT, ViTConfig
from tests.cli_helpers import one_line_error

CHARS = "abcdefgh \n.é"


def _run(tmp_path, model, tokenizer=None):
    return str(save_run(model.eval(), tokenizer, tmp_path / "run"))


def _invoke(*args):
    return CliRunner().invoke(cli, list(args))


def _embedded(page: str) -> list[str]:
    """Every base64 payload of the page, decoded (for checking the data reached it)."""
    blobs = re.findall(r">\s*([A-Za-z0-9+/=\s]{40,})\s*<", page)
    return [gzip.decompress(base64.b64decode("".join(b.split()))) for b in blobs]


@pytest.fixture
def gpt_run(tmp_path):
    torch.manual_seed(0)
    chars = CharTokenizer.from_text(CHARS)
    config = GPTConfig(vocab_size=chars.vocab_size, max_len=32, n_layer=2, n_head=2, dim=16)
    return _run(tmp_path, GPT(config), chars)


def test_a_gpt_run_gives_a_page_with_its_weights(gpt_run, tmp_path):
    out = tmp_path / "page.html"
    result = _invoke("inspect", gpt_run, "--text", "bad cafe.", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "2 layers x 2 heads x 9 tokens" in result.output
    page = out.read_text()
    assert "http://" not in page and "https://" not in page  # nothing remote to load
    # The quantized weights on the page are the model's, within the 1/255 quantization.
    import attnlab

    model, tok = attnlab.load(gpt_run)
    ids = torch.tensor([tok.encode("bad cafe.")])
    want = torch.stack([w[0] for w in attention_weights(model, ids).values()])  # (L, H, T, T)
    quantized = (want * 255).round().to(torch.uint8).flatten()
    blobs = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in _embedded(page)]
    assert any(b.numel() == quantized.numel() and torch.equal(b, quantized) for b in blobs)


def test_layers_and_heads_select_what_the_page_holds(gpt_run, tmp_path):
    out = tmp_path / "one.html"
    result = _invoke(
        "inspect", gpt_run, "--text", "abc", "--layers", "1", "--heads", "0", "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    assert "1 layers x 1 heads x 3 tokens" in result.output


def test_an_encoder_decoder_has_encoder_decoder_and_cross_views(tmp_path):
    torch.manual_seed(0)
    chars = CharTokenizer.from_text(CHARS)
    config = TransformerConfig(
        vocab_size=chars.vocab_size, max_len=32, n_layer=1, n_head=2, dim=16, hidden=32
    )
    run = _run(tmp_path, EncoderDecoder(config), chars)
    out = tmp_path / "mt.html"
    result = _invoke("inspect", run, "--text", "bad", "--target", "cab", "--out", str(out))
    assert result.exit_code == 0, result.output
    for view in ("encoder 1 layers x 2 heads x 3 tokens", "decoder 1 layers x 2 heads x 4",
                 "cross 1 layers x 2 heads x 4"):  # fmt: skip
        assert view in result.output
    # Without a target the model's own greedy output is shown.
    result = _invoke("inspect", run, "--text", "bad", "--out", str(out))
    assert result.exit_code == 0, result.output


def test_a_vit_shows_a_digit(tmp_path):
    pytest.importorskip("sklearn")
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=8, patch_size=4, channels=1, num_labels=10, n_layer=1, n_head=2, dim=16,
        hidden=32,
    )  # fmt: skip
    run = _run(tmp_path, ViT(config))
    out = tmp_path / "vit.html"
    result = _invoke("inspect", run, "--digit", "3", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "1 layers x 2 heads x 5 tokens" in result.output
    one_line_error(_invoke("inspect", run, "--out", str(out)), "--image, --digit")
    one_line_error(_invoke("inspect", run, "--digit", "5000", "--out", str(out)), "--digit")


def test_mistakes_are_one_line(gpt_run, tmp_path):
    out = str(tmp_path / "x.html")
    one_line_error(_invoke("inspect", gpt_run, "--text", "a" * 40, "--out", out), "--text", "32")
    one_line_error(_invoke("inspect", gpt_run, "--out", out), "--text")
    one_line_error(
        _invoke("inspect", gpt_run, "--text", "ab", "--layers", "5", "--out", out), "--layers"
    )
    one_line_error(
        _invoke("inspect", gpt_run, "--text", "ab", "--heads", "0,7", "--out", out), "--heads", "7"
    )
    one_line_error(
        _invoke("inspect", gpt_run, "--text", "ab", "--layers", "x", "--out", out), "--layers"
    )
    one_line_error(_invoke("inspect", str(tmp_path / "nothing"), "--text", "ab"), "nothing")
    assert not (tmp_path / "x.html").exists()


def test_meta_names_the_source(gpt_run, tmp_path):
    out = tmp_path / "page.html"
    assert _invoke("inspect", gpt_run, "--text", "ab", "--out", str(out)).exit_code == 0
    scripts = re.findall(r"<script[^>]*application/json[^>]*>(.*?)</script>", out.read_text(), re.S)
    assert any(gpt_run in json.dumps(json.loads(s)) for s in scripts)


def test_a_page_too_large_for_memory_is_refused_with_a_way_out(gpt_run, tmp_path):
    import attnlab
    from attnlab.inspect.explorer import explore

    model, tok = attnlab.load(gpt_run)
    with pytest.raises(ValueError, match=r"^heads: .*2 layers x 2 heads x 9 x 9.*--layers 0"):
        explore(model, tok, "bad cafe.", max_bytes=1000)
    explore(model, tok, "bad cafe.", layers=[0], heads=[0], max_bytes=1000)  # 324 bytes: fine


def test_the_demo_text_fits_the_demo_model():
    # `make demo` inspects its run on one line; the preset's context must hold it.
    from pathlib import Path

    from attnlab.train.config import preset

    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    text = re.search(r'inspect \$\(DEMO_OUT\).*?--text "([^"]+)"', makefile, re.S).group(1)
    config = preset("shakespeare-char")
    assert 0 < len(text) <= config.block_size


def test_tokens_of_whitespace_are_drawn():
    from attnlab.inspect.explorer import token_strings, visible

    assert [visible(t) for t in (" ", "  ", "\n", "a b", " cat", "\t")] == [
        "␣", "␣␣", "↵", "a b", " cat", "⇥"
    ]  # fmt: skip
    chars = CharTokenizer.from_text(CHARS)
    assert token_strings(chars, chars.encode("a \nb")) == ["a", "␣", "↵", "b"]


def test_the_page_statistics_are_head_stats_and_detectors_from_one_forward_pass(gpt_run):
    import attnlab
    from attnlab.inspect import head_stats, stats_table
    from attnlab.inspect.analysis import detect_heads
    from attnlab.inspect.explorer import explore

    model, tok = attnlab.load(gpt_run)
    ids = torch.tensor([tok.encode("bad cab bad cab.")])
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    data = explore(model, tok, "bad cab bad cab.")
    assert len(calls) == 1  # weights, statistics and detectors share one pass
    want = stats_table(head_stats(model, ids))
    scores = detect_heads(model, ids)
    assert len(data.stats) == len(want) == 4
    for i, (row, expected) in enumerate(zip(data.stats, want, strict=True)):
        for metric in ("entropy", "distance", "sink", "previous"):
            assert row[metric] == pytest.approx(expected[metric], abs=1e-6)
        for detector, values in scores.items():
            assert row[detector] == pytest.approx(float(values[i // 2, i % 2]), abs=1e-6)
        assert (row["view"], row["layer"], row["head"]) == ("self", i // 2, i % 2)
