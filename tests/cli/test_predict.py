"""``attnlab predict``: one line per text (label, probability) or JSON, texts from arguments, a
file or stdin, long texts cut to the model's context, and one-line errors."""

from __future__ import annotations

import json
import types

import pytest
import torch
from cli_helpers import one_line_error as _one_line_error
from click.testing import CliRunner

import attnlab
from attnlab import tokenizers
from attnlab.cli.main import cli
from attnlab.data.classify import encode_texts
from attnlab.models import BERT, GPT, BertConfig, GPTConfig
from attnlab.predict import predict
from attnlab.train.tasks import minilm_dir

NAMES = ["negative", "neutral", "positive"]
TEXTS = ["a wonderful film", "it was fine", "dull and far too long"]
LONG = " ".join(["words"] * 40)  # more tokens than max_len=16


@pytest.fixture(scope="module")
def tok():
    return tokenizers.load(minilm_dir())


def _bert(tok, *, head="classify", labels=NAMES, seed=0):
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tok.vocab_size, max_len=16, n_layer=1, n_head=2, dim=16, hidden=32,
        head=head, num_labels=3, labels=labels if head == "classify" else None,
    )  # fmt: skip
    model = BERT(config).eval()
    with torch.no_grad():  # spread the logits so that the three classes differ clearly
        if head == "classify":
            model.classifier.weight.mul_(50)
    return model


@pytest.fixture
def fake_load(monkeypatch, tok):
    """``attnlab.load`` returning the given model and tokenizer; records the source asked for."""

    def install(model, tokenizer=tok):
        asked = []

        def load(source, **kwargs):
            asked.append(source)
            return types.SimpleNamespace(model=model, tokenizer=tokenizer, config=model.config)

        monkeypatch.setattr(attnlab, "load", load)
        return asked

    return install


def invoke(*args, input=None):
    return CliRunner().invoke(cli, ["predict", *map(str, args)], input=input)


def _expected(model, tok, text):
    """Label and probabilities of one text, computed without the command."""
    batch = encode_texts(tok, [text], model.config.max_len)
    with torch.no_grad():
        probs = model(**batch).logits.softmax(-1)[0]
    i = int(probs.argmax())
    return model.config.labels[i], probs.tolist()


def test_one_line_per_text_label_tab_probability(fake_load, tok):
    model = _bert(tok)
    asked = fake_load(model)
    result = invoke("runs/x", *TEXTS, LONG)
    assert result.exit_code == 0, result.output
    assert asked == ["runs/x"]
    lines = result.output.splitlines()
    assert len(lines) == 4
    for line, text in zip(lines, [*TEXTS, LONG], strict=True):
        label, probs = _expected(model, tok, text)
        assert line == f"{label}\t{max(probs):.4f}"
    assert all(line.split("\t")[0] in NAMES for line in lines)


def test_label_names_follow_the_label_index(fake_load, tok):
    model = _bert(tok)
    with torch.no_grad():  # class 1 ("neutral") wins for every text, with a known probability
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, 2.0, 0.0]))
    fake_load(model)
    result = invoke("src", "any text", "another")
    p = torch.tensor([0.0, 2.0, 0.0]).softmax(-1)[1].item()
    assert result.output == f"neutral\t{p:.4f}\n" * 2


def test_json_file_and_stdin_give_the_same_predictions(fake_load, tok, tmp_path):
    model = _bert(tok)
    fake_load(model)
    file = tmp_path / "texts.txt"
    file.write_text("\n".join([*TEXTS, "", LONG]) + "\n")  # a blank line is an (empty) text
    from_file = invoke("src", "--file", file, "--json")
    assert from_file.exit_code == 0, from_file.output
    records = [json.loads(line) for line in from_file.output.splitlines()]
    assert [r["text"] for r in records] == [*TEXTS, "", LONG]
    for r in records:
        label, probs = _expected(model, tok, r["text"])
        assert r["label"] == label and list(r["probabilities"]) == NAMES
        assert r["probability"] == pytest.approx(max(probs), abs=1e-5)
        assert list(r["probabilities"].values()) == pytest.approx(probs, abs=1e-5)
    from_stdin = invoke("src", "--json", "--batch-size", 2, input=file.read_text())
    assert from_stdin.exit_code == 0, from_stdin.output
    assert [json.loads(line)["label"] for line in from_stdin.output.splitlines()] == [
        r["label"] for r in records
    ]


def test_batches_and_truncation_do_not_change_the_answer(tok):
    model = _bert(tok)
    one_by_one = [p.probabilities for t in [*TEXTS, LONG] for p in predict(model, tok, [t])]
    batched = [p.probabilities for p in predict(model, tok, [*TEXTS, LONG], batch_size=3)]
    for a, b in zip(one_by_one, batched, strict=True):
        assert list(a.values()) == pytest.approx(list(b.values()), abs=1e-5)
    # The long text is cut to max_len tokens and still ends with [SEP]:
    ids = [*tok.encode(LONG)[:15], tok.token_to_id("[SEP]")]
    with torch.no_grad():
        direct = model(torch.tensor([ids])).logits.softmax(-1)[0].tolist()
    assert list(batched[-1].values()) == pytest.approx(direct, abs=1e-5)


def test_unnamed_classes_are_label_i(fake_load, tok):
    fake_load(_bert(tok, labels=None))
    result = invoke("src", "one text")
    assert result.exit_code == 0, result.output
    assert result.output.split("\t")[0] in {"LABEL_0", "LABEL_1", "LABEL_2"}


def test_a_model_that_is_not_a_classifier_is_refused(fake_load, tok):
    fake_load(_bert(tok, head="none"))
    _one_line_error(
        invoke("some/dir", "text"),
        "some/dir: expected a classification model (BERT with head='classify'), got a BERT "
        "with head='none'",
    )
    fake_load(GPT(GPTConfig(vocab_size=tok.vocab_size, max_len=8, n_layer=1, n_head=2, dim=16)))
    _one_line_error(invoke("gpt", "text"), "gpt: expected a classification model", "got a GPT")
    fake_load(_bert(tok), tokenizer=None)
    _one_line_error(invoke("bare", "text"), "bare: has no tokenizer")


def test_input_mistakes_are_one_line_errors(fake_load, tok, tmp_path):
    fake_load(_bert(tok))
    file = tmp_path / "texts.txt"
    file.write_text("a\n")
    _one_line_error(invoke("src", "text", "--file", file), "--file: expected texts as arguments")
    _one_line_error(invoke("src", "--file", tmp_path / "none.txt"), "none.txt does not exist")
    file.write_bytes(b"caf\xe9\n")
    _one_line_error(invoke("src", "--file", file), "--file:", "not valid UTF-8", "line 1")
    file.write_text("")
    _one_line_error(invoke("src", "--file", file), "--file: expected one text per line")
    _one_line_error(invoke("src", input=""), "texts: expected texts as arguments")


def test_end_to_end_on_a_hugging_face_directory(tok, tmp_path):
    from attnlab.convert import save_hf

    model = _bert(tok)
    save_hf(model, tmp_path / "hf")
    tok.save(tmp_path / "hf")
    result = invoke(tmp_path / "hf", *TEXTS)
    assert result.exit_code == 0, result.output
    assert [line.split("\t")[0] for line in result.output.splitlines()] == [
        _expected(model, tok, t)[0] for t in TEXTS
    ]


def test_end_to_end_on_a_trained_run(tmp_path):
    data = tmp_path / "data.csv"
    rows = [(f"good {i}", "pos") for i in range(6)] + [(f"bad {i}", "neg") for i in range(6)]
    data.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
    run = tmp_path / "run"
    trained = CliRunner().invoke(cli, [
        "train", "--preset", "news-classify", f"dataset={data}", "init_from=none",
        "model.n_layer=1", "model.n_head=2", "model.dim=16", "model.hidden=32", "block_size=16",
        "batch_size=4", "max_steps=2", "eval_every=2", "--out", str(run), "--no-progress",
    ])  # fmt: skip
    assert trained.exit_code == 0, trained.output
    result = invoke(run, "--json", "good 9", "bad 9")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.output.splitlines()]
    assert [r["text"] for r in records] == ["good 9", "bad 9"]
    assert all(list(r["probabilities"]) == ["neg", "pos"] for r in records)
